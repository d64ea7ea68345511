"""Tests the bundled gemini and codex blueprints warm through the real daemon and client
(llmd/drivers/agents.py, llmd/drivers/warmagent.py), with the real CLIs against
tests/mockllm.py.

A first run goes one-shot and leaves an agent starting; once it is ready, runs in other
cwds are served by that one process (``warm: true``), stream, keep their conversations
apart, resume their sessions, and a 429 still ends the attempt as a rate limit at once.
Skipped without ``LLMD_REAL_CLIS``.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest
import trio

from tests import test_real_clis
from tests.conftest import DaemonHandle
from tests.mockllm import ANSWER
from tests.test_real_clis import FAST, GEMINI_MODEL, REAL_CLIS, TEST_LIMIT, World, run

# The real-CLI tests' fixtures: the mock endpoint and the CLIs' private homes.
mock = test_real_clis.mock
world = test_real_clis.world

pytestmark = pytest.mark.skipif(not REAL_CLIS, reason="LLMD_REAL_CLIS is unset")

PARAMS: dict[str, dict[str, Any]] = {"codex": {}, "gemini": {"model": GEMINI_MODEL}}


async def _start(daemon_factory: Any, world: World) -> DaemonHandle:
    """The daemon on the bundled registry with the gemini and codex agents switched on."""
    world.write_homes(world.mock.url)
    text = world.registry(world.mock.url)
    for name in ("codex", "gemini"):
        header = f'["blueprints"."{name}"."warm"]\n"enabled" = '
        assert header in text
        text = text.replace(header + "false", header + "true")
    handle: DaemonHandle = await daemon_factory(text)
    return handle


async def _info(d: DaemonHandle) -> dict[str, Any]:
    client = await d.connect()
    reply = await client.call("daemon.info", {})
    info: dict[str, Any] = reply["result"]
    return info


async def _until_idle(d: DaemonHandle, n: int) -> None:
    """Poll until ``n`` warm processes are ready and idle."""
    while (await _info(d))["warm"]["idle"] < n:
        await trio.sleep(0.2)


@pytest.mark.parametrize("name", ["codex", "gemini"])
async def test_runs_are_served_warm_per_cwd_stream_and_resume(
        daemon_factory: Any, world: World, name: str) -> None:
    params = PARAMS[name]
    with trio.fail_after(TEST_LIMIT * 2):
        d = await _start(daemon_factory, world)
        first = await run(d, world, name, "First, about alpha.", **params)
        assert first.result["text"] == ANSWER and first.result["warm"] is False
        await _until_idle(d, 1)
        others = []
        for i, prompt in enumerate(("Second, about beta.", "Third, about gamma.")):
            cwd = world.root / f"elsewhere{i}"
            cwd.mkdir()
            outcome = await run(d, world, name, prompt, cwd=str(cwd), stream=True,
                                **params)
            result = outcome.result
            assert result["warm"] is True and result["text"] == ANSWER
            assert result["exit_code"] == 0 and result["session"]
            assert result["usage"] and result["usage"]["output_tokens"] > 0
            assert "".join(outcome.stdout_deltas()) == ANSWER
            assert len(outcome.stdout_deltas()) > 1  # it streamed
            others.append((prompt, result["session"]))
        info = await _info(d)
        assert info["warm"]["processes"] >= 1 and info["warm"]["rss_mb"] > 0
        client = await d.connect()
        status = (await client.call("health.status", {"blueprint": name}))["result"]
        assert re.search(r"warm agent pid \d+ alive, 0 busy, 2 served",
                         status["blueprints"][name]["detail"])
        # No conversation leaks: each warm run's request carries its own prompt only.
        for prompt, _ in others:
            asked = [r for r in world.requests(name) if r.has_text(prompt)]
            assert asked and not any(r.has_text("First, about alpha.") for r in asked)
        prompt, session = others[0]
        again = await run(d, world, name, "And once more?", session=session, **params)
        assert again.result["warm"] is True and again.result["session"] == session
        last = world.requests(name)[-1]
        assert last.has_text("And once more?") and last.has_text(prompt)


@pytest.mark.parametrize("name", ["codex", "gemini"])
async def test_a_429_on_a_warm_agent_is_a_rate_limit_at_once(
        daemon_factory: Any, world: World, name: str) -> None:
    params = PARAMS[name]
    with trio.fail_after(TEST_LIMIT * 2):
        d = await _start(daemon_factory, world)
        await run(d, world, name, **params)
        await _until_idle(d, 1)
        world.mock.fail(429, retry_after=7, client=name)
        started = trio.current_time()
        outcome = await run(d, world, name, "Limited?", **params)
        if "model" in params:  # a run with a model never moves to another CLI
            outcome.fails_with(-32004)
        else:  # else a rate limit moves it on to the blueprint's fallbacks
            result = outcome.result
            assert result["requested_blueprint"] == name and result["blueprint"] != name
            assert "rate limit" in result["fallback_reason"]
        assert trio.current_time() - started < FAST
        assert world.requests(name)[-1].has_text("Limited?")  # the agent did ask


async def test_an_agent_killed_from_outside_is_replaced_and_runs_still_succeed(
        daemon_factory: Any, world: World) -> None:
    name = "codex"
    with trio.fail_after(TEST_LIMIT * 2):
        d = await _start(daemon_factory, world)
        await run(d, world, name)
        await _until_idle(d, 1)
        client = await d.connect()
        status = (await client.call("health.status", {"blueprint": name}))["result"]
        match = re.search(r"warm agent pid (\d+) alive", status["blueprints"][name]["detail"])
        assert match is not None
        os.killpg(int(match.group(1)), signal.SIGKILL)
        while (await _info(d))["warm"]["processes"]:  # seen dead
            await trio.sleep(0.1)
        # The dead agent serves nothing: the run goes one-shot and succeeds, and a new
        # agent takes its place for the runs after it.
        outcome = await run(d, world, name, "After the kill.")
        assert outcome.result["text"] == ANSWER and outcome.result["warm"] is False
        await _until_idle(d, 1)
        outcome = await run(d, world, name, "And warm again.")
        assert outcome.result["text"] == ANSWER and outcome.result["warm"] is True
