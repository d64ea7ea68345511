"""Budgets: what was spent today and this month, against ``[budget]`` and each blueprint's.

``[budget]`` limits all blueprints together, ``[blueprints.NAME.budget]`` one of them:
``daily_usd`` and ``monthly_usd`` (the known costs of the runs that ended, in the calendar
day and month of local time) and ``daily_runs`` (the runs that ended today).

Invariants:
- Pure bookkeeping: a clock function in, figures out; no I/O. The clock gives local time
  (an aware datetime); the day and month are that clock's, so a test can drive it.
- Spending is counted when a run ends (:meth:`BudgetBook.run_ended`); runs in flight are
  never stopped by a budget, so a limit can be overshot by what was already running.
- A run with no known cost adds nothing to ``daily_usd`` or ``monthly_usd`` (it does
  count towards ``daily_runs``).
- The 80 % warning is logged once per budget and period (day or month).
- Only the current month is held: older days are dropped as the month turns.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmd.config import BudgetSection, Registry
from llmd.timestamps import local_midnight, rfc3339

log = logging.getLogger("llmd.budget")

WARN_SHARE = 0.8
ALL = ""  # the scope of ``[budget]``: every blueprint together


def local_now() -> _dt.datetime:
    """The wall clock in local time."""
    return _dt.datetime.now().astimezone()


@dataclass(frozen=True)
class Use:
    """One budget's use now.

    Attributes:
        blueprint: The blueprint it limits, or None for ``[budget]`` (all of them).
        budget: ``daily_usd``, ``monthly_usd`` or ``daily_runs``.
        spent: Dollars (or runs) counted so far in the period.
        limit: The limit.
        resets_at: When the period ends (RFC 3339 UTC).
    """

    blueprint: str | None
    budget: str
    spent: float
    limit: float

    resets_at: str

    @property
    def exhausted(self) -> bool:
        """Whether a new run may not start."""
        return self.spent >= self.limit

    @property
    def warning(self) -> bool:
        """Whether 80 % of it is used."""
        return self.spent >= WARN_SHARE * self.limit

    def data(self) -> dict[str, Any]:
        """The ``data`` of -32009 and the items of ``budget.status``."""
        data: dict[str, Any] = {"blueprint": self.blueprint, "budget": self.budget,
                                "limit": self.limit, "resets_at": self.resets_at}
        if self.budget == "daily_runs":
            data["runs"] = int(self.spent)
        else:
            data["spent_usd"] = round(self.spent, 6)
        return data

    def describe(self) -> str:
        """``$3.10 of $5 today``, ``12 of 20 runs today``, ``$40 of $100 this month``."""
        when = "this month" if self.budget == "monthly_usd" else "today"
        if self.budget == "daily_runs":
            return f"{int(self.spent)} of {int(self.limit)} runs {when}"
        return f"${self.spent:.2f} of ${self.limit:g} {when}"


class BudgetBook:
    """Spending per local day and blueprint in the current month, and the budgets' use.

    Args:
        registry: The registry in force (its ``[budget]`` and blueprints' budgets).
        clock: Local time now.
    """

    def __init__(self, registry: Registry,
                 clock: Callable[[], _dt.datetime] = local_now) -> None:
        self.registry = registry
        self.clock = clock
        # (day, blueprint) -> [dollars, runs]
        self._spent: dict[tuple[str, str], list[float]] = {}
        self._month = ""
        self._warned: set[tuple[str, str, str]] = set()

    def set_registry(self, registry: Registry) -> None:
        """Put a (re)loaded registry's budgets in force."""
        self.registry = registry

    def seed(self, rows: Iterable[Sequence[Any]]) -> None:
        """Count runs already in the ledger: rows of (day, blueprint, runs, cost or None)."""
        self._roll(self.clock())
        for day, blueprint, runs, cost in rows:
            if isinstance(day, str) and day.startswith(self._month):
                cell = self._spent.setdefault((day, blueprint), [0.0, 0.0])
                cell[0] += float(cost or 0.0)
                cell[1] += float(runs or 0)

    def _roll(self, now: _dt.datetime) -> None:
        month = now.date().isoformat()[:7]
        if month != self._month:
            self._month = month
            self._spent = {k: v for k, v in self._spent.items() if k[0].startswith(month)}

    def run_ended(self, blueprint: str, cost_usd: float | None) -> None:
        """Count a run that ended now (its known cost, and one run); warn at 80 %."""
        now = self.clock()
        self._roll(now)
        cell = self._spent.setdefault((now.date().isoformat(), blueprint), [0.0, 0.0])
        cell[0] += cost_usd or 0.0
        cell[1] += 1
        for use in (*self.uses(blueprint, now), *self.uses(None, now)):
            if use.warning:
                self._warn(use, now)

    def _warn(self, use: Use, now: _dt.datetime) -> None:
        period = now.date().isoformat()[:7 if use.budget == "monthly_usd" else 10]
        key = (use.blueprint or ALL, use.budget, period)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("budget %s%s: %s used (%s)", use.budget,
                    f" of {use.blueprint}" if use.blueprint else "",
                    f"{min(use.spent / use.limit, 9.99):.0%}", use.describe())

    def _section(self, blueprint: str | None) -> BudgetSection | None:
        if blueprint is None:
            return self.registry.doc.budget
        bp = self.registry.blueprints.get(blueprint)
        return None if bp is None else bp.budget

    def uses(self, blueprint: str | None, now: _dt.datetime | None = None) -> list[Use]:
        """Every budget set for ``blueprint`` (None: ``[budget]``) with its use now."""
        section = self._section(blueprint)
        if section is None or (section.daily_usd is None and section.monthly_usd is None
                               and section.daily_runs is None):
            return []  # the common case, on every run's admission: no clock read
        now = self.clock() if now is None else now
        self._roll(now)
        today = now.date().isoformat()
        day_cost = day_runs = month_cost = 0.0
        for (day, name), (cost, runs) in self._spent.items():
            if blueprint is not None and name != blueprint:
                continue
            month_cost += cost
            if day == today:
                day_cost += cost
                day_runs += runs
        tomorrow = _midnight(now.date() + _dt.timedelta(days=1), now)
        first = now.date().replace(day=1)
        next_month = _midnight((first + _dt.timedelta(days=32)).replace(day=1), now)
        found = []
        if section.daily_usd is not None:
            found.append(Use(blueprint, "daily_usd", day_cost, section.daily_usd, tomorrow))
        if section.monthly_usd is not None:
            found.append(Use(blueprint, "monthly_usd", month_cost, section.monthly_usd,
                             next_month))
        if section.daily_runs is not None:
            found.append(Use(blueprint, "daily_runs", day_runs, section.daily_runs, tomorrow))
        return found

    def exhausted(self, blueprint: str | None) -> Use | None:
        """The first hard limit ``blueprint`` (None: all blueprints) is past, if any."""
        return next((use for use in self.uses(blueprint) if use.exhausted), None)

    def status(self) -> list[dict[str, Any]]:
        """Every budget's use, for ``budget.status``."""
        now = self.clock()
        found = [*self.uses(None, now)]
        for name in self.registry.blueprints:
            found += self.uses(name, now)
        return [{**use.data(), "spent": round(use.spent, 6), "text": use.describe(),
                 "warning": use.warning, "exhausted": use.exhausted} for use in found]


def _midnight(day: _dt.date, now: _dt.datetime) -> str:
    """The start of local ``day`` in ``now``'s time zone, RFC 3339 UTC. A clock that gives
    the system's local time gets that date's own offset (a change to or from summer time
    between now and then included)."""
    if now.utcoffset() == now.astimezone().utcoffset():
        start = local_midnight(day)
    else:
        start = _dt.datetime.combine(day, _dt.time(), tzinfo=now.tzinfo)
    return rfc3339(start)
