"""A job in the daemon's memory: one run, from its admission to its final state.

Invariants:
- Made by :meth:`~llmd.jobs.manager.JobManager.submit` only, with the blueprint, timeout
  and rate-limit patterns resolved at admission (a reload never changes a job under way).
- :meth:`Job.record` and :meth:`Job.row` are fresh snapshots: what they return never
  changes after, whatever the job does.
- Ids sort by creation time.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from llmd.config import Blueprint
from llmd.drivers import AttemptProcess
from llmd.errors import LlmdError
from llmd.jobs.records import JobRecord, RunParams, RunResult
from llmd.jobs.state import INITIAL_STATE, JobState
from llmd.jobs.storedb import JobRow, ProcGroup
from llmd.jobs.worktree import Location, Sidecar
from llmd.timestamps import utc_now

EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Where a job's notifications go: ``await sink(method, params)``."""


def new_job_id() -> str:
    """A job id that sorts by creation time."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(3)}"


class Job:
    """One run, from request to final state: the live shape of a job, the source of its
    record and its store row (see :mod:`llmd.jobs.records`). Its state changes only
    through the job manager."""

    def __init__(self, job_id: str, params: RunParams, deadline: float, *,
                 bp: Blueprint | None = None, timeout: float = 0.0,
                 rate_limit_res: tuple[re.Pattern[str], ...] = ()) -> None:
        self.id = job_id
        self.params = params
        self.blueprint = params.blueprint
        # Resolved once, at admission: a reload never changes a job under way.
        self.bp = bp
        self.timeout = timeout
        self.rate_limit_res = rate_limit_res
        self.deadline = deadline
        self.state: JobState = INITIAL_STATE
        self.created_at = utc_now()
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.attempts = 0
        self.result: RunResult | None = None
        self.error: LlmdError | None = None
        self.scope = trio.CancelScope(deadline=deadline)
        self.cancel_requested = False
        self.cancel_reason = "cancelled by llm.cancel"
        self.finished = trio.Event()
        self.listeners: list[EventSink] = []
        self.in_queue = True
        self.history: list[tuple[JobState, str]] = [(self.state, self.created_at)]
        self.groups: list[ProcGroup] = []
        self.requested: str | None = None
        self.fallback_reason: str | None = None
        self.seq = 0
        self.streamed_stdout = False
        self.warm = False
        """Whether the last attempt was served by a process started before the request."""
        self.attempt: AttemptProcess | None = None
        """The attempt in flight (what it kept so far is the error's ``output``)."""
        self.stored = False
        """Whether the final record is committed to the store."""
        self.detached = False
        self.admitted = trio.current_time()
        self.began: float | None = None
        """When its first attempt started (trio's clock): what it took excludes the queue."""
        self.first_output: float | None = None
        """When its first output text came (trio's clock), for the time-to-first-output."""
        self.durable = trio.Event()
        """Set once a detached job's record can be found after a crash (see the manager)."""
        self.worktree: Sidecar | None = None
        """The job's worktree, once made (``isolate: "worktree"``)."""
        self.where: Location | None = None
        """Where its ``cwd`` is in its repository, as admission found it (isolated runs)."""
        self.live_text: list[str] = []
        """The stdout text of the attempt in flight (or the last), as streamed, for a
        structured parser (a plain-text attempt's kept stdout is its text)."""

    @property
    def cwd(self) -> str | None:
        """Where the job's CLI works: inside its worktree, or the request's ``cwd``."""
        return self.worktree.cwd if self.worktree is not None else self.params.cwd

    @property
    def model(self) -> str | None:
        """The model the run asked for, else its blueprint's default (None: the CLI's)."""
        if self.params.model is not None:
            return self.params.model
        return self.bp.default_model if self.bp is not None else None

    def row(self) -> JobRow:
        """A snapshot for the store (fresh tuples: the store may write it later)."""
        error = self.error.to_wire() if self.error is not None else None
        exit_code = (self.result.exit_code if self.result is not None
                     else self.error.data.get("exit_code") if self.error is not None else None)
        return JobRow(job=self.id, blueprint=self.blueprint, state=self.state,
                      created_at=self.created_at, started_at=self.started_at,
                      finished_at=self.finished_at, attempts=self.attempts,
                      request=msgspec.structs.asdict(self.params), exit_code=exit_code,
                      result=self.result, error=error, history=tuple(self.history),
                      groups=tuple(self.groups), model=self.model)

    def record(self, *, with_text: bool = True) -> JobRecord:
        """The job as ``jobs.get`` shows it."""
        result = self.result
        if result is not None and not with_text:
            result = msgspec.structs.replace(result, text="", output="")
        return JobRecord(job=self.id, blueprint=self.blueprint, state=self.state,
                         created_at=self.created_at, started_at=self.started_at,
                         finished_at=self.finished_at, attempts=self.attempts, result=result,
                         error=self.error.to_wire() if self.error is not None else None,
                         cwd=self.params.cwd,
                         output_chars=getattr(self.attempt, "kept_chars", None))
