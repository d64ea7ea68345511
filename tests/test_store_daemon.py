"""The job store through the real daemon: restarts, crashes, a broken store, sharing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from llmd.config import parse_registry
from llmd.daemon import Daemon
from llmd.jobs import manager as manager_mod
from llmd.jobs.job import Job
from llmd.jobs.output import with_prompt_line
from llmd.jobs.storedb import Database, JobRow
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


async def _listed_as_before(daemon: Daemon, params: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``jobs.list`` answers, computed the plain way: every record of memory and of
    the store built, merged, sorted newest first, then cut to the limit."""
    manager, store = daemon.manager, daemon.store
    trees = manager.worktrees
    assert trees is not None
    state, limit = params.get("state"), params.get("limit", 50)
    records = {r.job: r for r in await store.list(state, limit)}
    for job in manager.jobs.values():
        if job.stored and job.id not in records:
            continue
        if state is None or job.state == state:
            records[job.id] = job.record(with_text=False)
        else:
            records.pop(job.id, None)
    if params.get("unapplied"):
        wanted = set(trees.unapplied())
        for job_id in wanted - records.keys():
            found = (manager.jobs[job_id].record(with_text=False)
                     if job_id in manager.jobs else await store.get(job_id, with_text=False))
            if found is not None:
                records[job_id] = found
        records = {k: r for k, r in records.items() if k in wanted}
    newest = sorted(records.values(), key=lambda r: r.job, reverse=True)[:limit]
    shown = [r if (info := trees.info(r.job)) is None
             else msgspec.structs.replace(r, worktree=info) for r in newest]
    entries: list[Any] = ([with_prompt_line(r, manager.jobs.get(r.job)) for r in shown]
                          if params.get("prompt_line") else shown)
    decoded: list[dict[str, Any]] = json.loads(msgspec.json.encode(entries))
    return decoded


async def test_jobs_list_merges_memory_and_store_and_cuts_to_the_limit(
        fake_bin: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In process, with room in memory for a few finished jobs: the older ones are in the
    # store only, the newer in both, the live ones in memory (and the store, as live).
    monkeypatch.setattr(manager_mod, "KEEP_FINISHED", 6)
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    repo = short_tmp / "repo"
    repo.mkdir()
    git_id = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
              "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(["git", *args], cwd=repo, env=git_id, check=True)
    toml = registry_toml(fake_bin, {
        "echo": {"command": ["/bin/echo", "{prompt}"]},
        "fail": {"command": ["/bin/false", "{prompt}"]},
        "sleep": {"command": ["/bin/sleep", "1000"], "prompt": "stdin"},
        "edit": {"command": ["@fakecli", "edit", "a.txt"], "prompt": "stdin"},
    })
    daemon = Daemon(parse_registry(toml, "test"), short_tmp / "run" / "llmd.sock")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            client = await RawClient.connect(daemon.listener.path)
            try:
                plan = ["edit", "echo", "fail"] * 4 + ["edit", "sleep", "sleep", "echo"] * 2
                ids = []
                for n, bp in enumerate(plan):
                    params: dict[str, Any] = {"blueprint": bp, "prompt": f"p{n}\nsecond"}
                    if bp == "edit":
                        params.update(cwd=str(repo), isolate="worktree")
                    reply = await client.call("llm.run", {**params, "detach": bp == "sleep"},
                                              id=n)
                    ids.append(reply.get("result", reply.get("error", {}).get("data"))["job"])
                cancelled = ids[plan.index("sleep")]
                await client.call("llm.cancel", {"job": cancelled}, id="c")
                await client.call("jobs.get", {"job": cancelled, "wait": True}, id="w")
                held = daemon.manager.jobs.values()
                await wait_until(lambda: daemon.manager.jobs[cancelled].stored)
                # Three live, three finished in memory (and the store), the rest stored only.
                assert sorted(j.state for j in held) == ["cancelled", "running", "running",
                                                         "running", "succeeded", "succeeded"]
                assert sum(j.stored for j in held) == 3
                everything = (await client.call("jobs.list", {"limit": 1000}))["result"]
                assert [j["job"] for j in everything["jobs"]] == sorted(ids, reverse=True)
                unapplied = (await client.call("jobs.list", {"unapplied": True}))["result"]
                assert len(unapplied["jobs"]) == plan.count("edit")
                listed = 0
                for pruned in (False, True):
                    if pruned:
                        # Records pruned from the store while their jobs are in memory: a
                        # job held as stored is listed only while the store lists it.
                        daemon.store.max_jobs = 2
                        assert await daemon.store.prune() > 0
                        assert await daemon.store.get(cancelled) is None
                    for state in (None, "succeeded", "failed", "running", "cancelled",
                                  "queued"):
                        for limit in (1, 2, 5, 13, 1000):
                            for extra in ({}, {"prompt_line": True}, {"unapplied": True}):
                                params = {"state": state, "limit": limit, **extra}
                                reply = await client.call("jobs.list", params,
                                                          id=f"l{listed}")
                                listed += 1
                                assert reply["result"]["jobs"] == await _listed_as_before(
                                    daemon, params), params
                                # One blueprint's: the same as all of them, filtered.
                                every = (await client.call("jobs.list", {
                                    **params, "limit": 1000}))["result"]["jobs"]
                                for bp in ("edit", "sleep"):
                                    mine = await client.call("jobs.list",
                                                             {**params, "blueprint": bp})
                                    assert mine["result"]["jobs"] == [
                                        j for j in every if j["blueprint"] == bp][:limit]
            finally:
                await client.aclose()
                daemon.request_stop()


def _count_rows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every row made of a job from now on (the job's state at the time), in order."""
    made: list[str] = []
    row = Job.row

    def counted(job: Job) -> JobRow:
        made.append(job.state)
        return row(job)

    monkeypatch.setattr(Job, "row", counted)
    return made


async def test_no_row_is_made_for_a_store_switched_off(
        fake_bin: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    made = _count_rows(monkeypatch)
    toml = registry_toml(fake_bin, {
        "echo": {"command": ["/bin/echo", "{prompt}"]},
        "sleep": {"command": ["/bin/sleep", "1000"], "prompt": "stdin"},
    }, extra="[store]\nenabled = false\n")
    daemon = Daemon(parse_registry(toml, "test"), short_tmp / "run" / "llmd.sock")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            client = await RawClient.connect(daemon.listener.path)
            try:
                done = await client.call("llm.run", {"blueprint": "echo", "prompt": "a"})
                assert done["result"]["text"] == "a\n"
                detached = await client.call("llm.run", {"blueprint": "sleep", "prompt": "",
                                                         "detach": True}, id=2)
                job = detached["result"]["job"]
                await wait_until(lambda: bool(daemon.manager.jobs[job].groups))
                await client.call("llm.cancel", {"job": job}, id=3)
                got = await client.call("jobs.get", {"job": job, "wait": True}, id=4)
                assert got["result"]["state"] == "cancelled"
                assert daemon.store.info()["available"] is False
            finally:
                await client.aclose()
                daemon.request_stop()
    assert made == []


async def test_a_store_back_from_a_full_disk_gets_the_rows_of_jobs_under_way(
        fake_bin: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    made = _count_rows(monkeypatch)
    toml = registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "sleep": {"command": ["@fakecli", "sleep", "1000", "--", "{prompt}"]},
    })
    daemon = Daemon(parse_registry(toml, "test"), short_tmp / "run" / "llmd.sock")

    def cap(pages: int | None) -> Callable[[Database], None]:
        def capped(d: Database) -> None:
            assert d.conn is not None
            count = int(d.conn.execute("PRAGMA page_count").fetchone()[0])
            d.conn.execute(f"PRAGMA max_page_count = {pages or count}")
        return capped

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            store = daemon.store
            client = await RawClient.connect(daemon.listener.path)
            try:
                await store._call(cap(None), None)
                lost = await client.call("llm.run", {"blueprint": "echo",
                                                     "prompt": "x" * 200_000})
                assert "disk is full" in (store.problem or "")
                # A job started while the disk is full: its rows are made, and lost (its
                # request, which they carry, needs pages the file may no longer have).
                before = len(made)
                detached = await client.call("llm.run", {"blueprint": "sleep", "prompt":
                                                         "z" * 100_000, "detach": True}, id=2)
                job = detached["result"]["job"]
                await wait_until(lambda: bool(daemon.manager.jobs[job].groups))
                await store.flush()
                assert len(made) > before and await store.get(job) is None
                await store._call(cap(1 << 30), None)
                # The first row that commits ends the episode; the job under way is then
                # kept as it is now.
                kept = await client.call("llm.run", {"blueprint": "echo", "prompt": "y"},
                                         id=3)
                assert store.available and store.problem is None
                assert await store.get(kept["result"]["job"]) is not None
                await client.call("llm.cancel", {"job": job}, id=4)
                await client.call("jobs.get", {"job": job, "wait": True}, id=5)
                await wait_until(lambda: daemon.manager.jobs[job].stored)
                record = await store.get(job)
                assert record is not None and record.state == "cancelled"
                assert await store.get(lost["result"]["job"]) is None
            finally:
                await client.aclose()
                daemon.request_stop()
