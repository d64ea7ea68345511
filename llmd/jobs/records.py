"""Wire and record shapes: the run request, the run result and the job record.

A job has three shapes, all derived from one source:

- ``Job`` (:mod:`llmd.jobs.job`): the live job in the daemon's memory, with what only a
  running job has (its cancel scope, deadline, listeners, the attempt in flight). It is
  the source of the other two.
- :class:`JobRecord` (here): the job as clients see it (``jobs.get``, ``jobs.list``);
  ``Job.record()`` makes it, and the store gives it back for jobs no longer in memory.
- ``JobRow`` (:mod:`llmd.jobs.storedb`): what the store keeps, a :class:`JobRecord` plus
  what only recovery and auditing need (the request, the state history, the process
  groups, the owning daemon); ``Job.row()`` makes it.

Their ``state`` is a :data:`~llmd.jobs.state.JobState`, changed only as
:mod:`llmd.jobs.state` allows.

Invariants:
- Field names are the wire names of API.md; these structs are what gets encoded.
- Timestamps are RFC 3339 strings in UTC; durations are seconds as floats.
- Frozen: a record handed out (or to the store's thread) never changes under its reader.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from llmd.jobs.state import JobState

WorktreeStatus = Literal["unapplied", "applied", "discarded"]


class WorktreeInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job's worktree as results and records show it (API.md "Worktree")."""

    path: str
    base: str
    """The commit the worktree started from."""
    changed_files: int = 0
    insertions: int = 0
    deletions: int = 0
    status: WorktreeStatus = "unapplied"
    files: tuple[str, ...] = ()
    """The paths changed, relative to the repository's top."""


class RunParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``llm.run`` parameters."""

    blueprint: str
    prompt: str
    stream: bool = False
    json: bool = False
    timeout: Union[float, str, None] = None  # noqa: UP007 - msgspec needs a runtime Union on 3.10
    cwd: Union[str, None] = None  # noqa: UP007
    model: Union[str, None] = None  # noqa: UP007
    session: Union[str, None] = None  # noqa: UP007
    detach: bool = False
    isolate: Union[Literal["none", "worktree"], None] = None  # noqa: UP007
    base: Union[str, None] = None  # noqa: UP007 - "head", "working-tree" or a ref
    edit: bool = False


class RunResult(msgspec.Struct, omit_defaults=False, frozen=True):
    """The answer of a finished run (API.md "Run result")."""

    job: str
    blueprint: str
    state: JobState
    text: str
    output: str
    stderr: str
    exit_code: int | None
    attempts: int
    duration_s: float
    truncated: bool = False
    json: Any = None
    json_error: str | None = None
    session: str | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    cost_source: str | None = None
    """``"cli"`` (the CLI reported ``cost_usd``), ``"estimate"`` (from ``[prices]``) or None."""
    requested_blueprint: str | None = None
    """Set when a fallback served the run: the blueprint the request named."""
    fallback_reason: str | None = None
    warm: bool = False
    """Served by a process started before the request."""
    worktree: WorktreeInfo | None = None


class JobRecord(msgspec.Struct, frozen=True):
    """A job as ``jobs.get`` shows it (API.md "Job record")."""

    job: str
    blueprint: str
    state: JobState
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    result: RunResult | None = None
    error: dict[str, Any] | None = None
    worktree: WorktreeInfo | None = None
    cwd: str | None = None
    """The run's working directory (as the request gave it; None: the daemon's)."""
    output_chars: int | None = None
    """While an attempt runs: the characters of its stdout so far (for ``llmc top``)."""
