"""Wire and record shapes: the run request, the run result and the job record.

Invariants:
- Field names are the wire names of API.md; these structs are what gets encoded.
- Timestamps are RFC 3339 strings in UTC; durations are seconds as floats.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Literal, Union

import msgspec

JobState = Literal["queued", "running", "retrying", "succeeded", "failed", "timed_out",
                   "cancelled", "interrupted"]
FINAL_STATES: frozenset[str] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "interrupted"})
ALL_STATES: frozenset[str] = FINAL_STATES | {"queued", "running", "retrying"}


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


class RunResult(msgspec.Struct, omit_defaults=False):
    """The answer of a finished run (API.md "Run result")."""

    job: str
    blueprint: str
    state: str
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
    requested_blueprint: str | None = None
    """Set when a fallback served the run: the blueprint the request named."""
    fallback_reason: str | None = None


class JobRecord(msgspec.Struct):
    """A job as ``jobs.get`` shows it."""

    job: str
    blueprint: str
    state: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    result: RunResult | None = None
    error: dict[str, Any] | None = None


def utc_now() -> str:
    """The current time as RFC 3339 in UTC with milliseconds."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
