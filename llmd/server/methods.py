"""The JSON-RPC methods: thin adapters from wire params to the job manager.

Invariants:
- Parameters are typed structs; unknown parameters are refused (-32602), so a client
  cannot smuggle options (environment, argv) into a run.
- Handlers return structs or plain dicts that encode straight to the wire shape.
- A handler reaches only what its :class:`MethodContext` holds (the job manager, the job
  store, health, and the :class:`Host`'s registry view) and the call's session, which
  sends its notifications; nothing here imports the daemon.
- A detached run's id is sent only once its record would survive a crash of the daemon.
- A job this daemon does not hold in memory is looked up in the store (finished long
  ago, before a restart, or live under another daemon sharing the store): ``jobs.get``
  with ``wait`` polls the store for it; ``llm.cancel`` says ``cancelled: false`` for a
  finished one and -32602 for one another daemon runs.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

import msgspec
import trio

from llmd import __version__, metrics
from llmd.config import Registry
from llmd.errors import InvalidParams, NoSuchJob
from llmd.health.monitor import HealthMonitor
from llmd.jobs import ledger
from llmd.jobs import output as job_output
from llmd.jobs.job import Job
from llmd.jobs.manager import JobManager
from llmd.jobs.records import JobRecord, RunParams, RunResult
from llmd.jobs.state import FINAL_STATES, JobState
from llmd.jobs.store import JobStore
from llmd.jobs.worktree import Worktrees
from llmd.server.dispatch import CallContext, Method
from llmd.stats import RunStats


class JobParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``llm.cancel`` parameters."""

    job: str


class GetParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``jobs.get`` parameters."""

    job: str
    wait: bool = False
    timeout: float | None = None


class DiffParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``jobs.diff`` parameters."""

    job: str
    binary: bool = False


class OutputParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``jobs.output`` parameters."""

    job: str
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Union[Annotated[int, msgspec.Meta(ge=1)], None] = None  # noqa: UP007


class WatchParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``jobs.watch`` parameters."""

    states: Union[list[JobState], None] = None  # noqa: UP007 - msgspec needs a runtime Union
    blueprint: str | None = None


class UnwatchParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``jobs.unwatch`` parameters."""

    watch: int


class HealthParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``health.status`` and ``health.check`` parameters."""

    blueprint: str | None = None


MAX_LIST_LIMIT = 1_000_000
# Polling the store for a job another daemon runs: first and longest interval (seconds).
STORE_POLL_FIRST = 0.05
STORE_POLL_MAX = 1.0


class ListParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``jobs.list`` parameters: the state and the bounds of the limit are checked as the
    params are decoded (-32602 with the path of the offending one)."""

    state: Union[JobState, None] = None  # noqa: UP007 - msgspec needs a runtime Union on 3.10
    blueprint: Union[str, None] = None  # noqa: UP007
    # SQLite takes 64-bit integers only.
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST_LIMIT)] = 50
    unapplied: bool = False
    prompt_line: bool = False


class PrewarmParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``llm.prewarm`` parameters."""

    blueprint: str
    cwd: Union[str, None] = None  # noqa: UP007 - msgspec needs a runtime Union on 3.10
    model: Union[str, None] = None  # noqa: UP007


class UsageParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``usage.summary`` parameters: a window (RFC 3339 or a local date) and groupings."""

    since: Union[str, None] = None  # noqa: UP007 - msgspec needs a runtime Union on 3.10
    until: Union[str, None] = None  # noqa: UP007
    by: list[Literal["blueprint", "model", "day", "cwd"]] = msgspec.field(default_factory=list)


class Host(Protocol):
    """What the methods need of the daemon that serves them."""

    @property
    def registry(self) -> Registry:
        """The registry in force (a reload replaces it)."""

    @property
    def socket_path(self) -> Path:
        """The socket served."""

    @property
    def uptime_s(self) -> float:
        """Seconds since the daemon started."""

    @property
    def connections(self) -> int:
        """Connections open now."""

    def reload(self) -> Registry:
        """Re-read the registry (raises ConfigError, keeping the old one, if invalid)."""


@dataclass(frozen=True)
class MethodContext:
    """Everything the methods use, made whole before the first request."""

    host: Host
    manager: JobManager
    store: JobStore
    health: HealthMonitor
    stats: RunStats | None = None


def build(context: MethodContext) -> list[Method]:
    """The method table, around what the methods use."""
    host, manager, store, health = context.host, context.manager, context.store, context.health
    stats = context.stats

    worktrees = manager.worktrees

    def _shown(record: JobRecord) -> JobRecord:
        """A record with its worktree as it is now (applied, discarded...)."""
        info = worktrees.info(record.job) if worktrees is not None else None
        return record if info is None else msgspec.structs.replace(record, worktree=info)

    def _worktrees() -> Worktrees:
        if worktrees is None:
            raise InvalidParams("this llmd keeps no worktrees")
        return worktrees

    async def llm_run(params: RunParams, ctx: CallContext) -> RunResult | dict[str, Any]:
        where = None
        if worktrees is not None and params.cwd is not None and manager.isolated(params):
            # Refused now (-32602), not after the job is queued or detached.
            where = await worktrees.check(params.cwd, params.base)
        job = manager.submit(params, where=where)
        if params.detach:
            manager.start_detached(job)
            await manager.detached_durable(job)
            return {"job": job.id, "state": job.state}
        if params.stream:
            session = ctx.session
            request = ctx.request_id

            async def forward(method: str, payload: dict[str, Any]) -> None:
                await session.notify(method, {**payload, "request": request})

            job.listeners.append(forward)
        return await manager.run(job)

    async def _stored(job_id: str) -> JobRecord:
        """The store's record of a job the daemon does not hold in memory."""
        stored = await store.get(job_id)
        if stored is None:
            raise NoSuchJob(f"no job {job_id!r}", {"job": job_id})
        return stored

    async def llm_cancel(params: JobParams, ctx: CallContext) -> dict[str, Any]:
        if params.job not in manager.jobs:
            stored = await _stored(params.job)
            if stored.state not in FINAL_STATES:
                raise InvalidParams(
                    f"job {params.job!r} is {stored.state} under another llmd sharing this "
                    "job store; cancel it through that daemon's socket",
                    {"job": params.job, "state": stored.state})
            return {"job": params.job, "cancelled": False}
        return {"job": params.job, "cancelled": manager.cancel(params.job)}

    async def jobs_get(params: GetParams, ctx: CallContext) -> JobRecord:
        if params.timeout is not None and not params.timeout >= 0:
            raise InvalidParams("timeout must be a number of seconds >= 0")
        job = manager.jobs.get(params.job)
        if job is None:
            # Finished long ago, or before a restart: the store has it.
            stored = await _stored(params.job)
            if params.wait and stored.state not in FINAL_STATES:
                stored = await _poll_store(params.job, stored, params.timeout)
            return _shown(stored)
        if params.wait:
            with trio.move_on_after(params.timeout if params.timeout is not None
                                    else float("inf")):
                await job.finished.wait()
                # A job's state turns final before its worktree is measured: a waiter
                # that came in between would be shown the worktree as it was at the start.
                if job.worktree is not None and worktrees is not None:
                    await worktrees.concluded(job.id)
        return _shown(job.record())

    async def _poll_store(job_id: str, record: JobRecord,
                          timeout: float | None) -> JobRecord:
        """Wait for a job another daemon runs to finish, as the shared store tells."""
        delay = STORE_POLL_FIRST
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            while record.state not in FINAL_STATES:
                await trio.sleep(delay)
                delay = min(delay * 1.5, STORE_POLL_MAX)
                fresh = await store.get(job_id)
                if fresh is None:  # pruned meanwhile: the last look is all there is
                    break
                record = fresh
        return record

    async def jobs_list(params: ListParams, ctx: CallContext) -> dict[str, Any]:
        # The store has the finished jobs it committed (saved before their answer); memory
        # is fresher for live ones, and holds those a full disk kept out of the store.
        # The store is read first; then, with no await between, the jobs are chosen by id
        # and state and records are made only of those returned.
        stored = {r.job: r for r in await store.list(params.state, params.limit,
                                                     params.blueprint)}
        wanted: set[str] | None = None
        if params.unapplied:
            wanted = set(worktrees.unapplied() if worktrees is not None else ())
            for job_id in wanted - stored.keys() - manager.jobs.keys():
                found = await store.get(job_id, with_text=False)
                if found is not None and params.blueprint in (None, found.blueprint):
                    stored[job_id] = found
        chosen: dict[str, JobRecord | Job] = dict(stored)
        for job in manager.jobs.values():
            if job.stored and job.id not in stored:
                continue
            # Memory is fresher than the store (a fallback moves a job to another
            # blueprint), so a job that no longer matches drops the store's record too.
            if params.state in (None, job.state) and params.blueprint in (None, job.blueprint):
                chosen[job.id] = job
            else:
                chosen.pop(job.id, None)
        if wanted is not None:
            # An unapplied job is listed whatever its state, from memory if held there.
            for job_id in wanted - chosen.keys():
                held = manager.jobs.get(job_id)
                if held is not None and params.blueprint in (None, held.blueprint):
                    chosen[job_id] = held
            chosen = {k: v for k, v in chosen.items() if k in wanted}
        # Job ids sort by creation time.
        newest = [_shown(found if isinstance(found, JobRecord)
                         else found.record(with_text=False))
                  for found in (chosen[k] for k in heapq.nlargest(params.limit, chosen))]
        if params.prompt_line:
            return {"jobs": [job_output.with_prompt_line(r, manager.jobs.get(r.job))
                             for r in newest]}
        return {"jobs": newest}

    async def jobs_diff(params: DiffParams, ctx: CallContext) -> dict[str, Any]:
        diff = await _worktrees().diff(params.job, binary=params.binary)
        return {"job": params.job, "diff": diff, "worktree": _worktrees().info(params.job)}

    async def jobs_apply(params: JobParams, ctx: CallContext) -> dict[str, Any]:
        _finished(params.job)
        return await _worktrees().apply(params.job)

    async def jobs_discard(params: JobParams, ctx: CallContext) -> dict[str, Any]:
        _finished(params.job)
        return await _worktrees().discard(params.job)

    def _finished(job_id: str) -> None:
        job = manager.jobs.get(job_id)
        if job is not None and job.state not in FINAL_STATES:
            raise InvalidParams(f"job {job_id!r} is {job.state}; wait for it to end (or "
                                "cancel it) first", {"job": job_id, "state": job.state})

    async def jobs_output(params: OutputParams, ctx: CallContext) -> dict[str, Any]:
        job = manager.jobs.get(params.job)
        if job is not None:
            state: JobState = job.state
            text = job_output.live(job)
        else:
            stored = await _stored(params.job)
            state, text = stored.state, job_output.stored(stored)
        return job_output.page(params.job, state, text, params.offset, params.limit)

    async def jobs_watch(params: WatchParams, ctx: CallContext) -> dict[str, Any]:
        session = ctx.session
        number = manager.events.watch(
            session.notify, states=frozenset(params.states or ()), blueprint=params.blueprint,
            alive=lambda: session.is_open, abort=session.abort)
        return {"watch": number}

    async def jobs_unwatch(params: UnwatchParams, ctx: CallContext) -> dict[str, Any]:
        return {"watch": params.watch, "unwatched": manager.events.unwatch(params.watch)}

    async def blueprints_list(params: None, ctx: CallContext) -> dict[str, Any]:
        reg = host.registry
        return {"blueprints": [
            {"name": name, "description": bp.description, "command": bp.command,
             "prompt": bp.prompt, "parser": bp.parser,
             "timeout_s": reg.timeout_for(bp, None), "max_concurrency": bp.max_concurrency,
             "takes_model": bool(bp.model_args), "resumes_sessions": bool(bp.resume_args),
             "fallbacks": bp.fallbacks, "kill_grace_s": bp.kill_grace}
            for name, bp in reg.blueprints.items()]}

    async def daemon_info(params: None, ctx: CallContext) -> dict[str, Any]:
        registry = host.registry
        return {"version": __version__, "pid": os.getpid(),
                "uptime_s": round(host.uptime_s, 3),
                "socket": str(host.socket_path), "config": registry.source,
                "blueprints": len(registry.blueprints),
                "jobs": {"queued": manager.queued, "running": manager.running,
                         "finished": manager.finished_count},
                "connections": host.connections,
                "max_message_bytes": registry.daemon.max_message_bytes,
                "store": store.info(), "warm": manager.warm_info()}

    async def llm_prewarm(params: PrewarmParams, ctx: CallContext) -> dict[str, Any]:
        started = manager.prewarm(params.blueprint, params.cwd, params.model)
        return {"blueprint": params.blueprint, "started": started}

    def with_agents(status: dict[str, Any]) -> dict[str, Any]:
        """A warm agent's liveness is part of its blueprint's health detail."""
        for name, entry in status.items():
            said = "; ".join(
                f"warm agent pid {a['pid']} {'alive' if a['alive'] else 'dead'}, "
                f"{a['busy']} busy, {a['turns']} served" for a in manager.agents.health(name))
            if said:
                entry["detail"] = f"{entry['detail']}; {said}" if entry["detail"] else said
        return status

    async def health_status(params: HealthParams, ctx: CallContext) -> dict[str, Any]:
        return {"blueprints": with_agents(health.status(params.blueprint))}

    async def health_check(params: HealthParams, ctx: CallContext) -> dict[str, Any]:
        return {"blueprints": with_agents(await health.check(params.blueprint))}

    async def usage_summary(params: UsageParams, ctx: CallContext) -> dict[str, Any]:
        return await ledger.summary(store, params.since, params.until, tuple(params.by))

    async def daemon_stats(params: None, ctx: CallContext) -> dict[str, Any]:
        return {"blueprints": {}} if stats is None else stats.snapshot()

    async def daemon_metrics(params: None, ctx: CallContext) -> dict[str, Any]:
        runs = stats if stats is not None else RunStats()
        return {"text": metrics.exposition(runs, manager, health, host.uptime_s)}

    async def budget_status(params: None, ctx: CallContext) -> dict[str, Any]:
        return {"budgets": [] if manager.budget is None else manager.budget.status()}

    async def daemon_reload(params: None, ctx: CallContext) -> dict[str, Any]:
        registry = host.reload()
        return {"blueprints": sorted(registry.blueprints)}

    return [
        Method("llm.run", llm_run, RunParams),
        Method("llm.cancel", llm_cancel, JobParams),
        Method("llm.prewarm", llm_prewarm, PrewarmParams),
        Method("jobs.get", jobs_get, GetParams),
        Method("jobs.list", jobs_list, ListParams),
        Method("jobs.diff", jobs_diff, DiffParams),
        Method("jobs.apply", jobs_apply, JobParams),
        Method("jobs.discard", jobs_discard, JobParams),
        Method("jobs.output", jobs_output, OutputParams),
        Method("jobs.watch", jobs_watch, WatchParams),
        Method("jobs.unwatch", jobs_unwatch, UnwatchParams),
        Method("blueprints.list", blueprints_list, None),
        Method("daemon.info", daemon_info, None),
        Method("daemon.reload", daemon_reload, None),
        Method("health.status", health_status, HealthParams),
        Method("health.check", health_check, HealthParams),
        Method("usage.summary", usage_summary, UsageParams),
        Method("budget.status", budget_status, None),
        Method("daemon.stats", daemon_stats, None),
        Method("daemon.metrics", daemon_metrics, None),
    ]
