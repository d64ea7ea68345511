"""The warm driver: a prompt handed to a CLI started ahead of need.

``claude -p --input-format stream-json --output-format stream-json --verbose`` waits for
user messages on stdin, one JSON line each, and answers each with its usual events up to
a ``result``; it exits when stdin closes. Started before a run is asked for, it answers
in a tenth of a one-shot start-up. The pool (:class:`WarmPool`) keeps such processes, by
the policy of :mod:`llmd.drivers.pool`, in a nursery of its own; a run that finds a
matching idle one (:class:`WarmAttempt`) writes its prompt to it, and runs one-shot
(:mod:`llmd.drivers.oneshot`) otherwise.

Invariants:
- Every warm process leads a process group of its own, which the pool kills when the
  process is dropped (expired, evicted, reloaded, shut down, cancelled, misbehaving) and
  always before its task ends; the groups alive are listed in the daemon's
  :class:`~llmd.process.groups.OwnedGroups`, so a daemon started after a crash kills what
  its predecessor left.
- A process serves one run at a time and never two conversations (see the pool's
  invariants).
- Warmth never fails a run: a process found dead, silent after the prompt
  (``HANDOFF_TIMEOUT``), or printing what is not the protocol before any text streamed is
  killed and the run goes one-shot. After text streamed, its death ends the run as a
  crash would (exit status, -32005).
- Cancellation or a rate-limit signal kills the process (it is not reused); the run's
  own outcome is as a one-shot run's.
- ``cost_usd`` is the turn's: the CLI reports a total for the process's life.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable

import trio

from llmd.config import Blueprint, Registry
from llmd.drivers import AttemptProcess, AttemptSpec, FollowCurrent, Outcome, TextSink
from llmd.drivers.oneshot import OneShot, OneShotAttempt
from llmd.drivers.pool import Limits, PoolCore, Slot, WarmKey
from llmd.parsers import Event, Signal, make_parser
from llmd.parsers.base import LineSplitter
from llmd.parsers.ratelimit import Verdict
from llmd.process import argv as argv_mod
from llmd.process import groups
from llmd.process.supervisor import StderrTail

log = logging.getLogger("llmd.warm")

# After the prompt is written, how long a warm process may stay silent before it is deemed
# hung (claude answers with system/init at once, before it asks the provider).
HANDOFF_TIMEOUT = 10.0
# How long a killed group may take to go, beyond its kill grace.
KILL_LIMIT = 2.0
_LINE_START = '{"type":"'


def warm_key(spec: AttemptSpec) -> WarmKey | None:
    """The key of the process that may serve ``spec``; None when its blueprint keeps none.

    The argv is the run's own (its ``edit_args`` included) without the resumed session (a
    warm process is started fresh, then bound to the conversation it served) and with
    ``warm.args``.
    """
    bp = spec.bp
    if not bp.warm.enabled or bp.prompt != "stdin" or bp.warm.protocol != "stream-json":
        return None  # (agents: llmd.drivers.agents)
    inv = argv_mod.render(bp, spec.blueprint, "", model=spec.model, edit=spec.edit)
    argv = (spec.invocation.argv[0], *inv.argv[1:], *bp.warm.args)
    return WarmKey(spec.blueprint, spec.cwd, spec.model, argv, tuple(sorted(spec.env.items())))


def user_line(prompt: str) -> bytes:
    """One stream-json user message (ASCII escapes: any prompt, one line)."""
    message = {"type": "user",
               "message": {"role": "user", "content": [{"type": "text", "text": prompt}]}}
    return (json.dumps(message, ensure_ascii=True) + "\n").encode("ascii")


class WarmProcess:
    """One CLI started ahead of need, in a process group of its own.

    Its stdout comes out of :attr:`chunks` one decoded piece at a time (nothing is read
    while no run asks: back-pressure reaches the CLI); its stderr tail is kept.
    """

    def __init__(self, slot: Slot, bp: Blueprint, on_gone: Callable[[WarmProcess], None]
                 ) -> None:
        self.slot = slot
        self.bp = bp
        self.on_gone = on_gone
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.stderr = StderrTail()
        self.cost_total = 0.0
        self.scope = trio.CancelScope()
        self.dead = trio.Event()
        self._send, self.chunks = trio.open_memory_channel[str](0)
        self._stdin: trio.abc.SendStream | None = None

    def kill(self) -> None:
        """End the process group (the task that runs it does, at once)."""
        self.scope.cancel()

    async def kill_and_wait(self) -> None:
        """End the process group and wait (bounded) until it is gone."""
        self.kill()
        with trio.CancelScope(shield=True), \
                trio.move_on_after(2 * self.bp.kill_grace + KILL_LIMIT):
            await self.dead.wait()

    async def send(self, data: bytes) -> None:
        """Write to its stdin.

        Raises:
            trio.BrokenResourceError: It exited or closed stdin.
        """
        if self._stdin is None:
            raise trio.BrokenResourceError("not running")
        try:
            await self._stdin.send_all(data)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("stdin closed") from None

    async def run(self, key: WarmKey, on_started: Callable[[WarmProcess], None]) -> None:
        """Start the process and keep it until it exits or is killed.

        Raises:
            OSError: It could not be started.
        """
        pidfd = -1
        proc: trio.Process | None = None
        try:
            with self.scope:
                proc = await trio.lowlevel.open_process(
                    list(key.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=dict(key.env), cwd=key.cwd,
                    start_new_session=True)
                self.pid = proc.pid
                pidfd = groups.open_pidfd(proc.pid)
                self._stdin = proc.stdin
                on_started(self)
                try:
                    async with trio.open_nursery() as nursery:
                        assert proc.stdout is not None and proc.stderr is not None
                        nursery.start_soon(self._pump_stdout, proc.stdout)
                        nursery.start_soon(self._pump_stderr, proc.stderr)
                        await groups.leader_exited(proc, pidfd)
                        groups.signal_group(proc.pid, signal.SIGKILL)
                        nursery.cancel_scope.cancel()
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await groups.end_group(proc, pidfd, self.bp.kill_grace)
                    raise
        finally:
            with trio.CancelScope(shield=True):
                if proc is not None:
                    groups.signal_group(proc.pid, signal.SIGKILL)
                    self.exit_code = await proc.wait()
                    await groups.close_streams(proc)
                if pidfd >= 0:
                    os.close(pidfd)
                self._send.close()
                self.dead.set()
                self.on_gone(self)

    async def _pump_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async with self._send:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                text = decoder.decode(chunk, final=not chunk)
                if text:
                    try:
                        await self._send.send(text)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if not chunk:
                    return

    async def _pump_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            self.stderr.feed(chunk)
            if not chunk:
                return


class WarmPool:
    """The warm processes of a daemon, run in a nursery of the pool's own.

    Args:
        registry: The registry in force (see :meth:`set_registry`).
        owned: Where the live process groups are listed for crash recovery (shared with
            the agents; None: a list of the pool's own, in memory).
        clock: The time the policy sees.
        process_factory: Makes a warm process, called like :class:`WarmProcess` (tests
            swap in a scripted stand-in).
    """

    def __init__(self, registry: Registry, owned: groups.OwnedGroups | None = None, *,
                 clock: Callable[[], float] = trio.current_time,
                 process_factory: Callable[..., WarmProcess] | None = None) -> None:
        self.core = PoolCore(registry.daemon.warm_max, _limits(registry))
        self.owned = owned if owned is not None else groups.OwnedGroups(None)
        self.clock = clock
        self.blueprints = dict(registry.blueprints)
        self.processes: dict[int, WarmProcess] = {}
        self.process_factory = process_factory or WarmProcess
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is serving (no warm process exists otherwise)."""
        return self._nursery is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the warm processes, ending the expired ones, until cancelled (then every
        process is killed before this returns)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    self._wake = trio.Event()
                    with trio.move_on_at(self.core.next_expiry()):
                        await self._wake.wait()
                    for slot in self.core.expire(self.clock()):
                        log.debug("warm process of %s expired", slot.key.blueprint)
                        self._end(slot)
        finally:
            self._nursery = None
            self.core.close()

    # --- serving runs --------------------------------------------------------

    def claim(self, key: WarmKey, session: str | None) -> WarmProcess | None:
        """The idle process that may serve a run of ``key`` (resuming ``session``), now
        busy; None when there is none."""
        if self._nursery is None:
            return None
        slot = self.core.claim(key, session, self.clock())
        if slot is None:
            return None
        process = self.processes.get(slot.id)
        if process is None or process.dead.is_set():
            self.core.remove(slot)
            return None
        return process

    def release(self, process: WarmProcess, session: str | None) -> None:
        """A run ended well on ``process``, which now holds ``session``'s conversation."""
        if not self.core.release(process.slot, session, self.clock()):
            process.kill()
        self._reap()
        self._wake.set()

    def discard(self, process: WarmProcess) -> None:
        """Drop a process that must not serve again (killed by its task at once)."""
        self.core.remove(process.slot)
        process.kill()
        self._wake.set()

    def replenish(self, key: WarmKey) -> bool:
        """Start a fresh process for ``key`` if the policy allows; return at once.

        Returns:
            Whether one is starting (False: one is there already, or no room).
        """
        bp = self.blueprints.get(key.blueprint)
        if self._nursery is None or bp is None or not bp.warm.enabled:
            return False
        plan = self.core.plan_start(key, self.clock())
        if plan is None:
            return False
        slot, evicted = plan
        for victim in evicted:
            log.debug("warm process of %s evicted", victim.key.blueprint)
            self._end(victim)
        process = self.process_factory(slot, bp, self._gone)
        self.processes[slot.id] = process
        self._nursery.start_soon(self._keep, key, process)
        self._wake.set()
        return True

    async def _keep(self, key: WarmKey, process: WarmProcess) -> None:
        try:
            await process.run(key, self._started)
        except OSError as exc:
            log.warning("warm process of %s could not start: %s", key.blueprint,
                        exc.strerror or exc)

    def _started(self, process: WarmProcess) -> None:
        if not self.core.started(process.slot, self.clock()):
            process.kill()  # dropped while it started
        if process.pid is not None:
            self.owned.add(process.pid)
        self._wake.set()  # its idle_ttl counts from now

    def _gone(self, process: WarmProcess) -> None:
        self.core.remove(process.slot)
        self.processes.pop(process.slot.id, None)
        self.owned.discard(process.pid)
        self._wake.set()

    def _end(self, slot: Slot) -> None:
        process = self.processes.get(slot.id)
        if process is not None:
            process.kill()

    def _reap(self) -> None:
        """Kill the processes the core no longer holds (evicted while releasing)."""
        held = {slot.id for slot in self.core.slots}
        for slot_id, process in list(self.processes.items()):
            if slot_id not in held and process.slot.state != "busy":
                process.kill()

    # --- configuration and views ---------------------------------------------

    def set_registry(self, registry: Registry) -> None:
        """Put a reloaded registry in force: processes of a changed or removed blueprint
        are not used again (idle ones end now, busy ones after their run)."""
        changed = {name for name, bp in self.blueprints.items()
                   if registry.blueprints.get(name) != bp}
        self.blueprints = dict(registry.blueprints)
        for slot in self.core.configure(registry.daemon.warm_max, _limits(registry), changed):
            self._end(slot)
        self._wake.set()

    def close(self) -> None:
        """End every idle process now (shutdown); a busy one ends with its run."""
        for slot in self.core.close():
            if slot.state != "busy":
                self._end(slot)
        self._wake.set()

    def info(self) -> dict[str, int]:
        """Counts of ``daemon.info``'s ``warm``: processes, idle, busy."""
        return self.core.counts()

    def pgids(self) -> list[int]:
        """The process groups of the warm processes (for their memory)."""
        return [p.pid for p in self.processes.values() if p.pid is not None]


def _line_type(line: str) -> str | None:
    """The ``type`` of a stream-json line; None when it is not one (off the protocol)."""
    if line.startswith(_LINE_START):
        end = line.find('"', len(_LINE_START), len(_LINE_START) + 64)
        if end > 0:
            return line[len(_LINE_START):end]
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


def _limits(registry: Registry) -> dict[str, Limits]:
    return {name: Limits(bp.warm.max_idle, bp.warm.idle_ttl)
            for name, bp in registry.blueprints.items() if bp.warm.enabled}


# --- the driver ----------------------------------------------------------------------


class WarmDriver:
    """Attempts served by a warm process when one matches, one-shot otherwise.

    Args:
        pool: The warm processes.
        oneshot: The driver for runs no warm process serves.
    """

    def __init__(self, pool: WarmPool, oneshot: OneShot) -> None:
        self.pool = pool
        self.oneshot = oneshot

    def attempt(self, spec: AttemptSpec) -> WarmAttempt:
        """Prepare one attempt."""
        return WarmAttempt(spec, self.pool, self.oneshot)


class WarmAttempt:
    """One attempt: a turn on a warm process, or a one-shot process."""

    def __init__(self, spec: AttemptSpec, pool: WarmPool, oneshot: OneShot) -> None:
        self.spec = spec
        self.pool = pool
        self.oneshot = oneshot
        self.key = warm_key(spec)
        self._current: AttemptProcess = _Turn(spec)

    @property
    def process(self) -> AttemptProcess:
        """The attempt's CLI: a view that follows the turn or the one-shot process."""
        return FollowCurrent(lambda: self._current)

    async def run(self, on_text: TextSink) -> Outcome:
        """Run the prompt on a warm process if one matches (else, or if it fails before
        any text streamed, one-shot), then keep a fresh process for the next run."""
        key = self.key
        outcome: Outcome | None = None
        if key is not None:
            process = self.pool.claim(key, self.spec.session)
            if process is not None:
                outcome = await self._turn(process, on_text)
        if outcome is None:
            attempt: OneShotAttempt = self.oneshot.attempt(self.spec)
            self._current = attempt.process
            outcome = await attempt.run(on_text)
        if (key is not None and outcome.verdict is None and outcome.process.exit_code == 0
                and not outcome.parsed.error):
            self.pool.replenish(key)
        return outcome

    async def _turn(self, process: WarmProcess, on_text: TextSink) -> Outcome | None:
        turn = _Turn(self.spec, process)
        self._current = turn
        try:
            outcome = await turn.run(on_text)
        except BaseException:
            self.pool.discard(process)
            await process.kill_and_wait()
            raise
        if outcome is None:
            log.info("warm process of %s %s; the run goes one-shot", self.spec.blueprint,
                     turn.failure)
            self.pool.discard(process)
            await process.kill_and_wait()
            return None
        if outcome.verdict is not None or turn.exit_code != 0 or outcome.parsed.error:
            # A failed turn leaves a conversation no later run should continue here.
            self.pool.discard(process)
            await process.kill_and_wait()
        else:
            self.pool.release(process, outcome.parsed.session)
        return outcome



class _Turn:
    """One prompt and its answer on a warm process; what the manager reads of the CLI.

    ``exit_code`` is 0 once the answer's ``result`` came (the process lives on), the
    process's status if it died, None while it runs or when it was killed.
    """

    def __init__(self, spec: AttemptSpec, process: WarmProcess | None = None) -> None:
        self.spec = spec
        self._process = process
        self.exit_code: int | None = None
        self._stderr_from = process.stderr.written if process is not None else 0
        self.truncated = False
        self.duration = 0.0
        self._kept: list[str] = []
        self._room = spec.bp.max_output_bytes
        self._streamed = 0
        self.failure = ""
        self._early: Verdict | None = None

    @property
    def stderr_tail(self) -> str:
        """What the process wrote to stderr during this turn (as far as its tail keeps)."""
        if self._process is not None:
            return self._process.stderr.since(self._stderr_from)
        return ""

    @property
    def stdout(self) -> str:
        return "".join(self._kept)

    def _keep(self, line: str) -> None:
        if self.truncated:
            return
        data = line.encode("utf-8", "surrogatepass")
        if len(data) > self._room:
            self._kept.append(data[:self._room].decode("utf-8", "ignore"))
            self._room = 0
            self.truncated = True
        else:
            self._kept.append(line)
            self._room -= len(data)

    async def run(self, on_text: TextSink) -> Outcome | None:
        """Hand the prompt over and read the answer up to its ``result``.

        Returns:
            The outcome; None when the process failed before any text streamed (dead,
            hung, or off the protocol), and the run should go one-shot.
        """
        process, spec = self._process, self.spec
        assert process is not None
        started = time.monotonic()
        parser = make_parser(spec.bp.parser)
        lines = LineSplitter()
        prompt = (spec.invocation.stdin or b"").decode("utf-8", "surrogatepass")
        if process.pid is not None:
            spec.on_spawn(process.pid)
        # A process that does not read its stdin is hung as surely as a silent one.
        with trio.move_on_after(HANDOFF_TIMEOUT) as handoff:
            try:
                await process.send(user_line(prompt))
            except (trio.BrokenResourceError, OSError):
                self.failure = "was gone"
                return None
        if handoff.cancelled_caught:
            self.failure = f"did not read the prompt within {HANDOFF_TIMEOUT:g} s"
            return None
        answered = False
        ended = False
        try:
            while not answered and not ended and self._early is None:
                text: str | None = None
                # Only the first output is bounded: after it, the run's deadline is.
                with trio.move_on_after(HANDOFF_TIMEOUT if not self._kept else math.inf):
                    try:
                        text = await process.chunks.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        ended = True
                if ended:
                    break
                if text is None:
                    self.failure = f"was silent {HANDOFF_TIMEOUT:g} s after the prompt"
                    return None
                for line in lines.feed(text):
                    if not line.strip():
                        continue
                    kind = _line_type(line)
                    if kind is None:
                        if not self._streamed:
                            self.failure = "printed something that is not stream-json"
                            return None
                        ended = True  # off the protocol mid-answer: a crash
                        break
                    framed = line + "\n"
                    self._keep(framed)
                    await self._forward(parser.feed(framed), on_text)
                    if kind == "result" or self._early is not None:
                        answered = self._early is None
                        break
        finally:
            self.duration = time.monotonic() - started
        if ended and not self._streamed and self._early is None:
            self.failure = "exited before answering"
            return None
        events, parsed = parser.finish()
        if len(parsed.text) > spec.bp.max_output_bytes:
            parsed.text = parsed.text[:spec.bp.max_output_bytes]
            self.truncated = True
        if answered:
            self.exit_code = 0
            if parsed.cost_usd is not None:
                # The CLI reports what the process cost so far; the run cost the step.
                total = parsed.cost_usd
                parsed.cost_usd = round(max(total - process.cost_total, 0.0), 9)
                process.cost_total = total
        elif ended:
            await process.kill_and_wait()
            self.exit_code = process.exit_code
        if self._early is None:
            await self._forward(events, on_text)
        return Outcome(self, parsed, self._early, warm=True)

    async def _forward(self, events: list[Event], on_text: TextSink) -> None:
        for event in events:
            if isinstance(event, Signal):
                if event.verdict.kind != "ok" and self._early is None:
                    self._early = event.verdict
                continue
            text = event.text
            if not text:
                continue
            room = self.spec.bp.max_output_bytes - self._streamed
            if len(text) > room:
                text = text[:room]
                if not text:
                    continue
            self._streamed += len(text)
            await on_text("stdout", text)
