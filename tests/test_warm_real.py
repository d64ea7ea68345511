"""Warm claude (llmd.drivers.warm) with the real claude against the mock, through the real
daemon: runs served by a process started ahead of need, conversations kept apart, and
every one-shot guarantee (streaming, session, cancel, rate limits) held.

The real CLIs come from ``scripts/install-real-clis`` (``LLMD_REAL_CLIS``); without them
these tests are skipped, as :mod:`tests.test_real_clis` is.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle
from tests.harness import llmc, start_daemon
from tests.mockllm import ANSWER, MockLLM, Request
from tests.test_real_clis import (
    FAST,
    FOREIGN_ENV_PREFIXES,
    REAL_CLIS,
    TEST_LIMIT,
    World,
    dump_toml,
    run,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

pytestmark = pytest.mark.skipif(
    not REAL_CLIS, reason="LLMD_REAL_CLIS is unset (see tests/test_real_clis.py)")

FIRST, SECOND = "Remember the word periwinkle.", "Which word was it?"


@pytest.fixture(name="mock")
def _mock_fixture() -> Iterator[MockLLM]:
    with MockLLM() as server:
        yield server


@pytest.fixture(name="world")
def _world_fixture(short_tmp: Path, mock: MockLLM, monkeypatch: pytest.MonkeyPatch) -> World:
    """As :mod:`tests.test_real_clis`'s world: private homes and a project directory."""
    for key in list(os.environ):
        if key.startswith(FOREIGN_ENV_PREFIXES):
            monkeypatch.delenv(key)
    (short_tmp / "bin").mkdir()
    (short_tmp / "project").mkdir()
    return World(short_tmp, short_tmp / "bin", short_tmp / "project", mock)


def registry(world: World, **warm: Any) -> str:
    """The bundled registry on the mock, with ``[daemon] warm_max`` and claude's
    ``warm`` table changed as given."""
    doc = tomllib.loads(world.registry(world.mock.url))
    if "warm_max" in warm:
        doc["daemon"]["warm_max"] = warm.pop("warm_max")
    doc["blueprints"]["claude"]["warm"].update(warm)
    return dump_toml(doc)


async def start(daemon_factory: Any, world: World, **warm: Any) -> DaemonHandle:
    world.write_homes(world.mock.url)
    handle: DaemonHandle = await daemon_factory(registry(world, **warm))
    return handle


def warm_pids(world: World) -> list[int]:
    """The warm claude processes alive (their argv says stream-json input)."""
    marker = f"\0HOME={world.home('claude')}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = b"\0" + Path(entry.path, "environ").read_bytes()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if marker in environ and b"--input-format" in argv and ") Z " not in stat:
            found.append(int(entry.name))
    return found


async def until(check: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true (bounded)."""
    try:
        with trio.fail_after(limit):
            while True:
                value = check()
                if value:
                    return value
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"not within {limit:g} s: {what}") from None


async def warm_info(d: DaemonHandle) -> dict[str, Any]:
    client = await d.connect()
    reply = await client.call("daemon.info")
    info: dict[str, Any] = reply["result"]["warm"]
    await client.aclose()
    return info


async def until_idle(d: DaemonHandle, count: int = 1) -> dict[str, Any]:
    """Wait (bounded) until ``count`` warm processes are idle."""
    with trio.fail_after(30):
        while True:
            info = await warm_info(d)
            if info["idle"] >= count:
                return info
            await trio.sleep(0.05)


def user_messages(request: Request) -> list[Any]:
    return [m for m in request.json["messages"] if m.get("role") == "user"]


async def test_second_run_is_served_warm_and_streams(daemon_factory: Any,
                                                     world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        first = await run(d, world, "claude", FIRST)
        assert first.result["warm"] is False and first.result["text"] == ANSWER
        info = await until_idle(d)
        assert info["processes"] == 1 and info["busy"] == 0
        # The memory it holds shows once it has loaded (a moment on a busy machine).
        with trio.fail_after(30):
            while (await warm_info(d))["rss_mb"] < 20:
                await trio.sleep(0.1)
        shown = (await llmc(d, "info")).stdout.decode()
        assert "warm.processes: 1\n" in shown and "warm.idle: 1\n" in shown
        status = (await llmc(d, "status")).stdout.decode()
        assert "warm: 1 process (1 idle, 0 busy, " in status
        world.mock.gate("claude")
        second = await run(d, world, "claude", SECOND, stream=True, release=True)
        result = second.result
        assert result["warm"] is True and result["text"] == ANSWER
        assert len(second.stdout_deltas()) > 1 and "".join(second.stdout_deltas()) == ANSWER
        assert result["session"] and result["session"] != first.result["session"]
        assert result["usage"]["output_tokens"] > 0
        # The process reports what it cost in all; the run's own cost is its turn's.
        assert 0 < result["cost_usd"] < 1.5 * first.result["cost_usd"]
        # Each run without a session started a fresh conversation: the provider saw only
        # its own prompt.
        answering = world.answering("claude")
        assert len(answering) == 2
        for request, prompt in zip(answering, (FIRST, SECOND), strict=True):
            assert len(user_messages(request)) == 1 and request.has_text(prompt)
        assert not answering[1].has_text(FIRST)
        # One of its two runs was served warm.
        client = await d.connect()
        figures = (await client.call("daemon.stats"))["result"]["blueprints"]["claude"]
        await client.aclose()
        assert figures["hour"]["warm_share"] == 0.5 and figures["day"]["warm_share"] == 0.5


async def test_session_continues_in_the_bound_process(daemon_factory: Any,
                                                      world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        await run(d, world, "claude", "warm up")
        await until_idle(d)
        first = await run(d, world, "claude", FIRST)
        assert first.result["warm"] is True
        session = first.result["session"]
        # The bound process and a fresh one for the next run without a session.
        await until_idle(d, 2)
        pids = warm_pids(world)
        second = await run(d, world, "claude", SECOND, session=session)
        assert second.result["warm"] is True and second.result["session"] == session
        last = world.answering("claude")[-1]
        assert last.has_text(FIRST) and last.has_text(ANSWER) and last.has_text(SECOND)
        # Multi-turn without a restart: the same processes are alive.
        assert sorted(warm_pids(world)) == sorted(pids)
        # A run without a session never gets that conversation.
        third = await run(d, world, "claude", "Something else.")
        assert third.result["warm"] is True and third.result["session"] != session
        assert not world.answering("claude")[-1].has_text(FIRST)


async def test_cancel_mid_stream_kills_the_warm_process(daemon_factory: Any,
                                                        world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        await run(d, world, "claude")
        await until_idle(d)
        [pid] = warm_pids(world)
        world.mock.gate("claude")
        client = await d.connect()
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "claude", "prompt": "long answer",
                                      "cwd": str(world.project), "stream": True}})
        job = None
        while True:
            message = await client.recv()
            if message.get("method") == "llm.output":
                job = message["params"]["job"]
                break
        canceller = await d.connect()
        reply = await canceller.call("llm.cancel", {"job": job})
        assert reply["result"]["cancelled"] is True
        while True:
            message = await client.recv()
            if message.get("id") == 1:
                break
        assert message["error"]["code"] == -32802
        world.mock.release("claude")
        await until(lambda: not Path(f"/proc/{pid}").exists()
                    or ") Z " in Path(f"/proc/{pid}/stat").read_text(), "the process gone")
        after = await run(d, world, "claude")
        assert after.result["text"] == ANSWER


async def test_rate_limit_on_a_warm_process_fails_fast(daemon_factory: Any,
                                                       world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        await run(d, world, "claude")
        await until_idle(d)
        world.mock.fail(429, retry_after=1, only="/v1/messages", client="claude")
        outcome = await run(d, world, "claude")
        # Out of retries, the run moves on to claude's first fallback (codex answers).
        result = outcome.result
        assert (result["blueprint"], result["requested_blueprint"]) == ("codex", "claude")
        assert result["attempts"] == 4
        assert outcome.elapsed < FAST + 6
        # The process that met the rate limit is not kept.
        await until(lambda: not warm_pids(world), "no warm process left")


async def test_killed_warm_process_is_replaced(daemon_factory: Any, world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        await run(d, world, "claude")
        await until_idle(d)
        [pid] = warm_pids(world)
        os.kill(pid, signal.SIGKILL)
        await until(lambda: pid not in warm_pids(world), "the killed process gone")
        outcome = await run(d, world, "claude")
        assert outcome.result["text"] == ANSWER
        await until_idle(d)
        assert pid not in warm_pids(world) and len(warm_pids(world)) == 1


async def test_hung_warm_process_falls_back_to_one_shot(daemon_factory: Any,
                                                        world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        await run(d, world, "claude")
        await until_idle(d)
        [pid] = warm_pids(world)
        os.kill(pid, signal.SIGSTOP)  # alive, silent
        outcome = await run(d, world, "claude")
        assert outcome.result["text"] == ANSWER and outcome.result["warm"] is False
        await until(lambda: pid not in warm_pids(world), "the hung process killed")


async def test_idle_ttl_and_warm_max_end_processes(daemon_factory: Any, world: World,
                                                   tmp_path: Path) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world, warm_max=1, idle_ttl=3)
        await run(d, world, "claude")
        await until_idle(d)
        [first] = warm_pids(world)
        other = tmp_path / "other"
        other.mkdir()
        outcome = await run(d, world, "claude", cwd=str(other))
        assert outcome.result["warm"] is False  # another cwd, another key
        # warm_max = 1: the new key's process evicts the older one.
        await until(lambda: first not in warm_pids(world) and len(warm_pids(world)) == 1,
                    "the least recently used process evicted")
        # idle_ttl = 3: the last one ends unused.
        await until(lambda: not warm_pids(world), "the idle process expired")
        assert (await warm_info(d))["processes"] == 0


async def test_prewarm_then_sigkilled_daemon_leaves_nothing(daemon_factory: Any,
                                                            world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        client = await d.connect()
        reply = await client.call("llm.prewarm", {"blueprint": "claude",
                                                  "cwd": str(world.project)})
        assert reply["result"] == {"blueprint": "claude", "started": True}
        await until_idle(d)
        assert len(warm_pids(world)) == 1
        outcome = await run(d, world, "claude")
        assert outcome.result["warm"] is True
        await until_idle(d, 2)
        pids = warm_pids(world)
        assert len(pids) == 2
        # Stop both from ending on their own when the daemon's pipes close, so only
        # recovery can end them.
        for one in pids:
            os.kill(one, signal.SIGSTOP)
        d.proc.send_signal(signal.SIGKILL)
        await d.proc.wait()
        assert sorted(warm_pids(world)) == sorted(pids)
        (d.workdir / "notify.sock").unlink()
        again = await start_daemon(d.workdir, d.config.read_text())
        try:
            await until(lambda: not warm_pids(world), "the orphan warm processes killed")
        finally:
            await again.aclose()


async def test_reload_and_sigterm_kill_warm_processes(daemon_factory: Any,
                                                      world: World) -> None:
    with trio.fail_after(TEST_LIMIT):
        d = await start(daemon_factory, world)
        await run(d, world, "claude")
        await until_idle(d)
        [pid] = warm_pids(world)
        # A reload that changes the blueprint: its warm process is not used again.
        d.config.write_text(registry(world, idle_ttl=300))
        client = await d.connect()
        assert "result" in await client.call("daemon.reload")
        await until(lambda: pid not in warm_pids(world), "the process of the old blueprint")
        await run(d, world, "claude")
        await until_idle(d)
        pids = warm_pids(world)
        assert len(pids) == 1
        for one in pids:
            os.kill(one, signal.SIGSTOP)  # only the daemon's kill can end it now
        assert await d.stop(signal.SIGTERM) == 0
        await until(lambda: not warm_pids(world), "the warm processes killed on SIGTERM")
