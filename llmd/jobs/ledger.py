"""The usage ledger's edge: ``usage.summary`` answered from the job store.

Invariants:
- Reads only: the ledger is written with each finished job's record (:mod:`llmd.jobs.storedb`)
  and folded into daily sums when records are pruned.
- A window is ``[since, until)``. Whole local days inside it are read from the daily
  sums, which outlive the records; the parts of days at its edges from the entries kept
  with the records (a part of a day whose records are pruned counts nothing).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from llmd.errors import InvalidParams
from llmd.jobs import usage
from llmd.jobs.store import JobStore
from llmd.timestamps import local_midnight, rfc3339

Window = tuple[tuple[str, str] | None, list[tuple[str, str]]]
"""The local days read from the daily sums (first, last), and the ``[since, until)``
ranges read from the entries."""


def window(since: str | None, until: str | None) -> Window:
    """A summary's window: whole local days from the daily sums, the parts of days at its
    edges from the entries.

    Raises:
        InvalidParams: ``since`` or ``until`` is neither RFC 3339 nor ``YYYY-MM-DD``.
    """
    try:
        start = usage.parse_moment(since) if since else None
        end = usage.parse_moment(until, end=True) if until else None
    except ValueError:
        raise InvalidParams("since and until are RFC 3339 timestamps or dates (YYYY-MM-DD)",
                            {"path": "$.since" if since else "$.until"}) from None
    first = last = None
    if start is not None:
        first = start.astimezone().date()
        if local_midnight(first) < start:
            first += _dt.timedelta(days=1)  # its first day is a part of a day
    if end is not None:
        last = end.astimezone().date() - _dt.timedelta(days=1)
    if first is not None and last is not None and first > last:
        # Within one day, or across parts of two: the entries alone.
        return None, [(rfc3339(start), rfc3339(end))] \
            if start is not None and end is not None and start < end else []
    ranges = []
    # "" sorts before and "~" after every timestamp and day.
    if start is not None and first is not None and start < local_midnight(first):
        ranges.append((rfc3339(start), rfc3339(local_midnight(first))))
    if end is not None and last is not None:
        tail = local_midnight(last + _dt.timedelta(days=1))
        if tail < end:
            ranges.append((rfc3339(tail), rfc3339(end)))
    days = ("" if first is None else first.isoformat(), "~" if last is None else last.isoformat())
    return days, ranges


async def summary(store: JobStore, since: str | None, until: str | None,
                  by: tuple[usage.GroupKey, ...]) -> dict[str, Any]:
    """``usage.summary``: the runs in the window, summed per group and in total."""
    by = tuple(dict.fromkeys(by))
    days, ranges = window(since, until)
    rows = await store.usage_rows(days, ranges, by)
    return {"since": since, "until": until, **usage.summarize(rows, by)}
