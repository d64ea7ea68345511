"""Streaming, cancellation and detached jobs against the real daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, RawClient, llmc, registry_toml
from tests.harness import children, rss_kb, until_stalled, wait_until

pytestmark = pytest.mark.usefixtures("fake_bin")


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "lines": {"command": ["@fakecli", "lines", "300"], "prompt": "stdin"},
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]},
        "fail": {"command": ["@fakecli", "fail", "4"], "prompt": "stdin"},
        "slow": {"command": ["@fakecli", "sleep", "30"], "prompt": "stdin"},
        "quick": {"command": ["@fakecli", "sleep", "0.2"], "prompt": "stdin"},
        "flood": {"command": ["@fakecli", "flood", "400000000"], "prompt": "stdin"},
    })


async def collect(client: RawClient, id: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Notifications of request ``id`` until its reply."""
    notes = []
    while True:
        message = await client.recv()
        if "method" in message:
            notes.append(message)
        elif message.get("id") == id:
            return notes, message


async def test_stream_invariants(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        await client.send({"jsonrpc": "2.0", "id": "s1", "method": "llm.run",
                           "params": {"blueprint": "lines", "prompt": "", "stream": True}})
        notes, reply = await collect(client, "s1")
    result = reply["result"]
    first = notes[0]
    assert first["method"] == "llm.state"
    assert first["params"]["job"] == result["job"]
    assert first["params"]["state"] == "queued"
    assert all(n["params"]["request"] == "s1" for n in notes)
    assert all(n["params"]["job"] == result["job"] for n in notes)
    outputs = [n["params"] for n in notes if n["method"] == "llm.output"]
    assert [o["seq"] for o in outputs] == list(range(len(outputs)))
    text = "".join(o["text"] for o in outputs if o["stream"] == "stdout")
    assert text == result["text"] == "".join(f"line {i}\n" for i in range(300))
    states = [n["params"]["state"] for n in notes if n["method"] == "llm.state"]
    assert states == ["queued", "running", "succeeded"]


async def test_stderr_streams_too_and_failures_still_answer(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "fail", "prompt": "", "stream": True}})
        notes, reply = await collect(client, 1)
    assert reply["error"]["code"] == -32005
    err = [n["params"] for n in notes if n["method"] == "llm.output"]
    assert [(o["stream"], o["text"]) for o in err] == [("stderr", "boom\n")]


async def test_output_is_forwarded_as_it_arrives(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    client = await d.connect()
    with trio.fail_after(20):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "hand", "prompt": str(flag), "stream": True}})
        # The child waits for us: "before" can only arrive while it still runs.
        while True:
            note = await client.recv()
            if note.get("method") == "llm.output":
                assert note["params"]["text"] == "before\n"
                break
        flag.touch()
        _notes, reply = await collect(client, 1)
    assert reply["result"]["text"] == "before\nafter\n"


async def test_a_client_that_does_not_read_holds_the_child_not_memory(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    rss_before = rss_kb(d.proc.pid)
    stuck = await d.connect()
    with trio.fail_after(60):
        await stuck.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                          "params": {"blueprint": "flood", "prompt": "", "stream": True}})
        await wait_until(lambda: bool(children(d.proc.pid, "flood")))
        [child] = children(d.proc.pid, "flood")
        # Wait until the child stops making progress: it is blocked on its pipe.
        last = await until_stalled(lambda: [child])
        assert last < 50_000_000  # of 400 MB: it was stopped, not drained
        assert rss_kb(d.proc.pid) - rss_before < 64 * 1024
        # Everyone else is still served.
        other = await d.connect()
        reply = await other.call("llm.run", {"blueprint": "lines", "prompt": ""})
        assert reply["result"]["text"].startswith("line 0\n")
        # Leaving cancels the stuck run and kills its child.
        await stuck.aclose()
        d.clients.remove(stuck)
        await wait_until(lambda: not children(d.proc.pid, "flood"))


async def test_cancel_from_another_connection(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    runner = await d.connect()
    canceller = await d.connect()
    with trio.fail_after(20):
        await runner.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "slow", "prompt": "", "stream": True}})
        first = await runner.recv()
        job = first["params"]["job"]
        reply = await canceller.call("llm.cancel", {"job": job})
        assert reply["result"] == {"job": job, "cancelled": True}
        _notes, answer = await collect(runner, 1)
        assert answer["error"]["code"] == -32802
        assert answer["error"]["data"]["job"] == job
        reply = await canceller.call("llm.cancel", {"job": job}, id=2)
        assert reply["result"] == {"job": job, "cancelled": False}
        reply = await canceller.call("llm.cancel", {"job": "nope"}, id=3)
        assert reply["error"]["code"] == -32007
        record = await canceller.call("jobs.get", {"job": job}, id=4)
        assert record["result"]["state"] == "cancelled"


async def test_detached_jobs_outlive_their_client(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(20):
        starter = await RawClient.connect(d.socket)
        reply = await starter.call("llm.run", {"blueprint": "quick", "prompt": "",
                                               "detach": True})
        job = reply["result"]["job"]
        assert reply["result"]["state"] in ("queued", "running")
        await starter.aclose()
        reader = await d.connect()
        record = await reader.call("jobs.get", {"job": job, "wait": True, "timeout": 10})
        assert record["result"]["state"] == "succeeded"
        assert record["result"]["result"]["text"] == "done"
        listed = await reader.call("jobs.list", {"state": "succeeded"}, id=2)
        [entry] = [j for j in listed["result"]["jobs"] if j["job"] == job]
        assert entry["result"]["text"] == ""  # lists leave the text out
        missing = await reader.call("jobs.get", {"job": "nope"}, id=3)
        assert missing["error"]["code"] == -32007
        assert missing["error"]["data"] == {"job": "nope"}
        for n, method in enumerate(("jobs.output", "llm.cancel"), start=4):
            other = await reader.call(method, {"job": "nope"}, id=n)
            assert other["error"] == missing["error"], method
    proc = await llmc(d, "job", job)
    assert proc.returncode == 0, proc.stderr
    proc = await llmc(d, "jobs")
    assert job.encode() in proc.stdout
    proc = await llmc(d, "jobs", "--blueprint", "slow")
    assert proc.returncode == 0 and job.encode() not in proc.stdout
    assert proc.stdout == b"no jobs of slow\n"


async def test_jobs_get_wait_times_out_without_error(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "slow", "prompt": "",
                                              "detach": True})
        job = reply["result"]["job"]
        record = await client.call("jobs.get", {"job": job, "wait": True, "timeout": 0.2}, id=2)
        assert record["result"]["state"] == "running"
        reply = await client.call("llm.cancel", {"job": job}, id=3)
        assert reply["result"]["cancelled"] is True
        record = await client.call("jobs.get", {"job": job, "wait": True}, id=4)
        assert record["result"]["state"] == "cancelled"


async def test_client_streams_with_stream_flag(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    proc = await llmc(d, "run", "--stream", "lines", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "".join(f"line {i}\n" for i in range(300))
    raw = await llmc(d, "run", "--raw", "lines", "x")
    assert json.loads(raw.stdout)["text"] == proc.stdout.decode()
