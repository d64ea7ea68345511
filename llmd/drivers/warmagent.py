"""Drivers that keep one agent process and open a session per run: gemini over ACP,
codex over its app server.

An :class:`Agent` is one long-lived process (:class:`~llmd.drivers.agentproc.AgentProcess`)
and its protocol client; it serves turns for any cwd, up to ``max_concurrency`` at once.
:class:`AgentAttempt` is one run's turn on it, with the driver interface's
:class:`~llmd.drivers.Outcome`.

Invariants:
- A run without ``session`` opens a fresh session (thread), so the provider sees only
  that run's prompt; a run with ``session`` continues that conversation (gemini:
  ``session/load`` where advertised; codex: ``thread/resume``) or, when the agent cannot,
  raises :class:`WarmUnavailable` so that it runs one-shot.
- Before any text of the run streamed, a dead, stalled or out-of-protocol agent raises
  :class:`WarmUnavailable` (the run may go one-shot); after, the outcome is a failure
  whose reason says why. Either way that process is killed and never used again.
- Cancelling a turn asks the agent to stop it (``session/cancel``, ``turn/interrupt``)
  and kills the process group when the turn has not ended within ``kill_grace``.
- A provider error ends the attempt with its verdict (a 429 is a rate limit, with
  ``retry_after_s`` when the error says); codex's own retries after a rate limit are
  cut short, as in one-shot runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import trio

from llmd.drivers import Outcome, TextSink, acp, codexapp
from llmd.drivers.agentproc import AgentProcess
from llmd.drivers.rpcpeer import ProtocolError, Response, decode_result
from llmd.parsers import ParseResult
from llmd.parsers.ratelimit import Verdict, verdict_from_message
from llmd.process.groups import OwnedGroups

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Dialect = Literal["acp", "codex-app"]

# How long an agent may take to answer initialize (gemini needs ~3 s quiet, 11 s busy).
START_TIMEOUT = 60.0
# How long a session or thread may take to open.
OPEN_TIMEOUT = 30.0


class WarmUnavailable(Exception):
    """The warm agent cannot serve this run; nothing of it streamed, so it may go one-shot."""


@dataclass(frozen=True)
class TurnSpec:
    """One run's turn.

    Attributes:
        prompt: The whole prompt.
        cwd: The session's working directory (absolute).
        model: The model (codex: per thread; gemini: part of the process's argv).
        session: A session (thread) to continue, or None for a fresh one.
        sandbox: codex's sandbox mode for this run's thread (None: the agent's).
        max_output_bytes: How much answer text is kept and streamed.
        kill_grace: Seconds a cancelled turn has to end before its process is killed.
    """

    prompt: str
    cwd: str
    model: str | None = None
    session: str | None = None
    sandbox: str | None = None
    max_output_bytes: int = 16 * 1024 * 1024
    kill_grace: float = 5.0


@dataclass
class TurnProcess:
    """What is known of a turn, in the shape of an attempt's process."""

    exit_code: int | None = None
    stderr_tail: str = ""
    truncated: bool = False
    duration: float = 0.0
    pieces: list[str] = field(default_factory=list)
    """The answer text kept so far, as it came."""

    @property
    def stdout(self) -> str:
        """The answer text kept so far."""
        return "".join(self.pieces)


@dataclass
class _Turn:
    """What one turn in flight has seen."""

    session: str
    turn_id: str | None = None
    rid: int | None = None
    chars: int = 0
    whole: str | None = None
    usage: dict[str, int] | None = None
    verdict: Verdict | None = None
    done: trio.Event = field(default_factory=trio.Event)
    wake: trio.Event = field(default_factory=trio.Event)
    """Set when the turn is done or its agent died."""
    sink: Callable[[str], None] | None = None

    def end(self) -> None:
        """The turn is over."""
        self.done.set()
        self.wake.set()


class _Call:
    """One request of llmd's waiting for its answer."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: Response | None = None


class Agent:
    """One agent process, its protocol client, and the turns it serves.

    Args:
        dialect: ``acp`` (``gemini --acp``) or ``codex-app`` (``codex app-server``).
        argv: The agent's argv.
        env: Its environment.
        kill_grace: Seconds between SIGTERM and SIGKILL.
        max_concurrency: Turns served at once.
        allow_kinds: Tool kinds the permission policy allows (default: none).
        approval: codex's approval policy for threads.
        sandbox: codex's sandbox mode for threads.
        start_timeout: Seconds the agent has to answer ``initialize``.
        on_spawn: Told the process's pid.
        on_exit: Told the process's pid once its group is ended.
    """

    def __init__(self, dialect: Dialect, argv: Sequence[str], *, env: Mapping[str, str],
                 kill_grace: float = 5.0, max_concurrency: int = 4,
                 allow_kinds: frozenset[str] = frozenset(), approval: str = "never",
                 sandbox: str = "read-only", start_timeout: float = START_TIMEOUT,
                 on_spawn: Callable[[int], None] | None = None,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self.dialect = dialect
        self.start_timeout = start_timeout
        self.acp = acp.AcpClient(acp.PermissionPolicy(allow_kinds))
        self.codex = codexapp.CodexAppClient(codexapp.ApprovalPolicy(allow_kinds))
        self.approval = approval
        self.sandbox = sandbox
        self.process = AgentProcess(argv, env=env, cwd=None, kill_grace=kill_grace,
                                    on_line=self._line, on_spawn=on_spawn, on_exit=on_exit)
        self.slots = trio.Semaphore(max_concurrency)
        self.load_session = False
        self.sessions: set[str] = set()
        """Sessions (threads) opened or loaded in this process."""
        self._threads: dict[str, tuple[str, str]] = {}
        """codex: each thread's cwd and sandbox mode, as its next turn runs."""
        self.turns_served = 0
        self.replies: list[str] = []
        """What llmd answered to the agent's own requests (the last few)."""
        self.ready = trio.Event()
        self._calls: dict[int, _Call] = {}
        self._turns: dict[str, _Turn] = {}
        self._loading: set[str] = set()
        self._outbox: list[bytes] = []
        self._outbox_ready = trio.Event()

    @property
    def busy(self) -> int:
        """Turns in flight."""
        return len(self._turns)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Start the process, initialize it, and serve it until it dies.

        ``task_status.started()`` comes once the agent answered ``initialize``.

        Raises:
            OSError: The program could not be started.
            WarmUnavailable: It did not initialize.
        """
        failed = ""
        spawn_error: OSError | None = None
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self.process.run)
            except OSError as exc:  # raised here, not from the nursery (a group)
                spawn_error = exc
                self.process.why_dead = f"cannot start {self.process.argv[0]!r}: {exc}"
                self.process.dead.set()
                nursery.cancel_scope.cancel()
            if spawn_error is None:
                nursery.start_soon(self._write_replies)
                nursery.start_soon(self._watch)
                try:
                    with trio.fail_after(self.start_timeout):
                        await self._initialize()
                except (trio.TooSlowError, WarmUnavailable, ProtocolError) as exc:
                    failed = str(exc) or "too slow"
                    self.process.kill(failed)
                else:
                    self.ready.set()
                    task_status.started()
                await self.process.dead.wait()
                nursery.cancel_scope.cancel()
        if spawn_error is not None:
            raise spawn_error
        if failed:
            raise WarmUnavailable(f"the agent did not initialize: {failed}")

    async def _initialize(self) -> None:
        if self.dialect == "acp":
            rid, data = self.acp.initialize()
            result = decode_result(await self._call(rid, data), acp.InitializeResult)
            self.load_session = result.agentCapabilities.loadSession
        else:
            rid, data = self.codex.initialize()
            await self._call(rid, data)
            await self.process.send(self.codex.initialized())

    async def _call(self, rid: int, data: bytes) -> Response:
        """Send a request and wait for its answer.

        Raises:
            WarmUnavailable: The agent died first, or answered with an error.
        """
        call = self._calls[rid] = _Call()
        try:
            await self._send(data)
            await call.event.wait()  # also woken when the agent dies (see _watch)
        finally:
            # A cancelled prompt's late answer still ends its turn (see _answered).
            self._calls.pop(rid, None)
        response = call.response
        if response is None:
            raise WarmUnavailable(f"the agent died: {self.process.why_dead}")
        return response

    async def _watch(self) -> None:
        """Wake every waiter once the agent is dead: its answers will not come."""
        await self.process.dead.wait()
        for call in self._calls.values():
            call.event.set()
        for turn in self._turns.values():
            turn.wake.set()

    def _peer_forget(self, rid: int) -> None:
        (self.acp.peer if self.dialect == "acp" else self.codex.peer).forget(rid)

    async def _send(self, data: bytes) -> None:
        try:
            await self.process.send(data)
        except trio.BrokenResourceError:
            raise WarmUnavailable(f"the agent died: {self.process.why_dead}") from None

    async def _write_replies(self) -> None:
        """Write llmd's answers to the agent's requests (queued by the line handler)."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            batch, self._outbox = self._outbox, []
            for data in batch:
                try:
                    await self.process.send(data)
                except trio.BrokenResourceError:
                    return

    # --- lines from the agent (synchronous: no await between decoding and routing) ----

    def _line(self, line: bytes) -> None:
        if self.dialect == "acp":
            for event in self.acp.receive(line):
                self._acp_event(event)
        else:
            for cevent in self.codex.receive(line):
                self._codex_event(cevent)

    def _answered(self, response: Response) -> None:
        call = self._calls.get(response.id) if isinstance(response.id, int) else None
        if call is not None:
            call.response = response
            call.event.set()
            return
        for turn in self._turns.values():
            if turn.rid == response.id:
                turn.end()

    def _reply(self, data: bytes, note: str) -> None:
        self._outbox.append(data)
        self._outbox_ready.set()
        self.replies = [*self.replies[-15:], note]

    def _acp_event(self, event: acp.AcpEvent) -> None:
        if isinstance(event, acp.Answered):
            self._answered(event.response)
        elif isinstance(event, acp.Replied):
            self._reply(event.data, event.note)
        elif event.session not in self._loading:  # a loaded session's history is replayed
            turn = self._turns.get(event.session)
            if turn is not None:
                self._text(turn, event.text)

    def _codex_event(self, event: codexapp.CodexEvent) -> None:
        if isinstance(event, codexapp.Answered):
            self._answered(event.response)
            return
        if isinstance(event, codexapp.Replied):
            self._reply(event.data, event.note)
            return
        turn = self._turns.get(event.thread)
        if turn is None:
            return
        if isinstance(event, codexapp.Delta):
            self._text(turn, event.text)
        elif isinstance(event, codexapp.Message):
            turn.whole = event.text if turn.whole is None else turn.whole + event.text
        elif isinstance(event, codexapp.Usage):
            turn.usage = event.usage
        elif isinstance(event, codexapp.TurnErrorNote):
            verdict = _codex_verdict(event.error)
            # codex would retry a rate limit on its own schedule; the policy is llmd's.
            if not event.will_retry or verdict.kind != "failure":
                turn.verdict = turn.verdict or verdict
                if event.will_retry:
                    turn.end()
        elif isinstance(event, codexapp.TurnDone):
            if event.turn.error is not None and event.turn.status == "failed":
                turn.verdict = turn.verdict or _codex_verdict(event.turn.error)
            turn.end()

    def _text(self, turn: _Turn, text: str) -> None:
        turn.chars += len(text)
        if turn.sink is not None:
            turn.sink(text)

    # --- turns ------------------------------------------------------------------------

    async def open(self, spec: TurnSpec) -> str:
        """Open the run's session (thread): a fresh one, or the one it continues.

        Raises:
            WarmUnavailable: The agent cannot (dead, an error, cannot resume).
        """
        if self.dialect == "acp":
            if spec.session is None:
                rid, data = self.acp.new_session(spec.cwd)
                result = await self._result(rid, data, acp.NewSessionResult)
                session = result.sessionId
            elif spec.session in self.sessions:
                session = spec.session
            elif self.load_session:
                session = spec.session
                self._loading.add(session)
                try:
                    rid, data = self.acp.load_session(session, spec.cwd)
                    response = await self._call(rid, data)
                    if response.error is not None:
                        raise WarmUnavailable(f"session/load: {response.error[1]}")
                finally:
                    self._loading.discard(session)
            else:
                raise WarmUnavailable("the agent cannot load a session")
        elif spec.session is None or spec.session not in self.sessions:
            sandbox = spec.sandbox or self.sandbox
            if spec.session is None:
                rid, data = self.codex.start_thread(spec.cwd, model=spec.model,
                                                    approval=self.approval, sandbox=sandbox)
            else:
                rid, data = self.codex.resume_thread(spec.session, spec.cwd,
                                                     model=spec.model,
                                                     approval=self.approval, sandbox=sandbox)
            started = await self._result(rid, data, codexapp.ThreadStartResult)
            session = started.thread.id
            self._threads[session] = (spec.cwd, sandbox)
        else:
            session = spec.session
        self.sessions.add(session)
        return session

    async def _result(self, rid: int, data: bytes, kind: type[_T]) -> _T:
        with trio.fail_after(OPEN_TIMEOUT):
            response = await self._call(rid, data)
        if response.error is not None:
            raise WarmUnavailable(f"{response.method}: {response.error[1]}")
        try:
            return decode_result(response, kind)
        except ProtocolError as exc:
            self.process.kill(f"out of protocol: {exc}")
            raise WarmUnavailable(f"the agent is out of protocol: {exc}") from None

    async def turn(self, session: str, spec: TurnSpec, on_text: TextSink,
                   process: TurnProcess | None = None) -> Outcome:
        """Run one turn of ``session`` to its end.

        Args:
            session: The session (thread) :meth:`open` gave.
            spec: The run's turn.
            on_text: Told each piece of answer text.
            process: Where the turn's text, stderr and duration are kept as they come
                (read while it runs, and after a timeout or cancel); a fresh one if None.

        Raises:
            WarmUnavailable: The agent failed before any text streamed.
        """
        if session in self._turns:
            raise WarmUnavailable(f"session {session} is busy")
        started = time.monotonic()
        process = process if process is not None else TurnProcess()
        stderr_mark = self.process.stderr.written
        turn = self._turns[session] = _Turn(session)
        room = spec.max_output_bytes
        send_text, receive_text = trio.open_memory_channel[str](1 << 16)

        def sink(text: str) -> None:
            nonlocal room
            if room <= 0:
                return
            if len(text) > room:
                text, process.truncated = text[:room], True
            room -= len(text)
            process.pieces.append(text)
            with contextlib.suppress(trio.WouldBlock):  # 65536 pieces behind: dropped
                send_text.send_nowait(text)

        turn.sink = sink
        unavailable: WarmUnavailable | None = None
        ended = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward, receive_text, on_text)
                try:
                    await self._run_turn(session, spec, turn)
                except WarmUnavailable as exc:
                    unavailable = exc
                finally:
                    send_text.close()
            ended = True
        finally:
            if not ended:  # cancelled (a nursery wraps Cancelled in a group): stop it
                with trio.CancelScope(shield=True):
                    await self._stop(session, turn, spec.kill_grace)
            self._turns.pop(session, None)
            process.duration = time.monotonic() - started
            # What the agent wrote meanwhile (other turns' too, when several run).
            process.stderr_tail = self.process.stderr.since(stderr_mark)
        if unavailable is not None:
            raise unavailable
        self.turns_served += 1
        text = process.stdout
        if not turn.chars and turn.whole:  # no deltas came: the whole message is the answer
            text = turn.whole[:spec.max_output_bytes]
            process.pieces = [text]
            await on_text("stdout", text)
        parsed = ParseResult(text=text, session=session, usage=turn.usage)
        verdict = turn.verdict
        if verdict is None and not self.process.alive and not turn.done.is_set():
            verdict = Verdict("failure", None,
                              f"the warm agent died mid-turn: {self.process.why_dead}")
        process.exit_code = 0 if verdict is None else None
        return Outcome(process, parsed, verdict)

    async def _run_turn(self, session: str, spec: TurnSpec, turn: _Turn) -> None:
        if self.dialect == "acp":
            rid, data = self.acp.prompt(session, spec.prompt)
            turn.rid = rid
            try:
                response = await self._call(rid, data)
            except WarmUnavailable:
                if turn.chars:
                    return  # the outcome says it died mid-turn
                raise
            turn.end()
            if response.error is not None:
                code, message = response.error
                turn.verdict = verdict_from_message(
                    message, code if 400 <= code < 600 else None)
                return
            try:
                result = decode_result(response, acp.PromptResult)
            except ProtocolError as exc:
                self.process.kill(f"out of protocol: {exc}")
                if not turn.chars:
                    raise WarmUnavailable(str(exc)) from None
                return
            turn.usage = result.usage
            if result.stopReason not in ("end_turn", "max_tokens", "max_turn_requests"):
                turn.verdict = Verdict("failure", None,
                                       f"the turn ended: {result.stopReason}")
            return
        # A thread this process holds is continued here whatever the run's cwd and sandbox
        # (codex refuses a second process a thread that has a writer): the turn moves it.
        cwd, sandbox = spec.cwd, spec.sandbox or self.sandbox
        held = self._threads.get(session, (cwd, sandbox))
        try:
            rid, data = self.codex.start_turn(
                session, spec.prompt, cwd=cwd if cwd != held[0] else None,
                sandbox=sandbox if sandbox != held[1] else None)
        except ValueError as exc:
            raise WarmUnavailable(str(exc)) from None
        self._threads[session] = (cwd, sandbox)
        response = await self._call(rid, data)
        if response.error is not None:
            raise WarmUnavailable(f"turn/start: {response.error[1]}")
        try:
            turn.turn_id = decode_result(response, codexapp.TurnStartResult).turn.id
        except ProtocolError as exc:
            self.process.kill(f"out of protocol: {exc}")
            raise WarmUnavailable(str(exc)) from None
        if not self.process.alive:
            turn.wake.set()
        await turn.wake.wait()
        if not turn.done.is_set() and not turn.chars:
            raise WarmUnavailable(f"the agent died: {self.process.why_dead}")
        if turn.verdict is not None and turn.verdict.kind != "ok" and turn.turn_id:
            # codex would go on retrying; stop the turn (its answer is not awaited).
            rid, data = self.codex.interrupt(session, turn.turn_id)
            self._peer_forget(rid)
            if self.process.alive:
                self._reply(data, "interrupted a failed turn")

    async def _stop(self, session: str, turn: _Turn, grace: float) -> None:
        """Ask the agent to stop a cancelled turn; kill it if the turn goes on."""
        if not self.process.alive:
            return
        if self.dialect == "acp":
            data = self.acp.cancel(session)
        elif turn.turn_id is not None:
            rid, data = self.codex.interrupt(session, turn.turn_id)
            self._peer_forget(rid)
        else:
            self.process.kill("a turn was cancelled before it started")
            return
        try:
            await self.process.send(data)
        except trio.BrokenResourceError:
            return
        with trio.move_on_after(grace):
            # The prompt's answer (acp) or turn/completed (codex) ends the turn.
            await turn.wake.wait()
            return
        self.process.kill("a cancelled turn did not end within kill_grace")

    def close(self, why: str = "closed") -> None:
        """Kill the process (it is reaped by :meth:`serve`)."""
        self.process.kill(why)


async def _forward(receive: trio.MemoryReceiveChannel[str], on_text: TextSink) -> None:
    async with receive:
        async for text in receive:
            await on_text("stdout", text)


def _codex_verdict(error: codexapp.TurnError) -> Verdict:
    return verdict_from_message(error.message, error.http_status)


class AgentAttempt:
    """One run's turn on a warm agent, run once by :meth:`run`."""

    def __init__(self, agent: Agent, spec: TurnSpec) -> None:
        self.agent = agent
        self.spec = spec
        self._process = TurnProcess()

    @property
    def process(self) -> TurnProcess:
        """The turn, in the shape of an attempt's process."""
        return self._process

    async def run(self, on_text: TextSink) -> Outcome:
        """Open the session and run the turn.

        Raises:
            WarmUnavailable: The agent cannot serve it and nothing streamed.
        """
        agent = self.agent
        if not agent.process.alive:
            raise WarmUnavailable(f"the agent died: {agent.process.why_dead}")
        async with agent.slots:
            session = await agent.open(self.spec)
            return await agent.turn(session, self.spec, on_text, self._process)


async def _cancel_after(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@dataclass(frozen=True)
class AgentKey:
    """What one agent process serves: every run of a blueprint with this argv and
    environment, whatever its cwd (gemini's model is in its argv; codex's is per thread)."""

    blueprint: str
    dialect: Dialect
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class AgentOptions:
    """How an agent of one blueprint runs (from ``[blueprints.NAME.warm]``)."""

    max_concurrency: int = 4
    kill_grace: float = 5.0
    idle_ttl: float = 600.0
    allow_kinds: frozenset[str] = frozenset()
    start_timeout: float = START_TIMEOUT


class AgentPool:
    """The agent processes of a daemon: one per :class:`AgentKey`, started on demand,
    ended when unused for ``idle_ttl``, when dead, or when there is no room.

    Args:
        room: How many more warm processes may exist (``warm_max`` less those of other
            kinds); asked before an agent starts.
        owned: Where the agents' process groups are listed for crash recovery (shared
            with the warm pool; None: a list of the pool's own, in memory).
    """

    def __init__(self, room: Callable[[], int] = lambda: 1 << 30,
                 owned: OwnedGroups | None = None) -> None:
        self.room = room
        self.owned = owned if owned is not None else OwnedGroups(None)
        self.agents: dict[AgentKey, Agent] = {}
        self.last_used: dict[AgentKey, float] = {}
        self.options: dict[AgentKey, AgentOptions] = {}
        self.retired: list[Agent] = []
        """Agents of a changed blueprint, still busy: they end once idle."""
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is serving."""
        return self._nursery is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve the agents, ending the unused ones, until cancelled (every agent is
        killed before this returns)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    self._wake = trio.Event()
                    with trio.move_on_at(self._next_expiry()):
                        await self._wake.wait()
                    self._expire()
        finally:
            self._nursery = None
            self.close()

    def _next_expiry(self) -> float:
        times = [self.last_used[key] + self.options[key].idle_ttl
                 for key, agent in self.agents.items() if agent.busy == 0]
        return min(times, default=float("inf"))

    def _expire(self) -> None:
        for agent in list(self.retired):
            if agent.busy == 0 or not agent.process.alive:
                agent.close("its blueprint changed")
                self.retired.remove(agent)
        now = trio.current_time()
        for key, agent in list(self.agents.items()):
            if agent.process.dead.is_set():  # (one still starting is not alive yet)
                self._forget(key)
            elif agent.busy == 0 and now >= self.last_used[key] + self.options[key].idle_ttl:
                agent.close("unused for idle_ttl")
                self._forget(key)

    def _forget(self, key: AgentKey) -> None:
        # A key's times and options live as long as its agent: keys come from argv and
        # environment, so a long-lived daemon meets an open-ended number of them.
        self.agents.pop(key, None)
        self.last_used.pop(key, None)
        self.options.pop(key, None)

    async def get(self, key: AgentKey, options: AgentOptions) -> Agent | None:
        """The live agent of ``key``, started now when there is none and there is room,
        once it has initialized.

        Returns:
            None when there is no room (or the pool does not serve).

        Raises:
            WarmUnavailable: It could not be started or did not initialize.
        """
        agent = self.agents.get(key)
        if agent is None or agent.process.dead.is_set():
            if not self.ensure(key, options):
                return None
            agent = self.agents[key]
        async with trio.open_nursery() as nursery:
            for event in (agent.ready, agent.process.dead):
                nursery.start_soon(_cancel_after, event, nursery.cancel_scope)
        if not agent.process.alive:
            raise WarmUnavailable(f"the agent did not initialize: "
                                  f"{agent.process.why_dead}")
        self.touch(key)
        return agent

    def ready(self, key: AgentKey) -> Agent | None:
        """The live, initialized agent of ``key``, if there is one (never waits)."""
        agent = self.agents.get(key)
        if agent is None or not agent.ready.is_set() or not agent.process.alive:
            return None
        self.touch(key)
        return agent

    def ensure(self, key: AgentKey, options: AgentOptions) -> bool:
        """Start the agent of ``key`` in the background unless it exists; return at once.

        Returns:
            Whether one is starting.
        """
        if self._nursery is None:
            return False
        agent = self.agents.get(key)
        if agent is not None and not agent.process.dead.is_set():
            return False  # running, or starting
        if self.room() <= 0:
            return False
        agent = Agent(key.dialect, key.argv, env=dict(key.env),
                      kill_grace=options.kill_grace, max_concurrency=options.max_concurrency,
                      allow_kinds=options.allow_kinds, start_timeout=options.start_timeout,
                      on_spawn=self.owned.add,
                      on_exit=self.owned.discard)
        self.agents[key] = agent
        self.options[key] = options
        self.touch(key)
        self._nursery.start_soon(self._keep, key, agent)
        return True

    async def _keep(self, key: AgentKey, agent: Agent) -> None:
        try:
            await agent.serve()
        except (OSError, WarmUnavailable) as exc:
            log.warning("the agent of %s could not start: %s", key.blueprint, exc)
        finally:
            if self.agents.get(key) is agent:
                self._forget(key)
            self._wake.set()

    def touch(self, key: AgentKey) -> None:
        """A run used (or ended on) the agent of ``key``: its idle time starts afresh."""
        if key in self.agents:
            self.last_used[key] = trio.current_time()
            self._wake.set()

    def replace(self, key: AgentKey, agent: Agent, options: AgentOptions, why: str) -> None:
        """Retire ``agent``, the agent of ``key`` (it ends once idle, serving no new run),
        and start another in its place; nothing when it was replaced already."""
        if self.agents.get(key) is not agent:
            return
        log.info("the agent of %s is replaced: %s", key.blueprint, why)
        self._forget(key)
        if agent.busy == 0:
            agent.close(why)
        else:
            self.retired.append(agent)
        self.ensure(key, options)

    def retire(self, blueprints: set[str]) -> None:
        """End the agents of these blueprints (changed or removed on reload) once idle;
        they serve no new run."""
        for key, agent in list(self.agents.items()):
            if key.blueprint in blueprints:
                self._forget(key)
                if agent.busy == 0:
                    agent.close("its blueprint changed")
                else:
                    self.retired.append(agent)

    def close(self) -> None:
        """Kill every agent."""
        for agent in [*self.agents.values(), *self.retired]:
            agent.close("the daemon stops")
        self.agents.clear()
        self.last_used.clear()
        self.options.clear()
        self.retired.clear()

    def info(self) -> dict[str, int]:
        """Counts: ``processes`` (live or starting agents), ``idle`` (ready, none of its
        turns running), ``busy``, and ``sessions`` (turns in flight)."""
        live = [agent for agent in self.agents.values() if not agent.process.dead.is_set()]
        ready = [agent for agent in live if agent.ready.is_set()]  # the others start
        busy = sum(1 for agent in ready if agent.busy)
        return {"processes": len(live), "idle": len(ready) - busy, "busy": busy,
                "sessions": sum(agent.busy for agent in ready)}

    def pgids(self) -> list[int]:
        """The process groups of the live agents (for their memory)."""
        return [agent.process.pid for agent in self.agents.values()
                if agent.process.pid is not None and agent.process.alive]

    def health(self, blueprint: str) -> list[dict[str, Any]]:
        """The liveness of ``blueprint``'s agents, for its health detail."""
        return [{"pid": agent.process.pid, "alive": agent.process.alive,
                 "busy": agent.busy, "turns": agent.turns_served}
                for key, agent in self.agents.items() if key.blueprint == blueprint]


