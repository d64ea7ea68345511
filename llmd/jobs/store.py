"""The durable job store: every job record in one SQLite file, written at each state change.

Invariants:
- One thread per store owns its only writing connection; the trio thread never calls
  SQLite. Work reaches the thread through a queue and is answered with
  ``TrioToken.run_sync_soon``; the writes pending when the thread wakes are committed in
  one transaction, and a read queued behind a write sees it.
- ``save_soon`` is write-behind: its row stays on the trio side for ``write_behind_delay``
  (so a job busy spawning its child wakes no thread, and a short job's states share one
  transaction with its final row), then :meth:`JobStore.run` hands it to the thread;
  anything awaited first carries it along. Rows are written in the order saved.
  ``save_final`` returns after the COMMIT holding its row. WAL with
  ``synchronous=NORMAL``: a committed row survives the daemon being killed (SIGKILL,
  crash); an OS crash or power loss may lose the last commits, never the file's
  consistency.
- Once a store is unavailable (could not open, or a write failed for a reason other than
  another daemon's lock or a full disk) it stays so: every call returns at once, with no
  records and no exception; one ERROR line says so and ``problem`` keeps the reason.
- A full disk (SQLITE_FULL) is transient: the batch or call that hit it is lost and rolled
  back, the store stays available and keeps trying. One ERROR line starts the episode and
  ``problem`` says so while it lasts; the next write that commits a record ends it, clears
  ``problem`` and logs one INFO line.
- Nothing here logs a request or a result: log lines name paths, job ids and counts.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import logging
import math
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import trio

from llmd.jobs.records import JobRecord
from llmd.jobs.state import JobState
from llmd.jobs.storedb import (
    Database,
    Identity,
    JobRow,
    ProcGroup,
    RecoveryReport,
    Unusable,
    describe,
    is_busy,
    is_full,
)
from llmd.process import procs
from llmd.timestamps import rfc3339

__all__ = ["JobRow", "JobStore", "ProcGroup", "RecoveryReport", "default_path"]

log = logging.getLogger("llmd.store")

T = TypeVar("T")
_PRUNE_CHUNK = 500
_MAX_BATCH = 1000
_LONGEST_WAIT = 3600.0


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/llmd/jobs.db``, by default ``~/.local/state/llmd/jobs.db``."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: a relative path is to be ignored
        state = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(state) / "llmd" / "jobs.db"


class _Waiter:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: object = None


def _resolve(answers: list[tuple[_Waiter, object]]) -> None:
    for waiter, value in answers:
        waiter.value = value
        waiter.done.set()


_WRITE, _CALL, _STOP = "write", "call", "stop"
_Item = tuple[str, Any, "_Waiter | None"]


class JobStore:
    """Job records in an SQLite file, written by a thread of their own.

    Build it with :meth:`open`; run :meth:`run` in the daemon's nursery for pruning;
    :meth:`aclose` it last (after the jobs have finished).

    Attributes:
        path: The database file.
        available: Whether records are kept; False for good once open or a write failed
            (not for a full disk, which passes).
        problem: Why records are not kept, for ``daemon.info``; None while they are.
    """

    def __init__(self, path: Path, *, output_cap: int, max_age_days: float, max_jobs: int,
                 busy_timeout: float, prune_interval: float, write_behind_delay: float) -> None:
        if output_cap < 0 or max_jobs < 1 or not max_age_days > 0:
            raise ValueError("output_cap must be >= 0, max_jobs >= 1 and max_age_days > 0")
        if not (0 <= busy_timeout <= _LONGEST_WAIT and 0 <= write_behind_delay <= _LONGEST_WAIT):
            raise ValueError(f"busy_timeout and write_behind_delay must be within "
                             f"0..{_LONGEST_WAIT} s")
        self.path = path
        self.output_cap = output_cap
        self.max_age_days = max_age_days
        self.max_jobs = max_jobs
        self.prune_interval = prune_interval
        self._linger = write_behind_delay
        # Write-behind rows held on this side until the delay passes or something awaited
        # carries them along: no thread wake-up while the job is busy spawning its child.
        self._pending: builtins.list[JobRow] = []
        self._pending_since = 0.0
        # The write-behind timer: a deadline on the scope :meth:`run`'s task sleeps in.
        self._timer: trio.CancelScope | None = None
        self.available = False
        self.problem: str | None = None
        # Set and read by the store's thread only: within a full-disk episode, and the
        # records it lost so far.
        self._full = False
        self._lost_while_full = 0
        me = Identity(os.getpid(), procs.process_start_time(os.getpid()), procs.boot_id())
        self._db = Database(path, output_cap, busy_timeout, me)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._serve, name="llmd-store", daemon=True)
        self._closed = True

    @classmethod
    async def open(cls, path: Path, *, output_cap: int = 1_048_576, max_age_days: float = 30,
                   max_jobs: int = 10_000, busy_timeout: float = 10.0,
                   prune_interval: float = 3600.0,
                   write_behind_delay: float = 0.005) -> JobStore:
        """Open (creating if need be) the store at ``path``.

        Never raises for a file that cannot be used: the store comes back with
        ``available`` False and ``problem`` set, and one ERROR line is logged.

        Args:
            path: The database file; its directory is created 0700, the file 0600.
            output_cap: Most UTF-8 bytes kept of a result's text, output and stderr each.
            max_age_days: Finished records older than this are pruned (``math.inf``: never).
            max_jobs: At most this many records are kept (live ones are never pruned).
            busy_timeout: Seconds to wait for another daemon's write lock on the file.
            prune_interval: Seconds between prunings in :meth:`run`.
            write_behind_delay: Seconds a :meth:`save_soon` row may wait to share a
                transaction with later rows (a daemon killed meanwhile loses it); 0 hands
                it to the thread at once.

        Raises:
            ValueError: A nonsensical limit.
        """
        store = cls(path, output_cap=output_cap, max_age_days=max_age_days, max_jobs=max_jobs,
                    busy_timeout=busy_timeout, prune_interval=prune_interval,
                    write_behind_delay=write_behind_delay)
        store._closed = False
        store._thread.start()
        with trio.CancelScope(shield=True):  # a half-opened store would leak its thread
            problem = cast("str | None", await store._ask(
                _CALL, store._open_in_thread, "unexpected error (see the log)"))
        if problem is None:
            store.available = True
        else:
            store.problem = f"job records are not kept: cannot use {path}: {problem}"
            log.error("%s; runs are still served", store.problem)
            await store.aclose()
        return store

    @classmethod
    def disabled(cls, path: Path, reason: str) -> JobStore:
        """A store that keeps nothing (``available`` False), for a daemon run without one.

        Args:
            path: Where records would have been kept, for ``daemon.info``.
            reason: Why not, e.g. ``"disabled by configuration"``.
        """
        store = cls(path, output_cap=0, max_age_days=math.inf, max_jobs=1, busy_timeout=0,
                    prune_interval=math.inf, write_behind_delay=0)
        store.problem = f"job records are not kept: {reason}"
        return store

    def _open_in_thread(self, db: Database) -> str | None:
        try:
            db.open()
        except (sqlite3.Error, OSError, Unusable) as exc:
            return describe(exc)
        return None

    async def __aenter__(self) -> JobStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def info(self) -> dict[str, Any]:
        """The store's state for ``daemon.info``."""
        return {"path": str(self.path), "available": self.available, "problem": self.problem}

    @property
    def writing(self) -> bool:
        """Whether a row handed over now may be written: False once the store is
        unavailable (for good) or closed. A full disk leaves it True: only a row that
        commits ends that episode, so rows keep coming."""
        return self.available and not self._closed

    # --- writes ------------------------------------------------------------

    def save_soon(self, row: JobRow) -> None:
        """Queue ``row`` to be written (write-behind; an intermediate state change).

        With a ``write_behind_delay``, :meth:`run` hands the row over once the delay has
        passed, unless an awaited call carries it along first.
        """
        if not self.available or self._closed:
            return
        if self._linger <= 0:
            self._queue.put((_WRITE, [row], None))
            return
        if not self._pending:
            self._pending_since = trio.current_time()
            if self._timer is not None:
                # Setting a deadline wakes nobody: a job done within the delay (its rows
                # carried along by its final save) costs no task switch.
                self._timer.deadline = self._pending_since + self._linger
        self._pending.append(row)

    def _hand_over(self, waiter: _Waiter | None = None, *rows: JobRow) -> None:
        if self._pending:
            rows = (*self._pending, *rows)
            self._pending = []
            if self._timer is not None:
                self._timer.deadline = math.inf
        if rows:
            self._queue.put((_WRITE, rows, waiter))

    async def save_final(self, row: JobRow) -> bool:
        """Write ``row`` and return once it is committed.

        The wait is shielded from cancellation: the write is queued either way, and a
        cancelled job's record is thus on disk before its caller is answered.

        Returns:
            Whether the row is committed (False at once when the store is unavailable).
        """
        if not self.available or self._closed:
            return False
        waiter = _Waiter()
        self._hand_over(waiter, row)
        with trio.CancelScope(shield=True):
            await waiter.done.wait()
        return waiter.value is True

    async def flush(self) -> None:
        """Return once every row queued before the call is committed (or dropped)."""
        await self._call(lambda db: None, None)

    # --- reads -------------------------------------------------------------

    async def get(self, job_id: str, *, with_text: bool = True) -> JobRecord | None:
        """The record of ``job_id`` with its full (capped) result (unless not
        ``with_text``: without text and output, as :meth:`list` gives them), or None."""
        return await self._call(lambda db: db.get(job_id, with_text=with_text), None)

    async def has(self, job_id: str) -> bool:
        """Whether the store holds a record of ``job_id`` (True when it cannot tell)."""
        found = await self._call(lambda db: db.exists(job_id), False)
        return found or not self.available  # a failed read says nothing

    async def list(self, state: JobState | None = None, limit: int = 50,
                   blueprint: str | None = None) -> list[JobRecord]:
        """Records newest first, optionally of one state and one blueprint; results without
        text and output."""
        if limit <= 0:
            return []
        return await self._call(lambda db: db.list(state, limit, blueprint), [])

    async def usage_rows(self, days: tuple[str, str] | None,
                         ranges: builtins.list[tuple[str, str]],
                         by: tuple[str, ...]) -> builtins.list[tuple[Any, ...]]:
        """The usage ledger summed per group (see :meth:`Database.usage_rows`); none when
        the store is unavailable."""
        return await self._call(lambda db: db.usage_rows(days, ranges, by), [])

    # --- maintenance -------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Mark live rows of dead daemons interrupted and kill the process groups they left.

        Call once at start, before the first job. Rows of a daemon still running (on another
        socket, sharing the file) are left alone.
        """
        report = await self._call(lambda db: db.recover(), RecoveryReport())
        if report.interrupted or report.other_daemon_jobs:
            log.info("recovered job records: %d interrupted, %d orphan process groups killed "
                     "(%d processes), %d already gone; %d jobs of another running daemon "
                     "left alone", report.interrupted, report.groups_killed,
                     report.processes_killed, report.groups_gone, report.other_daemon_jobs)
        return report

    async def prune(self) -> int:
        """Delete finished records beyond the age and count limits; return how many."""
        cutoff = ""  # sorts before every timestamp: no age limit
        if math.isfinite(self.max_age_days):
            try:
                cutoff = rfc3339(_dt.datetime.now(_dt.timezone.utc)
                                  - _dt.timedelta(days=self.max_age_days))
            except OverflowError:
                cutoff = ""
        total = 0
        while True:
            # In chunks, so job writes are not held up behind a large first pruning.
            count = await self._call(
                lambda db: db.prune_chunk(cutoff, self.max_jobs, _PRUNE_CHUNK), 0)
            total += count
            if count < _PRUNE_CHUNK:
                break
        if total:
            log.info("pruned %d job records", total)
        return total

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The store's upkeep, until cancelled; then it flushes and returns.

        Hands write-behind rows to the thread once their delay has passed (without this
        task, they wait for the next awaited call or :meth:`aclose`) and prunes now and
        every ``prune_interval`` seconds.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_behind)
                task_status.started()
                while True:
                    await self.prune()
                    await trio.sleep(self.prune_interval)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def _write_behind(self) -> None:
        while True:
            # Asleep until the oldest pending row has waited its delay. An awaited call
            # that carries the rows along first takes the deadline away again.
            deadline = self._pending_since + self._linger if self._pending else math.inf
            with trio.CancelScope(deadline=deadline) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            if self._pending and trio.current_time() >= self._pending_since + self._linger:
                self._hand_over()

    async def aclose(self) -> None:
        """Commit what is queued, close the connection and end the thread."""
        if self._closed:
            return
        self._hand_over()
        self._closed = True
        waiter = _Waiter()
        self._queue.put((_STOP, None, waiter))
        with trio.CancelScope(shield=True):
            await waiter.done.wait()
            await trio.to_thread.run_sync(self._thread.join)

    # --- the thread ----------------------------------------------------------

    async def _call(self, fn: Callable[[Database], T], default: T) -> T:
        if not self.available or self._closed:
            return default
        self._hand_over()  # what is read or flushed includes what was saved before
        return cast(T, await self._ask(_CALL, fn, default))

    async def _ask(self, kind: str, fn: Callable[[Database], Any], default: object) -> object:
        waiter = _Waiter()
        self._queue.put((kind, (fn, default), waiter))
        await waiter.done.wait()
        return waiter.value

    def _fail(self, action: str, exc: BaseException) -> None:
        if self.available:
            self.problem = (f"job records are not kept any more: {action} {self.path} "
                            f"failed: {describe(exc)}")
            log.error("%s; runs are still served", self.problem)
        self.available = False
        self._db.close()

    def _disk_full(self, exc: sqlite3.Error, lost: int) -> None:
        # Whatever hit it, nothing may stay half done: an open transaction would make every
        # later write fail for good.
        try:
            self._db.rollback()
        except sqlite3.Error as again:
            self._fail("rolling back a write to", again)
            return
        self._lost_while_full += lost
        if self._full:
            log.debug("%d job records not kept: %s is still full", lost, self.path)
            return
        self._full = True
        self.problem = (f"job records are not kept until space is freed: {self.path}: "
                        f"{describe(exc)}")
        log.error("%s; runs are still served", self.problem)

    def _write(self, rows: builtins.list[JobRow]) -> builtins.list[bool]:
        if not self.available:
            return [False] * len(rows)
        try:
            kept = self._db.write(rows)
        except sqlite3.Error as exc:
            if is_busy(exc):
                # Another daemon held the file past the busy timeout: this batch is lost,
                # the store is not broken.
                log.error("%d job records not kept: %s stayed locked by another process",
                          len(rows), self.path)
            elif is_full(exc):
                self._disk_full(exc, len(rows))
            else:
                self._fail("writing", exc)
            return [False] * len(rows)
        # A commit of rows refused before SQLite saw them proves nothing about the space.
        if self._full and any(kept):
            self._full = False
            self.problem = None
            log.info("job records are kept again in %s (%d not kept while it was full)",
                     self.path, self._lost_while_full)
            self._lost_while_full = 0
        return kept

    def _run_call(self, fn: Callable[[Database], Any], default: object) -> object:
        try:
            return fn(self._db)
        except sqlite3.Error as exc:
            if is_busy(exc):
                log.warning("%s is locked by another process: %s", self.path, exc)
            elif is_full(exc):
                self._disk_full(exc, 0)
            else:
                self._fail("using", exc)
        except msgspec.DecodeError as exc:
            log.error("%s holds a record this version cannot read: %s", self.path, exc)
        except Exception:
            log.exception("job store: unexpected error")
        return default

    def _serve(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < _MAX_BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            answers: list[tuple[_Waiter, object]] = []
            rows = [row for kind, payload, _ in items if kind == _WRITE for row in payload]
            if rows:
                try:
                    kept = iter(self._write(rows))
                except Exception:
                    log.exception("job store: unexpected error while writing")
                    kept = iter([False] * len(rows))
                for kind, payload, waiter in items:
                    if kind == _WRITE:
                        # An item's waiter is told about its last row (the awaited one).
                        ok = [next(kept) for _ in payload][-1]
                        if waiter is not None:
                            answers.append((waiter, ok))
            for kind, payload, waiter in items:
                if kind == _CALL and waiter is not None:
                    answers.append((waiter, self._run_call(*payload)))
                elif kind == _STOP and waiter is not None:
                    stop = True
                    self._db.close()
                    answers.append((waiter, None))
            if answers:
                try:
                    self._token.run_sync_soon(_resolve, answers)
                except trio.RunFinishedError:
                    log.warning("job store: answers dropped, the trio run has ended")

