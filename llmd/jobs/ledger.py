"""The usage ledger's edge: ``usage.summary`` answered from the job store.

Invariants:
- Reads only: the ledger is written with each finished job's record (:mod:`llmd.jobs.storedb`)
  and folded into daily sums when records are pruned.
- A window is ``[since, until)``; the daily sums of pruned records count whole days (the
  days that the window touches).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from llmd.errors import InvalidParams
from llmd.jobs import usage
from llmd.jobs.store import JobStore


def window(since: str | None, until: str | None) -> tuple[str, str, str, str]:
    """A summary's window as the store's timestamps and local days.

    Raises:
        InvalidParams: ``since`` or ``until`` is neither RFC 3339 nor ``YYYY-MM-DD``.
    """
    try:
        start = usage.parse_moment(since) if since else None
        end = usage.parse_moment(until, end=True) if until else None
    except ValueError:
        raise InvalidParams("since and until are RFC 3339 timestamps or dates (YYYY-MM-DD)",
                            {"path": "$.since" if since else "$.until"}) from None
    # "" sorts before and "~" after every timestamp and day.
    return ("" if start is None else usage.utc_text(start),
            "~" if end is None else usage.utc_text(end),
            "" if start is None else start.astimezone().date().isoformat(),
            "~" if end is None else (end.astimezone() - _dt.timedelta(microseconds=1))
            .date().isoformat())


async def summary(store: JobStore, since: str | None, until: str | None,
                  by: tuple[usage.GroupKey, ...]) -> dict[str, Any]:
    """``usage.summary``: the runs in the window, summed per group and in total."""
    by = tuple(dict.fromkeys(by))
    bounds = window(since, until)
    rows = await store.usage_rows(*bounds, by=by)
    return {"since": since, "until": until, **usage.summarize(rows, by)}
