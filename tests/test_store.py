"""The durable job store on real SQLite files, real processes and real crashes.

What is checked from outside goes through a separate ``sqlite3`` connection, the way
another daemon (or a restarted one) would see the file. Nothing sleeps to synchronise:
writers are awaited, child processes report through their stdout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from llmd.jobs.records import JobRecord, RunResult
from llmd.jobs.state import JobState
from llmd.jobs.store import JobRow, JobStore, ProcGroup, default_path
from llmd.jobs.storedb import Database, _cap, is_busy, is_full
from llmd.process import procs

CHILD = Path(__file__).parent / "store_child.py"
# The package may be installed without this checkout's newest modules: import from here.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    filter(None, [str(CHILD.parent.parent), os.environ.get("PYTHONPATH")]))}
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def ts(n: int) -> str:
    """A timestamp n seconds into an arbitrary day, in the store's format."""
    return f"2030-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"


def result(job: str, text: str = "the answer") -> RunResult:
    return RunResult(job=job, blueprint="echo", state="succeeded", text=text, output=text,
                     stderr="a warning", exit_code=0, attempts=1, duration_s=0.5)


def row(job: str, state: JobState = "succeeded", n: int = 0, **changes: Any) -> JobRow:
    final = state not in {"queued", "running", "retrying"}
    base = JobRow(job=job, blueprint="echo", state=state, created_at=ts(n),
                  started_at=ts(n), finished_at=ts(n) if final else None, attempts=1,
                  request={"blueprint": "echo", "prompt": "a secret prompt"},
                  exit_code=0 if state == "succeeded" else None,
                  result=result(job) if state == "succeeded" else None,
                  error={"code": -32005, "message": "failed"} if state == "failed" else None,
                  history=(("queued", ts(n)), (state, ts(n))))
    return msgspec.structs.replace(base, **changes)


def raw(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def integrity_ok(path: Path) -> bool:
    return raw(path, "PRAGMA integrity_check") == [("ok",)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "llmd" / "jobs.db"


def sleeper(spawned: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], int]:
    child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    spawned.append(child)
    started = procs.process_start_time(child.pid)
    assert started is not None
    return child, started


def dead_process() -> tuple[int, int]:
    """The pid and start time of a process that has exited."""
    child = subprocess.Popen(["sleep", "1000"])
    started = procs.process_start_time(child.pid)
    assert started is not None
    child.kill()
    child.wait(timeout=10)
    return child.pid, started


async def test_round_trip_final_visible_to_another_connection(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            assert store.available and store.problem is None
            store.save_soon(row("j1", "queued", history=(("queued", ts(0)),)))
            store.save_soon(row("j1", "running"))
            assert await store.save_final(row("j1", "succeeded"))
            # Committed: a separate connection sees it before anything else happens.
            found = raw(db, "SELECT state, attempts, exit_code, request, history, daemon_pid"
                            " FROM jobs WHERE id = 'j1'")
            assert found == [("succeeded", 1, 0, json.dumps(
                {"blueprint": "echo", "prompt": "a secret prompt"}, separators=(",", ":")),
                '[["queued","2030-01-01T00:00:00.000Z"],["succeeded","2030-01-01T00:00:00.000Z"]]',
                os.getpid())]
            record = await store.get("j1")
            assert record == JobRecord(job="j1", blueprint="echo", state="succeeded",
                                       created_at=ts(0), started_at=ts(0), finished_at=ts(0),
                                       attempts=1, result=result("j1"))
            assert await store.get("nope") is None
            assert await store.has("j1") and not await store.has("nope")
        assert stat_mode(db) == 0o600 and stat_mode(db.parent) == 0o700


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_list_order_filter_limit_without_text(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            states: list[JobState] = ["succeeded", "failed", "running", "succeeded", "cancelled"]
            for n, state in enumerate(states):
                store.save_soon(row(f"j{n}", state, n))
            await store.flush()
            listed = await store.list()
            assert [r.job for r in listed] == ["j4", "j3", "j2", "j1", "j0"]
            assert [r.job for r in await store.list("succeeded")] == ["j3", "j0"]
            assert [r.job for r in await store.list(limit=2)] == ["j4", "j3"]
            assert [r.job for r in await store.list("succeeded", 1)] == ["j3"]
            assert await store.list("timed_out") == []
            assert await store.list(limit=0) == []
            first = listed[1].result
            assert first is not None and first.text == "" and first.output == ""
            assert first.stderr == "a warning" and first.exit_code == 0
            assert listed[3].error == {"code": -32005, "message": "failed"}


async def test_request_kept_across_state_changes(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            for state in ("queued", "running", "succeeded"):
                assert await store.save_final(row("j", state, request={"prompt": "first"}))
            assert raw(db, "SELECT request, state FROM jobs") == [
                ('{"prompt":"first"}', "succeeded")]
        async with await JobStore.open(db) as store:  # another connection: not known there
            assert await store.save_final(row("j", "failed", request={"prompt": "first"}))
            assert raw(db, "SELECT request, state FROM jobs") == [('{"prompt":"first"}', "failed")]


async def test_finished_row_not_overwritten_by_late_live_one(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            assert await store.save_final(row("j", "cancelled"))
            store.save_soon(row("j", "running"))
            await store.flush()
            record = await store.get("j")
            assert record is not None and record.state == "cancelled"


async def test_outputs_capped_on_character_boundary(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db, output_cap=5) as store:
            big = msgspec.structs.replace(result("j"), text="é" * 10, output="abcdefgh",
                                          stderr="0123456789")
            assert await store.save_final(row("j", result=big))
            record = await store.get("j")
            assert record is not None and record.result is not None
            assert record.result.text == "éé"
            assert record.result.output == "abcde"
            assert record.result.stderr == "56789"  # the tail is what matters
            assert record.result.truncated
            small = await store.list()
            assert small[0].result is not None and small[0].result.truncated


async def test_recovery(db: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    with trio.fail_after(20):
        dead_pid, dead_start = dead_process()
        orphan, orphan_start = sleeper(spawned)
        reused, reused_start = sleeper(spawned)
        other_boot, other_boot_start = sleeper(spawned)
        other_daemon, other_daemon_start = sleeper(spawned)
        me = procs.process_start_time(os.getpid())
        dead = {"daemon_pid": dead_pid, "daemon_start": dead_start}
        async with await JobStore.open(db) as store:
            for saved in (
                    row("dead-running", "running", 0, **dead,
                        groups=(ProcGroup(orphan.pid, orphan_start),)),
                    row("dead-queued", "queued", 1, **dead),
                    row("dead-reused", "retrying", 2, **dead,
                        groups=(ProcGroup(reused.pid, reused_start + 1),)),
                    row("dead-boot", "running", 3, daemon_pid=os.getpid(), daemon_start=me,
                        daemon_boot="another-boot",
                        groups=(ProcGroup(other_boot.pid, other_boot_start),)),
                    row("dead-finished", "succeeded", 4, **dead),
                    row("live-other", "running", 5, daemon_pid=other_daemon.pid,
                        daemon_start=other_daemon_start),
                    row("live-mine", "running", 6)):
                assert await store.save_final(saved)
            report = await store.recover()
            assert report.interrupted == 4
            assert report.groups_killed == 1 and report.processes_killed == 1
            assert report.groups_gone == 2  # the reused pid, the group of another boot
            assert report.other_daemon_jobs == 1
            assert orphan.wait(timeout=10) == -signal.SIGKILL
            assert reused.poll() is None and other_boot.poll() is None
            states = {r.job: r.state for r in await store.list(limit=100)}
            assert states == {"dead-running": "interrupted", "dead-queued": "interrupted",
                              "dead-reused": "interrupted", "dead-boot": "interrupted",
                              "dead-finished": "succeeded", "live-other": "running",
                              "live-mine": "running"}
            record = await store.get("dead-running")
            assert record is not None and record.finished_at is not None
            assert record.error is not None and record.error["data"]["state"] == "interrupted"
            history = raw(db, "SELECT history FROM jobs WHERE id = 'dead-running'")[0][0]
            assert [h[0] for h in json.loads(history)] == ["queued", "running", "interrupted"]
            assert (await store.recover()).interrupted == 0


def assert_unavailable(store: JobStore, caplog: pytest.LogCaptureFixture, what: str) -> None:
    assert not store.available
    assert store.problem is not None and what in store.problem
    assert store.info() == {"path": str(store.path), "available": False,
                            "problem": store.problem}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "records are not kept" in errors[0].getMessage()


async def exercise_unavailable(store: JobStore) -> None:
    with trio.fail_after(1):
        store.save_soon(row("j", "queued"))
        assert await store.save_final(row("j")) is False
        assert await store.get("j") is None
        assert await store.list() == []
        assert (await store.recover()).interrupted == 0
        assert await store.prune() == 0
        await store.flush()
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.run()
        await store.aclose()


async def test_corrupt_file(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an SQLite database at all\n" * 200)
    with trio.fail_after(10):
        store = await JobStore.open(db)
    assert_unavailable(store, caplog, "not a database")
    await exercise_unavailable(store)


async def test_unwritable_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with trio.fail_after(10):
        store = await JobStore.open(blocker / "jobs.db")
    assert_unavailable(store, caplog, "Not a directory")
    await exercise_unavailable(store)


async def test_failure_after_open_degrades(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        store = await JobStore.open(db)
        assert await store.save_final(row("before"))

        def break_connection(conn: sqlite3.Connection | None) -> None:
            assert conn is not None
            conn.close()  # what a vanished or broken file looks like from here

        await store._call(lambda d: break_connection(d.conn), None)
        assert await store.save_final(row("after")) is False
        assert_unavailable(store, caplog, "writing")
        await exercise_unavailable(store)
    assert raw(db, "SELECT id FROM jobs") == [("before",)]


def cap_pages(d: Database, pages: int | None) -> int:
    """Let the writing connection's file grow to ``pages`` at most (None: no further).

    A real SQLITE_FULL, as a full disk gives, without filling one. Returns the cap set.
    """
    conn = d.conn
    assert conn is not None
    if pages is None:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return int(conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0])


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def big_row(job: str, n: int) -> JobRow:
    return row(job, n=n, result=result(job, f"{job} " + "x" * 100_000))


async def fill_up(store: JobStore) -> tuple[list[str], list[str]]:
    """Cap the file where it is and save large rows: those kept, then three lost."""
    await store._call(lambda d: cap_pages(d, None), 0)
    kept: list[str] = []
    lost: list[str] = []
    n = 0
    while len(lost) < 3:
        assert n < 100, "the capped file never filled up"
        job = f"big{n}"
        if await store.save_final(big_row(job, n)):
            assert not lost, "a write succeeded again while the file was still full"
            kept.append(job)
        else:
            lost.append(job)
        n += 1
    return kept, lost


async def test_full_disk_loses_the_batch_and_passes(db: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmd.store")
    with trio.fail_after(20):
        async with await JobStore.open(db) as store:
            for n in range(3):
                assert await store.save_final(row(f"before{n}", n=n))
            kept, lost = await fill_up(store)
            store.save_soon(big_row("soon", 99))
            await store.flush()  # lost as well, quietly
            assert store.available
            assert store.problem is not None and "disk is full" in store.problem
            assert store.info() == {"path": str(db), "available": True,
                                    "problem": store.problem}
            errors = messages(caplog, logging.ERROR)
            assert len(errors) == 1 and "records are not kept" in errors[0]
            assert "disk is full" in errors[0]
            # Rolled back: nothing of the lost batches, everything before them intact.
            saved = [f"before{n}" for n in range(3)] + kept
            assert sorted(r[0] for r in raw(db, "SELECT id FROM jobs")) == sorted(saved)
            assert sorted(r[0] for r in raw(db, "SELECT id FROM outputs")) == sorted(saved)
            assert integrity_ok(db)
            before = await store.get("before1")  # reads go on
            assert before is not None and before.result == result("before1")
            assert [await store.get(job) for job in [*lost, "soon"]] == [None] * 4

            await store._call(lambda d: cap_pages(d, 1 << 30), 0)
            assert await store.save_final(big_row("after", 200))
            assert store.available and store.problem is None
            assert store.info()["problem"] is None
            after = await store.get("after")
            assert after is not None and after.result is not None
            assert after.result.text.startswith("after x")
            assert messages(caplog, logging.INFO) == [
                f"job records are kept again in {db} (4 not kept while it was full)"]

            # A second episode is told again, once.
            await fill_up(store)
            assert store.problem is not None and len(messages(caplog, logging.ERROR)) == 2
    assert integrity_ok(db)
    assert "after" in {r[0] for r in raw(db, "SELECT id FROM jobs")}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret prompt" not in logged and "xxxx" not in logged


def overfill(d: Database) -> str:
    conn = d.conn
    assert conn is not None
    cap_pages(d, None)
    conn.execute("INSERT INTO meta VALUES ('filler', ?)", ("x" * 100_000,))
    return "filled"


async def test_full_disk_in_a_call_passes(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db, max_jobs=1) as store:
            assert await store.save_final(row("old", n=0))
            assert await store.save_final(row("new", n=1))
            assert await store._call(overfill, "lost") == "lost"
            assert store.available
            assert store.problem is not None and "disk is full" in store.problem
            assert await store.prune() == 1  # deleting needs no new page
            assert store.problem is not None  # only a record kept ends the episode
            await store._call(lambda d: cap_pages(d, 1 << 30), 0)
            assert await store.save_final(row("newest", n=2))
            assert store.available and store.problem is None
            assert [r.job for r in await store.list()] == ["newest", "new"]
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1 and "disk is full" in errors[0]
    assert raw(db, "SELECT count(*) FROM meta WHERE key = 'filler'") == [(0,)]
    assert integrity_ok(db)


def fail_to_commit(d: Database) -> None:
    """What a COMMIT failing for a full disk leaves before Python 3.11: SQLite may keep
    the transaction open, and ``with conn`` does not roll it back."""
    conn = d.conn
    assert conn is not None
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO meta VALUES ('half-done', '')")
    raise sqlite3.OperationalError("database or disk is full")


async def test_full_disk_leaves_no_transaction_open(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            await store._call(fail_to_commit, None)
            assert store.problem is not None
            assert await store.save_final(row("after"))
            assert store.available and store.problem is None
    assert raw(db, "SELECT id FROM jobs") == [("after",)]
    assert raw(db, "SELECT count(*) FROM meta WHERE key = 'half-done'") == [(0,)]


def test_is_full_without_an_error_code() -> None:
    # Python 3.10 gives no sqlite_errorcode: SQLite's message is all there is.
    full = sqlite3.OperationalError("database or disk is full")
    assert is_full(full) and not is_busy(full)
    assert not is_full(sqlite3.OperationalError("database is locked"))
    assert not is_full(sqlite3.DatabaseError("file is not a database"))


async def write_jobs(store: JobStore, prefix: str, count: int) -> None:
    for n in range(count):
        store.save_soon(row(f"{prefix}{n}", "running", n))
        assert await store.save_final(row(f"{prefix}{n}", "succeeded", n))


async def test_two_stores_one_file(db: Path) -> None:
    with trio.fail_after(30):
        async with await JobStore.open(db) as one, await JobStore.open(db) as two:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_jobs, one, "a", 300)
                nursery.start_soon(write_jobs, two, "b", 300)
            assert len(await one.list(limit=1000)) == 600
    assert raw(db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == [(600,)]
    assert raw(db, "SELECT count(*) FROM outputs") == [(600,)]
    assert integrity_ok(db)


async def test_two_processes_one_file(db: Path) -> None:
    with trio.fail_after(60):
        done: dict[str, subprocess.CompletedProcess[bytes]] = {}

        async def child(prefix: str) -> None:
            done[prefix] = await trio.run_process(
                [sys.executable, str(CHILD), str(db), prefix, "300"], capture_stdout=True,
                env=CHILD_ENV)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, "p")
            nursery.start_soon(child, "q")
    printed = {line for p in done.values() for line in p.stdout.decode().split()}
    assert len(printed) == 600
    kept = {r[0] for r in raw(db, "SELECT id FROM jobs WHERE state = 'succeeded'")}
    assert kept == printed
    assert integrity_ok(db)


async def test_sigkill_loses_no_final_record(db: Path) -> None:
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(db), "k", "0"], stdout=subprocess.PIPE,
            env=CHILD_ENV)
        assert proc.stdout is not None
        received = b""
        try:
            while received.count(b"\n") < 300:
                chunk = await proc.stdout.receive_some()
                assert chunk, "the writer ended early"
                received += chunk
            proc.kill()
            while chunk := await proc.stdout.receive_some():
                received += chunk
        finally:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                await proc.stdout.aclose()
        assert proc.returncode == -signal.SIGKILL
    printed = received.decode().split("\n")[:-1]
    assert integrity_ok(db)
    finals = {r[0] for r in raw(db, "SELECT id FROM jobs WHERE state = 'succeeded'")}
    assert set(printed) <= finals
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            report = await store.recover()
            # What the killed writer left live is now interrupted; nothing else changed.
            assert raw(db, "SELECT count(*) FROM jobs WHERE state IN"
                           " ('queued', 'running', 'retrying')") == [(0,)]
            assert raw(db, "SELECT count(*) FROM jobs WHERE state = 'interrupted'") == [
                (report.interrupted,)]
            assert report.interrupted <= 1


async def test_prune_by_count_and_age(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db, max_jobs=4, max_age_days=math.inf) as store:
            for n in range(10):
                store.save_soon(row(f"j{n}", "running" if n == 0 else "succeeded", n))
            await store.flush()
            assert await store.prune() == 5  # j0 is live: kept, and counted
            assert [r.job for r in await store.list()] == ["j9", "j8", "j7", "j6", "j0"]
            assert raw(db, "SELECT id FROM outputs ORDER BY id") == [
                ("j6",), ("j7",), ("j8",), ("j9",)]
            assert await store.prune() == 0
        async with await JobStore.open(db, max_age_days=30) as store:
            # 2030 is in the future; rows from 2001 are old.
            old = [row(f"old{n}", "failed", n, created_at=f"2001-01-01T00:00:0{n}.000Z")
                   for n in range(3)]
            for saved in [*old, row("old-live", "queued", created_at="2001-01-01T00:00:00.000Z")]:
                store.save_soon(saved)
            await store.flush()
            assert await store.prune() == 3
            assert sorted(r.job for r in await store.list()) == [
                "j0", "j6", "j7", "j8", "j9", "old-live"]


async def test_run_prunes_then_flushes_on_cancel(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db, max_jobs=2) as store:
            for n in range(5):
                store.save_soon(row(f"j{n}", "succeeded", n))
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                nursery.cancel_scope.cancel()
            assert [r.job for r in await store.list()] == ["j4", "j3"]


async def test_bad_limits(tmp_path: Path) -> None:
    for kwargs in ({"max_jobs": 0}, {"max_age_days": 0.0}, {"output_cap": -1},
                   {"max_age_days": math.nan}, {"busy_timeout": math.inf},
                   {"write_behind_delay": -1.0}, {"write_behind_delay": math.nan}):
        with trio.fail_after(10), pytest.raises(ValueError, match="must be"):
            await JobStore.open(tmp_path / "jobs.db", **kwargs)


async def test_disabled_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = JobStore.disabled(tmp_path / "jobs.db", "disabled by configuration")
    assert not store.available and store.problem is not None
    assert "disabled by configuration" in store.problem
    await exercise_unavailable(store)
    assert not (tmp_path / "jobs.db").exists()
    assert not caplog.records


def test_default_path() -> None:
    assert default_path({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}) == Path(
        "/x/state/llmd/jobs.db")
    assert default_path({"XDG_STATE_HOME": "relative", "HOME": "/home/u"}) == Path(
        "/home/u/.local/state/llmd/jobs.db")
    assert default_path({"HOME": "/home/u"}) == Path("/home/u/.local/state/llmd/jobs.db")


@given(text=st.text(), cap=st.integers(min_value=0, max_value=64), tail=st.booleans())
def test_cap_cuts_on_character_boundaries(text: str, cap: int, tail: bool) -> None:
    kept, cut = _cap(text, cap, keep_tail=tail)
    size = len(text.encode("utf-8", "replace"))
    assert cut == (size > cap)
    assert len(kept.encode()) <= cap if cut else kept == text.encode("utf-8", "replace").decode()
    if cut:
        whole = text.encode("utf-8", "replace").decode()
        assert whole.endswith(kept) if tail else whole.startswith(kept)
        assert len(kept.encode()) > cap - 4  # at most one character short


async def test_unencodable_row_is_refused_alone(db: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db) as store:
            odd = row("odd", request={"blueprint": "echo", "prompt": "secret", "x": object()})
            store.save_soon(row("fine", "running"))
            assert await store.save_final(odd) is False
            assert await store.save_final(row("fine")) is True
            surrogate = msgspec.structs.replace(result("lone"), text="a\ud800b")
            assert await store.save_final(row("lone", result=surrogate)) is True
            stored = await store.get("lone")
            assert stored is not None and stored.result is not None
            assert stored.result.text == "a?b"
            assert store.available
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "job odd: record not kept (TypeError)"]


async def test_write_behind_delay_batches_with_the_next_awaited_write(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db, write_behind_delay=3600) as store:
            store.save_soon(row("a", "queued"))
            store.save_soon(row("b", "running"))
            assert await store.save_final(row("a", "succeeded"))
            assert raw(db, "SELECT id, state FROM jobs ORDER BY id") == [
                ("a", "succeeded"), ("b", "running")]
            store.save_soon(row("c", "queued"))
        # Closing commits what was still waiting.
        assert raw(db, "SELECT id FROM jobs WHERE id = 'c'") == [("c",)]


async def test_run_hands_write_behind_rows_over_after_the_delay(db: Path) -> None:
    with trio.fail_after(10):
        async with await JobStore.open(db, write_behind_delay=0.01) as store:
            handed = trio.Event()
            hand_over = store._hand_over

            def spy(*args: Any) -> None:
                had_rows = bool(store._pending)
                hand_over(*args)
                if had_rows:
                    handed.set()

            store._hand_over = spy  # type: ignore[method-assign,assignment]
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                store.save_soon(row("late", "running"))
                assert store._pending
                await handed.wait()
                # Straight to the thread, behind the handed-over row, without a hand-over.
                await store._ask("call", lambda d: None, None)
                assert raw(db, "SELECT id, state FROM jobs") == [("late", "running")]
                nursery.cancel_scope.cancel()


async def test_recovery_takes_a_zombie_daemon_for_dead(
        db: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    with trio.fail_after(20):
        zombie, zombie_start = sleeper(spawned)
        orphan, orphan_start = sleeper(spawned)
        zombie.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        async with await JobStore.open(db) as store:
            assert await store.save_final(row(
                "of-a-zombie", "running", 0, daemon_pid=zombie.pid, daemon_start=zombie_start,
                groups=(ProcGroup(orphan.pid, orphan_start),)))
            report = await store.recover()
            assert report.interrupted == 1 and report.other_daemon_jobs == 0
            assert orphan.wait(timeout=10) == -signal.SIGKILL
            record = await store.get("of-a-zombie")
            assert record is not None and record.state == "interrupted"
