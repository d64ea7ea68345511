"""``llmc mcp`` long work (llmc.mcp.longwork, llmc.mcp.tasks): the inline wait cap, fan-out,
``wait``, ``jobs``, ``peek`` and MCP tasks under 2025-11-25 and the 2026-07-28 extension,
through the official SDK where it has client support, raw JSON-RPC where it has not."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from llmc.mcp import tasks as mcp_tasks

from tests.conftest import DaemonHandle, RawClient
from tests.test_mcp import RawBridge, bridge_env, registry, session, text_of

pytestmark = pytest.mark.usefixtures("fake_bin")

MODERN = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientCapabilities": {
              "extensions": {"io.modelcontextprotocol/tasks": {}}}}
PLAIN = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
         "io.modelcontextprotocol/clientCapabilities": {}}


async def job_state(d: DaemonHandle, job: str) -> str:
    client: RawClient = await d.connect()
    reply = await client.call("jobs.get", {"job": job})
    return str(reply["result"]["state"])


async def initialized(bridge: RawBridge, version: str = "2025-11-25") -> dict[str, Any]:
    reply = await bridge.call("initialize", {"protocolVersion": version, "capabilities": {},
                                             "clientInfo": {"name": "t", "version": "1"}},
                              id="init")
    await bridge.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return dict(reply["result"])


async def test_run_returns_its_handle_after_max_wait_and_the_job_goes_on(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(60):
        async with session(d.socket, d.workdir, "--max-wait", "1") as client:
            cut = await client.call_tool("run", {"blueprint": "hand", "prompt": str(flag)})
        # The bridge has exited: the job runs on.
        assert cut.structured_content is not None
        job = cut.structured_content["job"]
        assert await job_state(d, job) == "running"
        flag.touch()
        async with session(d.socket, d.workdir) as client:
            answer = await client.call_tool("result", {"job": job, "wait": True})
    assert not cut.is_error
    assert cut.structured_content["state"] == "running"
    assert cut.structured_content["elapsed_s"] >= 1
    assert f"`result` with job \"{job}\" and wait: true" in text_of(cut)
    assert not answer.is_error and text_of(answer).startswith("before\nafter\n")


async def test_max_wait_from_the_environment_and_its_checks(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        async with RawBridge.open(d.socket, d.workdir, LLMC_MCP_MAX_WAIT="0.5") as bridge:
            reply = await bridge.call("tools/call", {"name": "run", "arguments": {
                "blueprint": "hand", "prompt": str(short_tmp / "never")}})
    assert reply["result"]["structuredContent"]["state"] == "running"
    client: RawClient = await d.connect()
    job = reply["result"]["structuredContent"]["job"]
    with trio.fail_after(30):
        assert (await client.call("llm.cancel", {"job": job}))["result"]["cancelled"]
        bad = await trio.run_process(
            [sys.executable, "-m", "llmc", "mcp"], stdin=b"", capture_stderr=True,
            check=False, env=bridge_env(d.socket, LLMC_MCP_MAX_WAIT="soon"))
    assert bad.returncode == 2 and b"LLMC_MCP_MAX_WAIT" in bad.stderr


async def test_fan_out_to_three_blueprints_with_one_failing_and_wait(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        async with session(d.socket, d.workdir) as client:
            started = await client.call_tool("start", {"blueprints": ["say", "fail", "jsonish"],
                                                       "prompt": "hello"})
            assert started.structured_content is not None
            entries = started.structured_content["jobs"]
            ids = [entry["job"] for entry in entries]
            waited = await client.call_tool("wait", {"jobs": ids, "mode": "all"})
            several = await client.call_tool("start", {"blueprint": "say",
                                                       "prompts": ["one", "two"]})
            assert several.structured_content is not None
            two = [entry["job"] for entry in several.structured_content["jobs"]]
            anyone = await client.call_tool("wait", {"jobs": two, "mode": "any"})
            both = await client.call_tool("wait", {"jobs": two})
            listed = await client.call_tool("jobs", {"blueprint": "say", "limit": 5})
            refused = await client.call_tool("start", {"blueprints": ["say", "nosuch"],
                                                       "prompt": "x"})
    assert [entry["blueprint"] for entry in entries] == ["say", "fail", "jsonish"]
    assert all(entry["state"] in ("queued", "running") for entry in entries)
    assert waited.structured_content is not None
    rows = {row["job"]: row for row in waited.structured_content["jobs"]}
    assert waited.structured_content["complete"] is True
    assert rows[ids[0]]["state"] == "succeeded" and rows[ids[0]]["text"] == "hello"
    assert rows[ids[1]]["state"] == "failed" and "(-32005)" in rows[ids[1]]["error"]
    assert rows[ids[2]]["state"] == "succeeded" and "colours" in rows[ids[2]]["text"]
    assert anyone.structured_content is not None and anyone.structured_content["complete"]
    assert any(row["state"] == "succeeded" for row in anyone.structured_content["jobs"])
    assert both.structured_content is not None
    assert [row["text"] for row in both.structured_content["jobs"]] == ["one", "two"]
    assert listed.structured_content is not None
    prompts = {row["job"]: row["prompt"] for row in listed.structured_content["jobs"]}
    assert prompts[two[0]] == "one" and prompts[two[1]] == "two"
    assert all(row["blueprint"] == "say" for row in listed.structured_content["jobs"])
    assert refused.structured_content is not None
    states = [entry["state"] for entry in refused.structured_content["jobs"]]
    assert states[1] == "refused" and states[0] in ("queued", "running")
    assert "(-32001)" in refused.structured_content["jobs"][1]["error"]


async def test_wait_returns_when_its_time_is_up(daemon_factory: Any, fake_bin: Path,
                                                short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(60):
        async with session(d.socket, d.workdir) as client:
            started = await client.call_tool("start", {"blueprint": "hand",
                                                       "prompt": str(flag)})
            assert started.structured_content is not None
            job = started.structured_content["job"]
            waited = await client.call_tool("wait", {"jobs": [job], "timeout": 0.2})
            bad = await client.call_tool("wait", {"jobs": [job], "mode": "some"})
            await client.call_tool("cancel", {"job": job})
    assert waited.structured_content is not None
    assert waited.structured_content["complete"] is False
    assert waited.structured_content["jobs"][0]["state"] == "running"
    assert bad.is_error and "`mode`" in text_of(bad)


async def test_peek_and_jobs_output_on_a_streaming_job(daemon_factory: Any, fake_bin: Path,
                                                       short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(60):
        async with session(d.socket, d.workdir) as client:
            started = await client.call_tool("start", {"blueprint": "hand",
                                                       "prompt": str(flag)})
            assert started.structured_content is not None
            job = started.structured_content["job"]
            while True:
                peeked = await client.call_tool("peek", {"job": job})
                assert peeked.structured_content is not None
                if peeked.structured_content["text"]:
                    break
                await trio.sleep(0.02)
            flag.touch()
            await client.call_tool("result", {"job": job, "wait": True})
            tail = await client.call_tool("peek", {"job": job, "tail_chars": 6})
    assert peeked.structured_content["state"] == "running"
    assert peeked.structured_content["text"] == "before\n"
    assert tail.structured_content is not None
    assert tail.structured_content == {"job": job, "state": "succeeded", "text": "after\n",
                                       "offset": 7, "total_chars": 13}


async def test_tasks_under_2025_11_25(daemon_factory: Any, fake_bin: Path,
                                      short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(60):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            init = await initialized(bridge)
            listed = await bridge.call("tools/list", id=1)
            created = await bridge.call("tools/call", {
                "name": "run", "arguments": {"blueprint": "hand", "prompt": str(flag)},
                "task": {"ttl": 60000}}, id=2)
            task_id = created["result"]["task"]["taskId"]
            working = await bridge.call("tasks/get", {"taskId": task_id}, id=3)
            forbidden = await bridge.call("tools/call", {
                "name": "status", "arguments": {}, "task": {}}, id=4)
            failing = await bridge.call("tools/call", {
                "name": "run", "arguments": {"blueprint": "fail", "prompt": ""},
                "task": {}}, id=5)
            failed_id = failing["result"]["task"]["taskId"]
            failed = await bridge.call("tasks/result", {"taskId": failed_id}, id=6)
            failed_task = await bridge.call("tasks/get", {"taskId": failed_id}, id=7)
            unknown = await bridge.call("tasks/get", {"taskId": "nope"}, id=8)
            not_here = await bridge.call("tasks/update", {"taskId": task_id}, id=9)
        # A second bridge (the client restarted) answers for the first one's task.
        async with RawBridge.open(d.socket, d.workdir) as second:
            await initialized(second)
            flag.touch()
            result = await second.call("tasks/result", {"taskId": task_id}, id=1)
            done = await second.call("tasks/get", {"taskId": task_id}, id=2)
            tasks = await second.call("tasks/list", {}, id=3)
            again = await second.call("tasks/cancel", {"taskId": task_id}, id=4)
            slow = await second.call("tools/call", {
                "name": "run", "arguments": {"blueprint": "slow", "prompt": ""},
                "task": {}}, id=5)
            cancelled = await second.call("tasks/cancel",
                                          {"taskId": slow["result"]["task"]["taskId"]}, id=6)
    assert init["capabilities"]["tasks"] == {"list": {}, "cancel": {},
                                             "requests": {"tools": {"call": {}}}}
    tools = {tool["name"]: tool for tool in listed["result"]["tools"]}
    assert tools["run"]["execution"] == {"taskSupport": "optional"}
    assert "execution" not in tools["status"]
    task = created["result"]["task"]
    assert task["status"] == "working" and task["ttl"] is None
    assert task["pollInterval"] > 0 and task["createdAt"].endswith("Z")
    assert working["result"]["taskId"] == task_id and working["result"]["status"] == "working"
    assert working["result"]["statusMessage"].startswith("hand: running")
    assert forbidden["error"]["code"] == -32601
    assert failed["result"]["isError"] is True
    assert failed["result"]["_meta"] == {"io.modelcontextprotocol/related-task":
                                         {"taskId": failed_id}}
    assert failed_task["result"]["status"] == "failed"
    assert unknown["error"]["code"] == -32602
    assert not_here["error"]["code"] == -32601
    assert result["result"]["content"][0]["text"].startswith("before\nafter\n")
    assert result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task_id
    assert done["result"]["status"] == "completed"
    assert task_id in {t["taskId"] for t in tasks["result"]["tasks"]}
    assert again["error"]["code"] == -32602
    assert cancelled["result"]["status"] == "cancelled"


async def test_tasks_under_the_2026_extension(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        async with RawBridge.open(d.socket, d.workdir) as bridge:
            discovered = await bridge.call("server/discover", {"_meta": MODERN}, id=1)
            plain = await bridge.call("tools/call", {
                "_meta": PLAIN, "name": "run",
                "arguments": {"blueprint": "say", "prompt": "now"}}, id=2)
            created = await bridge.call("tools/call", {
                "_meta": MODERN, "name": "run",
                "arguments": {"blueprint": "fail", "prompt": ""}}, id=3)
            task_id = created["result"]["taskId"]
            while True:
                got = await bridge.call("tasks/get", {"_meta": MODERN, "taskId": task_id},
                                        id=4)
                if got["result"]["status"] != "working":
                    break
                await trio.sleep(0.05)
            refused = await bridge.call("tasks/get", {"_meta": PLAIN, "taskId": task_id},
                                        id=5)
            updated = await bridge.call("tasks/update", {"_meta": MODERN, "taskId": task_id,
                                                         "inputResponses": {}}, id=6)
            no_result = await bridge.call("tasks/result", {"_meta": MODERN,
                                                           "taskId": task_id}, id=7)
            slow = await bridge.call("tools/call", {
                "_meta": MODERN, "name": "run",
                "arguments": {"blueprint": "slow", "prompt": ""}}, id=8)
            ack = await bridge.call("tasks/cancel", {"_meta": MODERN,
                                                     "taskId": slow["result"]["taskId"]}, id=9)
            while True:
                gone = await bridge.call("tasks/get", {
                    "_meta": MODERN, "taskId": slow["result"]["taskId"]}, id=10)
                if gone["result"]["status"] != "working":
                    break
                await trio.sleep(0.05)
    assert discovered["result"]["capabilities"]["extensions"] == {
        "io.modelcontextprotocol/tasks": {}}
    assert plain["result"]["resultType"] == "complete"
    assert plain["result"]["content"][0]["text"] == "now"
    created_task = created["result"]
    assert created_task["resultType"] == "task" and created_task["ttlMs"] is None
    assert created_task["pollIntervalMs"] > 0 and "ttl" not in created_task
    # A tool result with isError ends the task completed under the extension.
    assert got["result"]["status"] == "completed"
    assert got["result"]["resultType"] == "complete"
    assert got["result"]["result"]["isError"] is True
    assert refused["error"]["code"] == -32021
    assert refused["error"]["data"] == {"requiredCapabilities": {
        "extensions": {"io.modelcontextprotocol/tasks": {}}}}
    assert updated["result"]["resultType"] == "complete"
    assert no_result["error"]["code"] == -32601
    assert ack["result"]["resultType"] == "complete"
    assert gone["result"]["status"] == "cancelled"


@pytest.mark.parametrize(("state", "utility", "extension"), [
    ("queued", "working", "working"), ("running", "working", "working"),
    ("retrying", "working", "working"), ("succeeded", "completed", "completed"),
    ("failed", "failed", "completed"), ("timed_out", "failed", "completed"),
    ("interrupted", "failed", "completed"), ("cancelled", "cancelled", "cancelled")])
def test_task_status_by_revision(state: str, utility: str, extension: str) -> None:
    record: dict[str, Any] = {
        "job": "j1", "blueprint": "say", "state": state, "attempts": 1,
        "created_at": "2026-01-01T00:00:00.000Z", "started_at": "2026-01-01T00:00:01.000Z",
        "finished_at": None, "result": None,
        "error": None if state in ("queued", "running", "retrying")
        else {"code": -32005, "message": "boom", "data": {}}}
    if state == "succeeded":
        record.update(error=None, result={"job": "j1", "text": "hi", "state": "succeeded"})
    old = mcp_tasks.task(record, "2025-11-25", 1000)
    new = mcp_tasks.task(record, "2026-07-28", 1000, detailed=True)
    assert (old["status"], new["status"]) == (utility, extension)
    assert old["taskId"] == new["taskId"] == "j1"
    assert "ttl" in old and "ttlMs" in new and "ttlMs" not in old
    assert ("result" in new) == (extension == "completed")
    if state == "running":
        assert new["statusMessage"].startswith("say: running ")
