"""``llmc mcp`` end to end: the official MCP client (``mcp``) against the real daemon.

The SDK is anyio-based; under pytest-trio, anyio runs on the trio backend, so the SDK's
``stdio_client`` and ``ClientSession`` are used directly in the tests' trio tasks. A few
tests speak the protocol by hand (:class:`RawBridge`) for what the SDK never sends: other
protocol versions, batches, malformed lines, a cancellation by id.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from llmc.mcp import calls as mcp_calls
from llmc.mcp import schemas as mcp_schemas
from llmc.mcp import tools as mcp_tools
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tests.conftest import DaemonHandle, RawClient, alive, read_pids, registry_toml
from tests.harness import wait_until

pytestmark = pytest.mark.usefixtures("fake_bin")

ROOT = Path(__file__).resolve().parent.parent


def registry(fake_bin: Path, pidfile: Path | None = None) -> str:
    env = {"FAKE_PIDFILE": str(pidfile)} if pidfile is not None else {}
    return registry_toml(fake_bin, {
        "say": {"command": ["@fakecli", "text", "{prompt}"],
                "description": "Says the prompt back, for tests."},
        "jsonish": {"command": ["@fakecli", "text", '{"colours": ["red", "green"]}'],
                    "prompt": "stdin", "description": "Answers with a JSON object."},
        "lines": {"command": ["@fakecli", "lines", "{prompt}"],
                  "description": "Prints numbered lines."},
        "fail": {"command": ["@fakecli", "fail", "3"], "prompt": "stdin",
                 "description": "Always fails."},
        "slow": {"command": ["@fakecli", "sleep", "30"], "prompt": "stdin",
                 "description": "Takes half a minute."},
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"],
                 "description": "Waits for a file."},
        "hang": {"command": ["@fakecli", "grandchild"], "prompt": "stdin", "kill_grace": 1.0,
                 "env": env, "description": "Never ends; forks a grandchild."},
    })


def bridge_env(socket: Path | str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LLMD_SOCKET": str(socket),
           "PYTHONPATH": str(ROOT / "client"), **extra}
    env.pop("NOTIFY_SOCKET", None)
    return env


@asynccontextmanager
async def session(socket: Path | str, cwd: Path, *args: str,
                  **env: str) -> AsyncIterator[ClientSession]:
    """An initialized SDK session with ``llmc mcp``."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "llmc", "mcp", *args],
                                   env=bridge_env(socket, **env), cwd=str(cwd))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


class RawBridge(RawClient):
    """``llmc mcp`` driven line by line, over its stdin and stdout."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        super().__init__(trio.StapledStream(proc.stdin, proc.stdout))
        self.proc = proc

    @classmethod
    @asynccontextmanager
    async def open(cls, socket: Path | str, cwd: Path, **env: str) -> AsyncIterator[RawBridge]:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmc", "mcp"], stdin=-1, stdout=-1, stderr=None,
            env=bridge_env(socket, **env), cwd=str(cwd))
        bridge = cls(proc)
        try:
            yield bridge
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def reply_skipping(bridge: RawBridge, id: int, never: int) -> Any:
    """Ping with ``id`` and return the answer, checking that nothing answers ``never``."""
    await bridge.send({"jsonrpc": "2.0", "id": id, "method": "ping"})
    while True:
        message = await bridge.recv()
        assert message.get("id") != never, message
        if message.get("id") == id:
            return message


# -- the protocol ------------------------------------------------------------------------------

async def test_initialize_and_tools_list_with_the_registrys_descriptions(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with session(d.socket, d.workdir) as client:
            init = client.initialize_result
            assert init is not None
            assert init.protocol_version == "2025-11-25"
            assert init.server_info.name == "llmd"
            assert init.capabilities.tools is not None
            assert "blueprint" in (init.instructions or "")
            listed = await client.list_tools()
            await client.send_ping()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"run", "start", "result", "cancel", "status", "wait", "jobs", "peek"}
    run = tools["run"]
    blueprint = run.input_schema["properties"]["blueprint"]
    assert set(blueprint["enum"]) == {"say", "jsonish", "lines", "fail", "slow", "hand", "hang"}
    assert "- say: Says the prompt back, for tests." in blueprint["description"]
    assert "- fail: Always fails." in blueprint["description"]
    assert run.input_schema["required"] == ["blueprint", "prompt"]
    assert run.output_schema is not None and "text" in run.output_schema["properties"]
    assert run.annotations is not None and run.annotations.read_only_hint is False
    assert tools["result"].input_schema["properties"]["offset"]["type"] == "integer"
    assert tools["status"].annotations is not None
    assert tools["status"].annotations.read_only_hint is True
    assert all(tool.description for tool in listed.tools)


@pytest.mark.parametrize(("asked", "answered"), [
    ("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"),
    ("2024-11-05", "2024-11-05"), ("2026-07-28", "2025-11-25"), ("1999-01-01", "2025-11-25"),
])
async def test_version_negotiation(daemon_factory: Any, fake_bin: Path, asked: str,
                                   answered: str) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            reply = await bridge.call("initialize", {
                "protocolVersion": asked, "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"}})
            await bridge.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            listed = await bridge.call("tools/list", id=2)
            called = await bridge.call("tools/call", {
                "name": "run", "arguments": {"blueprint": "say", "prompt": "hi"}}, id=3)
    assert reply["result"]["protocolVersion"] == answered
    run = listed["result"]["tools"][0]
    result = called["result"]
    assert result["content"][0] == {"type": "text", "text": "hi"}
    # Fields a revision does not define stay out of what its clients get.
    new = answered >= "2025-06-18"
    assert ("outputSchema" in run) is new
    assert ("structuredContent" in result) is new
    assert ("annotations" in run) is (answered >= "2025-03-26")
    assert "resultType" not in result


async def test_the_stateless_2026_revision(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    params = StdioServerParameters(command=sys.executable, args=["-m", "llmc", "mcp"],
                                   env=bridge_env(d.socket), cwd=str(d.workdir))
    with trio.fail_after(30):
        # The SDK validates every result against the 2026-07-28 schema once it has adopted
        # the discover result.
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            found = await client.discover()
            assert found.supported_versions == ["2026-07-28"]
            assert client.protocol_version == "2026-07-28"
            listed = await client.list_tools()
            result = await client.call_tool("run", {"blueprint": "say", "prompt": "modern"})
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            envelope = {"io.modelcontextprotocol/protocolVersion": "2030-01-01",
                        "io.modelcontextprotocol/clientCapabilities": {}}
            refused = await bridge.call("tools/list", {"_meta": envelope})
            envelope["io.modelcontextprotocol/protocolVersion"] = "2026-07-28"
            raw = await bridge.call("tools/list", {"_meta": envelope}, id=2)
    assert {tool.name for tool in listed.tools} >= {"run", "status"}
    assert text_of(result).startswith("modern")
    assert result.structured_content is not None
    assert result.structured_content["text"] == "modern"
    assert refused["error"]["code"] == -32022
    assert refused["error"]["data"] == {"supported": ["2026-07-28"], "requested": "2030-01-01"}
    assert raw["result"]["resultType"] == "complete"
    assert raw["result"]["cacheScope"] == "private"
    assert raw["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "llmd"


async def test_malformed_input_batches_and_unknown_methods(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            await bridge.send_raw(b"{not json\n")
            parse = await bridge.recv()
            await bridge.send({"jsonrpc": "2.0", "id": 1})
            invalid = await bridge.recv()
            unknown = await bridge.call("resources/list", id=2)
            await bridge.send([{"jsonrpc": "2.0", "id": 3, "method": "ping"},
                               {"jsonrpc": "2.0", "method": "notifications/initialized"},
                               {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
                                   "name": "run",
                                   "arguments": {"blueprint": "say", "prompt": "b"}}}])
            batch = await bridge.recv()
            ping = await bridge.call("ping", id=5)
    assert parse["error"]["code"] == -32700 and parse["id"] is None
    assert invalid["error"]["code"] == -32600
    assert unknown["error"]["code"] == -32601
    assert sorted(reply["id"] for reply in batch) == [3, 4]
    assert ping["result"] == {}


async def test_answers_are_still_sent_after_stdin_ends(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            await bridge.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "run", "arguments": {"blueprint": "say", "prompt": "late"}}})
            assert bridge.proc.stdin is not None
            await bridge.proc.stdin.aclose()
            reply = await bridge.recv()
            assert await bridge.proc.wait() == 0
    assert reply["result"]["content"][0]["text"] == "late"


# -- the tools ---------------------------------------------------------------------------------

async def test_run_returns_the_answer_and_its_facts(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with session(d.socket, d.workdir) as client:
            result = await client.call_tool("run", {"blueprint": "say", "prompt": "héllo"})
            asked = await client.call_tool("run", {"blueprint": "jsonish", "prompt": "x",
                                                   "json": True, "timeout": "quick"})
    assert not result.is_error
    assert result.content[0].type == "text" and result.content[0].text == "héllo"
    facts = result.structured_content
    assert facts is not None
    assert facts["text"] == "héllo"
    assert facts["state"] == "succeeded"
    assert facts["blueprint"] == "say"
    assert facts["exit_code"] == 0 and facts["attempts"] == 1
    assert facts["next_offset"] is None and facts["total_chars"] == 5
    assert isinstance(facts["job"], str) and facts["job"] in text_of(result)
    assert isinstance(facts["duration_s"], float)
    assert not asked.is_error
    assert asked.structured_content is not None
    assert asked.structured_content["json"] == {"colours": ["red", "green"]}


async def test_start_result_and_paging_a_large_answer(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    expected = "".join(f"line {i}\n" for i in range(600))
    with trio.fail_after(60):
        async with session(d.socket, d.workdir, LLMC_MCP_MAX_CHARS="1000") as client:
            started = await client.call_tool("start", {"blueprint": "lines", "prompt": "600"})
            assert not started.is_error
            assert started.structured_content is not None
            job = started.structured_content["job"]
            assert started.structured_content["state"] in ("queued", "running")
            pages = []
            offset = 0
            first = await client.call_tool("result", {"job": job, "wait": True})
            while True:
                page = first if offset == 0 else await client.call_tool(
                    "result", {"job": job, "offset": offset})
                assert not page.is_error, text_of(page)
                facts = page.structured_content
                assert facts is not None and facts["state"] == "succeeded"
                assert len(facts["text"]) <= 1000
                pages.append(facts["text"])
                if facts["next_offset"] is None:
                    break
                assert f'job "{job}" and offset {facts["next_offset"]}' in facts["note"]
                offset = facts["next_offset"]
            cut = await client.call_tool("run", {"blueprint": "lines", "prompt": "600"})
    assert "".join(pages) == expected
    assert len(pages) >= len(expected) // 1000
    # Pages end at line breaks.
    assert all(page.endswith("\n") for page in pages)
    assert cut.structured_content is not None
    assert cut.structured_content["next_offset"] is not None
    assert cut.structured_content["total_chars"] == len(expected)
    assert "call `result` with job" in text_of(cut)


async def test_result_of_a_running_job_and_cancel(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with session(d.socket, d.workdir) as client:
            started = await client.call_tool("start", {"blueprint": "slow", "prompt": ""})
            assert started.structured_content is not None
            job = started.structured_content["job"]
            running = await client.call_tool("result", {"job": job, "wait": True,
                                                        "timeout": 0.2})
            cancelled = await client.call_tool("cancel", {"job": job})
            after = await client.call_tool("result", {"job": job, "wait": True})
            again = await client.call_tool("cancel", {"job": job})
            missing = await client.call_tool("result", {"job": "nope"})
    assert not running.is_error
    assert running.structured_content is not None
    assert running.structured_content["state"] == "running"
    assert running.structured_content["text"] is None
    assert "still running" in text_of(running)
    assert cancelled.structured_content == {"job": job, "cancelled": True}
    assert after.is_error and "cancelled" in text_of(after)
    assert again.structured_content == {"job": job, "cancelled": False}
    assert missing.is_error and "nope" in text_of(missing)


async def test_status_lists_blueprints_with_health(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        async with session(d.socket, d.workdir) as client:
            status = await client.call_tool("status", {"check": True})
    assert not status.is_error
    assert status.structured_content is not None
    rows = {row["name"]: row for row in status.structured_content["blueprints"]}
    assert rows["say"]["state"] == "healthy"
    assert rows["say"]["description"] == "Says the prompt back, for tests."
    assert "- say: healthy" in text_of(status)


async def test_status_has_todays_totals(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        async with session(d.socket, d.workdir) as client:
            ran = await client.call_tool("run", {"blueprint": "say", "prompt": "hello"})
            status = await client.call_tool("status", {})
    assert not ran.is_error
    assert status.structured_content is not None
    today = status.structured_content["today"]
    assert (today["runs"], today["succeeded"], today["cost_usd"]) == (1, 1, None)
    assert "Today: 1 run (0 failed)" in text_of(status)


# -- failures ----------------------------------------------------------------------------------

async def test_failures_are_error_results_that_say_what_to_do(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with session(d.socket, d.workdir) as client:
            failed = await client.call_tool("run", {"blueprint": "fail", "prompt": "x"})
            unknown = await client.call_tool("run", {"blueprint": "nope", "prompt": "x"})
            bad = await client.call_tool("run", {"blueprint": "say"})
            extra = await client.call_tool("run", {"blueprint": "say", "prompt": "x",
                                                   "colour": "red"})
            with pytest.raises(MCPError) as raised:
                await client.call_tool("frobnicate", {})
    assert failed.is_error
    message = text_of(failed)
    assert "'fail' failed" in message and "exit status 3" in message
    assert "boom" in message  # the CLI's stderr
    assert "another blueprint" in message  # what to do
    assert unknown.is_error and "unknown blueprint 'nope'" in text_of(unknown)
    assert bad.is_error and "`prompt` is required" in text_of(bad)
    assert extra.is_error and "'colour'" in text_of(extra)
    assert raised.value.code == -32602


async def test_without_a_daemon_it_still_lists_tools_and_says_how_to_start_llmd(
        short_tmp: Path) -> None:
    socket = short_tmp / "none" / "llmd.sock"
    with trio.fail_after(30):
        async with session(socket, short_tmp) as client:
            listed = await client.list_tools()
            result = await client.call_tool("run", {"blueprint": "claude", "prompt": "hi"})
            status = await client.call_tool("status", {})
    run = next(tool for tool in listed.tools if tool.name == "run")
    blueprint = run.input_schema["properties"]["blueprint"]
    assert "enum" not in blueprint
    assert "not reachable" in blueprint["description"]
    for failure in (result, status):
        assert failure.is_error
        message = text_of(failure)
        assert "llmd is not running" in message
        assert "llmd serve" in message
        assert "systemctl --user enable --now llmd.socket" in message


# -- long runs ---------------------------------------------------------------------------------

async def test_progress_is_reported_while_a_run_goes_on(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    seen: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message or ""))
        # The CLI waits for this file: the run can only end after a periodic report.
        if "running for" in (message or ""):
            flag.touch()

    with trio.fail_after(30):
        async with session(d.socket, d.workdir, LLMC_MCP_PROGRESS_S="0.1") as client:
            result = await client.call_tool("run", {"blueprint": "hand", "prompt": str(flag)},
                                            progress_callback=on_progress)
    assert not result.is_error
    assert text_of(result).startswith("before\nafter\n")
    values = [value for value, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    messages = [message for _, message in seen]
    # A detached run is handed out once spawned: the first report already says running.
    assert "running" in messages[0]
    assert any("running for" in m for m in messages)
    assert all(m.startswith("hand: llmd job ") for m in messages)


async def test_calls_run_concurrently(daemon_factory: Any, fake_bin: Path,
                                      short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "free"
    order: list[str] = []
    with trio.fail_after(30):
        async with session(d.socket, d.workdir) as client:

            async def blocked() -> None:
                await client.call_tool("run", {"blueprint": "hand", "prompt": str(flag)})
                order.append("blocked")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked)
                # Answered while the other call still waits for its file.
                await client.call_tool("run", {"blueprint": "say", "prompt": "quick"})
                order.append("quick")
                flag.touch()
    assert order == ["quick", "blocked"]


async def test_a_cancelled_call_kills_the_process_group(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "pids"
    d: DaemonHandle = await daemon_factory(registry(fake_bin, pidfile))
    with trio.fail_after(30):
        async with session(d.socket, d.workdir) as client:
            with trio.CancelScope() as scope:

                async def cancel_when_both_run() -> None:
                    await wait_until(lambda: len(read_pids(pidfile)) >= 2)
                    scope.cancel()  # the SDK sends notifications/cancelled

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_when_both_run)
                    await client.call_tool("run", {"blueprint": "hang", "prompt": ""})
            assert scope.cancelled_caught
            pids = read_pids(pidfile)
            await wait_until(lambda: not any(alive(p) for p in pids))
            # The bridge goes on serving.
            after = await client.call_tool("run", {"blueprint": "say", "prompt": "still here"})
        raw: RawClient = await d.connect()
        listed = await raw.call("jobs.list", {"limit": 2})
    assert text_of(after).startswith("still here")
    states = {job["blueprint"]: job["state"] for job in listed["result"]["jobs"]}
    assert states["hang"] == "cancelled"


async def test_cancelled_by_id_gets_no_answer(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            await bridge.call("initialize", {"protocolVersion": "2025-11-25",
                                             "capabilities": {},
                                             "clientInfo": {"name": "t", "version": "0"}})
            await bridge.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                "name": "run", "arguments": {"blueprint": "slow", "prompt": ""},
                "_meta": {"progressToken": "p7"}}})
            first = await bridge.recv()  # progress: the job is queued, so it has an id
            await bridge.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                               "params": {"requestId": 7, "reason": "test"}})
            job = first["params"]["message"].split()[3]  # "slow: llmd job ID queued"
            raw = await d.connect()
            record = await raw.call("jobs.get", {"job": job, "wait": True, "timeout": 10})
            assert record["result"]["state"] == "cancelled"
            # Had the cancelled call been answered, its answer would come before this one.
            ping = await reply_skipping(bridge, 8, never=7)
    assert first["method"] == "notifications/progress"
    assert first["params"]["progressToken"] == "p7"
    assert ping == {"jsonrpc": "2.0", "id": 8, "result": {}}


async def test_a_cancelled_wait_leaves_the_job_running(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            started = await bridge.call("tools/call", {
                "name": "start", "arguments": {"blueprint": "slow", "prompt": ""}})
            job = started["result"]["structuredContent"]["job"]
            await bridge.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "result", "arguments": {"job": job, "wait": True}}})
            # Whether the cancellation finds the wait under way or not yet begun, the call
            # ends unanswered and the job runs on.
            await bridge.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                               "params": {"requestId": 2}})
            ping = await reply_skipping(bridge, 3, never=2)
            raw = await d.connect()
            record = await raw.call("jobs.get", {"job": job})
            stopped = await bridge.call("tools/call", {
                "name": "cancel", "arguments": {"job": job}}, id=4)
    assert ping == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert record["result"]["state"] == "running"
    assert stopped["result"]["structuredContent"] == {"job": job, "cancelled": True}


# -- settings and the pure parts ---------------------------------------------------------------

async def test_bad_settings_are_usage_errors(short_tmp: Path) -> None:
    with trio.fail_after(30):
        env = bridge_env(short_tmp / "x.sock", LLMC_MCP_MAX_CHARS="lots")
        proc = await trio.run_process([sys.executable, "-m", "llmc", "mcp"], stdin=b"",
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      env=env)
        tiny = await trio.run_process([sys.executable, "-m", "llmc", "mcp", "--max-chars", "5"],
                                      stdin=b"", capture_stdout=True, capture_stderr=True,
                                      check=False, env=bridge_env(short_tmp / "x.sock"))
    assert proc.returncode == 2 and proc.stdout == b""
    assert b"LLMC_MCP_MAX_CHARS" in proc.stderr
    assert tiny.returncode == 2 and b"at least 200" in tiny.stderr


def test_pages_end_at_line_breaks_and_cover_the_text() -> None:
    # Lines shorter than a tenth of a page: a break is always near the page's end.
    text = "".join(f"{i:04d} " + "x" * (i % 40) + "\n" for i in range(400))
    pages, offset = [], 0
    while True:
        result = mcp_tools.answer_result({"job": "j", "state": "succeeded", "text": text},
                                         500, offset)
        facts = result["structuredContent"]
        pages.append(facts["text"])
        assert len(facts["text"]) <= 500
        if facts["next_offset"] is None:
            break
        assert facts["text"].endswith("\n")
        offset = facts["next_offset"]
    assert "".join(pages) == text
    # Without a line break near its end, a page is full.
    long = mcp_tools.answer_result({"job": "j", "text": "y" * 1200}, 500)
    assert long["structuredContent"]["next_offset"] == 500
    past = mcp_tools.answer_result({"job": "j", "text": "abc"}, 500, 10)
    assert "past the end" in past["structuredContent"]["note"]


def test_run_arguments_are_checked_and_completed() -> None:
    params = mcp_tools.run_params({"blueprint": "b", "prompt": "p", "cwd": "sub",
                                   "timeout": "120"}, "/work")
    assert params == {"blueprint": "b", "prompt": "p", "cwd": "/work/sub", "timeout": 120.0}
    assert mcp_tools.run_params({"blueprint": "b", "prompt": "", "timeout": "long"},
                                None) == {"blueprint": "b", "prompt": "", "timeout": "long"}
    for bad, words in (({"prompt": "p"}, "`blueprint` is required"),
                       ({"blueprint": "b", "prompt": 3}, "must be a string"),
                       ({"blueprint": "b", "prompt": "p", "timeout": -1}, "positive"),
                       ({"blueprint": "b", "prompt": "p", "json": "yes"}, "true or false"),
                       ({"blueprint": "b", "prompt": "p", "cwd": "rel"}, "absolute")):
        with pytest.raises(mcp_tools.ArgumentError, match=words):
            mcp_tools.run_params(bad, None)


def test_input_schemas_keep_to_what_model_apis_accept() -> None:
    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            assert not {"anyOf", "oneOf", "allOf", "exclusiveMinimum"} & set(schema), schema
            assert not isinstance(schema.get("type"), list), schema
            for value in schema.values():
                walk(value)
        elif isinstance(schema, list):
            for value in schema:
                walk(value)

    for blueprints in (None, [], [{"name": "a", "description": "for a"}]):
        for tool in mcp_schemas.tool_definitions(blueprints, 20_000):
            assert tool["inputSchema"]["type"] == "object"
            walk(tool["inputSchema"])


def test_error_texts_carry_the_facts_and_advice() -> None:
    result = mcp_tools.rpc_error_result(-32004, "'claude' is rate limited", {
        "job": "j1", "blueprint": "claude", "attempts": 3, "retry_after_s": 30})
    text = result["content"][0]["text"]
    assert result["isError"] is True
    assert "job j1" in text and "retry after 30 s" in text and "another blueprint" in text
    timed = mcp_tools.rpc_error_result(-32003, "timed out", {"output": "partial answer"})
    assert "partial answer" in timed["content"][0]["text"]
    for code in (-32800, -32802):  # by the call's own cancel, or by the server
        cancelled = mcp_tools.rpc_error_result(code, "cancelled", {"output": "so far"})
        assert "so far" in cancelled["content"][0]["text"]
        assert "Run it again" in cancelled["content"][0]["text"]


def test_a_run_cancelled_before_its_job_id_is_known_is_cancelled_once_it_is() -> None:
    # llmd keeps a detached job when its client leaves: shutting the connection down
    # before `llm.run` answered would leave the job running unseen.
    ours, llmd_side = socket.socketpair()
    with contextlib.closing(llmd_side):
        call = mcp_calls.Call(1, None, "2025-06-18")
        call.owns_job = True
        link = mcp_calls._Link(ours)
        call.attach(link)
        assert call.cancel() is None  # no id yet
        llmd_side.setblocking(False)
        with pytest.raises(BlockingIOError):
            llmd_side.recv(1)  # the connection stays up for llm.run's answer
        assert call.adopt("j1") is False  # the caller then cancels j1 in llmd
        link.close()
