"""Timestamps as llmd shows them: RFC 3339 in UTC, with milliseconds.

Invariants:
- One format for every timestamp a client or the store sees (``created_at``,
  ``checked_at``, ``cooldown_until``...), so they sort as text.
- Read from the wall clock only here; schedules and deadlines use trio's clock.
"""

from __future__ import annotations

import datetime as _dt


def utc_now() -> str:
    """The current time."""
    return rfc3339(_dt.datetime.now(_dt.timezone.utc))


def rfc3339(when: _dt.datetime | float) -> str:
    """A moment, a UTC datetime or seconds since the epoch, as RFC 3339 in UTC with
    milliseconds."""
    if not isinstance(when, _dt.datetime):
        when = _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
