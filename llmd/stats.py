"""Figures per blueprint: the runs of the last hour and day (``daemon.stats``), and the
counters and gauges of the Prometheus text exposition (``daemon.metrics``, ``[metrics]``).

Invariants:
- Pure: jobs that ended and a clock in, figures and text out; no I/O (the text file is
  written by :mod:`llmd.metrics`).
- Only what the last day needs is held: one small sample per run that ended, dropped once
  older than a day. Counters count from the daemon's start (Prometheus handles resets).
- Failure classes come from the error's code: ``rate_limit`` (-32004), ``timeout``
  (-32003), ``cli_failure`` (-32005), ``cancelled`` (a cancelled or interrupted job),
  ``other`` (everything else: a missing executable, an internal error...).
- Metric names follow the exposition format's conventions: the ``llmd_`` prefix,
  ``_total`` counters, ``_seconds`` units; label values are escaped.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmd.errors import CLI_FAILED, RATE_LIMITED, TIMED_OUT

HOUR = 3600.0
DAY = 86400.0
FAILURE_CLASSES = ("rate_limit", "timeout", "cli_failure", "cancelled", "other")
_CLASS_OF_CODE = {RATE_LIMITED: "rate_limit", TIMED_OUT: "timeout", CLI_FAILED: "cli_failure"}


@dataclass(frozen=True)
class Sample:
    """One run that ended, as the figures need it."""

    at: float                   # when it ended, on the stats' clock
    blueprint: str
    outcome: str                # "succeeded" or a failure class
    duration_s: float
    first_output_s: float | None
    retries: int
    requested: str | None       # the blueprint asked for, when a fallback served the run
    warm: bool | None = None    # None: no warm agent could have served it


@dataclass
class _Counters:
    runs: dict[str, int] = field(default_factory=dict)  # outcome -> count
    retries: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    duration_sum: float = 0.0
    duration_count: int = 0


def failure_class(state: str, code: int | None) -> str:
    """``succeeded``, or the class of failure of a job that ended in ``state``."""
    if state == "succeeded":
        return "succeeded"
    if state in ("cancelled", "interrupted"):
        return "cancelled"
    return _CLASS_OF_CODE.get(code or 0, "other")


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile of ``values`` (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


class RunStats:
    """The last day's runs and the counters since start.

    Args:
        clock: Seconds on a monotonic clock (trio's, or ``time.monotonic``).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.samples: deque[Sample] = deque()
        self.counters: dict[str, _Counters] = {}

    def add(self, sample: Sample, *, input_tokens: int = 0, output_tokens: int = 0,
            cost_usd: float | None = None) -> None:
        """Count a run that ended."""
        self.samples.append(sample)
        self._trim(sample.at)
        c = self.counters.setdefault(sample.blueprint, _Counters())
        c.runs[sample.outcome] = c.runs.get(sample.outcome, 0) + 1
        c.retries += sample.retries
        c.input_tokens += input_tokens
        c.output_tokens += output_tokens
        c.cost_usd += cost_usd or 0.0
        c.duration_sum += sample.duration_s
        c.duration_count += 1
        if sample.requested is not None:
            self.counters.setdefault(sample.requested, _Counters()).fallbacks += 1

    def _trim(self, now: float) -> None:
        while self.samples and self.samples[0].at < now - DAY:
            self.samples.popleft()

    def snapshot(self) -> dict[str, Any]:
        """``daemon.stats``: per blueprint, the last hour's and day's figures."""
        now = self.clock()
        self._trim(now)
        by: dict[str, dict[str, list[Sample]]] = {}
        moved: dict[str, dict[str, int]] = {}
        for s in self.samples:
            periods = by.setdefault(s.blueprint, {"hour": [], "day": []})
            periods["day"].append(s)
            recent = s.at >= now - HOUR
            if recent:
                periods["hour"].append(s)
            if s.requested is not None:
                # A fallback taken is the requested blueprint's figure.
                by.setdefault(s.requested, {"hour": [], "day": []})
                counts = moved.setdefault(s.requested, {"hour": 0, "day": 0})
                counts["day"] += 1
                counts["hour"] += recent
        return {"blueprints": {
            name: {period: _figures(samples, moved.get(name, {}).get(period, 0))
                   for period, samples in periods.items()}
            for name, periods in sorted(by.items())}}


def _figures(samples: list[Sample], fallbacks: int) -> dict[str, Any]:
    runs = len(samples)
    failures = {cls: sum(1 for s in samples if s.outcome == cls) for cls in FAILURE_CLASSES}
    failed = sum(failures.values())
    durations = [s.duration_s for s in samples]
    first = [s.first_output_s for s in samples if s.first_output_s is not None]
    warm = [s.warm for s in samples if s.warm is not None]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {"runs": runs, "failure_rate": round(failed / runs, 4) if runs else None,
            "failures": failures,
            "duration_p50_s": rounded(percentile(durations, 0.5)),
            "duration_p90_s": rounded(percentile(durations, 0.9)),
            "first_output_p50_s": rounded(percentile(first, 0.5)),
            "first_output_p90_s": rounded(percentile(first, 0.9)),
            "retries": sum(s.retries for s in samples),
            "fallbacks": fallbacks,
            "warm_share": round(sum(warm) / len(warm), 4) if warm else None}


# --- the Prometheus text exposition ------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


Metric = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]
"""(name, type, help, [(suffix, labels, value), ...]): a suffix such as ``_sum`` for the
samples of a summary, else empty."""


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition of ``metrics``: HELP and TYPE, then one line per sample."""
    lines: list[str] = []
    for name, kind, text, samples in metrics:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            lines.append(f"{name}{suffix}{{{inner}}} {_number(value)}" if inner
                         else f"{name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def counter_metrics(stats: RunStats) -> list[Metric]:
    """The counters since start, per blueprint, and the runs' durations as a summary."""
    items = sorted(stats.counters.items())

    def each(value: Callable[[_Counters], float]) -> list[tuple[str, dict[str, str], float]]:
        return [("", {"blueprint": name}, value(c)) for name, c in items]

    return [
        ("llmd_runs_total", "counter", "Runs that ended, by blueprint and outcome.",
         [("", {"blueprint": name, "outcome": outcome}, count)
          for name, c in items for outcome, count in sorted(c.runs.items())]),
        ("llmd_retries_total", "counter", "Attempts retried after a rate limit.",
         each(lambda c: c.retries)),
        ("llmd_fallbacks_total", "counter",
         "Runs of a blueprint that a fallback served (labelled with the one requested).",
         each(lambda c: c.fallbacks)),
        ("llmd_input_tokens_total", "counter", "Input tokens the CLIs reported.",
         each(lambda c: c.input_tokens)),
        ("llmd_output_tokens_total", "counter", "Output tokens the CLIs reported.",
         each(lambda c: c.output_tokens)),
        ("llmd_cost_usd_total", "counter",
         "Known cost of the runs in US dollars (reported by the CLI or estimated).",
         each(lambda c: c.cost_usd)),
        ("llmd_run_duration_seconds", "summary", "Seconds the runs that ended took.",
         [(suffix, {"blueprint": name}, value) for name, c in items
          for suffix, value in (("_sum", c.duration_sum), ("_count", c.duration_count))]),
    ]
