"""The SQLite half of the job store: schema, row encoding and every statement.

Invariants:
- A :class:`Database` is used by one thread only (the store's); a second connection, in a
  thread of its own, only checkpoints, so a commit never waits for a checkpoint's fsyncs.
- Writes are ``BEGIN IMMEDIATE`` transactions (another daemon's lock is waited for up to
  the busy timeout, never upgraded into a deadlock); a failed one leaves nothing behind
  (``with conn``, and :meth:`Database.rollback` for what that misses).
  Only a job's last snapshot in a batch is written, and a finished row is never
  overwritten by a live (queued, running, retrying) one, in the batch or in the file.
- ``jobs`` holds the run result without ``text``/``output`` (what ``jobs.list`` shows); the
  capped text and output live in ``outputs``, read only by ``get``.
- Text, output and stderr are cut to the cap in UTF-8 bytes on a character boundary, and
  ``truncated`` says so. The request (prompt included) is stored, never logged.
- Recovery and pruning never touch a live row of a running daemon: a live row carries its
  daemon's (boot id, pid, start time), and only rows of a dead daemon are interrupted;
  pruning deletes finished rows only.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from llmd.errors import Cancelled
from llmd.jobs import usage
from llmd.jobs.records import JobRecord, RunResult
from llmd.jobs.state import LIVE_STATES, JobState
from llmd.process import procs
from llmd.timestamps import utc_now

log = logging.getLogger("llmd.store")

SCHEMA_VERSION = 1
_CHECKPOINT_BYTES = 1 << 20
_BACKSTOP_PAGES = 10_000
_KNOWN_JOBS = 4096
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13

_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, blueprint TEXT NOT NULL, state TEXT NOT NULL,
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, updated_at TEXT NOT NULL,
    attempts INTEGER NOT NULL, exit_code INTEGER,
    request TEXT NOT NULL,   -- JSON llm.run params, prompt included
    result TEXT,             -- JSON run result with text and output emptied
    error TEXT,              -- JSON error object
    history TEXT NOT NULL,   -- JSON [[state, timestamp], ...]
    groups TEXT NOT NULL,    -- JSON [{"pgid", "starttime"}, ...], one per attempt
    daemon_pid INTEGER, daemon_start INTEGER, daemon_boot TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_blueprint ON jobs (blueprint, created_at, id)",
    "CREATE TABLE IF NOT EXISTS outputs (id TEXT PRIMARY KEY, text TEXT NOT NULL,"
    " output TEXT NOT NULL)",
    # The usage ledger (llmd.jobs.usage): one entry per finished job, kept with its record,
    # and the sums per local day, blueprint, model and cwd, added to as each entry is
    # written and never pruned. A summary reads the sums for whole days and the entries for
    # the parts of days at a window's edges.
    """CREATE TABLE IF NOT EXISTS usage (
    id TEXT PRIMARY KEY, at TEXT NOT NULL, day TEXT NOT NULL, blueprint TEXT NOT NULL,
    model TEXT NOT NULL, cwd TEXT NOT NULL, outcome TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cost_usd REAL,
    duration_s REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS usage_at ON usage (at)",
    """CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL, blueprint TEXT NOT NULL, model TEXT NOT NULL, cwd TEXT NOT NULL,
    runs INTEGER NOT NULL, succeeded INTEGER NOT NULL, failed INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cost_usd REAL,
    duration_s REAL NOT NULL, PRIMARY KEY (day, blueprint, model, cwd)) WITHOUT ROWID""",
)
# The day's sums kept at several grains (the narrowest that holds a summary's groups is
# read): per blueprint alone (the total, the budgets), with the model, with the cwd, and
# with both. Each is (table, key columns); the key columns come first in its rows.
_DAY_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("usage_days", ("day", "blueprint")),
    ("usage_days_model", ("day", "blueprint", "model")),
    ("usage_days_cwd", ("day", "blueprint", "cwd")),
    ("usage_daily", ("day", "blueprint", "model", "cwd")),
)
_SCHEMA += tuple(  # built from the constants above, no data
    f"CREATE TABLE IF NOT EXISTS {table} ("
    + "".join(f"{key} TEXT NOT NULL, " for key in keys)
    + "runs INTEGER NOT NULL, succeeded INTEGER NOT NULL, failed INTEGER NOT NULL,"
    " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cost_usd REAL,"
    f" duration_s REAL NOT NULL, PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID"
    for table, keys in _DAY_TABLES[:-1])
_INSERT_USAGE = "INSERT OR IGNORE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SUMS = ("COUNT(*), SUM(outcome = 's'), SUM(outcome = 'f'), SUM(input_tokens),"
         " SUM(output_tokens), SUM(cost_usd), SUM(duration_s)")
_DAILY_SUMS = ("SUM(runs), SUM(succeeded), SUM(failed), SUM(input_tokens),"
               " SUM(output_tokens), SUM(cost_usd), SUM(duration_s)")
_DAY_KEYS = ("day", "blueprint", "model", "cwd")  # the order of Entry.day_params()
_ADD_UP = (" DO UPDATE SET"
           " runs = runs + 1, succeeded = succeeded + excluded.succeeded,"
           " failed = failed + excluded.failed,"
           " input_tokens = input_tokens + excluded.input_tokens,"
           " output_tokens = output_tokens + excluded.output_tokens,"
           " cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN cost_usd"
           " WHEN cost_usd IS NULL THEN excluded.cost_usd"
           " ELSE cost_usd + excluded.cost_usd END,"
           " duration_s = duration_s + excluded.duration_s")
_ADD_TO_DAYS = tuple(
    (f"INSERT INTO {table} VALUES ({', '.join('?' * len(keys))}, 1, ?, ?, ?, ?, ?, ?)"  # noqa: S608
     f" ON CONFLICT ({', '.join(keys)})" + _ADD_UP, tuple(_DAY_KEYS.index(k) for k in keys))
    for table, keys in _DAY_TABLES)
_COLUMNS = ("id", "blueprint", "state", "created_at", "started_at", "finished_at",
            "updated_at", "attempts", "exit_code", "request", "result", "error", "history",
            "groups", "daemon_pid", "daemon_start", "daemon_boot")
# Built from the constant names above, no data. A finished row is never overwritten by a live
# one; the request never changes, so an update leaves it alone (see Database.known).
_UPSERT = (f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
           " ON CONFLICT (id) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:] if c != "request")
           + " WHERE jobs.state IN ('queued', 'running', 'retrying')"
           " OR excluded.state NOT IN ('queued', 'running', 'retrying')")
_UPSERT_OUTPUT = "INSERT OR REPLACE INTO outputs (id, text, output) VALUES (?, ?, ?)"
_RECORD_COLUMNS = ("SELECT id, blueprint, state, created_at, started_at, finished_at, attempts,"
                   " result, error")
_LIST_ORDER = " ORDER BY created_at DESC, id DESC LIMIT ?"


class ProcGroup(msgspec.Struct, frozen=True):
    """A child's process group: its pgid (the child's pid) and the child's start time."""

    pgid: int
    starttime: int


class JobRow(JobRecord, frozen=True, kw_only=True):
    """Everything the store keeps about a job: its record, and what recovery and auditing
    need besides (see :mod:`llmd.jobs.records` for how the shapes relate). A snapshot,
    never mutated once handed over.

    ``daemon_pid``, ``daemon_start`` and ``daemon_boot`` name the daemon that owns a live
    job; left None, the store fills in its own process.
    """

    request: dict[str, Any] = msgspec.field(default_factory=dict)
    exit_code: int | None = None
    history: tuple[tuple[JobState, str], ...] = ()
    groups: tuple[ProcGroup, ...] = ()
    daemon_pid: int | None = None
    daemon_start: int | None = None
    daemon_boot: str | None = None
    model: str | None = None
    """The model the run asked for (or its blueprint's default), for the usage ledger."""


class RecoveryReport(msgspec.Struct):
    """What :meth:`JobStore.recover` did."""

    interrupted: int = 0        # rows of dead daemons now "interrupted"
    groups_killed: int = 0      # their recorded process groups that were signalled
    processes_killed: int = 0   # processes signalled in those groups
    groups_gone: int = 0        # recorded groups already gone or whose pid was reused
    other_daemon_jobs: int = 0  # live rows of another running daemon, left alone


class Identity(NamedTuple):
    pid: int
    start: int | None
    boot: str | None


class Unusable(Exception):
    """The file is a database this version cannot use."""


_enc = msgspec.json.Encoder()
_dec_result = msgspec.json.Decoder(RunResult)
_dec_dict = msgspec.json.Decoder(dict[str, Any])
_dec_history = msgspec.json.Decoder(list[tuple[str, str]])
_dec_groups = msgspec.json.Decoder(tuple[ProcGroup, ...])


def _json(value: Any) -> str:
    return _enc.encode(value).decode()


def _cap(text: str, cap: int, *, keep_tail: bool = False) -> tuple[str, bool]:
    """``text`` cut to at most ``cap`` UTF-8 bytes (on a character boundary), and whether cut."""
    if cap <= 0:
        return "", bool(text)
    # No more than ``cap`` characters fit in ``cap`` bytes: only those are encoded, so a
    # 16 MiB answer costs the writer (which holds the GIL meanwhile) no more than the cap.
    part = text[-cap:] if keep_tail else text[:cap]
    try:
        raw = part.encode()
    except UnicodeEncodeError:
        # A lone surrogate would make SQLite's binding fail for the whole batch.
        raw = part.encode("utf-8", "replace")
        part = raw.decode()
    if len(raw) <= cap and len(part) == len(text):
        return part, False
    cut = raw[len(raw) - cap:] if keep_tail else raw[:cap]
    return cut.decode("utf-8", "ignore"), True


def describe(exc: BaseException) -> str:
    """One line saying what went wrong with a file, for the log and ``daemon.info``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means "another connection holds the lock" (not a broken file)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(exc)


def is_full(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means the file could not grow: the disk (or ``max_page_count``) is full.

    A transient condition, not a broken file: writes succeed again once space is freed.

    Args:
        exc: What SQLite raised.

    Returns:
        True for SQLITE_FULL, whatever its extended code.
    """
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    # Before Python 3.11 there is no error code: SQLite's message for SQLITE_FULL says it.
    return code == _SQLITE_FULL or "database or disk is full" in str(exc)


class _Checkpointer:
    """Copies WAL pages into the database in a thread of its own, fsyncs included, so that
    a commit never waits for a checkpoint (the writer's own is only a backstop)."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, args=(path, busy_timeout),
                                       name="llmd-store-checkpoint", daemon=True)
        self.thread.start()

    def _serve(self, path: Path, busy_timeout: float) -> None:
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("%s: no background checkpoints: %s", path, exc)
            return
        with contextlib.closing(conn):
            while self.wake.wait() and not self.stopping:
                self.wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("%s: checkpoint failed: %s", path, exc)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join()


class Database:
    """One writing connection and its checkpointer, used by the store's thread only.

    Args:
        path: The database file.
        output_cap: Most UTF-8 bytes kept of a result's text, output and stderr each.
        busy_timeout: Seconds to wait for another connection's lock.
        me: The daemon that owns the rows this process writes.
    """

    def __init__(self, path: Path, output_cap: int, busy_timeout: float, me: Identity) -> None:
        self.path = path
        self.cap = output_cap
        self.busy_timeout = busy_timeout
        self.me = me
        self.conn: sqlite3.Connection | None = None
        self.checkpointer: _Checkpointer | None = None
        self.unchecked = 0  # bytes written since the checkpointer was last woken
        # Jobs whose row (request included) this connection wrote: a large prompt is then
        # not encoded again at each state change.
        self.known: dict[str, None] = {}

    def open(self) -> None:
        """Create or open the file, set WAL up and prove it writable.

        Raises:
            sqlite3.Error: Not a database, or not writable.
            OSError: The directory or file cannot be created or opened.
            Unusable: The schema is newer than this version knows.
        """
        with contextlib.suppress(FileExistsError):  # a file in the way: os.open says so
            self.path.parent.mkdir(mode=0o700, parents=True)
        # Prompts may hold secrets: the file (and SQLite's -wal/-shm, which copy its mode)
        # is private.
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise Unusable(f"it was written by a newer llmd (schema {version})")
            if version == 0:
                # Only takes effect before the first table exists.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                log.warning("%s: journal mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_PAGES}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # A real write now: an unwritable file must show at start, not at the first job.
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_open', ?)",
                         (_json({"pid": self.me.pid, "at": utc_now()}),))
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.checkpointer = _Checkpointer(self.path, self.busy_timeout)

    def close(self) -> None:
        """Stop the checkpointer and close the connection (idempotent)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("closing %s: %s", self.path, exc)

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise sqlite3.ProgrammingError("the store is closed")
        return self.conn

    def rollback(self) -> None:
        """Roll back the transaction a failed write left open, if there is one.

        ``with conn`` rolls back after a failed statement, and after a failed COMMIT from
        Python 3.11 on only: before, the transaction stays open and every later
        ``BEGIN IMMEDIATE`` would fail.

        Raises:
            sqlite3.Error: The rollback failed as well.
        """
        if self.conn is not None and self.conn.in_transaction:
            self.conn.rollback()

    def _encode(self, row: JobRow, now: str) -> tuple[tuple[Any, ...], tuple[str, str, str] | None]:
        result_json: str | None = None
        output: tuple[str, str, str] | None = None
        if row.result is not None:
            res = row.result
            text, cut_text = _cap(res.text, self.cap)
            out, cut_out = _cap(res.output, self.cap)
            stderr, cut_err = _cap(res.stderr, self.cap, keep_tail=True)
            meta = msgspec.structs.replace(
                res, text="", output="", stderr=stderr,
                truncated=res.truncated or cut_text or cut_out or cut_err)
            result_json = _json(meta)
            if len(result_json) > self.cap + 65536:
                # The parsed JSON answer can be as large as the text it came from.
                meta = msgspec.structs.replace(meta, json=None, truncated=True,
                                               json_error="not kept: larger than the cap")
                result_json = _json(meta)
            output = (row.job, text, out)
        me = self.me
        request = "" if row.job in self.known else _json(row.request)
        params = (row.job, row.blueprint, row.state, row.created_at, row.started_at,
                  row.finished_at, now, row.attempts, row.exit_code, request,
                  result_json, None if row.error is None else _json(row.error),
                  _json(row.history), _json(row.groups),
                  me.pid if row.daemon_pid is None else row.daemon_pid,
                  me.start if row.daemon_start is None else row.daemon_start,
                  me.boot if row.daemon_boot is None else row.daemon_boot)
        return params, output

    def write(self, rows: list[JobRow]) -> list[bool]:
        """Upsert ``rows`` in one transaction; per row, whether it (or its successor) was kept."""
        # Only a job's last snapshot in the batch is written; a live one never replaces a final.
        last: dict[str, JobRow] = {}
        for row in rows:
            prev = last.get(row.job)
            if prev is None or row.state not in LIVE_STATES or prev.state in LIVE_STATES:
                last[row.job] = row
        conn = self._db()
        now = utc_now()
        kept: dict[str, bool] = {}
        conn.execute("BEGIN IMMEDIATE")
        with conn:  # COMMIT, or ROLLBACK on an exception
            for job, row in last.items():
                try:
                    params, output = self._encode(row, now)
                    conn.execute(_UPSERT, params)
                except (msgspec.EncodeError, OverflowError, TypeError, ValueError) as exc:
                    # Never the message: it may quote the request.
                    log.error("job %s: record not kept (%s)", job, type(exc).__name__)
                    kept[job] = False
                    continue
                entry = usage.entry_for(row.job, blueprint=row.blueprint, state=row.state,
                                        started_at=row.started_at,
                                        finished_at=row.finished_at, request=row.request,
                                        model=row.model, result=row.result, error=row.error)
                # Counted once: a final row written again adds nothing to its day.
                if entry is not None and conn.execute(_INSERT_USAGE,
                                                      entry.as_params()).rowcount == 1:
                    day = entry.day_params()
                    for statement, keys in _ADD_TO_DAYS:
                        conn.execute(statement, (*(day[i] for i in keys), *day[4:]))
                if output is not None:
                    conn.execute(_UPSERT_OUTPUT, output)
                    self.unchecked += len(output[1]) + len(output[2])
                self.unchecked += sum(len(p) for p in params if isinstance(p, str))
                kept[job] = True
        self.known.update(dict.fromkeys(job for job, ok in kept.items() if ok))  # committed
        while len(self.known) > _KNOWN_JOBS:
            del self.known[next(iter(self.known))]
        if self.unchecked > _CHECKPOINT_BYTES and self.checkpointer is not None:
            self.unchecked = 0
            self.checkpointer.wake.set()
        return [kept[row.job] for row in rows]

    def _record(self, row: tuple[Any, ...], text: str | None = None,
                output: str | None = None) -> JobRecord:
        result = None if row[7] is None else _dec_result.decode(row[7])
        if result is not None and text is not None and output is not None:
            result = msgspec.structs.replace(result, text=text, output=output)
        return JobRecord(job=row[0], blueprint=row[1], state=row[2], created_at=row[3],
                         started_at=row[4], finished_at=row[5], attempts=row[6], result=result,
                         error=None if row[8] is None else _dec_dict.decode(row[8]))

    def get(self, job_id: str, *, with_text: bool = True) -> JobRecord | None:
        """The record of ``job_id`` with its result's text and output (unless not
        ``with_text``: as lists give them), or None."""
        if not with_text:
            row = self._db().execute(_RECORD_COLUMNS + " FROM jobs WHERE id = ?",
                                     (job_id,)).fetchone()
            return None if row is None else self._record(row)
        found = self._db().execute(
            _RECORD_COLUMNS + ", o.text, o.output FROM jobs LEFT JOIN outputs AS o USING (id)"
            " WHERE id = ?", (job_id,)).fetchone()
        return None if found is None else self._record(found[:9], found[9], found[10])

    def exists(self, job_id: str) -> bool:
        """Whether a record of ``job_id`` is kept (nothing of it is read)."""
        found = self._db().execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return found is not None

    def list(self, state: JobState | None, limit: int,
             blueprint: str | None = None) -> list[JobRecord]:
        """Up to ``limit`` records newest first, of ``state`` and ``blueprint`` if given,
        without text/output."""
        where = [(column, value) for column, value in (("state", state),
                                                       ("blueprint", blueprint))
                 if value is not None]
        clause = " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else ""
        rows = self._db().execute(_RECORD_COLUMNS + " FROM jobs" + clause + _LIST_ORDER,
                                  (*(v for _, v in where), limit)).fetchall()
        return [self._record(row) for row in rows]

    def usage_rows(self, days: tuple[str, str] | None, ranges: builtins.list[tuple[str, str]],
                   by: tuple[str, ...]) -> builtins.list[tuple[Any, ...]]:
        """The ledger summed per group (see :func:`usage.summarize`): the daily sums of
        the local days in ``days`` (first and last, both included), and the entries that
        ended in each ``[since, until)`` of ``ranges``."""
        cols = ", ".join(c for c in by if c in usage.GROUP_KEYS)  # checked names only
        select, group = (cols + ", ", " GROUP BY " + cols) if cols else ("", "")
        conn = self._db()
        rows: builtins.list[tuple[Any, ...]] = []
        if days is not None:
            table = next(t for t, keys in _DAY_TABLES if set(by) <= set(keys))
            rows += conn.execute(f"SELECT {select}{_DAILY_SUMS} FROM {table}"  # noqa: S608
                                 f" WHERE day >= ? AND day <= ?{group}", days).fetchall()
        for since, until in ranges:
            rows += conn.execute(f"SELECT {select}{_SUMS} FROM usage"  # noqa: S608
                                 f" WHERE at >= ? AND at < ?{group}", (since, until)).fetchall()
        return [r for r in rows if r[len(by)]]  # an empty table sums to one row of nulls

    def recover(self) -> RecoveryReport:
        """Interrupt the live rows of dead daemons, killing the process groups they left."""
        conn = self._db()
        report = RecoveryReport()
        alive: dict[tuple[Any, ...], bool] = {}
        now = utc_now()
        conn.execute("BEGIN IMMEDIATE")
        with conn:
            live = conn.execute(
                "SELECT id, history, groups, daemon_pid, daemon_start, daemon_boot FROM jobs"
                " WHERE state IN ('queued', 'running', 'retrying')").fetchall()
            for job_id, history, groups, pid, start, boot in live:
                owner = (pid, start, boot)
                if owner == tuple(self.me):
                    continue
                if owner not in alive:
                    alive[owner] = (pid is not None and boot in (None, self.me.boot)
                                    and procs.is_same_process(pid, start))
                if alive[owner]:
                    report.other_daemon_jobs += 1
                    continue
                for group in _dec_groups.decode(groups):
                    # Start times from another boot say nothing about today's processes.
                    killed = (procs.kill_orphan_group(group.pgid, group.starttime)
                              if boot is not None and boot == self.me.boot else 0)
                    if killed:
                        report.groups_killed += 1
                        report.processes_killed += killed
                    else:
                        report.groups_gone += 1
                error = Cancelled("interrupted: the daemon running this job stopped before it "
                                  "finished", {"job": job_id, "state": "interrupted"})
                conn.execute(
                    "UPDATE jobs SET state = 'interrupted', finished_at = ?, updated_at = ?,"
                    " history = ?, error = ? WHERE id = ?",
                    (now, now, _json([*_dec_history.decode(history), ("interrupted", now)]),
                     _json(error.to_wire()), job_id))
                report.interrupted += 1
        return report

    def prune_chunk(self, cutoff: str, max_jobs: int, chunk: int) -> int:
        """Delete up to ``chunk`` finished rows older than ``cutoff`` or beyond ``max_jobs``."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        with conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM jobs WHERE created_at < ? AND state NOT IN"
                " ('queued', 'running', 'retrying') LIMIT ?", (cutoff, chunk))]
            if len(ids) < chunk:
                ids += [r[0] for r in conn.execute(
                    "SELECT id FROM (SELECT id, state FROM jobs ORDER BY created_at DESC, id DESC"
                    " LIMIT -1 OFFSET ?) WHERE state NOT IN ('queued', 'running', 'retrying')"
                    " LIMIT ?", (max_jobs, chunk - len(ids)))]
            ids = list(dict.fromkeys(ids))
            # The ledger outlives the records: their days' sums stay.
            conn.executemany("DELETE FROM usage WHERE id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM outputs WHERE id = ?", [(i,) for i in ids])
        if ids:
            conn.execute("PRAGMA incremental_vacuum")
        return len(ids)


