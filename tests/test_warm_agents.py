"""Tests llmd/drivers/warmagent.py and llmd/drivers/agentproc.py with the real gemini
(``--acp``) and codex (``app-server``) against tests/mockllm.py.

One agent process serves every test's runs for any cwd; each run's conversation is its
own (the mock sees only that run's prompt); a resumed session carries the earlier turn;
a 429 ends the attempt as a rate limit at once; a cancelled turn is stopped and the
agent serves the next run; an agent killed from outside is seen dead, and a new one
takes its place. Skipped without ``LLMD_REAL_CLIS``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from llmd.drivers import Outcome
from llmd.drivers.warmagent import (
    Agent,
    AgentAttempt,
    Dialect,
    TurnSpec,
    WarmUnavailable,
)
from llmd.process.supervisor import Stream
from tests.harness import AgentHost
from tests.mockllm import ANSWER, MockLLM

REAL_CLIS = os.environ.get("LLMD_REAL_CLIS", "")
pytestmark = pytest.mark.skipif(not REAL_CLIS, reason="LLMD_REAL_CLIS is unset")

GEMINI_MODEL = "gemini-2.5-flash"
# Generous for two Node programs on a loaded 2-core machine; far below gemini's 205 s
# of retries and codex's endless reconnects.
LIMIT = 120.0


@pytest.fixture
def mock() -> Iterator[MockLLM]:
    with MockLLM() as server:
        yield server


def _env(tmp_path: Path, mock: MockLLM, dialect: Dialect) -> dict[str, str]:
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{REAL_CLIS}:{os.environ['PATH']}", "HOME": str(home),
           "TMPDIR": str(home / "tmp"), "NO_COLOR": "1"}
    if dialect == "acp":
        settings = home / ".gemini" / "settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}},
                                        "general": {"maxAttempts": 1}}))
        env.update(GOOGLE_GEMINI_BASE_URL=f"{mock.url}/gemini", GEMINI_API_KEY="dummy",
                   GEMINI_CLI_TRUST_WORKSPACE="true")
    else:
        (home / "config.toml").write_text(textwrap.dedent(f"""\
            model_provider = "mock"
            [model_providers.mock]
            name = "Mock"
            base_url = "{mock.url}/codex/v1"
            env_key = "MOCK_API_KEY"
            wire_api = "responses"
            request_max_retries = 0
            stream_max_retries = 0
            """))
        env.update(CODEX_HOME=str(home), MOCK_API_KEY="dummy")
    return env


def _argv(dialect: Dialect) -> list[str]:
    if dialect == "acp":
        return ["gemini", "--acp", "--model", GEMINI_MODEL]
    return ["codex", "app-server"]


def _client(dialect: Dialect) -> str:
    return "gemini" if dialect == "acp" else "codex"


@pytest.fixture(params=["acp", "codex-app"])
async def agent(request: pytest.FixtureRequest, tmp_path: Path,
                mock: MockLLM) -> AsyncIterator[Agent]:
    dialect: Dialect = request.param
    async with trio.open_nursery() as nursery:
        host = AgentHost(nursery)
        with trio.fail_after(LIMIT):
            # A cancelled turn has this long to end before its agent is killed.
            served = await host.get(dialect, _argv(dialect), _env(tmp_path, mock, dialect),
                                    kill_grace=15.0)
        yield served
        host.close()


class Seen:
    """The pieces an attempt streamed."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.first = trio.Event()

    async def __call__(self, stream: Stream, text: str) -> None:
        assert stream == "stdout"
        self.pieces.append(text)
        self.first.set()


async def _run(agent: Agent, spec: TurnSpec, seen: Seen | None = None) -> Outcome:
    with trio.fail_after(LIMIT):
        return await AgentAttempt(agent, spec).run(seen or Seen())


def _projects(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = tmp_path / f"project{i}"
        path.mkdir(exist_ok=True)
        paths.append(str(path))
    return paths


async def test_runs_per_cwd_on_one_process_stream_and_do_not_leak(
        agent: Agent, mock: MockLLM, tmp_path: Path) -> None:
    pid = agent.process.pid
    outcomes = []
    prompts = ["First question about alpha.", "Second question about beta."]
    for cwd, prompt in zip(_projects(tmp_path, 2), prompts, strict=True):
        seen = Seen()
        outcome = await _run(agent, TurnSpec(prompt, cwd), seen)
        assert outcome.verdict is None, outcome.verdict
        assert outcome.parsed.text == ANSWER
        assert "".join(seen.pieces) == ANSWER and len(seen.pieces) > 1  # it streamed
        assert outcome.parsed.usage is not None and outcome.parsed.usage["output_tokens"] > 0
        outcomes.append(outcome)
    assert agent.process.pid == pid and agent.turns_served == 2
    sessions = {o.parsed.session for o in outcomes}
    assert len(sessions) == 2 and None not in sessions
    asked = mock.model_requests(client=_client(agent.dialect))
    first = [r for r in asked if r.has_text(prompts[0])]
    second = [r for r in asked if r.has_text(prompts[1])]
    assert first and second
    # No conversation leaks: the second run's request carries nothing of the first.
    assert not any(r.has_text(prompts[0]) for r in second)


async def test_resume_continues_the_conversation(agent: Agent, mock: MockLLM,
                                                 tmp_path: Path) -> None:
    cwd = _projects(tmp_path, 1)[0]
    first = await _run(agent, TurnSpec("Remember the word heliotrope.", cwd))
    assert first.verdict is None and first.parsed.session
    again = await _run(agent, TurnSpec("Which word was it?", cwd,
                                       session=first.parsed.session))
    assert again.verdict is None and again.parsed.text == ANSWER
    assert again.parsed.session == first.parsed.session
    last = mock.model_requests(client=_client(agent.dialect))[-1]
    assert last.has_text("Which word was it?") and last.has_text("heliotrope")


async def test_a_429_is_a_rate_limit_at_once(agent: Agent, mock: MockLLM,
                                             tmp_path: Path) -> None:
    mock.fail(429, retry_after=7, client=_client(agent.dialect),
              message="You exceeded your current quota. Please retry in 7.5s.")
    outcome = await _run(agent, TurnSpec("Rate limited?", _projects(tmp_path, 1)[0]))
    assert outcome.verdict is not None and outcome.verdict.kind == "rate_limit", outcome
    # The pinned versions pass on no delay, even when the provider names one (gemini says
    # its own words, codex "exceeded retry limit"): the retry policy's back-off applies.
    # (An agent's error that names one: tests/test_warm_driver.py.)
    assert outcome.verdict.retry_after_s is None, outcome.verdict
    assert outcome.process.exit_code is None
    mock.heal()
    # The process is still good for the next run.
    outcome = await _run(agent, TurnSpec("And now?", _projects(tmp_path, 1)[0]))
    assert outcome.verdict is None and outcome.parsed.text == ANSWER


async def test_cancel_mid_turn_stops_it_and_the_agent_serves_on(
        agent: Agent, mock: MockLLM, tmp_path: Path) -> None:
    cwd = _projects(tmp_path, 1)[0]
    client = _client(agent.dialect)
    mock.gate(client)
    seen = Seen()
    with trio.fail_after(LIMIT):
        attempt = AgentAttempt(agent, TurnSpec("Hold on.", cwd))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt.run, seen)
            await seen.first.wait()  # the first piece came; the rest is held
            nursery.cancel_scope.cancel()
    assert agent.busy == 0
    # What the cancelled run said is its attempt's (the job's error data reads it).
    assert attempt.process.stdout == "".join(seen.pieces) != ""
    assert attempt.process.duration > 0
    mock.release(client)
    # The agent stopped the turn in its protocol (it was not killed) and serves on.
    assert agent.process.alive, agent.process.why_dead
    outcome = await _run(agent, TurnSpec("After the cancel.", cwd))
    assert outcome.verdict is None and outcome.parsed.text == ANSWER


async def test_killed_from_outside_is_seen_dead_and_replaced(
        tmp_path: Path, mock: MockLLM) -> None:
    dialect: Dialect = "codex-app"
    env = _env(tmp_path, mock, dialect)
    async with trio.open_nursery() as nursery:
        host = AgentHost(nursery)
        with trio.fail_after(LIMIT):
            agent = await host.get(dialect, _argv(dialect), env, kill_grace=2.0)
            assert agent.process.pid is not None
            os.killpg(agent.process.pid, signal.SIGKILL)
            await agent.process.dead.wait()
            with pytest.raises(WarmUnavailable):
                await AgentAttempt(agent, TurnSpec("hi", str(tmp_path))).run(Seen())
            fresh = await host.get(dialect, _argv(dialect), env, kill_grace=2.0)
            assert fresh is not agent and fresh.process.pid != agent.process.pid
            outcome = await AgentAttempt(fresh, TurnSpec("hi", str(tmp_path))).run(Seen())
            assert outcome.verdict is None and outcome.parsed.text == ANSWER
        host.close()


@pytest.mark.parametrize("dialect", ["acp", "codex-app"])
async def test_resume_in_a_new_process(
        dialect: Dialect, tmp_path: Path, mock: MockLLM) -> None:
    env = _env(tmp_path, mock, dialect)
    cwd = _projects(tmp_path, 1)[0]
    async with trio.open_nursery() as nursery:
        host = AgentHost(nursery)
        with trio.fail_after(LIMIT):
            agent = await host.get(dialect, _argv(dialect), env, kill_grace=2.0)
            first = await _run(agent, TurnSpec("Remember the word marigold.", cwd))
            assert first.verdict is None and first.parsed.session
            agent.close("the test restarts it")
            await agent.process.dead.wait()
            fresh = await host.get(dialect, _argv(dialect), env, kill_grace=2.0)
            assert fresh is not agent
            resume = TurnSpec("Which word was it?", cwd, session=first.parsed.session)
            seen = Seen()
            if dialect == "acp":
                await _gemini_load_wipes_a_session_of_this_minute(
                    fresh, mock, env, cwd, first.parsed.session, seen)
                host.close()
                return
            again = await _run(fresh, resume, seen)
        host.close()
    assert again.verdict is None and again.parsed.session == first.parsed.session
    # The replayed history is not part of this run's answer.
    assert again.parsed.text == ANSWER and "".join(seen.pieces) == ANSWER
    last = mock.model_requests(client=_client(dialect))[-1]
    assert last.has_text("Which word was it?") and last.has_text("marigold")


def _chat_files(env: dict[str, str], session: str) -> list[Path]:
    """gemini's chat files of ``session`` (named ``session-<UTC minute>-<id[:8]>``)."""
    return list((Path(env["HOME"]) / ".gemini" / "tmp").glob(
        f"*/chats/session-*-{session[:8]}.jsonl"))


def _named_for(files: list[Path], minute: datetime.datetime) -> None:
    """Rename the chat files of a session as if it had begun in ``minute``."""
    stamp = minute.strftime("%Y-%m-%dT%H-%M")
    for path in files:
        path.rename(path.with_name(re.sub(r"^session-[\dT-]+?-(\w{8}\.jsonl)$",
                                          rf"session-{stamp}-\1", path.name)))


async def _gemini_load_wipes_a_session_of_this_minute(
        agent: Agent, mock: MockLLM, env: dict[str, str], cwd: str, session: str | None,
        seen: Seen) -> None:
    """gemini 0.61 advertises loadSession, but its session/load first starts a fresh
    record of the session, in a file named for the current UTC minute, and only then
    looks the session up. When the session began in that minute this is the session's
    own file, whose history the fresh record replaces: the load finds "No previous
    sessions found for this project", and so does a one-shot ``--resume`` after it. A
    session of an earlier minute loads, but its history is replayed after the load's
    answer, among the new turn's text (hence only ``endswith`` below). So llmd never
    loads a gemini session: see llmd/drivers/agents.py."""
    assert agent.load_session and session
    # The session's file is named for the minute the load runs in (at least 2 s ahead
    # of the next minute, so that the load cannot fall into another).
    while datetime.datetime.now(datetime.timezone.utc).second >= 58:
        await trio.sleep(0.2)
    _named_for(_chat_files(env, session), datetime.datetime.now(datetime.timezone.utc))
    with pytest.raises(WarmUnavailable, match="session/load"):
        await _run(agent, TurnSpec("Which word was it?", cwd, session=session), seen)
    assert not seen.pieces and agent.process.alive
    with trio.fail_after(LIMIT):
        done = await trio.run_process(
            ["gemini", "--output-format", "stream-json", "--model", GEMINI_MODEL,
             "--resume", session], stdin=b"And now?", capture_stdout=True,
            capture_stderr=True, cwd=cwd, env=env, check=False)
    assert done.returncode != 0
    assert b"No previous sessions found for this project" in done.stderr
    # A session begun a minute ago loads, and the turn carries its history.
    other = await _run(agent, TurnSpec("Remember the word snapdragon.", cwd))
    assert other.verdict is None and other.parsed.session
    agent.sessions.discard(other.parsed.session)  # as if another process had written it
    minute_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    _named_for(_chat_files(env, other.parsed.session), minute_ago)
    loaded = await _run(agent, TurnSpec("Which word, then?", cwd,
                                        session=other.parsed.session))
    assert loaded.verdict is None and loaded.parsed.text.endswith(ANSWER)
    last = [r for r in mock.model_requests(client="gemini") if r.has_text("Which word, then?")]
    assert last and last[-1].has_text("snapdragon")


@pytest.mark.parametrize(("allow", "flags", "reply"), [
    (frozenset(), [], "rejected a tool call (edit)"),
    (frozenset({"edit"}), [], "allowed a tool call (edit)"),
    # An edit run's agent takes the blueprint's edit_args: it edits without asking.
    (frozenset(), ["--approval-mode", "auto_edit"], None),
], ids=["rejected", "allowed", "edit-flags"])
async def test_a_permission_request_is_answered_by_the_policy(
        tmp_path: Path, mock: MockLLM, allow: frozenset[str], flags: list[str],
        reply: str | None) -> None:
    dialect: Dialect = "acp"
    cwd = Path(_projects(tmp_path, 1)[0])
    target = cwd / "note.txt"
    mock.tool_call("write_file", {"file_path": str(target), "content": "written"},
                   client="gemini")
    async with trio.open_nursery() as nursery:
        host = AgentHost(nursery)
        with trio.fail_after(LIMIT):
            agent = await host.get(dialect, [*_argv(dialect), *flags],
                                   _env(tmp_path, mock, dialect), kill_grace=15.0,
                                   allow_kinds=allow)
            outcome = await _run(agent, TurnSpec("Write a note.", str(cwd)))
        host.close()
    assert outcome.verdict is None, outcome.verdict
    assert outcome.parsed.text.endswith(ANSWER)
    if reply is None:
        assert not any("tool call" in line for line in agent.replies), agent.replies
    else:
        assert reply in agent.replies
    assert target.exists() == (reply != "rejected a tool call (edit)")


async def test_a_timeout_in_a_stalled_turn_stops_it_and_the_agent_serves_on(
        agent: Agent, mock: MockLLM, tmp_path: Path) -> None:
    cwd = _projects(tmp_path, 1)[0]
    client = _client(agent.dialect)
    mock.hang(client=client)
    with trio.fail_after(LIMIT):
        attempt = AgentAttempt(agent, TurnSpec("Never answered.", cwd))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt.run, Seen())
            # The deadline falls once the provider has the request and stalls on it.
            while not mock.saw_text("Never answered.", client):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    mock.heal()
    assert agent.busy == 0
    assert agent.process.alive, agent.process.why_dead
    outcome = await _run(agent, TurnSpec("After the timeout.", cwd))
    assert outcome.verdict is None and outcome.parsed.text == ANSWER


async def test_a_codex_thread_runs_in_the_sandbox_mode_and_cwd_of_each_run(
        tmp_path: Path, mock: MockLLM) -> None:
    """A thread's sandbox is its run's (an edit run's ``--sandbox`` mode); a run that
    continues a thread this process holds moves it to its own cwd and mode, here, since
    codex lets no other process write a thread an app server holds."""
    cwd, elsewhere = _projects(tmp_path, 2)
    env = _env(tmp_path, mock, "codex-app")
    async with trio.open_nursery() as nursery:
        host = AgentHost(nursery)
        with trio.fail_after(LIMIT):
            agent = await host.get("codex-app", _argv("codex-app"), env, kill_grace=5.0)
            edit = await _run(agent, TurnSpec("Edit.", cwd, sandbox="workspace-write"))
            plain = await _run(agent, TurnSpec("Read.", cwd))
            again = await _run(agent, TurnSpec("Again, elsewhere.", elsewhere,
                                               session=edit.parsed.session))
            assert edit.verdict is None and plain.verdict is None and again.verdict is None
            assert again.parsed.session == edit.parsed.session
            # Outside the agent the thread cannot go on while the agent holds it.
            oneshot = await trio.run_process(
                ["codex", "exec", "--json", "--skip-git-repo-check", "resume",
                 str(edit.parsed.session), "-"], stdin=b"From outside.", env=env, cwd=cwd,
                capture_stdout=True, capture_stderr=True, check=False)
            assert oneshot.returncode != 0 and b"active writer" in oneshot.stderr
        host.close()
    # codex's own record of each thread says the sandbox and cwd of each of its turns.
    contexts: dict[str, list[tuple[str, str]]] = {}
    for path in (tmp_path / "home").rglob("rollout-*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        [thread] = [line["payload"]["id"] for line in lines
                    if line.get("type") == "session_meta"]
        contexts[thread] = [(line["payload"]["cwd"], line["payload"]["sandbox_policy"]["type"])
                            for line in lines if line.get("type") == "turn_context"]
    assert contexts[str(edit.parsed.session)] == [(cwd, "workspace-write"),
                                                  (elsewhere, "read-only")]
    assert contexts[str(plain.parsed.session)] == [(cwd, "read-only")]
