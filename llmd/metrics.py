"""The figures' edge: jobs that end become samples, the daemon's state becomes gauges, and
``[metrics] textfile`` is written for node_exporter's textfile collector.

Invariants:
- The text file is replaced atomically (written to a temporary file in the same directory,
  flushed, then renamed over it): a reader sees the old file or the new one, never half.
- A file that cannot be written is logged once per cause (WARNING) and tried again at the
  next interval; it never stops the daemon.
- No HTTP listener: the text is given by ``daemon.metrics`` and the file only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from llmd.budget import BudgetBook
from llmd.health.monitor import HealthMonitor
from llmd.jobs.job import Job
from llmd.jobs.manager import JobManager
from llmd.paths import write_atomically
from llmd.stats import Metric, RunStats, Sample, counter_metrics, failure_class, render

log = logging.getLogger("llmd.metrics")


def observe(stats: RunStats) -> Callable[[Job], None]:
    """A job manager observer that counts every job that ended in ``stats``."""

    def job_ended(job: Job) -> None:
        if job.began is None:
            return  # never ran: refused or cancelled while it waited
        now = stats.clock()
        result = job.result
        code = job.error.code if job.error is not None else None
        duration = result.duration_s if result is not None else now - job.began
        first = (job.first_output - job.admitted) if job.first_output is not None else None
        usage = (result.usage or {}) if result is not None else {}
        # Only a blueprint with warm processes could have been served by one.
        warm = job.warm if job.bp is not None and job.bp.warm.enabled else None
        stats.add(Sample(at=now, blueprint=job.blueprint,
                         outcome=failure_class(job.state, code), duration_s=duration,
                         first_output_s=first, retries=max(job.attempts - 1, 0),
                         requested=job.requested, warm=warm),
                  input_tokens=int(usage.get("input_tokens") or 0),
                  output_tokens=int(usage.get("output_tokens") or 0),
                  cost_usd=result.cost_usd if result is not None else None)

    return job_ended


def gauges(manager: JobManager, health: HealthMonitor, budget: BudgetBook | None,
           uptime_s: float) -> list[Metric]:
    """What the daemon holds now."""
    names = sorted(manager.registry.blueprints)
    found: list[Metric] = [
        ("llmd_uptime_seconds", "gauge", "Seconds since the daemon started.",
         [("", {}, round(uptime_s, 3))]),
        ("llmd_jobs_running", "gauge", "Jobs running now.", [("", {}, manager.running)]),
        ("llmd_jobs_queued", "gauge", "Jobs waiting for a slot.", [("", {}, manager.queued)]),
        ("llmd_blueprint_cooling_down", "gauge",
         "1 while a blueprint cools down after a rate limit.",
         [("", {"blueprint": name}, float(health.state(name) == "cooling_down"))
          for name in names]),
    ]
    if budget is not None:
        uses = [use for use in budget.uses(None)] + [
            use for name in names for use in budget.uses(name)]
        found.append(("llmd_budget_used_ratio", "gauge",
                      "Share of a budget spent in its period (1 is its limit).",
                      [("", {"blueprint": use.blueprint or "", "budget": use.budget},
                        round(use.spent / use.limit, 6)) for use in uses]))
    return found


def exposition(stats: RunStats, manager: JobManager, health: HealthMonitor,
               uptime_s: float) -> str:
    """The whole text exposition, as ``llmc metrics`` prints it."""
    return render([*counter_metrics(stats),
                   *gauges(manager, health, manager.budget, uptime_s)])


async def write_textfile(path: Path, interval: float, text: Callable[[], str], *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                         ) -> None:
    """Write ``text()`` to ``path`` now and every ``interval`` seconds, until cancelled."""
    task_status.started()
    failed: str | None = None
    while True:
        try:
            # node_exporter may run as another user.
            await trio.to_thread.run_sync(write_atomically, path, text(), 0o644)
        except OSError as exc:
            cause = f"{exc.strerror or exc}"
            if cause != failed:
                log.warning("metrics: cannot write %s: %s", path, cause)
            failed = cause
        else:
            failed = None
        await trio.sleep(interval)
