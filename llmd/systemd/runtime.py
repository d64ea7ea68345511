"""What the running service tells systemd: watchdog pings, ``STATUS=``; and the journal.

Invariants:
- The watchdog pings from the event loop itself, so a loop that stops turning stops the
  pings; it pings only when ``WATCHDOG_PID`` is unset or ours.
- ``STATUS=`` goes out at most once per interval and always says the latest state.
- Nothing here sends anything when ``$NOTIFY_SOCKET`` is unset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import IO, Any

import trio

from llmd.systemd.notify import Notifier

# --- watchdog and status --------------------------------------------------------


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

    None when no watchdog is set, when it is meant for another pid, or when the values
    are malformed (a watchdog we cannot read is one we cannot serve).
    """
    usec = env.get("WATCHDOG_USEC", "")
    watched = env.get("WATCHDOG_PID", "")
    try:
        if watched and int(watched) != pid:
            return None
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2_000_000


async def watchdog(notifier: Notifier, env: Mapping[str, str] | None = None) -> None:
    """Ping systemd's watchdog every half ``WATCHDOG_USEC`` until cancelled.

    Returns at once when there is no watchdog for us or no notify socket; start it in the
    daemon's nursery either way.
    """
    env = os.environ if env is None else env
    interval = watchdog_interval(env, os.getpid())
    if interval is None or not notifier.enabled:
        return
    while True:
        notifier.send("WATCHDOG=1")
        await trio.sleep(interval)


class StatusReporter:
    """Keeps systemd's ``STATUS=`` line current without flooding the notify socket.

    Call :meth:`update` whenever what ``describe`` reports may have changed (it is cheap
    and never blocks); :meth:`run`, started in the daemon's nursery, sends the latest
    text at most once per ``interval`` and only when it differs from the last one sent.

    Args:
        notifier: Where to send.
        describe: Returns the status text (one line) at the moment it is called.
        interval: Least time between two datagrams, in seconds.
        poll: Also look at ``describe`` this often without :meth:`update` (None: never).
    """

    def __init__(self, notifier: Notifier, describe: Callable[[], str], *,
                 interval: float = 1.0, poll: float | None = None) -> None:
        self.notifier = notifier
        self.describe = describe
        self.interval = interval
        self.poll = poll
        self.last: str | None = None
        self._wake = trio.Event()

    def update(self) -> None:
        """Say that the status may have changed."""
        self._wake.set()

    async def run(self) -> None:
        """Send status changes until cancelled (returns at once without a notify socket)."""
        if not self.notifier.enabled:
            return
        poll = math.inf if self.poll is None else self.poll
        next_look = trio.current_time() + poll
        while True:
            with trio.move_on_at(next_look):
                await self._wake.wait()
            next_look = trio.current_time() + poll
            # A fresh event before reading: an update() from here on wakes the next round.
            self._wake = trio.Event()
            # One line: a newline would start another field of the notify message.
            text = " ".join(self.describe().split())
            if text == self.last:
                continue
            self.notifier.send(f"STATUS={text}")
            self.last = text
            # Updates meanwhile are coalesced: the next round reads describe() afresh.
            await trio.sleep(self.interval)


# --- the journal ---------------------------------------------------------------


def is_journal_stream(stream: IO[Any] | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to the journal (``$JOURNAL_STREAM`` names it).

    Comparing device and inode, as systemd.exec(5) advises, keeps a process whose stderr
    was redirected elsewhere from writing journal prefixes into a file.
    """
    env = os.environ if env is None else env
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or stream is None:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        # No real descriptor (a StringIO, a closed stream) or a malformed variable.
        return False
