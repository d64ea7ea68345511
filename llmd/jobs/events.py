"""Job events: every state change of every job, for the connections that watch them.

``jobs.watch`` subscribes a connection; the job manager publishes each state change here;
a forwarding task per subscription sends them as ``jobs.event`` notifications.

Invariants:
- Publishing never waits and never holds more than ``WATCH_QUEUE`` events per watcher: a
  watcher whose queue is full (its client does not read) is dropped and its connection
  closed, so a client that never reads cannot grow the daemon or slow a job.
- Events of one watcher go out in the order the changes happened.
- A watcher ends with ``jobs.unwatch``, with its connection, or when it is dropped; a
  watcher whose connection has closed is forgotten at the next event at the latest.
- An event carries no prompt and no output: only the job's id, blueprint, state, time and
  attempt (and the delay of a retry, the error code of a failure).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from llmd.jobs.state import JobState

log = logging.getLogger("llmd.jobs")

# Events a watcher may have waiting; a state change is a few hundred bytes, so this is
# well under a megabyte per connection even when it is full.
WATCH_QUEUE = 1024
EVENT = "jobs.event"

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(eq=False)
class Watcher:
    """One ``jobs.watch`` subscription.

    Attributes:
        number: Its id on the wire (``jobs.unwatch`` names it).
        states: The states it wants (empty: all).
        blueprint: The blueprint it wants (None: all).
        alive: Whether its connection is still open.
        abort: Closes its connection (when it is dropped for not reading).
    """

    number: int
    states: frozenset[str]
    blueprint: str | None
    alive: Callable[[], bool]
    abort: Callable[[], None]
    send: trio.MemorySendChannel[dict[str, Any]] = field(repr=False)
    receive: trio.MemoryReceiveChannel[dict[str, Any]] = field(repr=False)

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether the event passes the watcher's filters."""
        return (not self.states or event["state"] in self.states) and \
            (self.blueprint is None or event["blueprint"] == self.blueprint)


class JobEvents:
    """The watchers of the daemon and the publishing of state changes to them."""

    def __init__(self) -> None:
        self._watchers: dict[int, Watcher] = {}
        self._numbers = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.dropped = 0
        """Watchers dropped for not reading (since start)."""

    @property
    def watchers(self) -> int:
        """How many watchers there are."""
        return len(self._watchers)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Hold the forwarding tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def watch(self, notify: Notify, *, states: frozenset[str], blueprint: str | None,
              alive: Callable[[], bool], abort: Callable[[], None]) -> int:
        """Subscribe a connection; returns the watch's number.

        Raises:
            RuntimeError: :meth:`serve` is not running.
        """
        if self._nursery is None:
            raise RuntimeError("job events are not being served (see JobEvents.serve)")
        send, receive = trio.open_memory_channel[dict[str, Any]](WATCH_QUEUE)
        watcher = Watcher(next(self._numbers), states, blueprint, alive, abort, send, receive)
        self._watchers[watcher.number] = watcher
        self._nursery.start_soon(self._forward, watcher, notify)
        return watcher.number

    def unwatch(self, number: int) -> bool:
        """End a watch; False when there was none by that number."""
        watcher = self._watchers.pop(number, None)
        if watcher is None:
            return False
        watcher.send.close()
        return True

    def publish(self, job: str, blueprint: str, state: JobState, at: str,
                **extra: Any) -> None:
        """Tell every interested watcher of a state change (never waits)."""
        if not self._watchers:
            return
        event = {"job": job, "blueprint": blueprint, "state": state, "at": at, **extra}
        for watcher in list(self._watchers.values()):
            if not watcher.alive():
                self.unwatch(watcher.number)
                continue
            if not watcher.wants(event):
                continue
            try:
                watcher.send.send_nowait(event)
            except trio.WouldBlock:
                self._drop(watcher)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self.unwatch(watcher.number)

    def _drop(self, watcher: Watcher) -> None:
        self.unwatch(watcher.number)
        self.dropped += 1
        log.warning("jobs.watch %d: the client read none of %d events; its connection is "
                    "closed", watcher.number, WATCH_QUEUE)
        watcher.abort()

    async def _forward(self, watcher: Watcher, notify: Notify) -> None:
        async with watcher.receive:
            async for event in watcher.receive:
                await notify(EVENT, {**event, "watch": watcher.number})
                if not watcher.alive():
                    self.unwatch(watcher.number)
                    return
