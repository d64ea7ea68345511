"""Faults in a job's life around the daemon's own: reloads under running jobs, SIGTERM
with a queue, a crash right after a detached reply, a cancel racing the end of a run, a
cwd that vanishes, two daemons sharing a store, and small protocol and logging ones.

Each test runs its own daemons (``daemon_factory``) through the real client or socket.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import (
    DaemonHandle,
    RawClient,
    alive,
    llmc,
    read_pids,
    registry_toml,
)
from tests.reliability.support import tally, wait_until

pytestmark = pytest.mark.usefixtures("fake_bin")


def blueprints(fake_bin: Path, pidfile: Path, *, keep: bool = True, daemon: Any = None,
               custom: bool = True) -> str:
    specs: dict[str, Any] = {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "env": {"command": ["@fakecli", "env"], "prompt": "stdin"},
        "cwd": {"command": ["@fakecli", "cwd"], "prompt": "stdin"},
        "flood": {"command": ["@fakecli", "flood", "300000"], "prompt": "stdin",
                  "max_output_bytes": 100000},
        "hang": {"command": ["@fakecli", "ignore-term"], "prompt": "stdin",
                 "env": {"FAKE_PIDFILE": str(pidfile)}, "kill_grace": 0.5},
    }
    if keep:
        specs["hand"] = {"command": ["@fakecli", "handshake", "{prompt}"]}
    extra = "[timeouts]\ncustom = 5\n" if custom else ""
    return registry_toml(fake_bin, specs, daemon=daemon, extra=extra)


async def first_state(client: RawClient, blueprint: str, prompt: str, id: Any,
                      **extra: Any) -> str:
    """Start a streamed run and return its job id (from its first llm.state)."""
    await client.send({"jsonrpc": "2.0", "id": id, "method": "llm.run",
                       "params": {"blueprint": blueprint, "prompt": prompt, "stream": True,
                                  **extra}})
    while True:
        message = await client.recv()
        if message.get("method") == "llm.state":
            return str(message["params"]["job"])


async def reply_to(client: RawClient, id: Any) -> Any:
    while True:
        message = await client.recv()
        if message.get("id") == id and "method" not in message:
            return message


async def state_of(client: RawClient, job: str) -> str:
    return str((await client.call("jobs.get", {"job": job}, id="g"))["result"]["state"])


# --- a reload under jobs ---------------------------------------------------------------


async def test_a_reload_removing_a_detached_jobs_category_and_blueprint(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    """``llmc run --detach --timeout custom``; then ``custom`` and the blueprint go."""
    pidfile = short_tmp / "pids"
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin, pidfile))
    flag = short_tmp / "never"
    started = await llmc(d, "run", "--detach", "--timeout", "custom", "hand", str(flag))
    assert started.returncode == 0, started.stderr
    job = started.stdout.decode().split()[0]
    d.config.write_text(blueprints(fake_bin, pidfile, keep=False, custom=False))
    client = await d.connect()
    with trio.fail_after(30):
        reloaded = await client.call("daemon.reload")
        assert "hand" not in reloaded["result"]["blueprints"]
        assert await state_of(client, job) == "running"  # reloaded before it timed out
        waited = await llmc(d, "job", job, "--wait")
    assert waited.returncode == 4, waited.stderr  # timed out, with the 5 s it came with
    record = await client.call("jobs.get", {"job": job}, id=2)
    error = record["result"]["error"]
    assert record["result"]["state"] == "timed_out"
    assert "after 5 s" in error["message"] and "after 0 s" not in error["message"]
    assert d.proc.returncode is None
    assert (await client.run("echo", "still serving", id=3))["result"]["text"] == "still serving"
    tally("faults")


async def test_a_batch_of_a_detached_run_and_a_reload_removing_its_blueprint(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "pids"
    full = blueprints(fake_bin, pidfile)
    d: DaemonHandle = await daemon_factory(full)
    client = await d.connect()
    with trio.fail_after(60):
        for _ in range(20):
            # The batch's two calls run concurrently: either may go first.
            d.config.write_text(full)
            await client.call("daemon.reload", id="r")
            d.config.write_text(blueprints(fake_bin, pidfile, keep=False))
            await client.send_raw(json.dumps([
                {"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                 "params": {"blueprint": "hand", "prompt": str(short_tmp), "detach": True}},
                {"jsonrpc": "2.0", "id": 2, "method": "daemon.reload"}]).encode() + b"\n")
            replies = {r["id"]: r for r in await client.recv()}
            tally("faults")
            assert "hand" not in replies[2]["result"]["blueprints"]
            if "result" in replies[1]:
                break
            assert replies[1]["error"]["code"] == -32001  # the reload went first
        else:
            pytest.fail("the reload went first 20 times in a row")
        job = replies[1]["result"]["job"]
        # The job runs on the blueprint it was admitted with (the flag directory exists).
        waited = await llmc(d, "job", job, "--wait")
    assert waited.returncode == 0, waited.stderr
    assert b"before" in waited.stdout and b"after" in waited.stdout
    assert d.proc.returncode is None


# --- SIGTERM with a queue ----------------------------------------------------------------


async def test_sigterm_cancels_queued_jobs_at_once_and_never_starts_them(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "pids"
    state = short_tmp / "state"
    toml = blueprints(fake_bin, pidfile, daemon={"max_jobs": 1, "stop_grace": 30})
    d: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
    flag = short_tmp / "go"
    first, second = await d.connect(), await d.connect()
    with trio.fail_after(30):
        running = await first_state(first, "hand", str(flag), 1)
        while await state_of(first, running) != "running":
            await trio.sleep(0.02)
        queued = await first_state(second, "env", "x", 1)
        detached = (await second.run("env", "y", id=2, detach=True))["result"]["job"]
        assert await state_of(first, detached) == "queued"
        d.proc.send_signal(signal.SIGTERM)
        # The queued caller is answered at once, while the running job still holds its slot.
        reply = await reply_to(second, 1)
        assert reply["error"]["data"]["state"] == "cancelled"
        assert reply["error"]["data"]["job"] == queued
        assert not flag.exists()
        flag.touch()
        done = await reply_to(first, 1)
        assert done["result"]["text"] == "before\nafter\n"
        assert await d.proc.wait() == 0
        d2: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
        client = await d2.connect()
        for job in (queued, detached):
            record = (await client.call("jobs.get", {"job": job}))["result"]
            assert record["state"] == "cancelled"
            assert record["started_at"] is None and record["attempts"] == 0
    tally("faults", 2)


# --- a crash right after a detached reply ------------------------------------------------


def stored_groups(state: Path, job: str) -> list[dict[str, int]]:
    conn = sqlite3.connect(state / "llmd" / "jobs.db")
    try:
        row = conn.execute("SELECT groups FROM jobs WHERE id = ?", (job,)).fetchone()
    finally:
        conn.close()
    return [] if row is None else list(json.loads(row[0]))


@pytest.mark.parametrize("queued_first", [False, True])
async def test_sigkill_right_after_a_detached_reply(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, queued_first: bool) -> None:
    pidfile = short_tmp / "pids"
    state = short_tmp / "state"
    toml = blueprints(fake_bin, pidfile, daemon={"max_jobs": 1})
    d: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
    client = await d.connect()
    with trio.fail_after(30):
        if queued_first:  # the detached job waits for a slot when the daemon dies
            await first_state(client, "hand", str(short_tmp / "never"), "busy")
        reply = await client.run("hang", "x", detach=True)
        d.proc.kill()  # right after the reply: nothing more reaches the disk
        assert await d.proc.wait() == -signal.SIGKILL
        job = reply["result"]["job"]
        groups = stored_groups(state, job)
        assert len(groups) == (0 if queued_first else 1)  # committed before the reply
        d2: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
        client2 = await d2.connect()
        assert await state_of(client2, job) == "interrupted"
        if groups:
            await wait_until(lambda: not alive(groups[0]["pgid"]))
        assert all(not alive(pid) for pid in read_pids(pidfile))
    tally("faults")


# --- llm.cancel racing the end of a run --------------------------------------------------


async def test_cancelled_true_exactly_when_the_job_ends_cancelled(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    """300 runs, each cancelled as its output arrives: the cancel lands while the child
    exits and the attempt closes (this caught "true" for runs that then succeeded)."""
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin, short_tmp / "pids"))
    runner, canceller = await d.connect(), await d.connect()
    outcomes: dict[str, int] = {}
    with trio.fail_after(240):
        for n in range(300):
            job = await first_state(runner, "echo", "closing", n)
            reply = None
            while reply is None:
                message = await runner.recv()
                if message.get("method") == "llm.output":
                    break
                if message.get("id") == n and "method" not in message:
                    reply = message
            answer = await canceller.call("llm.cancel", {"job": job}, id=n)
            said = answer["result"]["cancelled"]
            if reply is None:
                reply = await reply_to(runner, n)
            record = (await canceller.call("jobs.get", {"job": job}, id=f"g{n}"))["result"]
            assert said == (record["state"] == "cancelled"), (n, said, record["state"])
            assert said == ("error" in reply), (n, said, reply)
            outcomes[record["state"]] = outcomes.get(record["state"], 0) + 1
    assert set(outcomes) <= {"cancelled", "succeeded"}
    tally("faults", 300)


# --- a cwd that vanishes while the job waits ---------------------------------------------


async def test_a_cwd_removed_while_queued_is_named(daemon_factory: Any, fake_bin: Path,
                                                   short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(
        blueprints(fake_bin, short_tmp / "pids", daemon={"max_jobs": 1}))
    flag = short_tmp / "go"
    gone = short_tmp / "soon-gone"
    gone.mkdir()
    first, second = await d.connect(), await d.connect()
    with trio.fail_after(30):
        running = await first_state(first, "hand", str(flag), 1)
        while await state_of(first, running) != "running":
            await trio.sleep(0.02)
        job = await first_state(second, "cwd", "x", 1, cwd=str(gone))
        gone.rmdir()
        flag.touch()
        reply = await reply_to(second, 1)
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["cwd"] == str(gone)
    assert str(gone) in reply["error"]["message"]
    assert reply["error"]["data"]["job"] == job
    tally("faults")


# --- smaller ones --------------------------------------------------------------------------


async def test_a_truncated_stream_stops_at_the_cap(daemon_factory: Any, fake_bin: Path,
                                                  short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin, short_tmp / "pids"))
    client = await d.connect()
    streamed: list[str] = []
    with trio.fail_after(30):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "flood", "prompt": "x", "stream": True}})
        while True:
            message = await client.recv()
            if message.get("method") == "llm.output" and message["params"]["stream"] == "stdout":
                streamed.append(message["params"]["text"])
            elif message.get("id") == 1:
                break
    result = message["result"]
    assert result["truncated"] is True
    assert len(result["text"]) == 100000
    assert "".join(streamed) == result["text"]
    tally("requests")


async def test_children_get_pwd_of_their_cwd_and_no_oldpwd(daemon_factory: Any, fake_bin: Path,
                                                          short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin, short_tmp / "pids"),
                                           env={"PWD": "/", "OLDPWD": "/tmp"})
    here = short_tmp / "here"
    here.mkdir()
    with trio.fail_after(30):
        shown = await llmc(d, "run", "env", "x", "--raw", cwd=str(here))
    assert shown.returncode == 0, shown.stderr
    env = json.loads(json.loads(shown.stdout)["text"])
    assert env["PWD"] == str(here)
    assert "OLDPWD" not in env
    tally("requests")


async def test_a_job_of_another_daemon_sharing_the_store(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "pids"
    state = short_tmp / "state"
    toml = blueprints(fake_bin, pidfile)
    a: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
    b: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
    flag = short_tmp / "go"
    client_a, client_b = await a.connect(), await b.connect()
    with trio.fail_after(60):
        job = (await client_a.run("hand", str(flag), detach=True))["result"]["job"]
        while await state_of(client_b, job) != "running":
            await trio.sleep(0.02)
        # B waits for it, polling the store, instead of answering "running" at once.
        before = time.monotonic()
        record = await client_b.call("jobs.get", {"job": job, "wait": True, "timeout": 0.5})
        assert record["result"]["state"] == "running"
        assert time.monotonic() - before >= 0.5
        short = await llmc(b, "job", job, "--wait", "--timeout", "0.3")
        assert short.returncode == 4, (short.stdout, short.stderr)
        refused = await client_b.call("llm.cancel", {"job": job}, id=2)
        assert refused["error"]["code"] == -32602
        assert "another llmd" in refused["error"]["message"]
        assert await state_of(client_a, job) == "running"  # B did not touch it
        flag.touch()
        waited = await llmc(b, "job", job, "--wait")
        assert waited.returncode == 0, waited.stderr
        assert b"after" in waited.stdout
        # Finished, and not in B's memory (as after a restart): cancelled false, not -32007.
        late = await client_b.call("llm.cancel", {"job": job}, id=3)
        assert late["result"] == {"job": job, "cancelled": False}
        await a.stop()
        a2: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
        restarted = await a2.connect()
        late = await restarted.call("llm.cancel", {"job": job}, id=4)
        assert late["result"] == {"job": job, "cancelled": False}
        missing = await restarted.call("llm.cancel", {"job": "nosuchjob"}, id=5)
        assert missing["error"]["code"] == -32007
    tally("faults")


async def test_a_lone_surrogate_escape_is_named(daemon_factory: Any, fake_bin: Path,
                                               short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin, short_tmp / "pids"))
    client = await d.connect()
    with trio.fail_after(10):
        await client.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": "llm.run", "params": '
                              b'{"blueprint": "echo", "prompt": "\\ud83d"}}\n')
        reply = await client.recv()
        assert reply["error"]["code"] == -32700
        assert "lone surrogate" in reply["error"]["message"]
        assert "truncated" not in reply["error"]["message"]
        # A truly truncated text still says so.
        await client.send_raw(b'{"jsonrpc": "2.0", "id": 2, "method": "daemon.info"\n')
        reply = await client.recv()
        assert reply["error"]["code"] == -32700
        assert "lone surrogate" not in reply["error"]["message"]
    tally("inputs", 2)
