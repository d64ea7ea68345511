"""Tests llmd/drivers/warmagent.py and llmd/drivers/agentproc.py with a scripted ACP agent
(tests/fakeagent.py): requests llmd does not serve are answered, permission requests
by the policy; an agent that dies, stalls or speaks out of protocol is killed and never
reused, the run failing as a crash would once its text streamed and left to go one-shot
before; a cancelled turn is cancelled in the protocol, its process killed when the
turn goes on past ``kill_grace``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from llmd.config import parse_registry
from llmd.drivers import AttemptSpec
from llmd.drivers.agents import agent_key, thread_sandbox
from llmd.drivers.warmagent import (
    Agent,
    AgentAttempt,
    AgentKey,
    AgentOptions,
    AgentPool,
    TurnSpec,
    WarmUnavailable,
)
from llmd.paths import packaged_config
from llmd.process.argv import render
from llmd.process.procs import group_members
from llmd.process.supervisor import Stream
from tests.harness import AgentHost

FAKE = str(Path(__file__).resolve().parent / "fakeagent.py")
LIMIT = 30.0


class Seen:
    """The pieces an attempt streamed."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.first = trio.Event()

    async def __call__(self, stream: Stream, text: str) -> None:
        self.pieces.append(text)
        self.first.set()


async def _agent(nursery: trio.Nursery, mode: str, log: Path | None = None,
                 **options: object) -> Agent:
    argv = [sys.executable, FAKE, mode] + ([str(log)] if log else [])
    with trio.fail_after(LIMIT):
        return await AgentHost(nursery).get("acp", argv, {"PATH": "/usr/bin:/bin"},
                                            **options)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


def _logged(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_unserved_requests_get_errors_and_permissions_follow_the_policy(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    for allow, option in ((frozenset(), "cancel"), (frozenset({"edit"}), "proceed_once")):
        agent = await _agent(nursery, "ok", allow_kinds=allow)
        seen = Seen()
        with trio.fail_after(LIMIT):
            outcome = await AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run(seen)
        assert outcome.verdict is None
        assert outcome.parsed.text == f"fs:-32601 perm:{option}" == "".join(seen.pieces)
        assert outcome.parsed.usage == {"input_tokens": 3, "output_tokens": 2}
        assert outcome.parsed.session == "s1" and outcome.process.exit_code == 0
        assert agent.replies[-2:] == [
            "refused fs/read_text_file",
            f"{'allowed' if allow else 'rejected'} a tool call (edit)"]
        agent.close()


@pytest.mark.parametrize("mode", ["garbage", "die-after-text"])
async def test_an_agent_failing_after_text_streamed_fails_the_run_and_is_not_reused(
        nursery: trio.Nursery, tmp_path: Path, mode: str) -> None:
    agent = await _agent(nursery, mode)
    seen = Seen()
    with trio.fail_after(LIMIT):
        outcome = await AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run(seen)
        await agent.process.dead.wait()
    assert seen.pieces == ["partial "] and outcome.parsed.text == "partial "
    assert outcome.verdict is not None and outcome.verdict.kind == "failure"
    assert "died mid-turn" in outcome.verdict.reason
    if mode == "garbage":
        assert "out of protocol" in outcome.verdict.reason
    assert not agent.process.alive
    with pytest.raises(WarmUnavailable):
        await AgentAttempt(agent, TurnSpec("again", str(tmp_path))).run(Seen())


async def test_an_agent_dying_before_any_text_leaves_the_run_to_go_one_shot(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    agent = await _agent(nursery, "die")
    seen = Seen()
    with trio.fail_after(LIMIT), pytest.raises(WarmUnavailable, match="died"):
        await AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run(seen)
    assert not seen.pieces and not agent.process.alive


async def test_a_rate_limit_error_of_the_agent_gives_the_delay_it_names(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    agent = await _agent(nursery, "limited")
    with trio.fail_after(LIMIT):
        outcome = await AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run(Seen())
    assert outcome.verdict is not None and outcome.verdict.kind == "rate_limit"
    assert outcome.verdict.retry_after_s == 7.5
    assert agent.process.alive  # a provider's answer, not the agent's fault


async def test_an_agent_that_never_initializes_is_killed() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(WarmUnavailable, match="did not initialize"):
            await _agent(nursery, "mute", kill_grace=1.0, start_timeout=1.0)
        nursery.cancel_scope.cancel()  # (the pool serves on until stopped)


async def test_a_cancelled_turn_is_cancelled_in_the_protocol_and_the_agent_serves_on(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    agent = await _agent(nursery, "cancellable", log, kill_grace=30.0)
    for _ in range(2):
        seen = Seen()
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as inner:
                inner.start_soon(AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run, seen)
                await seen.first.wait()
                inner.cancel_scope.cancel()
        assert agent.process.alive and agent.busy == 0
    methods = [m.get("method") for m in _logged(log)]
    assert methods.count("session/cancel") == 2 and methods.count("session/new") == 2


async def test_a_turn_that_goes_on_after_cancel_gets_its_group_killed(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    agent = await _agent(nursery, "stall", kill_grace=0.2)
    pid = agent.process.pid
    assert pid is not None
    seen = Seen()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as inner:
            inner.start_soon(AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run, seen)
            await seen.first.wait()
            inner.cancel_scope.cancel()
        await agent.process.dead.wait()
        while group_members(pid):  # reaped by the serving task
            await trio.sleep(0.05)
    assert "kill_grace" in agent.process.why_dead


def _key(mode: str, blueprint: str = "fake") -> AgentKey:
    return AgentKey(blueprint, "acp", (sys.executable, FAKE, mode),
                    (("PATH", "/usr/bin:/bin"),))


async def test_the_pool_keeps_one_agent_per_key_and_ends_it_after_idle_ttl(
        mock_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    pool = AgentPool()
    options = AgentOptions(idle_ttl=600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(LIMIT):
            agent = await pool.get(_key("ok"), options)
            assert agent is not None
            assert await pool.get(_key("ok"), options) is agent
            other = await pool.get(_key("cancellable"), options)
            assert other is not None and other is not agent
            assert pool.info() == {"processes": 2, "idle": 2, "busy": 0, "sessions": 0}
        # (The virtual clock jumps past any deadline set before: bounds start afresh.)
        mock_clock.jump(300.0)
        pool.touch(_key("cancellable"))
        mock_clock.jump(301.0)  # the first is unused for 601 s, the other for 301 s
        with trio.fail_after(LIMIT):
            await agent.process.dead.wait()
            assert other.process.alive and pool.info()["processes"] == 1
            assert agent.process.why_dead == "unused for idle_ttl"
            assert set(pool.last_used) == set(pool.options) == {_key("cancellable")}
            pool.retire({"fake"})
            await other.process.dead.wait()
            assert pool.info()["processes"] == 0
            assert pool.last_used == {} and pool.options == {}  # nothing kept of gone keys
        nursery.cancel_scope.cancel()


async def test_the_pool_starts_nothing_without_room_and_replaces_a_dead_agent(
        tmp_path: Path) -> None:
    room = [0]
    pool = AgentPool(room=lambda: room[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(LIMIT):
            assert await pool.get(_key("ok"), AgentOptions()) is None
            room[0] = 1
            agent = await pool.get(_key("ok"), AgentOptions())
            assert agent is not None and agent.process.pid is not None
            agent.close("killed from outside")
            await agent.process.dead.wait()
            fresh = await pool.get(_key("ok"), AgentOptions())
            assert fresh is not None and fresh is not agent and fresh.process.alive
            health = pool.health("fake")
            assert health == [{"pid": fresh.process.pid, "alive": True, "busy": 0,
                               "turns": 0}]
        nursery.cancel_scope.cancel()
    assert not fresh.process.alive  # the pool ended with its nursery


async def test_the_pool_starts_an_agent_in_the_background(tmp_path: Path) -> None:
    pool = AgentPool()
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(LIMIT):
            assert pool.ready(_key("ok")) is None
            assert pool.ensure(_key("ok"), AgentOptions())
            assert not pool.ensure(_key("ok"), AgentOptions())  # one is starting
            while (agent := pool.ready(_key("ok"))) is None:
                await trio.sleep(0.02)
            outcome = await AgentAttempt(agent, TurnSpec("p", str(tmp_path))).run(Seen())
            assert outcome.verdict is None
            # One that cannot start leaves no trace.
            broken = AgentKey("fake", "acp", ("/nonexistent/agent",), ())
            assert pool.ensure(broken, AgentOptions())
            while broken in pool.agents:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


# --- which agent serves a run (pure) ------------------------------------------------------------


def _bundled_spec(name: str, *, edit: bool = False, model: str | None = None) -> AttemptSpec:
    """An attempt of the bundled blueprint ``name`` with its agent switched on."""
    bp = parse_registry(packaged_config()).blueprints[name]
    bp = msgspec.structs.replace(bp, warm=msgspec.structs.replace(bp.warm, enabled=True))
    inv = render(bp, name, "a prompt", model=model, edit=edit)
    return AttemptSpec(blueprint=name, bp=bp, invocation=inv,
                       env={"PATH": "/usr/bin", "PWD": "/somewhere"}, cwd="/somewhere",
                       on_spawn=lambda pid: None, model=model, edit=edit)


def test_a_gemini_edit_run_has_an_agent_of_its_own_started_with_the_edit_flags() -> None:
    plain = agent_key(_bundled_spec("gemini", model="m1"))
    edit = agent_key(_bundled_spec("gemini", edit=True, model="m1"))
    assert plain is not None and edit is not None
    assert plain.argv == ("gemini", "--acp", "--model", "m1")
    assert edit.argv == ("gemini", "--acp", "--model", "m1", "--approval-mode", "auto_edit")
    assert ("PWD", "/somewhere") not in plain.env  # one agent serves every cwd
    assert thread_sandbox(_bundled_spec("gemini", edit=True)) is None


def test_a_codex_edit_run_gets_a_thread_in_the_sandbox_its_edit_args_name() -> None:
    plain, edit = _bundled_spec("codex"), _bundled_spec("codex", edit=True)
    assert agent_key(plain) == agent_key(edit)  # the sandbox is the thread's
    assert agent_key(plain) is not None
    assert thread_sandbox(plain) is None
    assert thread_sandbox(edit) == "workspace-write"
    for args, sandbox in (([], None), (["--sandbox=danger-full-access"], "danger-full-access"),
                          (["-s", "workspace-write"], "workspace-write"),
                          (["--sandbox", "workspace-write", "--full-auto"], None),
                          (["--dangerously-bypass-approvals-and-sandbox"], None)):
        odd = dataclasses.replace(edit, bp=msgspec.structs.replace(edit.bp, edit_args=args))
        assert thread_sandbox(odd) == sandbox, args
        # Flags the app server has no thread setting for keep the run one-shot.
        assert (agent_key(odd) is None) == (sandbox is None), args
