"""Tests that gemini's sessions resume in every combination of one-shot and warm runs,
through the real daemon and client with the real gemini against tests/mockllm.py
(llmd/drivers/agents.py).

A session begun one-shot resumes with an agent running; one begun on the agent resumes
on it, after it was killed (one-shot, then again once a new agent is up), with
``gemini --resume`` outside llmd, and after a turn taken one-shot elsewhere; runs in two
project directories keep their conversations apart. "Resumes" means the answer comes
and the provider's request carries the earlier turns and only those. An agent is
replaced after ``max_turns`` turns, and the sessions it held still resume. Skipped
without ``LLMD_REAL_CLIS``.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tests import test_real_clis
from tests.conftest import DaemonHandle
from tests.harness import alive
from tests.mockllm import ANSWER
from tests.test_real_clis import GEMINI_MODEL, REAL_CLIS, TEST_LIMIT, Outcome, World, run

# The real-CLI tests' fixtures: the mock endpoint and the CLIs' private homes.
mock = test_real_clis.mock
world = test_real_clis.world

pytestmark = pytest.mark.skipif(not REAL_CLIS, reason="LLMD_REAL_CLIS is unset")

NAME = "gemini"
# Several one-shot gemini runs (2.5-6 s each on a loaded machine) and agent starts
# (3-11 s) per test.
LIMIT = TEST_LIMIT * 3


async def _start(daemon_factory: Any, world: World, max_turns: int = 100) -> DaemonHandle:
    """The daemon on the bundled registry with the gemini agent on (whatever the
    bundled default), replaced after ``max_turns``."""
    world.write_homes(world.mock.url)
    text = world.registry(world.mock.url)
    header = f'["blueprints"."{NAME}"."warm"]\n"enabled" = '
    assert header in text
    text = text.replace(header + "false", header + "true")
    text = text.replace(header + "true", f'{header}true\n"max_turns" = {max_turns}')
    handle: DaemonHandle = await daemon_factory(text)
    return handle


async def _info(d: DaemonHandle) -> dict[str, Any]:
    client = await d.connect()
    info: dict[str, Any] = (await client.call("daemon.info", {}))["result"]["warm"]
    return info


async def _until_idle(d: DaemonHandle) -> None:
    """Poll until an agent is ready and idle."""
    while (await _info(d))["idle"] < 1:
        await trio.sleep(0.2)


async def _agent_pid(d: DaemonHandle) -> int:
    client = await d.connect()
    status = (await client.call("health.status", {"blueprint": NAME}))["result"]
    match = re.search(r"warm agent pid (\d+) alive", status["blueprints"][NAME]["detail"])
    assert match is not None, status
    return int(match.group(1))


def _projects(world: World) -> tuple[Path, Path]:
    one, two = world.root / "alpha-project", world.root / "beta-project"
    one.mkdir()
    two.mkdir()
    return one, two


async def _ask(d: DaemonHandle, world: World, prompt: str, cwd: Path,
               session: str | None = None, *, warm: bool | None,
               model: str = GEMINI_MODEL) -> str:
    """Run ``prompt`` in ``cwd`` (continuing ``session``); check the answer, that it was
    served warm or not as told (None: either), and return the run's session."""
    params: dict[str, Any] = {"cwd": str(cwd), "model": model}
    if session is not None:
        params["session"] = session
    outcome: Outcome = await run(d, world, NAME, prompt, **params)
    result = outcome.result
    assert result["text"] == ANSWER, result
    if warm is not None:
        assert result["warm"] is warm, result
    assert isinstance(result["session"], str) and result["session"]
    if session is not None:
        assert result["session"] == session
    return str(result["session"])


def _carried(world: World, prompt: str) -> set[str]:
    """The earlier prompts (of :data:`WORDS`) that the request asking ``prompt`` held."""
    asked = [r for r in world.requests(NAME) if r.has_text(prompt)]
    assert asked, f"no request asked {prompt!r}"
    return {word for word in WORDS if asked[-1].has_text(word)}


WORDS = ("amaranth", "bluebell", "camellia", "dahlia", "edelweiss", "foxglove")


async def test_a_one_shot_session_resumes_with_an_agent_running(
        daemon_factory: Any, world: World) -> None:
    one, two = _projects(world)
    with trio.fail_after(LIMIT):
        d = await _start(daemon_factory, world)
        # The first run goes one-shot while the agent starts.
        cold = await _ask(d, world, f"Remember {WORDS[0]}.", one, warm=False)
        await _until_idle(d)
        hot = await _ask(d, world, f"Remember {WORDS[1]}.", two, warm=True)
        # The agent does not hold the one-shot session: the run resumes it one-shot,
        # and the session stays whole for the turns after it.
        await _ask(d, world, "Which word, first?", one, cold, warm=False)
        assert _carried(world, "Which word, first?") == {WORDS[0]}
        await _ask(d, world, "Which word, second?", one, cold, warm=False)
        assert _carried(world, "Which word, second?") == {WORDS[0]}
        assert world.requests(NAME)[-1].has_text("Which word, first?")
        # The agent's own session, in the other project, goes on warm beside it.
        await _ask(d, world, "Which word, third?", two, hot, warm=True)
        assert _carried(world, "Which word, third?") == {WORDS[1]}
        assert (await _info(d))["processes"] == 1


async def test_a_warm_session_resumes_after_its_agent_is_killed(
        daemon_factory: Any, world: World) -> None:
    one, two = _projects(world)
    with trio.fail_after(LIMIT):
        d = await _start(daemon_factory, world)
        await _ask(d, world, "Start the agent.", one, warm=False)
        await _until_idle(d)
        first = await _ask(d, world, f"Remember {WORDS[2]}.", one, warm=True)
        second = await _ask(d, world, f"Remember {WORDS[3]}.", two, warm=True)
        old = await _agent_pid(d)
        os.killpg(old, signal.SIGKILL)
        while (await _info(d))["processes"]:  # seen dead
            await trio.sleep(0.1)
        # No agent: the run resumes one-shot (and a new agent starts).
        await _ask(d, world, "Which word, first?", one, first, warm=False)
        assert _carried(world, "Which word, first?") == {WORDS[2]}
        await _until_idle(d)
        assert await _agent_pid(d) != old
        # The new agent does not hold either session: they resume one-shot, whole.
        await _ask(d, world, "Which word, second?", one, first, warm=False)
        assert _carried(world, "Which word, second?") == {WORDS[2]}
        assert world.requests(NAME)[-1].has_text("Which word, first?")
        await _ask(d, world, "Which word, third?", two, second, warm=False)
        assert _carried(world, "Which word, third?") == {WORDS[3]}
        # And fresh runs are the new agent's.
        await _ask(d, world, "Anything new?", two, warm=True)


async def test_a_warm_session_resumes_outside_llmd_and_after_a_turn_elsewhere(
        daemon_factory: Any, world: World) -> None:
    one, two = _projects(world)
    with trio.fail_after(LIMIT):
        d = await _start(daemon_factory, world)
        await _ask(d, world, "Start the agent.", two, warm=False)
        await _until_idle(d)
        session = await _ask(d, world, f"Remember {WORDS[4]}.", one, warm=True)
        await _ask(d, world, f"Remember {WORDS[5]}.", two, warm=True)
        # The CLI itself resumes the session the agent wrote, in its project.
        env = {**os.environ, **world.env(NAME, world.mock.url)}
        done = await trio.run_process(
            [str(Path(REAL_CLIS) / NAME), "--output-format", "stream-json",
             "--model", GEMINI_MODEL, "--resume", session],
            stdin=b"Which word, outside?", capture_stdout=True, capture_stderr=True,
            cwd=str(one), env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        last = json.loads(done.stdout.splitlines()[-1])
        assert last["type"] == "result" and last["status"] == "success", last
        assert _carried(world, "Which word, outside?") == {WORDS[4]}
        # A turn taken one-shot through llmd (another model: no agent of it is ready)
        # makes the agent give up its copy: the next run has every turn, one-shot.
        await _ask(d, world, "Which word, elsewhere?", one, session, warm=False,
                   model="gemini-2.5-pro")
        assert _carried(world, "Which word, elsewhere?") == {WORDS[4]}
        await _ask(d, world, "Which word, back?", one, session, warm=False)
        assert _carried(world, "Which word, back?") == {WORDS[4]}
        last_request = world.requests(NAME)[-1]
        assert last_request.has_text("Which word, elsewhere?")
        assert last_request.has_text("Which word, outside?")


async def test_an_agent_is_replaced_after_max_turns(daemon_factory: Any, world: World) -> None:
    one, two = _projects(world)
    with trio.fail_after(LIMIT):
        d = await _start(daemon_factory, world, max_turns=2)
        await _ask(d, world, "Start the agent.", one, warm=False)
        await _until_idle(d)
        old = await _agent_pid(d)
        kept = await _ask(d, world, f"Remember {WORDS[0]}.", one, warm=True)
        # Its second turn: the agent ends (it is idle) and another starts at once.
        await _ask(d, world, f"Remember {WORDS[1]}.", two, warm=True)
        while alive(old):
            await trio.sleep(0.1)
        await _until_idle(d)
        assert await _agent_pid(d) != old
        assert (await _info(d))["processes"] == 1
        # The new agent does not hold the old one's sessions: they resume one-shot.
        await _ask(d, world, "Which word, then?", one, kept, warm=False)
        assert _carried(world, "Which word, then?") == {WORDS[0]}
        await _ask(d, world, "Anything new?", two, warm=True)
