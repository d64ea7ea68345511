"""Where a run goes: the blueprint it names, a fallback while that one cools down, or nowhere.

Invariants:
- Decided from health's cache alone (:class:`~llmd.health.monitor.HealthMonitor`): no probe,
  no wait. Only a cached ``missing`` costs a PATH lookup, so that a CLI installed since
  its probe runs at once.
- An unhealthy blueprint still runs: a probe can be wrong (a flaky ``--version``, a login
  check stricter than the run), and the run's own error tells the client more than a
  guess would.
- A cooling-down blueprint's runs go to the first of its ``fallbacks``, in the order
  listed, that is usable (:data:`USABLE_FALLBACK`); with none, the run fails at once with
  -32004 and how long is left.
- A run that names a ``session`` or a ``model`` never moves to another CLI: they mean
  nothing there.
- A blueprint past one of its own budgets (:mod:`llmd.budget`) sends its runs to a usable
  fallback within its budgets (``fallback_reason: "budget"``) when its ``budget.fallback``
  allows, else they fail at once with -32009; past ``[budget]`` (all blueprints), every
  run fails with -32009.
- A run that ran out of retries on a rate limit moves on to a fallback chosen the same way
  (:func:`fallback_after_rate_limit`), once its blueprint has been put to cool down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmd.budget import BudgetBook, Use
from llmd.config import Registry
from llmd.errors import BudgetExhausted, LlmdError, RateLimited
from llmd.health.monitor import HealthMonitor

# What a fallback must be to take over a run; "unknown" counts because a blueprint
# not probed yet is more likely fine than not, and refusing would strand the run.
USABLE_FALLBACK: frozenset[str] = frozenset({"healthy", "unknown"})


@dataclass(frozen=True)
class Route:
    """Where a new run goes.

    Attributes:
        blueprint: The blueprint to run.
        requested: The blueprint the request named.
        reason: Why it was swapped (``None`` when it was not).
    """

    blueprint: str
    requested: str
    reason: str | None = None

    @property
    def swapped(self) -> bool:
        """Whether the run goes to a fallback."""
        return self.blueprint != self.requested


def route(health: HealthMonitor, registry: Registry, name: str, *,
          pinned: bool = False, budget: BudgetBook | None = None) -> Route:
    """Decide where a new run of blueprint ``name`` goes.

    Args:
        health: The health cache.
        registry: The registry in force (for the blueprint's ``fallbacks``).
        name: The blueprint the request names.
        pinned: The run names a session or a model, so it cannot move to another CLI.

    Returns:
        The blueprint itself, or during its cooldown its first usable fallback.

    Raises:
        UnknownBlueprint: No blueprint has that name (-32001).
        ExecutableMissing: Its program is not installed (-32002).
        RateLimited: It is cooling down and no fallback may take the run (-32004).
        BudgetExhausted: A budget is spent and no fallback may take the run (-32009).
    """
    state = health.state(name)
    health.check_installed(name)
    if budget is not None:
        over = budget.exhausted(None) or budget.exhausted(name)
        if over is not None:
            return _over_budget(health, registry, name, over, pinned=pinned, budget=budget)
    if state != "cooling_down":
        return Route(name, name)
    until, left = health.cooldown(name)
    fallbacks = registry.blueprints[name].fallbacks
    usable = _first_usable(health, registry, fallbacks, budget)
    data = {"blueprint": name, "retry_after_s": left, "cooldown_until": until}
    if usable is not None and pinned:
        raise RateLimited(f"{name!r} is rate limited until {until}; a run with a session or "
                          "a model cannot move to a fallback", data)
    if usable is not None:
        return Route(usable, name, f"{name} is rate limited until {until}; using {usable}")
    if fallbacks:
        why = f"and none of its fallbacks ({', '.join(fallbacks)}) is usable now"
    else:
        why = "and it has no fallbacks"
    raise RateLimited(f"{name!r} is rate limited until {until} {why}; retry in {left:g} s",
                      data)


def _first_usable(health: HealthMonitor, registry: Registry, fallbacks: Iterable[str],
                  budget: BudgetBook | None) -> str | None:
    """The first of ``fallbacks`` that is configured, usable now and within its budgets."""
    return next((other for other in fallbacks
                 if other in registry.blueprints
                 and health.state(other) in USABLE_FALLBACK
                 and (budget is None or budget.exhausted(other) is None)), None)


def _over_budget(health: HealthMonitor, registry: Registry, name: str, over: Use, *,
                 pinned: bool, budget: BudgetBook) -> Route:
    """A run of a blueprint past a budget: to a fallback within its own, or -32009."""
    why = f"budget {over.budget} exhausted ({over.describe()}); it resets at {over.resets_at}"
    if over.blueprint is None:
        why = f"{why}, for all blueprints"
    elif registry.blueprints[name].budget.fallback and not pinned:
        usable = _first_usable(health, registry, registry.blueprints[name].fallbacks, budget)
        if usable is not None:
            return Route(usable, name, "budget")
    raise BudgetExhausted(f"{name!r}: {why}", over.data())


def fallback_after_rate_limit(health: HealthMonitor, registry: Registry, name: str, *,
                              pinned: bool = False,
                              budget: BudgetBook | None = None) -> Route | None:
    """Where a run goes on after blueprint ``name`` ran out of retries on a rate limit.

    Call it once ``name`` cools down (:meth:`HealthMonitor.note_rate_limited`): the same
    rule as for a new run then picks its first usable fallback.

    Args:
        health: The health cache.
        registry: The registry in force.
        name: The blueprint that is rate limited.
        pinned: The run names a session or a model, so it stays.
        budget: The budgets, which a fallback must be within.

    Returns:
        The fallback's route, or None when the run cannot move (pinned, no usable fallback,
        or ``name`` is no longer configured).
    """
    if pinned or name not in registry.blueprints:
        return None
    try:
        chosen = route(health, registry, name, budget=budget)
    except LlmdError:
        return None
    return chosen if chosen.swapped else None
