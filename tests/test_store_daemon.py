"""The job store through the real daemon: restarts, crashes, a broken store, sharing."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.config import parse_registry
from llmd.daemon import Daemon
from llmd.jobs.storedb import Database
from tests.conftest import DaemonHandle, RawClient, alive, registry_toml
from tests.harness import read_pids, wait_until

pytestmark = pytest.mark.usefixtures("fake_bin")


def registry(fake_bin: Path, pidfile: Path) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "hang": {"command": ["@fakecli", "grandchild"], "prompt": "stdin",
                 "env": {"FAKE_PIDFILE": str(pidfile)}},
    })


async def test_a_killed_daemon_loses_nothing_and_leaves_no_orphans(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    state = short_tmp / "state"
    pidfile = short_tmp / "pids"
    toml = registry(fake_bin, pidfile)
    d: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
    client = await d.connect()
    with trio.fail_after(30):
        done = await client.call("llm.run", {"blueprint": "echo", "prompt": "kept"})
        finished = done["result"]["job"]
        detached = await client.call("llm.run", {"blueprint": "hang", "prompt": "x",
                                                 "detach": True}, id=2)
        running = detached["result"]["job"]
        await wait_until(lambda: len(read_pids(pidfile)) >= 2)
        # The store learns the child's process group a few ms after the spawn.
        await wait_until(lambda: _row(state, running) != b""
                         and b'"groups":[]' not in _row(state, running))
        assert await d.stop(signal.SIGKILL) == -signal.SIGKILL
        orphans = read_pids(pidfile)
        assert all(alive(p) for p in orphans)  # nothing killed them yet

        d2: DaemonHandle = await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)})
        client2 = await d2.connect()
        record = await client2.call("jobs.get", {"job": finished})
        assert record["result"]["state"] == "succeeded"
        assert record["result"]["result"]["text"] == "kept"
        record = await client2.call("jobs.get", {"job": running}, id=2)
        assert record["result"]["state"] == "interrupted"
        await wait_until(lambda: not any(alive(p) for p in orphans))
        listed = await client2.call("jobs.list", {}, id=3)
        assert [j["job"] for j in listed["result"]["jobs"]] == [running, finished]
        info = await client2.call("daemon.info", id=4)
        assert info["result"]["store"]["available"] is True
    # Logged once, by the store: not again by the daemon.
    assert d2.log().count("recovered job records: 1 interrupted") == 1
    assert d2.log().count("interrupted") == 1


def _row(state: Path, job: str) -> bytes:
    db = state / "llmd" / "jobs.db"
    if not db.exists():
        return b""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT groups FROM jobs WHERE id = ?", (job,)).fetchone()
    except sqlite3.OperationalError:
        return b""
    finally:
        con.close()
    return b"" if row is None else str(row[0]).replace(" ", "").encode()


@pytest.mark.parametrize("damage", ["corrupt", "unwritable"])
async def test_a_broken_store_does_not_stop_runs(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, damage: str) -> None:
    state = short_tmp / "state"
    if damage == "corrupt":
        (state / "llmd").mkdir(parents=True)
        (state / "llmd" / "jobs.db").write_bytes(b"this is not a database\x00" * 100)
    else:
        state.write_text("a file where the state directory should be")
    d: DaemonHandle = await daemon_factory(registry(fake_bin, short_tmp / "p"),
                                           env={"XDG_STATE_HOME": str(state)})
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "echo", "prompt": "still"})
        assert reply["result"]["text"] == "still"
        info = await client.call("daemon.info", id=2)
    store = info["result"]["store"]
    assert store["available"] is False
    assert store["problem"]
    assert d.log().count("job records are not kept") == 1  # one ERROR line, no echo


async def test_two_daemons_share_one_state_dir(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    state = short_tmp / "state"
    toml = registry(fake_bin, short_tmp / "p")
    daemons = [await daemon_factory(toml, env={"XDG_STATE_HOME": str(state)}) for _ in range(2)]
    jobs: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for d in daemons:
                client = await d.connect()

                async def run_many(client: Any = client) -> None:
                    for i in range(40):
                        reply = await client.call("llm.run", {"blueprint": "echo",
                                                              "prompt": f"p{i}"}, id=i)
                        jobs.append(reply["result"]["job"])

                nursery.start_soon(run_many)
        reader = await daemons[0].connect()
        for job in jobs:
            record = await reader.call("jobs.get", {"job": job}, id=job)
            assert record["result"]["state"] == "succeeded", job
    con = sqlite3.connect(state / "llmd" / "jobs.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (80,)
    finally:
        con.close()


async def test_a_full_disk_loses_records_not_runs_nor_their_listing(
        fake_bin: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In process: the store's own connection is capped (a real SQLITE_FULL, as a full disk
    # gives) while runs go through the real socket.
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon = Daemon(parse_registry(registry(fake_bin, short_tmp / "p"), "test"),
                    short_tmp / "run" / "llmd.sock")

    def cap(d: Database) -> None:
        assert d.conn is not None
        pages = int(d.conn.execute("PRAGMA page_count").fetchone()[0])
        d.conn.execute(f"PRAGMA max_page_count = {pages}")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            client = await RawClient.connect(daemon.listener.path)
            try:
                before = await client.call("llm.run", {"blueprint": "echo", "prompt": "a"})
                await daemon.store._call(cap, None)
                # Large enough to need pages the file may no longer have.
                during = await client.call("llm.run", {"blueprint": "echo",
                                                       "prompt": "x" * 200_000}, id=2)
                assert during["result"]["text"] == "x" * 200_000
                info = (await client.call("daemon.info", id=3))["result"]["store"]
                assert info["available"] is True
                assert "disk is full" in info["problem"]
                # Its record is not in the store, yet it is listed (from memory).
                listed = (await client.call("jobs.list", {}, id=4))["result"]["jobs"]
                ids = [job["job"] for job in listed]
                assert during["result"]["job"] in ids
                assert before["result"]["job"] in ids
                assert await daemon.store.get(during["result"]["job"]) is None
            finally:
                await client.aclose()
                daemon.request_stop()
