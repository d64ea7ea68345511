"""A rate-limited run moving itself to a fallback.

When a run has spent its retries on a rate limit, its blueprint cools down and later runs
go to a fallback (:mod:`llmd.routing`). The run itself goes there too, rather than fail
with -32004, when a fallback is usable and the run is not pinned by a ``session`` or a
``model``.

Invariants:
- The run keeps its id, deadline, listeners and attempt count; it takes the fallback's
  blueprint, slot, retry policy and rate-limit patterns from the registry in force.
- Its listeners are told by an ``llm.state`` ``retrying`` (no wait: ``retry_in_s`` 0)
  that names the new ``blueprint``, the ``requested_blueprint`` and the
  ``fallback_reason``, and says ``restart_output`` when text had streamed, which is then
  not part of the answer.
- ``requested_blueprint`` stays the blueprint the request named, however often it moves;
  it cannot come back to a blueprint it left, since that one cools down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from llmd.routing import Route

if TYPE_CHECKING:
    from llmd.jobs.job import Job
    from llmd.jobs.manager import JobManager

log = logging.getLogger("llmd.jobs")


class MoveTo(Exception):
    """Raised out of a run's attempts (and its slots) to go on at ``route.blueprint``."""

    def __init__(self, route: Route) -> None:
        super().__init__(route.reason)
        self.route = route


async def move(manager: JobManager, job: Job, route: Route) -> None:
    """Point ``job`` at the fallback ``route`` names and tell its listeners.

    Args:
        manager: The job manager (its registry and state changes).
        job: The job, in state ``running``, whose blueprint just cooled down.
        route: Where it goes.
    """
    bp = manager.registry.blueprints[route.blueprint]
    requested = job.requested or job.blueprint
    job.requested = requested
    job.fallback_reason = f"{route.reason}; the run moved there"
    job.blueprint = route.blueprint
    job.bp = bp
    job.params = msgspec.structs.replace(job.params, blueprint=route.blueprint)
    job.rate_limit_res = manager.registry.rate_limit_res.get(route.blueprint, ())
    restart = job.streamed_stdout
    job.streamed_stdout = False
    log.info("job %s: %s", job.id, job.fallback_reason)
    await manager._set_state(
        job, "retrying", retry_in_s=0, restart_output=restart, blueprint=route.blueprint,
        requested_blueprint=requested, fallback_reason=job.fallback_reason)
