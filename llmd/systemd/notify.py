"""systemd's notify protocol without libsystemd: one datagram per state change.

Invariants:
- Silent and free when ``$NOTIFY_SOCKET`` is unset; a failing send is logged, never fatal.
- A send never blocks: it runs on the event loop, and a receiver that stopped reading
  (its queue holds only ``net.unix.max_dgram_qlen`` datagrams, often 10) would otherwise
  stall the whole daemon. Such a message is dropped; the next one says the current state.
- A run of failures is logged once at WARNING (the watchdog alone would repeat it every
  few seconds), then at DEBUG until a send succeeds again.
- A leading ``@`` in the address means Linux's abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("llmd.sdnotify")


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``STOPPING=1`` and the like.

    Args:
        env: The environment to read ``NOTIFY_SOCKET`` from.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if addr.startswith("@"):
            self.address = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self.address = addr
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self.address is not None

    def send(self, *fields: str) -> None:
        """Send ``fields`` as one message (e.g. ``"READY=1"``, ``"STATUS=idle"``)."""
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.log(logging.DEBUG if self._failing else logging.WARNING,
                    "cannot notify systemd: %s", exc)
            self._failing = True
        else:
            self._failing = False

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
