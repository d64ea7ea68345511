"""Timestamps as llmd shows them: RFC 3339 in UTC, with milliseconds.

Invariants:
- One format for every timestamp a client or the store sees (``created_at``,
  ``checked_at``, ``cooldown_until``...), so they sort as text.
- Read from the wall clock only here; schedules and deadlines use trio's clock.
- Whatever zone a datetime is in, it is written in UTC; a local day starts at
  :func:`local_midnight`, with that date's own offset.
"""

from __future__ import annotations

import datetime as _dt


def utc_now() -> str:
    """The current time."""
    return rfc3339(_dt.datetime.now(_dt.timezone.utc))


def rfc3339(when: _dt.datetime | float) -> str:
    """A moment, a datetime (in any zone; a naive one is local time) or seconds since the
    epoch, as RFC 3339 in UTC with milliseconds."""
    if isinstance(when, _dt.datetime):
        when = when.astimezone(_dt.timezone.utc)
    else:
        when = _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_midnight(day: _dt.date) -> _dt.datetime:
    """The start of local ``day``, aware, with the offset of that date (summer time
    included)."""
    return _dt.datetime.combine(day, _dt.time()).astimezone()
