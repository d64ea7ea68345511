"""``jobs.output`` and ``jobs.watch`` (llmd.jobs.output, llmd.jobs.events) against the real
daemon: following a job one did not start, and watchers that read or never do."""

from __future__ import annotations

import socket as stdsocket
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.jobs.events import WATCH_QUEUE
from tests.conftest import DaemonHandle, RawClient, registry_toml

pytestmark = pytest.mark.usefixtures("fake_bin")


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]},
        "say": {"command": ["@fakecli", "text", "{prompt}"]},
        "fail": {"command": ["@fakecli", "fail", "4"], "prompt": "stdin"},
        "slow": {"command": ["@fakecli", "sleep", "30"], "prompt": "stdin"},
    })


async def events_until(client: RawClient, job: str, final: str) -> list[dict[str, Any]]:
    """The ``jobs.event`` params for ``job`` up to its state ``final``."""
    seen = []
    while True:
        message = await client.recv()
        if message.get("method") != "jobs.event" or message["params"]["job"] != job:
            continue
        seen.append(message["params"])
        if message["params"]["state"] == final:
            return seen


async def test_output_of_a_streaming_job_by_offset(daemon_factory: Any, fake_bin: Path,
                                                   tmp_path: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    gate = tmp_path / "gate"
    starter = await d.connect()
    follower = await d.connect()
    with trio.fail_after(30):
        started = await starter.call("llm.run", {"blueprint": "hand", "prompt": str(gate),
                                                 "detach": True})
        job = started["result"]["job"]

        async def first_line() -> bool:
            reply = await follower.call("jobs.output", {"job": job})
            return bool(reply["result"]["text"])

        while not await first_line():
            await trio.sleep(0.02)
        page = (await follower.call("jobs.output", {"job": job}))["result"]
        assert page == {"job": job, "state": "running", "text": "before\n", "offset": 0,
                        "next_offset": 7, "total_chars": 7, "done": False}
        gate.touch()
        await follower.call("jobs.get", {"job": job, "wait": True})
        rest = (await follower.call("jobs.output", {"job": job, "offset": 7}))["result"]
        assert rest["text"] == "after\n" and rest["done"] is True
        assert rest["state"] == "succeeded"
        limited = (await follower.call("jobs.output", {"job": job, "offset": 2,
                                                       "limit": 3}))["result"]
        assert (limited["text"], limited["next_offset"], limited["done"]) == ("for", 5, False)
        missing = await follower.call("jobs.output", {"job": "nope"})
        assert missing["error"]["code"] == -32007
        bad = await follower.call("jobs.output", {"job": job, "offset": -1})
        assert bad["error"]["code"] == -32602


async def test_output_of_a_failed_job_and_after_a_restart(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    env = {"XDG_STATE_HOME": str(short_tmp / "state")}
    d: DaemonHandle = await daemon_factory(registry(fake_bin), env=env)
    client = await d.connect()
    with trio.fail_after(30):
        said = await client.call("llm.run", {"blueprint": "say", "prompt": "hello"})
        job = said["result"]["job"]
        failed = await client.call("llm.run", {"blueprint": "fail", "prompt": ""})
        assert failed["error"]["code"] == -32005
        page = (await client.call("jobs.output", {"job": failed["error"]["data"]["job"]}))
        assert page["result"]["state"] == "failed" and page["result"]["done"] is True
    await d.stop()
    d2: DaemonHandle = await daemon_factory(registry(fake_bin), env=env)
    client = await d2.connect()
    with trio.fail_after(30):
        page = (await client.call("jobs.output", {"job": job}))["result"]
    assert page["text"] == said["result"]["text"] == "hello" and page["state"] == "succeeded"


async def test_watch_sees_every_state_change_filtered(daemon_factory: Any,
                                                      fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    watcher = await d.connect()
    finals = await d.connect()
    runner = await d.connect()
    with trio.fail_after(30):
        watch = (await watcher.call("jobs.watch", {}))["result"]["watch"]
        assert (await finals.call("jobs.watch", {"states": ["succeeded", "failed"],
                                                 "blueprint": "say"}))["result"]["watch"]
        reply = await runner.call("llm.run", {"blueprint": "say", "prompt": "x"})
        job = reply["result"]["job"]
        seen = await events_until(watcher, job, "succeeded")
        assert [e["state"] for e in seen] == ["queued", "running", "succeeded"]
        assert all(e["blueprint"] == "say" and e["watch"] == watch for e in seen)
        assert seen[-1]["attempt"] == 1 and seen[-1]["at"].endswith("Z")
        await runner.call("llm.run", {"blueprint": "fail", "prompt": ""}, id=2)
        only = await events_until(finals, job, "succeeded")
        assert [e["state"] for e in only] == ["succeeded"]
        unwatched = await watcher.call("jobs.unwatch", {"watch": watch}, id=3)
        assert unwatched["result"] == {"watch": watch, "unwatched": True}
        again = await watcher.call("jobs.unwatch", {"watch": watch}, id=4)
        assert again["result"]["unwatched"] is False
        bad = await watcher.call("jobs.watch", {"states": ["sleeping"]}, id=5)
        assert bad["error"]["code"] == -32602
        # Nothing more reaches an unwatched connection.
        await runner.call("llm.run", {"blueprint": "say", "prompt": "y"}, id=6)
        pong = await watcher.call("daemon.info", None, id=7)
        assert "result" in pong
        info = await finals.call("daemon.info", None, id=8)
        assert "result" in info


async def test_a_watcher_that_never_reads_is_dropped(daemon_factory: Any,
                                                     fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    stuck = await d.connect()
    assert isinstance(stuck.stream, trio.SocketStream)
    # A small receive buffer: the daemon's sends block soon.
    stuck.stream.socket.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    client = await d.connect()
    with trio.fail_after(120):
        await stuck.call("jobs.watch", {})
        # Enough state changes to fill the socket buffers and then the watcher's queue:
        # runs whose deadline has passed before they start end at once, each with a state
        # change or two, and no process.
        batch = [{"jsonrpc": "2.0", "id": n, "method": "llm.run",
                  "params": {"blueprint": "say", "prompt": "x", "timeout": 1e-6}}
                 for n in range(500)]
        sent = 0
        while True:
            await client.send(batch)
            await client.recv()
            sent += len(batch)
            info = (await client.call("daemon.info", None, id="info"))["result"]
            if info["connections"] == 1:
                break
            assert sent < 100 * len(batch), "the non-reading watcher was never dropped"
        assert sent > WATCH_QUEUE
        assert "jobs.watch 1: the client read none" in d.log()
        # The daemon goes on serving everyone else.
        reply = await client.call("llm.run", {"blueprint": "say", "prompt": "still"}, id="z")
        assert reply["result"]["text"] == "still"
    # The dropped connection is closed: reading it ends (after what was sent before).
    with trio.fail_after(30):
        while await stuck.stream.receive_some(1 << 20):
            pass
