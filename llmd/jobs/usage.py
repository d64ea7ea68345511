"""The usage ledger's pure core: what a finished run costs, and how runs add up.

A finished job that ran leaves one ledger entry (:class:`Entry`) beside its record in the store,
and adds to its local day's sums (per blueprint, and per blueprint with the model, the cwd
or both), which are never pruned: the ledger outlives the records. :func:`summarize` adds
rows of both kinds up for ``usage.summary``.

Invariants:
- Pure: records and rows in, numbers out; the only clock read is the local time zone
  (the ``day`` of an entry is the calendar day, in local time, when the run ended).
- A cost is what the CLI reported (``cost_source: "cli"``), else an estimate from the
  tokens and a configured ``[prices."MODEL"]`` (``"estimate"``), else unknown (null);
  nothing here knows a price that the registry did not give.
- A group's ``cost_usd`` is the sum of the costs known in it, null when none is; unknown
  costs are never counted as zero in a budget either (see :mod:`llmd.budget`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llmd.config import Price
from llmd.timestamps import local_midnight

GroupKey = Literal["blueprint", "model", "day", "cwd"]
GROUP_KEYS: tuple[GroupKey, ...] = ("blueprint", "model", "day", "cwd")
CostSource = Literal["cli", "estimate"]

# How a finished state counts: succeeded, failed (the CLI failed, ran out of retries or
# time), or neither (cancelled, interrupted).
_OUTCOME = {"succeeded": "s", "failed": "f", "timed_out": "f"}


def estimate_cost(usage: Mapping[str, int] | None, price: Price | None) -> float | None:
    """The cost of ``usage`` tokens at ``price``, or None when either is unknown."""
    if usage is None or price is None:
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if inp is None and out is None:
        return None
    cost = ((inp or 0) * price.input_per_mtok + (out or 0) * price.output_per_mtok) / 1e6
    return round(cost, 6)


def run_cost(cli_cost: float | None, usage: Mapping[str, int] | None,
             model: str | None, prices: Mapping[str, Price]) -> tuple[float | None,
                                                                   CostSource | None]:
    """A run's cost and where it comes from: the CLI's figure, an estimate, or neither.

    Args:
        cli_cost: What the CLI reported (claude does).
        usage: The tokens the run used, when known.
        model: The model it ran (the request's, else the blueprint's ``default_model``).
        prices: The registry's ``[prices]``.
    """
    if cli_cost is not None:
        return cli_cost, "cli"
    cost = estimate_cost(usage, prices.get(model) if model else None)
    return (cost, "estimate") if cost is not None else (None, None)


def local_day(timestamp: str) -> str:
    """The local calendar day (``YYYY-MM-DD``) of an RFC 3339 timestamp."""
    when = _dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return when.astimezone().date().isoformat()


def parse_moment(value: str, *, end: bool = False) -> _dt.datetime:
    """An RFC 3339 timestamp, or a date (``YYYY-MM-DD``: local midnight starting it, or
    with ``end`` the one ending it), as an aware datetime.

    Raises:
        ValueError: Neither.
    """
    if len(value) == 10:
        day = _dt.date.fromisoformat(value)
        if end:
            day += _dt.timedelta(days=1)
        return local_midnight(day)
    when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.astimezone()
    return when


@dataclass(frozen=True)
class Entry:
    """One finished run in the ledger."""

    job: str
    at: str                 # when it ended, RFC 3339 UTC
    day: str                # that moment's local calendar day
    blueprint: str
    model: str
    cwd: str
    outcome: str            # "s" succeeded, "f" failed, "c" neither
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    duration_s: float

    def day_params(self) -> tuple[Any, ...]:
        """What it adds to its day's sums, in the ``usage_daily`` table's column order
        (``runs`` aside)."""
        return (self.day, self.blueprint, self.model, self.cwd, int(self.outcome == "s"),
                int(self.outcome == "f"), self.input_tokens, self.output_tokens, self.cost_usd,
                self.duration_s)

    def as_params(self) -> tuple[Any, ...]:
        """The row's values, in the ``usage`` table's column order."""
        return (self.job, self.at, self.day, self.blueprint, self.model, self.cwd,
                self.outcome, self.input_tokens, self.output_tokens, self.cost_usd,
                self.duration_s)


def entry_for(job: str, *, blueprint: str, state: str, started_at: str | None,
              finished_at: str | None, request: Mapping[str, Any], model: str | None,
              result: Any, error: Mapping[str, Any] | None) -> Entry | None:
    """The ledger entry of a finished job, or None for a live one or one that never
    started (cancelled or interrupted while queued: not a run, as the budgets see it).

    Args:
        job: Its id.
        blueprint: The blueprint that ran.
        state: Its final state.
        started_at: When its first attempt started (None: never).
        finished_at: When it ended.
        request: Its ``llm.run`` params (for ``cwd``).
        model: The model it ran, when known.
        result: Its :class:`~llmd.jobs.records.RunResult`, if it succeeded.
        error: Its error object, if it did not.
    """
    if finished_at is None or started_at is None or state in ("queued", "running",
                                                               "retrying"):
        return None
    usage: Mapping[str, int] = {}
    cost: float | None = None
    duration = 0.0
    if result is not None:
        usage = result.usage or {}
        cost = result.cost_usd
        duration = result.duration_s
    elif error is not None:
        data = error.get("data") or {}
        duration = float(data.get("duration_s") or 0.0)
    cwd = request.get("cwd") if isinstance(request.get("cwd"), str) else None
    return Entry(job=job, at=finished_at, day=local_day(finished_at), blueprint=blueprint,
                 model=model or "", cwd=cwd or "", outcome=_OUTCOME.get(state, "c"),
                 input_tokens=int(usage.get("input_tokens") or 0),
                 output_tokens=int(usage.get("output_tokens") or 0),
                 cost_usd=cost, duration_s=float(duration))


@dataclass
class Totals:
    """What a group of runs adds up to."""

    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    duration_s: float = 0.0

    def add(self, row: Sequence[Any]) -> None:
        """Add a summed row: runs, succeeded, failed, input, output, cost, duration."""
        runs, ok, failed, inp, out, cost, duration = row
        self.runs += int(runs or 0)
        self.succeeded += int(ok or 0)
        self.failed += int(failed or 0)
        self.input_tokens += int(inp or 0)
        self.output_tokens += int(out or 0)
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + float(cost)
        self.duration_s += float(duration or 0.0)

    def wire(self) -> dict[str, Any]:
        """The shape ``usage.summary`` answers with."""
        return {"runs": self.runs, "succeeded": self.succeeded, "failed": self.failed,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
                "duration_s": round(self.duration_s, 3)}


def summarize(rows: Iterable[Sequence[Any]], by: Sequence[GroupKey]) -> dict[str, Any]:
    """``usage.summary``'s answer from summed rows (the group's values, then the sums).

    Args:
        rows: Each row: one value per ``by`` key, then runs, succeeded, failed, input
            tokens, output tokens, cost and duration. Rows of the same group add up.
        by: The keys grouped by, in order.

    Returns:
        ``{"by", "groups": [{KEY: VALUE, ..., totals}], "total": totals}``, groups sorted
        by their values.
    """
    groups: dict[tuple[Any, ...], Totals] = {}
    total = Totals()
    width = len(by)
    for row in rows:
        key = tuple(row[:width])
        groups.setdefault(key, Totals()).add(row[width:])
        total.add(row[width:])
    return {"by": list(by),
            "groups": [{**{k: (v if v != "" else None) for k, v in zip(by, key, strict=True)},
                        **groups[key].wire()}
                       for key in sorted(groups, key=lambda k: tuple(str(v) for v in k))],
            "total": total.wire()}
