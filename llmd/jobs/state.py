"""A job's states and which may follow which, as one table (pure: no clock, no I/O).

Invariants:
- A job starts ``queued`` and ends in exactly one final state; nothing follows a final
  state.
- :data:`TRANSITIONS` is the whole truth: a change of state that it does not list is a
  bug, refused by :func:`advance` with -32603.
- ``succeeded`` comes only out of ``running`` (an attempt's exit); ``retrying`` only out
  of ``running`` (an attempt that hit a rate limit) and goes back to ``running`` or ends.
- ``failed``, ``timed_out``, ``cancelled`` and ``interrupted`` can end a job in any live
  state: a deadline, a cancel, a shutdown or a crash (recovered on the next start as
  ``interrupted``) does not wait for an attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from llmd.errors import InternalError

JobState = Literal["queued", "running", "retrying", "succeeded", "failed", "timed_out",
                   "cancelled", "interrupted"]
"""What ``state`` says in a run result, a job record, a stored row and ``llm.state``."""

ALL_STATES: frozenset[JobState] = frozenset(get_args(JobState))
FINAL_STATES: frozenset[JobState] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "interrupted"})
LIVE_STATES: frozenset[JobState] = ALL_STATES - FINAL_STATES
INITIAL_STATE: JobState = "queued"

# Ends that may cut a job short whatever it is doing.
_CUT_SHORT: frozenset[JobState] = frozenset({"failed", "timed_out", "cancelled", "interrupted"})

TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    "queued": _CUT_SHORT | {"running"},
    "running": _CUT_SHORT | {"retrying", "succeeded"},
    "retrying": _CUT_SHORT | {"running"},
    "succeeded": frozenset(),
    "failed": frozenset(),
    "timed_out": frozenset(),
    "cancelled": frozenset(),
    "interrupted": frozenset(),
}
"""The states that may follow each state."""


def can_follow(current: JobState, new: JobState) -> bool:
    """Whether a job in state ``current`` may change to ``new``."""
    return new in TRANSITIONS[current]


def advance(current: JobState, new: JobState) -> JobState:
    """Check a change of state and return the new state.

    Raises:
        InternalError: The table does not allow it (a bug in llmd, never the client's).
    """
    if new not in TRANSITIONS[current]:
        raise InternalError(f"a job cannot go from {current} to {new}")
    return new
