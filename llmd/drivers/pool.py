"""The warm pool's policy: which idle process serves a run, which goes, when one starts.

Pure bookkeeping, no I/O and no clock of its own (every call is told ``now``), so it is
tested without processes; :mod:`llmd.drivers.warm` carries its decisions out.

A warm process is started ahead of need for one :class:`WarmKey`. It is *fresh* until it
serves a run, then *bound* to the conversation (``session``) that run gave it.

Invariants:
- Conversations never leak: a run without a session is only served by a fresh process;
  a run with a session only by the process bound to that session; a bound process is
  never used for anything else.
- At most ``warm_max`` processes in all (starting, idle or busy) and at most
  ``max_idle`` starting or idle per blueprint; room is made by ending the least recently
  used idle processes, never a busy one. Without room, nothing starts.
- An idle process unused for its blueprint's ``idle_ttl`` expires.
- At most one fresh process (starting or idle) per key.
- A slot taken out of the core (expired, evicted, retired, removed) never comes back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

SlotState = Literal["starting", "idle", "busy"]


@dataclass(frozen=True)
class WarmKey:
    """What a warm process was started for: a run matches it exactly or not at all.

    Attributes:
        blueprint: The blueprint's name.
        cwd: The working directory (None: the daemon's).
        model: The model asked for (None: the CLI's or the blueprint's default).
        argv: The whole argv the process runs with.
        env: The child's whole environment, sorted.
    """

    blueprint: str
    cwd: str | None
    model: str | None
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Limits:
    """One blueprint's bounds (``[blueprints.NAME.warm]``)."""

    max_idle: int = 2
    idle_ttl: float = 600.0


_ids = itertools.count(1)


@dataclass(eq=False)
class Slot:
    """One warm process as the policy sees it."""

    key: WarmKey
    state: SlotState = "starting"
    session: str | None = None
    """The conversation it is bound to; None while fresh."""
    last_used: float = 0.0
    retired: bool = False
    """Its blueprint changed while it was busy: it ends after its run."""
    id: int = field(default_factory=lambda: next(_ids))


class PoolCore:
    """The set of warm processes and the rules over them.

    Args:
        warm_max: Bound on all warm processes.
        limits: Per blueprint; a blueprint absent here keeps no warm process.
    """

    def __init__(self, warm_max: int, limits: dict[str, Limits] | None = None) -> None:
        self.warm_max = warm_max
        self.limits: dict[str, Limits] = dict(limits or {})
        self.slots: list[Slot] = []

    # --- serving a run -----------------------------------------------------

    def claim(self, key: WarmKey, session: str | None, now: float) -> Slot | None:
        """Take the idle process that may serve a run of ``key`` (resuming ``session``).

        Returns:
            The slot, now busy; None when no process may serve the run.
        """
        for slot in self.slots:
            if (slot.state == "idle" and not slot.retired and slot.key == key
                    and slot.session == session):
                slot.state = "busy"
                slot.last_used = now
                return slot
        return None

    def release(self, slot: Slot, session: str | None, now: float) -> bool:
        """A busy process finished its run well and holds conversation ``session``.

        Returns:
            Whether it stays (bound to ``session``); False: it is out of the pool and
            must be ended (no session to bind it to, or its blueprint changed).
        """
        if slot not in self.slots:
            return False
        if session is None or slot.retired or slot.key.blueprint not in self.limits:
            self.remove(slot)
            return False
        slot.state, slot.session, slot.last_used = "idle", session, now
        # Another idle process of this blueprint may be one too many now.
        over = self._idle_count(slot.key.blueprint) - self.limits[slot.key.blueprint].max_idle
        if over > 0:
            for victim in self._lru_idle(slot.key.blueprint, exclude=slot)[:over]:
                self.remove(victim)
        return slot in self.slots

    def remove(self, slot: Slot) -> None:
        """Take a slot out (its process died, hung, or was killed)."""
        if slot in self.slots:
            self.slots.remove(slot)

    # --- starting ----------------------------------------------------------

    def plan_start(self, key: WarmKey, now: float) -> tuple[Slot, list[Slot]] | None:
        """Decide whether a fresh process for ``key`` starts now.

        Returns:
            The new slot (``starting``) and the idle slots evicted to make room (already
            out of the core; their processes must be ended), or None: none starts.
        """
        limits = self.limits.get(key.blueprint)
        if limits is None or limits.max_idle < 1 or self.warm_max < 1:
            return None
        if any(s.key == key and s.session is None and s.state != "busy" and not s.retired
               for s in self.slots):
            return None  # one fresh process per key is enough
        evict: list[Slot] = []
        own = self._lru_idle(key.blueprint)
        need_own = self._idle_count(key.blueprint) + 1 - limits.max_idle
        if need_own > 0:
            if len(own) < need_own:
                return None
            evict.extend(own[:need_own])
        need_all = len(self.slots) - len(evict) + 1 - self.warm_max
        if need_all > 0:
            others = [s for s in self._lru_idle(None) if s not in evict]
            if len(others) < need_all:
                return None
            evict.extend(others[:need_all])
        for slot in evict:
            self.remove(slot)
        slot = Slot(key, "starting", last_used=now)
        self.slots.append(slot)
        return slot, evict

    def started(self, slot: Slot, now: float) -> bool:
        """A starting process is ready; False when it was taken out meanwhile."""
        if slot not in self.slots or slot.state != "starting":
            return False
        slot.state, slot.last_used = "idle", now
        return True

    # --- time and configuration -------------------------------------------

    def expire(self, now: float) -> list[Slot]:
        """Take out the idle processes unused for their ``idle_ttl``."""
        gone = [s for s in self.slots if s.state == "idle" and now >= self._expiry(s)]
        for slot in gone:
            self.remove(slot)
        return gone

    def next_expiry(self) -> float:
        """When :meth:`expire` next has something to do (``inf``: never, as things are)."""
        return min((self._expiry(s) for s in self.slots if s.state == "idle"),
                   default=float("inf"))

    def configure(self, warm_max: int, limits: dict[str, Limits],
                  changed: set[str]) -> list[Slot]:
        """Put new bounds in force after a reload.

        Args:
            warm_max: The new global bound.
            limits: The blueprints that keep warm processes, and their bounds.
            changed: Blueprints whose definition changed: none of their processes is
                used again.

        Returns:
            The idle and starting slots taken out (end their processes); busy ones of a
            changed blueprint end after their run.
        """
        self.warm_max, self.limits = warm_max, dict(limits)
        gone: list[Slot] = []
        for slot in list(self.slots):
            name = slot.key.blueprint
            if name in changed or name not in limits:
                if slot.state == "busy":
                    slot.retired = True
                else:
                    gone.append(slot)
                    self.remove(slot)
        # Fewer allowed than there are: the least recently used idle ones go.
        over = len(self.slots) - warm_max
        if over > 0:
            for slot in self._lru_idle(None)[:over]:
                gone.append(slot)
                self.remove(slot)
        return gone

    def close(self) -> list[Slot]:
        """Take every slot out (shutdown); busy ones are ended by their runs' end."""
        gone = list(self.slots)
        self.slots.clear()
        self.limits = {}
        return gone

    # --- views ---------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """``processes``, ``idle`` and ``busy`` (a starting one is neither)."""
        return {"processes": len(self.slots),
                "idle": sum(s.state == "idle" for s in self.slots),
                "busy": sum(s.state == "busy" for s in self.slots)}

    def _expiry(self, slot: Slot) -> float:
        limits = self.limits.get(slot.key.blueprint)
        return slot.last_used + (limits.idle_ttl if limits is not None else 0.0)

    def _idle_count(self, blueprint: str) -> int:
        return sum(s.key.blueprint == blueprint and s.state != "busy" for s in self.slots)

    def _lru_idle(self, blueprint: str | None, exclude: Slot | None = None) -> list[Slot]:
        """Idle slots (of ``blueprint``, or all), least recently used first."""
        idle = [s for s in self.slots if s.state == "idle" and s is not exclude
                and (blueprint is None or s.key.blueprint == blueprint)]
        return sorted(idle, key=lambda s: s.last_used)
