"""systemd socket activation without libsystemd: the listening socket systemd passes us.

Invariants:
- A passed socket is used only when ``LISTEN_PID`` is our pid. ``LISTEN_PID``,
  ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` leave ``os.environ`` as soon as they are read,
  ours or not, so no child can take them for its own.
- Only a listening ``AF_UNIX``/``SOCK_STREAM`` socket is served: peers are authenticated
  with ``SO_PEERCRED``, which no other kind of socket offers. Anything else is refused
  with a message naming the fd, never served.
- A passed socket is never bound or unlinked by us: its file belongs to systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

# sd_listen_fds(3): passed descriptors start at 3.
LISTEN_FDS_START = 3
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# The name llmd.socket gives its socket (FileDescriptorName=), a short form of it, and the
# name systemd gives a socket of llmd.socket when FileDescriptorName= is unset.
PREFERRED_NAMES = ("llmd.sock", "llmd", "llmd.socket")


class ActivationError(Exception):
    """The environment says sockets were passed, but they cannot be served."""


def parse_listen_env(env: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The descriptors systemd passed to process ``pid``, with their names.

    Args:
        env: The environment holding ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``.
        pid: Our pid; variables meant for another process are ignored.

    Returns:
        ``[(fd, name), ...]`` from fd 3 up; empty when nothing was passed to us. A
        descriptor without a name is called ``"unknown"``, as systemd does.

    Raises:
        ActivationError: The variables are meant for us but malformed.
    """
    listen_pid = env.get("LISTEN_PID")
    if not listen_pid:
        return []
    try:
        if int(listen_pid) != pid:
            # Inherited from a parent that was activated itself: not ours.
            return []
    except ValueError:
        raise ActivationError(f"LISTEN_PID={listen_pid!r} is not a pid") from None
    raw = env.get("LISTEN_FDS", "")
    try:
        count = int(raw)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={raw!r} is not a number") from None
    if count < 0:
        raise ActivationError(f"LISTEN_FDS={raw!r} is negative")
    names_raw = env.get("LISTEN_FDNAMES")
    if names_raw is None:
        names = ["unknown"] * count
    else:
        names = names_raw.split(":")
        if len(names) != count:
            raise ActivationError(f"LISTEN_FDNAMES names {len(names)} descriptor"
                                  f"{'s' if len(names) != 1 else ''} but LISTEN_FDS={count}")
    return [(LISTEN_FDS_START + i, name) for i, name in enumerate(names)]


def choose_fd(fds: Sequence[tuple[int, str]]) -> tuple[int, str]:
    """Pick the socket to serve: the one named for llmd, else the first.

    Raises:
        ValueError: ``fds`` is empty.
    """
    if not fds:
        raise ValueError("no descriptors to choose from")
    for wanted in PREFERRED_NAMES:
        for fd, name in fds:
            if name == wanted:
                return fd, name
    return fds[0]


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "of an unknown kind"


def socket_from_fd(fd: int, name: str) -> socket.socket:
    """Wrap a passed descriptor, after checking it is a listening Unix stream socket.

    Args:
        fd: The descriptor.
        name: Its ``LISTEN_FDNAMES`` name, for messages.

    Returns:
        The socket, owning ``fd``.

    Raises:
        ActivationError: ``fd`` is closed or not such a socket; ``fd`` is left open.
    """
    label = f"fd {fd} ({name})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ActivationError(f"{label} is not open: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"{label} is {_kind(mode)}, not a socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            # Unknown families and types come back as plain ints, without a name.
            family = getattr(sock.family, "name", sock.family)
            kind = getattr(sock.type, "name", sock.type)
            raise ActivationError(
                f"{label} is a {family}/{kind} socket; llmd serves only "
                "AF_UNIX/SOCK_STREAM sockets, whose peers it can identify (SO_PEERCRED): "
                "use ListenStream=%t/llmd/llmd.sock")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"{label} is a Unix stream socket that is not listening "
                                  "(was Accept=yes set? llmd wants Accept=no)")
    except BaseException:
        # The descriptor is the caller's until we accept it: do not close it on the way out.
        sock.detach()
        raise
    return sock


def listen_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The socket systemd passed us, or None when we were not socket-activated.

    ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed from ``env``
    (``os.environ`` by default) whatever they held. Every passed descriptor is made
    close-on-exec, so none leaks into a CLI.

    Raises:
        ActivationError: Descriptors were passed to us, but the chosen one cannot be served.
    """
    env = os.environ if env is None else env
    try:
        fds = parse_listen_env(env, os.getpid())
    finally:
        for key in LISTEN_VARS:
            env.pop(key, None)
    if not fds:
        return None
    for fd, _name in fds:
        # A closed one is reported below if it is the one we chose.
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    fd, name = choose_fd(fds)
    return socket_from_fd(fd, name)


def socket_path_of(sock: socket.socket) -> Path | None:
    """The filesystem path a Unix socket is bound to, or None (abstract or unnamed)."""
    name = sock.getsockname()
    if isinstance(name, str) and name.startswith("/"):
        return Path(name)
    return None
