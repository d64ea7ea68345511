"""Health checks: a scheduler that probes every blueprint in the background, a cache
that answers at once, and cooldowns after rate limits (which :mod:`llmd.routing` reads).

Invariants:
- At most one probe per blueprint is in flight; a check that finds one running waits
  for its result instead of starting another.
- Probes run in the monitor's own nursery (once :meth:`HealthMonitor.run` has started),
  never in a request's task: :meth:`~HealthMonitor.status`, :meth:`~HealthMonitor.state`
  and :meth:`~HealthMonitor.cooldown` only read the cache, and a cancelled ``health.check``
  does not kill a probe that others wait for.
- Every blueprint's first probe starts when the monitor does, at most
  :data:`FIRST_PROBES_AT_ONCE` at a time; later probes are spread over the interval.
- A probe is bounded by its ``health.timeout``; past it the supervisor kills the
  probe's whole process group before the result is recorded.
- Scheduling reads trio's clock only (so tests run on a virtual one); the wall clock
  is read just for the timestamps shown to clients.
- A cooldown never overwrites the probed state: when it ends the blueprint shows its
  last probed state again, without a probe.
- A state change is logged once, at INFO, when it happens; a repeated result is not.
- A probe's result is recorded only while its blueprint is still the one probed; a
  reload that changes or removes a blueprint cancels its probe.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import trio

from llmd.config import Blueprint, Registry
from llmd.drivers import AttemptSpec
from llmd.drivers.oneshot import OneShot
from llmd.errors import ExecutableMissing, InvalidParams, LlmdError, UnknownBlueprint
from llmd.parsers import make_parser
from llmd.process.argv import Invocation, child_env, render
from llmd.process.supervisor import Attempt, Stream, describe_exit
from llmd.timestamps import rfc3339

log = logging.getLogger("llmd.health")

HealthState = Literal["healthy", "unhealthy", "missing", "cooling_down", "unknown"]

STARTUP_STAGGER = 10.0
"""Second probes come an interval plus up to this many seconds after the first, so that
blueprints probed together at start drift apart."""
FIRST_PROBES_AT_ONCE = 2
"""First probes (all due at start) that run at the same time; the rest wait for a slot.
Few: a CLI's start-up is CPU-bound (node), and the first runs start at the same moment."""
RELOAD_STAGGER = 1.0
"""Blueprints added or changed by a reload are probed within this many seconds."""
PROBE_OUTPUT_BYTES = 64 * 1024
PROBE_KILL_GRACE = 2.0
"""A probe has no work to save: it gets at most this long between SIGTERM and SIGKILL."""
MAX_COOLDOWN = 7 * 24 * 3600.0
"""Longest cooldown honoured (quota windows can be a week; more is a misread hint)."""
DETAIL_CHARS = 300

VERSION_RE = re.compile(r"\d+(?:\.\d+)+(?:[-+.\w]*)?")


@dataclass(frozen=True)
class _Outcome:
    state: HealthState
    latency_s: float | None = None
    version: str | None = None
    detail: str | None = None


class _Probe:
    """One probe in flight, which every interested check waits for."""

    def __init__(self, bp: Blueprint) -> None:
        self.bp = bp
        self.done = trio.Event()
        self.scope = trio.CancelScope()
        self.superseded = False


class _Entry:
    """The cached health of one blueprint."""

    def __init__(self, bp: Blueprint) -> None:
        self.bp = bp
        self.probed: HealthState = "unknown"
        self.checked_at: str | None = None
        self.latency_s: float | None = None
        self.version: str | None = None
        self.detail: str | None = None
        self.cool_end: float | None = None  # trio clock
        self.cool_until: str | None = None  # the same instant, wall clock, for clients
        self.due = math.inf
        self.first = False  # its first probe since start has yet to begin
        self.probe: _Probe | None = None
        self.shown: HealthState = "unknown"  # the state last logged


class HealthMonitor:
    """Probes blueprints, caches their health and keeps their cooldowns.

    Args:
        registry: The registry in force (replaced on reload with :meth:`set_registry`).
        environ: The daemon's environment, the base of every probe's.
        rng: Source of start-up jitter (seed it in tests).
        attempt_factory: Builds the supervised child of a probe, called like
            :class:`~llmd.process.supervisor.Attempt` (tests swap in a scripted stand-in).
        wall_clock: Seconds since the epoch, for ``checked_at`` and ``cooldown_until``.
    """

    def __init__(self, registry: Registry, environ: Mapping[str, str], *,
                 rng: random.Random | None = None,
                 attempt_factory: Callable[..., Attempt] = Attempt,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.environ = dict(environ)
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.attempt_factory = attempt_factory
        self.wall_clock = wall_clock
        self._entries: dict[str, _Entry] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._first_slots = trio.CapacityLimiter(FIRST_PROBES_AT_ONCE)
        self.set_registry(registry)

    # --- public interface --------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Probe every blueprint on its interval until cancelled.

        Cancelling it cancels the probes in flight (their process groups are killed).
        """
        if self._nursery is not None:
            raise RuntimeError("the health monitor is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                now = trio.current_time()
                for entry in self._entries.values():
                    # Health is wanted from the first second: every blueprint is due now.
                    entry.due = now
                    entry.first = True
                task_status.started()
                while True:
                    wake_at = self._tick(nursery)
                    with trio.move_on_at(wake_at):
                        await self._wake.wait()
                    self._wake = trio.Event()
            finally:
                self._nursery = None

    def status(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """The cached health of one blueprint or all, without probing.

        Args:
            name: A blueprint, or ``None`` for every one.

        Returns:
            ``{NAME: {"state", "checked_at", "latency_s", "version", "detail",
            "cooldown_until"}}``.

        Raises:
            UnknownBlueprint: No blueprint has that name.
        """
        now = trio.current_time()
        return {n: self._view(n, self._entries[n], now) for n in self._select(name)}

    async def check(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """Probe one blueprint or all (concurrently) now, then answer like :meth:`status`.

        A probe already in flight is waited for rather than doubled.

        Raises:
            UnknownBlueprint: No blueprint has that name.
        """
        names = self._select(name)
        async with trio.open_nursery() as local:
            for n in names:
                local.start_soon(self._await_probe, n, local)
        return self.status(name)

    def note_rate_limited(self, name: str, retry_after_s: float | None) -> None:
        """Cool a blueprint down after its run ran out of retries on a rate limit.

        Args:
            name: The blueprint.
            retry_after_s: How long the CLI said to wait; ``None`` (or a value that is
                not a positive number) means the blueprint's ``health.cooldown``.
        """
        entry = self._entries.get(name)
        if entry is None:
            # Removed by a reload while its run was going: nothing left to cool.
            log.debug("health: rate limit noted for %s, which is no longer configured", name)
            return
        seconds = entry.bp.health.cooldown
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            seconds = retry_after_s
        seconds = min(seconds, MAX_COOLDOWN)
        now = trio.current_time()
        if entry.cool_end is not None and entry.cool_end >= now + seconds:
            return  # an earlier, longer cooldown stands
        entry.cool_end = now + seconds
        entry.cool_until = rfc3339(self.wall_clock() + seconds)
        self._settle(name, entry, now)
        self._wake.set()

    def state(self, name: str) -> HealthState:
        """The state of one blueprint now, from the cache (an expired cooldown ends here).

        Raises:
            UnknownBlueprint: No blueprint has that name.
        """
        return self._settle(name, self._get(name), trio.current_time())

    def cooldown(self, name: str) -> tuple[str, float]:
        """When the cooldown of a cooling-down blueprint ends: the wall-clock time (RFC
        3339) and the seconds left.

        Raises:
            UnknownBlueprint: No blueprint has that name.
            ValueError: It is not cooling down.
        """
        entry = self._get(name)
        now = trio.current_time()
        if self._settle(name, entry, now) != "cooling_down":
            raise ValueError(f"{name} is not cooling down")
        assert entry.cool_end is not None and entry.cool_until is not None
        return entry.cool_until, round(max(entry.cool_end - now, 0.0), 3)

    def check_installed(self, name: str) -> None:
        """Refuse a blueprint whose program was missing at its last probe and still is.

        A lookup is a few ``stat`` calls, cheap enough per run; it spares a user who just
        installed the CLI from waiting up to an interval for the next probe (which a
        program found again brings forward).

        Raises:
            UnknownBlueprint: No blueprint has that name.
            ExecutableMissing: The program is still not found (-32002).
        """
        entry = self._get(name)
        if entry.probed == "missing":
            self._still_missing(name, entry, trio.current_time())

    def set_registry(self, registry: Registry) -> None:
        """Follow a (re)loaded registry.

        Removed blueprints are dropped (their probes cancelled), new ones start as
        ``unknown``, and new or changed ones are probed soon; unchanged ones keep
        their state and schedule. A cooldown survives a change: it belongs to the
        account behind the CLI, not to the configuration.
        """
        running = self._nursery is not None
        now = trio.current_time() if running else 0.0
        for name in [n for n in self._entries if n not in registry.blueprints]:
            entry = self._entries.pop(name)
            self._drop_probe(entry)
            log.debug("health: %s removed", name)
        for name, bp in registry.blueprints.items():
            old = self._entries.get(name)
            if old is not None and old.bp == bp:
                continue
            if old is None:
                entry = self._entries[name] = _Entry(bp)
            else:
                entry = old
                entry.bp = bp
                self._drop_probe(entry)
                log.debug("health: %s changed; probing it again", name)
            if running:
                entry.due = now + self._jitter(bp, RELOAD_STAGGER)
        self._entries = {name: self._entries[name] for name in registry.blueprints}
        self._wake.set()

    # --- scheduling --------------------------------------------------------

    def _tick(self, nursery: trio.Nursery) -> float:
        """Start the probes that are due and end expired cooldowns.

        Returns:
            When (trio clock) something is next due.
        """
        now = trio.current_time()
        wake_at = math.inf
        for name, entry in self._entries.items():
            self._settle(name, entry, now)
            if entry.probe is None and entry.due <= now:
                self._start_probe(nursery, name, entry)
            if entry.probe is None:
                wake_at = min(wake_at, entry.due)
            if entry.cool_end is not None:
                wake_at = min(wake_at, entry.cool_end)
        return wake_at

    def _jitter(self, bp: Blueprint, cap: float) -> float:
        return self.rng.uniform(0.0, min(bp.health.interval, cap))

    def _start_probe(self, nursery: trio.Nursery, name: str, entry: _Entry) -> _Probe:
        probe = _Probe(entry.bp)
        entry.probe = probe
        # Counted from the start, so a check resets the schedule and probes do not drift.
        entry.due = trio.current_time() + entry.bp.health.interval
        first, entry.first = entry.first, False
        if first:
            # Probed together at start; from now on apart.
            entry.due += self._jitter(entry.bp, STARTUP_STAGGER)
        nursery.start_soon(self._run_probe, name, entry, probe, first)
        return probe

    def _drop_probe(self, entry: _Entry) -> None:
        if entry.probe is not None:
            entry.probe.superseded = True
            entry.probe.scope.cancel()
            entry.probe = None

    async def _await_probe(self, name: str, local: trio.Nursery) -> None:
        while True:
            entry = self._entries.get(name)
            if entry is None:
                return
            probe = entry.probe
            if probe is None:
                probe = self._start_probe(self._nursery or local, name, entry)
            await probe.done.wait()
            if not probe.superseded:
                return

    async def _run_probe(self, name: str, entry: _Entry, probe: _Probe,
                         first: bool = False) -> None:
        try:
            outcome: _Outcome | None = None
            with probe.scope:
                try:
                    if first:
                        async with self._first_slots:
                            outcome = await self._probe(name, probe.bp)
                    else:
                        outcome = await self._probe(name, probe.bp)
                except Exception:
                    # A bug met while probing one blueprint must not end the scheduler,
                    # and with it the daemon: it is logged in full and shown as the
                    # blueprint's state, not swallowed. Cancellation is not an Exception.
                    log.exception("health: probing %s failed", name)
                    outcome = _Outcome("unhealthy",
                                       detail="internal error while probing (see llmd's log)")
            if outcome is not None and not probe.superseded and self._entries.get(name) is entry:
                self._record(name, entry, outcome)
        finally:
            if entry.probe is probe:
                entry.probe = None
            probe.done.set()
            self._wake.set()

    # --- probing -----------------------------------------------------------

    async def _probe(self, name: str, bp: Blueprint) -> _Outcome:
        health = bp.health
        env = child_env(self.environ, bp)
        path = env.get("PATH", os.defpath)
        if health.prompt is not None:
            try:
                inv = render(bp, name, health.prompt)
            except InvalidParams as exc:
                return _Outcome("unhealthy", detail=f"health.prompt: {exc.message}")
        else:
            inv = Invocation(list(health.command) or [bp.command[0], "--version"], None)
        program = shutil.which(inv.argv[0], path=path)
        if program is None:
            return _Outcome("missing", detail=_not_found(inv.argv[0], path))
        # A probe is an attempt like a run's, carried out by the one-shot driver; its
        # text goes nowhere, and a version probe's output is plain text.
        probe_bp = msgspec.structs.replace(
            bp, parser=bp.parser if health.prompt is not None else "text",
            max_output_bytes=PROBE_OUTPUT_BYTES,
            kill_grace=min(bp.kill_grace, PROBE_KILL_GRACE))
        driven = OneShot(self.attempt_factory).attempt(AttemptSpec(
            blueprint=name, bp=probe_bp,
            invocation=Invocation([program, *inv.argv[1:]], inv.stdin), env=env, cwd=None,
            on_spawn=_ignore_pid))
        attempt = driven.process
        verdict = None
        started = trio.current_time()
        with trio.move_on_after(health.timeout) as deadline:
            try:
                verdict = (await driven.run(_ignore_text)).verdict
            except LlmdError as exc:
                # `which` saw it, yet it cannot be executed (a bad interpreter line,
                # permissions, removed meanwhile): -32002 says exactly that.
                why = driven.spawn_error
                return _Outcome("missing", detail=f"cannot run {program}: "
                                f"{why.strerror or why if why is not None else exc.message}")
            except ValueError as exc:  # a NUL byte in the argv or env: a configuration error
                return _Outcome("unhealthy", detail=f"cannot run {program}: {exc}")
        latency = trio.current_time() - started
        said = _first_line(attempt.stderr_tail) or _first_line(attempt.stdout)
        if deadline.cancelled_caught:
            return _Outcome("unhealthy", latency,
                            detail=_join(f"timed out after {health.timeout:g} s", said))
        if verdict is not None:
            # A rate limit or login error in the output ended the probe at once.
            return _Outcome("unhealthy", latency,
                            detail=_join(verdict.reason or verdict.kind, said))
        if attempt.exit_code != 0:
            return _Outcome("unhealthy", latency,
                            detail=_join(describe_exit(attempt.exit_code), said))
        if health.prompt is None:
            return _Outcome("healthy", latency,
                            version=_version(attempt.stdout) or _version(attempt.stderr_tail))
        # A model's answer is no version number; only `expect` is checked.
        if health.expect is not None and not _answer_has(bp, attempt.stdout, health.expect):
            return _Outcome("unhealthy", latency,
                            detail=_join(f"the answer does not contain {health.expect!r}",
                                         _first_line(attempt.stdout)))
        return _Outcome("healthy", latency)

    def _record(self, name: str, entry: _Entry, outcome: _Outcome) -> None:
        entry.probed = outcome.state
        entry.checked_at = rfc3339(self.wall_clock())
        entry.latency_s = None if outcome.latency_s is None else round(outcome.latency_s, 3)
        entry.version = outcome.version
        entry.detail = outcome.detail
        self._settle(name, entry, trio.current_time())

    def _still_missing(self, name: str, entry: _Entry, now: float) -> None:
        """Raise ExecutableMissing unless the program has been installed since the probe.

        A lookup is a few ``stat`` calls, cheap enough per run; it spares a user who
        just installed the CLI from waiting up to an interval for the next probe.
        """
        env = child_env(self.environ, entry.bp)
        path = env.get("PATH", os.defpath)
        program = entry.bp.command[0]
        if shutil.which(program, path=path) is not None:
            if entry.probe is None:
                entry.due = min(entry.due, now)
                self._wake.set()
            return
        raise ExecutableMissing(f"{name!r}: {entry.detail or _not_found(program, path)}",
                                {"blueprint": name, "executable": program, "path": path})

    # --- the cache ---------------------------------------------------------

    def _get(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownBlueprint(f"unknown blueprint {name!r} (known: {known})",
                                   {"blueprint": name})
        return entry

    def _select(self, name: str | None) -> list[str]:
        if name is None:
            return list(self._entries)
        self._get(name)
        return [name]

    def _settle(self, name: str, entry: _Entry, now: float) -> HealthState:
        """End an expired cooldown, log a change of state, and return the state."""
        if entry.cool_end is not None and now >= entry.cool_end:
            entry.cool_end = None
            entry.cool_until = None
        state: HealthState = "cooling_down" if entry.cool_end is not None else entry.probed
        if state != entry.shown:
            if state == "cooling_down":
                why = f"rate limited until {entry.cool_until}"
            elif state == "healthy":
                why = f"version {entry.version}" if entry.version else ""
            else:
                # The PATH searched is for health.status, not the log: an environment
                # value never reaches the log at INFO.
                why = (entry.detail or "").split(_PATH_SEARCHED, 1)[0]
            log.info("health: %s is %s (was %s)%s", name, state, entry.shown,
                     f": {why}" if why else "")
            entry.shown = state
        return state

    def _view(self, name: str, entry: _Entry, now: float) -> dict[str, Any]:
        return {"state": self._settle(name, entry, now), "checked_at": entry.checked_at,
                "latency_s": entry.latency_s, "version": entry.version,
                "detail": entry.detail, "cooldown_until": entry.cool_until}


_PATH_SEARCHED = " (PATH searched: "


def _ignore_pid(pid: int) -> None:
    """A probe's process group is killed with the probe; nothing records it."""


async def _ignore_text(stream: Stream, text: str) -> None:
    """A probe's output streams nowhere."""


def _not_found(program: str, path: str) -> str:
    return f"{program!r} was not found or is not executable{_PATH_SEARCHED}{path})"


def _first_line(text: str) -> str:
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            return line[:DETAIL_CHARS]
    return ""


def _join(head: str, tail: str) -> str:
    return f"{head}: {tail}" if tail else head


def _version(text: str) -> str | None:
    match = VERSION_RE.search(text)
    # The pattern's tail is generous; a sentence's full stop is not part of a version.
    return match.group(0).rstrip(".-+") if match else None


def _answer_has(bp: Blueprint, stdout: str, expect: str) -> bool:
    if expect in stdout:
        return True
    # Structured output escapes the answer (quotes, non-ASCII); look at the text itself.
    parser = make_parser(bp.parser)
    parser.feed(stdout)
    _events, parsed = parser.finish()
    return expect in parsed.text
