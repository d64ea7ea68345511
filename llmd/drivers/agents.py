"""The driver of blueprints whose warm processes are agents: gemini over ACP, codex over
its app server (``[blueprints.NAME.warm] protocol``).

A run is handed to the live agent of its :class:`~llmd.drivers.warmagent.AgentKey` (a
session or thread for the run's cwd on one process); without one it runs one-shot, and
once that succeeded an agent starts for the runs after it.

Invariants:
- A run goes one-shot, never failing for warmth, when no agent is ready, when the run
  asks what the agent cannot do (a blueprint whose command holds flags the agent has no
  equivalent for), or when the agent fails before any of the run's text streamed; after
  text streamed, an agent's failure is the run's (the outcome says why).
- The agent's environment is the run's without ``PWD``/``OLDPWD`` (a session names its
  own cwd), so one agent serves every cwd.
- A run that may edit (``edit_args``) is never served with less: gemini's edit runs go to
  an agent started with those flags, codex's get a thread in the sandbox mode they name
  (and go one-shot when ``edit_args`` say more than that). A codex thread an agent holds
  is continued on it, in the run's cwd and mode: codex lets no other process write it.
- A gemini run that continues a session its agent does not hold goes one-shot
  (``--resume``), never ``session/load``: gemini 0.61 starts a fresh record of the session
  before it looks the session up, in a file named for the current minute, which is the
  session's own file when the session began in that minute (the load then finds no
  session, and the record it left makes every later ``--resume`` fail too); and it
  replays the history after answering the load, so the replayed answers would be taken
  for the run's. A one-shot ``--resume`` reads the session first and writes it back whole.
- A session continued one-shot is forgotten by every gemini agent, which would go on
  from a copy without that turn.
- An agent that has served ``max_turns`` turns is replaced (it ends once idle, a new
  one starts at once): gemini never lets go of a session's state.
- An agent's process group is the pool's, never a job's: cancelling a run cancels its
  turn in the protocol; the process is killed only when the turn goes on past
  ``kill_grace``.
"""

from __future__ import annotations

import logging
import os

from llmd.drivers import AttemptProcess, AttemptSpec, FollowCurrent, Outcome, TextSink
from llmd.drivers.oneshot import OneShot
from llmd.drivers.warmagent import (
    Agent,
    AgentAttempt,
    AgentKey,
    AgentOptions,
    AgentPool,
    Dialect,
    TurnProcess,
    TurnSpec,
    WarmUnavailable,
)
from llmd.process.supervisor import Stream

log = logging.getLogger(__name__)

# What each protocol's agent is started with, after the program.
AGENT_ARGS: dict[str, tuple[str, ...]] = {"acp": ("--acp",), "codex-app": ("app-server",)}
# The one-shot command's own arguments an agent has an equivalent for; any other flag in
# a blueprint's command keeps its runs one-shot.
ONE_SHOT_ARGS: dict[str, frozenset[str]] = {
    "acp": frozenset({"--output-format", "stream-json", "json", "{args}"}),
    "codex-app": frozenset({"exec", "--json", "--skip-git-repo-check", "-", "{args}"}),
}
_CWD_VARS = ("PWD", "OLDPWD")


def agent_key(spec: AttemptSpec) -> AgentKey | None:
    """The agent that may serve ``spec``; None when its runs go one-shot."""
    bp = spec.bp
    protocol = bp.warm.protocol
    if not bp.warm.enabled or protocol not in AGENT_ARGS or bp.prompt != "stdin":
        return None
    if any(arg not in ONE_SHOT_ARGS[protocol] for arg in bp.command[1:]):
        return None
    dialect: Dialect = "acp" if protocol == "acp" else "codex-app"
    argv = [spec.invocation.argv[0], *AGENT_ARGS[protocol]]
    if dialect == "acp":  # gemini's model is the process's; codex's is per thread
        model = spec.model if spec.model is not None else bp.default_model
        if model is not None:
            argv += [model if a == "{model}" else a for a in bp.model_args]
        if spec.edit:  # the agent takes the one-shot's flags: one agent for edit runs
            argv += bp.edit_args
    elif spec.edit and thread_sandbox(spec) is None:
        return None
    env = tuple(sorted((k, v) for k, v in spec.env.items() if k not in _CWD_VARS))
    return AgentKey(spec.blueprint, dialect, tuple(argv), env)


def thread_sandbox(spec: AttemptSpec) -> str | None:
    """The sandbox mode of a codex edit run's thread: the ``--sandbox MODE`` of the
    blueprint's ``edit_args`` (None for a run that does not edit, or when ``edit_args``
    say anything else: the run goes one-shot)."""
    args = spec.bp.edit_args
    if not spec.edit:
        return None
    if len(args) == 2 and args[0] in ("--sandbox", "-s"):
        return args[1]
    if len(args) == 1 and args[0].startswith("--sandbox="):
        return args[0].partition("=")[2]
    return None


def agent_options(spec: AttemptSpec) -> AgentOptions:
    """How the agent of ``spec``'s blueprint runs."""
    bp = spec.bp
    return AgentOptions(max_concurrency=bp.max_concurrency, kill_grace=bp.kill_grace,
                        idle_ttl=bp.warm.idle_ttl, allow_kinds=frozenset(bp.warm.allow))


class AgentDriver:
    """Attempts served by an agent when one is ready, one-shot otherwise.

    Args:
        pool: The agents.
        oneshot: The driver for runs no agent serves.
    """

    def __init__(self, pool: AgentPool, oneshot: OneShot) -> None:
        self.pool = pool
        self.oneshot = oneshot

    def attempt(self, spec: AttemptSpec) -> AgentRunAttempt:
        """Prepare one attempt."""
        return AgentRunAttempt(spec, self.pool, self.oneshot)


class AgentRunAttempt:
    """One attempt: a turn on an agent, or a one-shot process."""

    def __init__(self, spec: AttemptSpec, pool: AgentPool, oneshot: OneShot) -> None:
        self.spec = spec
        self.pool = pool
        self.oneshot = oneshot
        self.key = agent_key(spec)
        self._current: AttemptProcess = TurnProcess()

    @property
    def process(self) -> AttemptProcess:
        """A view that follows the turn, or the one-shot process once the run went
        one-shot (the job manager reads it after a timeout)."""
        return FollowCurrent(lambda: self._current)

    async def run(self, on_text: TextSink) -> Outcome:
        """Run the prompt on a ready agent (else, or if it fails before any text
        streamed, one-shot); after a one-shot run that succeeded, start an agent for the
        next runs (unless one runs or starts)."""
        key, spec = self.key, self.spec
        if key is not None:
            agent = self.pool.ready(key)
            if agent is not None and spec.session is not None and not _may_continue(
                    agent, spec.session):
                log.info("the agent of %s does not hold the session; the run goes one-shot",
                         spec.blueprint)
            elif agent is not None:
                outcome = await self._turn(agent, on_text)
                if outcome is not None:
                    return outcome
        if spec.session is not None:
            self._forget(spec.session)
        attempt = self.oneshot.attempt(spec)
        self._current = attempt.process
        outcome = await attempt.run(on_text)
        # As for warm claude: an agent is started only for a CLI that just answered (a
        # broken login or endpoint would leave an idle agent holding memory for nothing).
        if (key is not None and outcome.verdict is None and outcome.process.exit_code == 0
                and not outcome.parsed.error):
            self.pool.ensure(key, agent_options(spec))
        return outcome

    def _forget(self, session: str) -> None:
        """The session goes on outside the agents: no gemini agent may continue its own
        copy of it, which lacks this turn."""
        for agent in self.pool.agents.values():
            if agent.dialect == "acp":
                agent.sessions.discard(session)

    async def _turn(self, agent: Agent, on_text: TextSink) -> Outcome | None:
        spec, key = self.spec, self.key
        assert key is not None
        stdin = spec.invocation.stdin or b""
        turn = TurnSpec(prompt=stdin.decode("utf-8", "surrogatepass"),
                        cwd=spec.cwd if spec.cwd is not None else os.getcwd(),
                        model=spec.model if spec.model is not None else spec.bp.default_model,
                        session=spec.session, sandbox=thread_sandbox(spec),
                        max_output_bytes=spec.bp.max_output_bytes,
                        kill_grace=spec.bp.kill_grace)
        attempt = AgentAttempt(agent, turn)
        self._current = attempt.process
        streamed = False

        async def forward(stream: Stream, text: str) -> None:
            nonlocal streamed
            streamed = True
            await on_text(stream, text)

        try:
            outcome = await attempt.run(forward)
        except WarmUnavailable as exc:
            if streamed:  # pragma: no cover - the attempt reports these in its outcome
                raise
            log.info("the agent of %s cannot serve a run (%s); it goes one-shot",
                     spec.blueprint, exc)
            return None
        finally:
            self.pool.touch(key)
        self._current = attempt.process
        outcome.warm = True
        if agent.turns_served >= spec.bp.warm.max_turns:
            # Each session's state stays in the agent's memory until it exits.
            self.pool.replace(key, agent, agent_options(spec),
                              f"it served {agent.turns_served} turns (max_turns)")
        return outcome


def _may_continue(agent: Agent, session: str) -> bool:
    """Whether ``agent`` may serve a run that continues ``session``: gemini's only when it
    holds the session (see the module's invariants); codex's resumes any thread."""
    return agent.dialect != "acp" or session in agent.sessions
