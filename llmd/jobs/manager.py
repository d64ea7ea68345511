"""The job manager: admission, the queue, the retry loop, deadlines and job bookkeeping.

Each attempt is carried out by a driver (:mod:`llmd.drivers`); the manager decides which,
and keeps what holds for every driver: retries, deadlines, cancellation, streaming to
listeners, rate-limit classification, fallbacks and records.

Invariants:
- A run's deadline is fixed when the request arrives and bounds everything: the wait in
  the queue, every attempt and every back-off sleep.
- Slots are taken blueprint first, then global, both FIFO; a job waiting for its
  blueprint never holds a global slot. Beyond ``max_queue`` waiting jobs, ``Busy``.
- Only rate limits are retried; a job's final state is set exactly once.
- A job keeps the blueprint, timeout and rate-limit patterns it was admitted with: a
  reload that removes or changes them touches only later runs.
- No exception of one job ends the daemon: one that is not an ``LlmdError`` fails that job
  with -32603 and one ERROR line.
- ``cancel`` returning True means the job ends ``cancelled``: a cancel that lands after
  the outcome is known but before it is recorded wins.
- A detached job's record is committed before its id is given out: once its child is
  spawned (with the process group recovery kills), or while it waits for a slot.
- Every state change is published to the job's listeners in order; a listener that
  blocks slows that job alone (it is how back-pressure reaches the child's pipe).
- A job that ends is told to the budgets (if it ever started) and to every ``on_finish``
  observer, once, as its final state is set; new runs are routed by budgets as by
  cooldowns (:mod:`llmd.routing`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import random
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import trio

from llmd import routing
from llmd.budget import BudgetBook
from llmd.config import Blueprint, Registry
from llmd.drivers import AttemptProcess, AttemptSpec, Driver, Outcome
from llmd.drivers.agents import AgentDriver, agent_key, agent_options
from llmd.drivers.oneshot import OneShot
from llmd.drivers.warm import WarmDriver, WarmPool, warm_key
from llmd.drivers.warmagent import AgentPool
from llmd.errors import (
    Busy,
    Cancelled,
    CliFailed,
    ExecutableMissing,
    InternalError,
    InvalidParams,
    LlmdError,
    NoSuchJob,
    RateLimited,
    ServerCancelled,
    TimedOut,
    UnknownBlueprint,
)
from llmd.health.monitor import HealthMonitor
from llmd.jobs import moving, usage
from llmd.jobs.events import JobEvents
from llmd.jobs.job import Job, new_job_id
from llmd.jobs.moving import MoveTo
from llmd.jobs.noise import NoiseFilter
from llmd.jobs.records import RunParams, RunResult
from llmd.jobs.retry import Backoff
from llmd.jobs.state import FINAL_STATES, JobState, advance, can_follow
from llmd.jobs.store import JobStore, ProcGroup
from llmd.jobs.worktree import Location, Worktrees
from llmd.parsers import ParseResult, quota
from llmd.parsers.jsonextract import extract_json
from llmd.parsers.ratelimit import classify
from llmd.process import argv as argv_mod
from llmd.process import procs
from llmd.process.supervisor import Attempt, Stream, describe_exit
from llmd.routing import Route
from llmd.timestamps import utc_now

if sys.version_info < (3, 11):  # pragma: no cover - 3.10 only
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("llmd.jobs")

KEEP_FINISHED = 1000
KEEP_RESULT_CHARS = 16 << 20
# How long a final llm.state may wait for a client that does not read.
FINAL_NOTICE_LIMIT = 1.0


def _program(bp: Blueprint, env: dict[str, str]) -> str | None:
    """Where the blueprint's program is on the run's PATH; None when it is not."""
    return shutil.which(bp.command[0], path=env.get("PATH", os.defpath))


class JobManager:
    """Runs jobs under the registry's limits.

    Args:
        registry: The registry in force (replaced on reload with :meth:`set_registry`).
        environ: The daemon's environment, the base of every child's.
        rng: Source of back-off jitter (seed it in tests).
        attempt_factory: Builds an :class:`~llmd.process.supervisor.Attempt` (tests swap it).
        health: Routes runs around missing and cooling-down blueprints, and learns of
            rate limits.
        store: Keeps every job's record on disk.
        warm: The warm processes (default: a pool of the registry's, no groups file).
        worktrees: Where runs with ``isolate: "worktree"`` work (None: they are refused).
        budget: Budgets that route new runs and are told of every run that ends.
        on_finish: Told of every job as it reaches its final state (the ledger's figures).
    """

    def __init__(self, registry: Registry, environ: Mapping[str, str] | None = None, *,
                 rng: random.Random | None = None,
                 attempt_factory: Callable[..., Attempt] = Attempt,
                 health: HealthMonitor | None = None,
                 store: JobStore | None = None, warm: WarmPool | None = None,
                 worktrees: Worktrees | None = None, budget: BudgetBook | None = None,
                 on_finish: Iterable[Callable[[Job], None]] = ()) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.worktrees = worktrees
        self.attempt_factory = attempt_factory
        self.health = health
        self.store = store
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._kept_chars = 0
        self.queued = 0
        self.running = 0
        self.finished_count = 0
        self.shutting_down = False
        self.draining = False
        self._nursery: trio.Nursery | None = None
        self._global = trio.CapacityLimiter(registry.daemon.max_jobs)
        self._limiters: dict[str, trio.CapacityLimiter] = {}
        self.registry = registry
        self.warm = warm if warm is not None else WarmPool(registry)
        # gemini's and codex's agents: a process serving a session per run, any cwd.
        self.agents = AgentPool(room=self._warm_room, owned=self.warm.owned)
        self.budget = budget
        """Budgets that route new runs (:mod:`llmd.budget`), told of every run that ends."""
        self.on_finish: list[Callable[[Job], None]] = list(on_finish)
        """Told of every job as it reaches its final state (the ledger's figures)."""
        self.set_registry(registry)
        self.events = JobEvents()
        """Every state change of every job, for ``jobs.watch``."""

    def set_registry(self, registry: Registry) -> None:
        """Put a (re)loaded registry in force; running jobs keep their blueprint."""
        self.agents.retire({name for name, bp in self.registry.blueprints.items()
                            if registry.blueprints.get(name) != bp})
        self.registry = registry
        if self.budget is not None:
            self.budget.set_registry(registry)
        self._global.total_tokens = registry.daemon.max_jobs
        for name, bp in registry.blueprints.items():
            limiter = self._limiters.get(name)
            if limiter is None:
                self._limiters[name] = trio.CapacityLimiter(bp.max_concurrency)
            else:
                limiter.total_tokens = bp.max_concurrency
        self.warm.set_registry(registry)

    # --- entry points ------------------------------------------------------

    def submit(self, params: RunParams, *, where: Location | None = None) -> Job:
        """Validate a request and register its job (not started yet).

        Args:
            params: The request.
            where: Where its ``cwd`` is in its repository, when admission located it
                (an isolated run's worktree is then made there).

        Raises:
            LlmdError: Unknown blueprint, bad parameters, or a full queue.
        """
        if self.draining:
            raise Busy("llmd is shutting down; not taking new runs",
                       {"blueprint": params.blueprint})
        bp = self.registry.blueprints.get(params.blueprint)
        if bp is None:
            known = ", ".join(sorted(self.registry.blueprints)) or "none"
            raise UnknownBlueprint(f"unknown blueprint {params.blueprint!r} (known: {known})",
                                   {"blueprint": params.blueprint})
        route = self._route(params)
        if route is not None:
            params = msgspec.structs.replace(params, blueprint=route.blueprint)
            bp = self.registry.blueprints[route.blueprint]
        try:
            timeout = self.registry.timeout_for(bp, params.timeout)
        except KeyError:
            cats = ", ".join(sorted(self.registry.timeouts))
            raise InvalidParams(f"unknown timeout category {params.timeout!r} "
                                f"(known: {cats})", {"blueprint": params.blueprint}) from None
        if not timeout > 0:  # also refuses NaN
            raise InvalidParams("timeout must be a positive number of seconds",
                                {"blueprint": params.blueprint})
        if params.cwd is not None and (not os.path.isabs(params.cwd)
                                       or "\x00" in params.cwd
                                       or not os.path.isdir(params.cwd)):
            raise InvalidParams(f"cwd must be the absolute path of an existing directory, "
                                f"not {params.cwd!r}", {"blueprint": params.blueprint})
        params = self._isolation(params, bp)
        # Render now so a bad prompt is refused before anything is queued.
        argv_mod.render(bp, params.blueprint, params.prompt, model=params.model,
                        session=params.session, edit=params.edit)
        limiter = self._limiters[params.blueprint]
        # Jobs admitted a moment ago count as queued until their tasks take a slot: in a
        # burst, as many of them as there are free slots are about to run, not to wait.
        free = min(limiter.available_tokens, self._global.available_tokens)
        if self.queued - free >= self.registry.daemon.max_queue:
            raise Busy(f"the queue is full ({self.queued} waiting); try again later",
                       {"blueprint": params.blueprint})
        job = Job(new_job_id(), params, trio.current_time() + timeout, bp=bp, timeout=timeout,
                  rate_limit_res=self.registry.rate_limit_res.get(params.blueprint, ()))
        if route is not None:
            job.requested, job.fallback_reason = route.requested, route.reason
            log.info("job %s: %s", job.id, route.reason)
        job.where = where
        self.jobs[job.id] = job
        self.queued += 1
        return job

    def isolated(self, params: RunParams) -> bool:
        """Whether the run asks (or its blueprint defaults) to work in a worktree."""
        bp = self.registry.blueprints.get(params.blueprint)
        return (params.isolate or (bp.isolate if bp is not None else "none")) == "worktree"

    def _isolation(self, params: RunParams, bp: Blueprint) -> RunParams:
        """Resolve ``isolate``, ``base`` and ``edit`` (see API.md); -32602 when they do not
        go together."""
        isolate = params.isolate or bp.isolate
        data = {"blueprint": params.blueprint}
        if isolate != "worktree":
            if params.edit:
                raise InvalidParams("edit: true needs isolate: \"worktree\": an agent may "
                                    "edit files unattended only in a worktree of its own", data)
            if params.base is not None:
                raise InvalidParams("base goes with isolate: \"worktree\"", data)
            return params
        if params.edit and not bp.edit_args:
            raise InvalidParams(f"blueprint {params.blueprint!r} declares no edit_args; it "
                                "cannot be let edit", data)
        if self.worktrees is None:
            raise InvalidParams("this llmd keeps no worktrees", data)
        if params.cwd is None:
            raise InvalidParams("isolate: \"worktree\" needs a cwd inside a git work tree",
                                data)
        if params.base is not None and not params.base:
            raise InvalidParams("base is \"head\", \"working-tree\" or a ref, not empty",
                                data)
        return msgspec.structs.replace(params, isolate="worktree")

    async def run(self, job: Job) -> RunResult:
        """Run a submitted job to its end.

        Returns:
            The run result of a successful run.

        Raises:
            LlmdError: How the run failed (also recorded on the job).
            trio.Cancelled: The caller was cancelled; the job is recorded cancelled.
        """
        try:
            with job.scope:
                result = await self._execute_moving(job)
                # A cancel that landed after the last checkpoint still wins (see cancel).
                if not job.cancel_requested:
                    self._finish(job, "succeeded", result=result)
                    return result
            if job.cancel_requested:
                raise ServerCancelled(job.cancel_reason,
                                      self._error_data(job, None, job.attempt))
            where = "waiting in the queue" if job.in_queue else "its process group was killed"
            raise TimedOut(f"{job.blueprint!r} timed out after "
                           f"{job.timeout:g} s; {where}",
                           self._error_data(job, None, job.attempt))
        except LlmdError as exc:
            if job.cancel_requested and not isinstance(exc, Cancelled):
                # The outcome was known, not yet recorded, when llm.cancel said True.
                raise self._cancelled_instead(job, exc) from None
            ends: dict[type[LlmdError], JobState] = {
                Cancelled: "cancelled", ServerCancelled: "cancelled", TimedOut: "timed_out"}
            state = ends.get(type(exc), "failed")
            if state == "cancelled" and self.shutting_down:
                state = "interrupted"
            self._finish(job, state, error=exc)
            raise
        except BaseException as exc:
            if _only_cancelled(exc):
                # From outside: the request was cancelled, its client left, or shutdown.
                self._finish(job, "interrupted" if self.shutting_down else "cancelled",
                             error=Cancelled("cancelled", {"job": job.id}))
                raise
            if not _is_failure(exc):
                self._finish(job, "failed", error=InternalError("internal error"))
                raise
            # A defect of this job's code path: it fails alone, the daemon goes on.
            log.error("job %s (%s): internal error", job.id, job.blueprint, exc_info=exc)
            if job.cancel_requested:
                raise self._cancelled_instead(job, None) from None
            error = InternalError("internal error", {"job": job.id, "blueprint": job.blueprint})
            self._finish(job, "failed", error=error)
            raise error from None
        finally:
            with trio.CancelScope(shield=True):
                await self._concluded(job)

    def _cancelled_instead(self, job: Job, outcome: LlmdError | None) -> Cancelled:
        state: JobState = "interrupted" if self.shutting_down else "cancelled"
        error = ServerCancelled(job.cancel_reason,
                                outcome.data if outcome is not None else {"job": job.id})
        self._finish(job, state, error=error)
        return error

    async def _concluded(self, job: Job) -> None:
        """Record the final state, then tell the job's listeners (bounded: they may not
        read). The record is on disk before the caller's answer is sent."""
        if job.worktree is not None and self.worktrees is not None:
            # A failed or cancelled run keeps its partial work, measured, for inspection.
            await self.worktrees.conclude(job.id, measure=job.result is None)
        if self.store is not None and self.store.writing and job.state in FINAL_STATES:
            job.stored = await self.store.save_final(job.row())
        job.durable.set()
        if job.listeners and job.state in FINAL_STATES:
            extra = {"error": job.error.to_wire()} if job.error is not None else {}
            with trio.move_on_after(FINAL_NOTICE_LIMIT):
                await self._set_state(job, job.state, **extra)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Hold detached jobs (and their commits) in a nursery of the manager's own until
        cancelled; cancelling it cancels them."""
        if self._nursery is not None:
            raise RuntimeError("the job manager is already serving")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await nursery.start(self.warm.run)
                await nursery.start(self.agents.run)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def start_detached(self, job: Job) -> None:
        """Run a job in the manager's nursery, whatever happens to its client.

        Raises:
            RuntimeError: :meth:`serve` is not running.
        """
        if self._nursery is None:
            raise RuntimeError("the job manager is not serving (see JobManager.serve)")
        job.detached = True
        self._nursery.start_soon(self._run_quietly, job)

    async def detached_durable(self, job: Job) -> None:
        """Return once a detached job's record would survive a crash of the daemon:
        committed with its process group once spawned, or committed while it waits for a
        slot, or final. Without a usable store, at once."""
        if self.store is None or not self.store.available:
            return
        await job.durable.wait()

    async def _commit(self, job: Job) -> None:
        """Commit a detached job's live record now, then let its id be given out."""
        if self.store is not None and self.store.writing and job.state not in FINAL_STATES:
            await self.store.save_final(job.row())
        job.durable.set()

    async def _run_quietly(self, job: Job) -> None:
        try:
            await self.run(job)
        except LlmdError as exc:
            log.info("job %s (%s) ended %s: error %d", job.id, job.blueprint, job.state,
                     exc.code)
        except Exception:  # run() contains them; this task must never end the daemon
            log.exception("job %s (%s): internal error", job.id, job.blueprint)

    def prewarm(self, blueprint: str, cwd: str | None = None, model: str | None = None
                ) -> bool:
        """Start a warm process for later runs of ``blueprint`` in ``cwd`` with ``model``
        (``llm.prewarm``); it returns at once.

        Returns:
            Whether one is starting (False: the blueprint keeps none, one is ready, or
            ``warm_max`` leaves no room).

        Raises:
            LlmdError: Unknown blueprint, a bad cwd or model, a missing program.
        """
        bp = self.registry.blueprints.get(blueprint)
        if bp is None:
            raise UnknownBlueprint(f"unknown blueprint {blueprint!r}", {"blueprint": blueprint})
        if cwd is not None and (not os.path.isabs(cwd) or "\x00" in cwd
                                or not os.path.isdir(cwd)):
            raise InvalidParams(f"cwd must be the absolute path of an existing directory, "
                                f"not {cwd!r}", {"blueprint": blueprint})
        if not bp.warm.enabled or self.draining:
            return False
        # The environment and program exactly as a run's (see _execute), or no run matches.
        env = self._run_env(bp, cwd)
        program = _program(bp, env)
        if program is None:
            raise ExecutableMissing(f"{blueprint!r}: {bp.command[0]!r} was not found",
                                    {"blueprint": blueprint, "executable": bp.command[0]})
        inv = argv_mod.render(bp, blueprint, "", model=model)
        spec = AttemptSpec(
            blueprint=blueprint, bp=bp,
            invocation=argv_mod.Invocation([program, *inv.argv[1:]], inv.stdin), env=env,
            cwd=cwd, on_spawn=lambda pid: None, model=model)
        agent = agent_key(spec)
        if agent is not None:
            return self.agents.ensure(agent, agent_options(spec))
        key = warm_key(spec)
        return key is not None and self.warm.replenish(key)

    def _warm_room(self) -> int:
        """How many more agents ``warm_max`` allows beside the other warm processes."""
        return (self.registry.daemon.warm_max - self.warm.core.counts()["processes"]
                - len(self.agents.agents))

    def warm_info(self) -> dict[str, Any]:
        """``daemon.info``'s ``warm``: the warm processes and agents together."""
        counts, agents = self.warm.info(), self.agents.info()
        info: dict[str, Any] = {key: counts.get(key, 0) + agents[key]
                                for key in ("processes", "idle", "busy")}
        rss = procs.groups_rss_bytes([*self.warm.pgids(), *self.agents.pgids()])
        info["rss_mb"] = round(rss / (1 << 20), 1)
        return info

    def cancel(self, job_id: str, reason: str = "cancelled by llm.cancel") -> bool:
        """Cancel a job; False when it had already finished.

        Raises:
            NoSuchJob: Unknown id.
        """
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            return False
        job.cancel_requested = True
        job.cancel_reason = reason
        job.scope.cancel()
        return True

    def cancel_queued(self, reason: str) -> int:
        """Cancel every job still waiting for a slot (at shutdown: none of them may start).

        Returns:
            How many were cancelled.
        """
        queued = [job for job in self.jobs.values()
                  if job.in_queue and job.state not in FINAL_STATES]
        for job in queued:
            self.cancel(job.id, reason)
        return len(queued)

    def cancel_all(self, reason: str) -> None:
        """Cancel every job that has not finished (at shutdown)."""
        for job in list(self.jobs.values()):
            if job.state not in FINAL_STATES:
                self.cancel(job.id, reason)

    async def wait_all_finished(self) -> None:
        """Return once no job is left unfinished."""
        for job in list(self.jobs.values()):
            await job.finished.wait()

    def get(self, job_id: str) -> Job:
        """Look a job up.

        Raises:
            NoSuchJob: Unknown id.
        """
        job = self.jobs.get(job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id!r}", {"job": job_id})
        return job

    # --- internals ---------------------------------------------------------

    def _route(self, params: RunParams) -> Route | None:
        """Where the health view sends this run (:func:`llmd.routing.route`); None: where
        it asked.

        Raises:
            ExecutableMissing: The program is known to be missing (no spawn is tried).
            RateLimited: The blueprint cools down and no fallback may take the run.
        """
        if self.health is None:
            return None
        # A session or a model name means nothing to another CLI.
        route = routing.route(self.health, self.registry, params.blueprint,
                              pinned=params.session is not None or params.model is not None,
                              budget=self.budget)
        return route if route.swapped else None

    def _spawned(self, job: Job, pid: int) -> None:
        started = procs.process_start_time(pid)
        if started is not None:
            # Recorded so that a restarted daemon can kill what a crashed one left.
            job.groups.append(ProcGroup(pgid=pid, starttime=started))
        if self.store is None:
            return
        if job.detached and not job.durable.is_set() and self._nursery is not None:
            # Its id waits for this commit: a crash from now on finds the group.
            self._nursery.start_soon(self._commit, job)
        elif started is not None and self.store.writing:
            self.store.save_soon(job.row())

    def _leave_queue(self, job: Job) -> None:
        if job.in_queue:
            job.in_queue = False
            self.queued -= 1

    async def _publish(self, job: Job, method: str, payload: dict[str, Any]) -> None:
        for sink in list(job.listeners):
            await sink(method, payload)

    async def _set_state(self, job: Job, state: JobState, **extra: Any) -> None:
        """Change a live job's state (as the state table allows) and tell its listeners;
        the same state again is told again (a new attempt, the final state)."""
        if job.state != state or state == "running":
            job.history.append((state, utc_now()))
        if job.state != state:
            # A change the table does not allow is a bug: it fails this job (-32603).
            job.state = advance(job.state, state)
        log.debug("job %s: %s", job.id, state)
        # No row is made for a store that writes none (switched off, or broken for good).
        if self.store is not None and self.store.writing and state not in FINAL_STATES:
            self.store.save_soon(job.row())
        if state not in FINAL_STATES:  # a final state is told by _finish
            self.events.publish(job.id, job.blueprint, state, job.history[-1][1],
                                attempt=job.attempts,
                                **{k: v for k, v in extra.items() if k == "retry_in_s"})
        await self._publish(job, "llm.state", {"job": job.id, "state": state,
                                               "attempt": job.attempts, **extra})

    def _finish(self, job: Job, state: JobState, *, result: RunResult | None = None,
                error: LlmdError | None = None) -> None:
        if job.state in FINAL_STATES:
            return
        if not can_follow(job.state, state):
            # A bug, logged; the job still ends, or whoever waits for it would wait forever.
            log.error("job %s: a job cannot go from %s to %s", job.id, job.state, state)
        self._leave_queue(job)
        job.state = state
        job.result = result
        job.error = error
        job.finished_at = utc_now()
        job.history.append((state, job.finished_at))
        self.finished_count += 1
        job.finished.set()
        if result is not None:
            job.live_text = []  # the answer's text is the same (API.md, Streaming)
        # The prompt, argv and environment stay out of the log: they may hold secrets. So
        # does the error's message: it quotes the CLI's output, which may echo the prompt.
        log.info("job %s %s: %s after %d attempt%s%s", job.id, job.blueprint, state,
                 job.attempts, "" if job.attempts == 1 else "s",
                 f" (error {error.code}, exit status {error.data.get('exit_code')})"
                 if error is not None and state == "failed" else "")
        if error is not None:
            error.data.setdefault("job", job.id)
            error.data.setdefault("state", state)
        job.attempt = None  # what it kept of the output is in the result now
        if self.budget is not None and job.started_at is not None:
            self.budget.run_ended(job.blueprint, result.cost_usd if result else None)
        for observer in self.on_finish:
            observer(job)
        self._kept_chars += _result_chars(job)
        self._evict()
        self.events.publish(job.id, job.blueprint, state, job.finished_at,
                            attempt=job.attempts,
                            **({"code": error.code} if error is not None else {}))

    def _evict(self) -> None:
        """Finished jobs stay in memory for jobs.get up to a count and a size (the store
        has them all); past that the oldest finished go, whatever is still running."""
        excess = len(self.jobs) - KEEP_FINISHED
        if excess <= 0 and self._kept_chars <= KEEP_RESULT_CHARS:
            return
        gone: list[str] = []
        # Oldest first; the live ones skipped are few (at most the slots and the queue).
        for job in self.jobs.values():
            if excess <= 0 and self._kept_chars <= KEEP_RESULT_CHARS:
                break
            if job.state in FINAL_STATES:
                gone.append(job.id)
                excess -= 1
                self._kept_chars -= _result_chars(job)
        for job_id in gone:
            del self.jobs[job_id]

    def _error_data(self, job: Job, bp: Blueprint | None,
                    attempt: AttemptProcess | None = None,
                    **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"job": job.id, "blueprint": job.blueprint,
                                "attempts": job.attempts}
        if attempt is not None:
            data.update(exit_code=attempt.exit_code, stderr=attempt.stderr_tail[-4000:],
                        output=attempt.stdout[-4000:], duration_s=round(attempt.duration, 3))
        data.update(extra)
        return data

    async def _execute(self, job: Job) -> RunResult:
        bp = job.bp
        assert bp is not None, "jobs are made by submit()"
        params = job.params
        # Once per job: a fallback taking over the run works on in the same worktree.
        if (params.isolate == "worktree" and self.worktrees is not None and params.cwd
                and job.worktree is None):
            job.worktree = await self.worktrees.create(job.id, params.cwd,
                                                       params.base or "head", job.where)
        env = self._run_env(bp, job.cwd)
        program = _program(bp, env)
        if program is None:
            raise ExecutableMissing(
                f"{job.blueprint!r}: {bp.command[0]!r} was not found or is not executable "
                f"(PATH searched: {env.get('PATH', '')})",
                {"blueprint": job.blueprint, "executable": bp.command[0],
                 "path": env.get("PATH", "")})
        inv = argv_mod.render(bp, job.blueprint, params.prompt, model=params.model,
                              session=params.session, edit=params.edit)
        inv = argv_mod.Invocation([program, *inv.argv[1:]], inv.stdin)
        limiter = self._limiters[job.blueprint]
        moved = ({"requested_blueprint": job.requested, "fallback_reason": job.fallback_reason}
                 if job.requested else {})
        if job.state == "queued":  # not again when a fallback takes over the run
            await self._set_state(job, "queued", blueprint=job.blueprint, **moved)
        if job.detached and not job.durable.is_set() and (
                limiter.available_tokens < 1 or self._global.available_tokens < 1):
            await self._commit(job)  # it waits for a slot: give its id out now
        async with limiter, self._global:
            self._leave_queue(job)
            self.running += 1
            try:
                result = await self._attempts(job, bp, inv, env)
                if job.worktree is not None and self.worktrees is not None:
                    result = msgspec.structs.replace(
                        result, worktree=await self.worktrees.settle(job.id))
                return result
            finally:
                self.running -= 1

    async def _attempts(self, job: Job, bp: Blueprint, inv: argv_mod.Invocation,
                        env: dict[str, str]) -> RunResult:
        backoff = Backoff(bp.retry.max_attempts, bp.retry.base_delay, bp.retry.max_delay)
        patterns = job.rate_limit_res
        before = job.attempts  # made on blueprints this run left for a fallback
        if job.started_at is None:
            job.started_at = utc_now()
            job.began = trio.current_time()
        started = trio.current_time()
        while True:
            job.attempts += 1
            await self._set_state(job, "running")
            outcome = await self._one_attempt(job, bp, inv, env)
            attempt, parsed, verdict = outcome.process, outcome.parsed, outcome.verdict
            if verdict is None:
                verdict = classify(attempt.exit_code, attempt.stdout[-65536:],
                                   attempt.stderr_tail, patterns, parsed.error)
            if verdict.kind == "ok":
                return self._result(job, attempt, parsed, trio.current_time() - started)
            if verdict.kind != "rate_limit":
                what = verdict.reason or describe_exit(attempt.exit_code)
                raise CliFailed(f"{job.blueprint!r} failed: {what}",
                                self._error_data(job, bp, attempt, kind=verdict.kind))
            remaining = job.deadline - trio.current_time()
            delay = backoff.next_delay(job.attempts - before, remaining, self.rng,
                                       verdict.retry_after_s)
            if delay is None:
                data = self._error_data(job, bp, attempt)
                if verdict.retry_after_s is not None:
                    data["retry_after_s"] = verdict.retry_after_s
                if self.health is not None:
                    # Later runs go to a fallback, or fail fast, until it cools down: until
                    # the quota window reopens when the message says when.
                    now = _dt.datetime.fromtimestamp(self.health.wall_clock()).astimezone()
                    reopens = quota.seconds_until_reset(
                        f"{attempt.stderr_tail}\n{attempt.stdout[-65536:]}", now)
                    self.health.note_rate_limited(
                        job.blueprint, reopens if reopens is not None else verdict.retry_after_s)
                    # And this one moves there too, unless it is pinned.
                    where = routing.fallback_after_rate_limit(
                        self.health, self.registry, job.blueprint,
                        pinned=job.params.session is not None or job.params.model is not None,
                        budget=self.budget)
                    if where is not None:
                        raise MoveTo(where)
                raise RateLimited(f"{job.blueprint!r} is rate limited "
                                  f"({verdict.reason or 'rate limit'}); gave up after "
                                  f"{job.attempts} attempt{'s' if job.attempts > 1 else ''}",
                                  data)
            log.info("job %s: %s rate limited, retry %d in %.1f s", job.id, job.blueprint,
                     job.attempts + 1, delay)
            # What the failed attempt streamed is not part of the answer any more.
            restart = job.streamed_stdout
            job.streamed_stdout = False
            await self._set_state(job, "retrying", retry_in_s=round(delay, 3),
                                  restart_output=restart)
            await trio.sleep(delay)

    async def _execute_moving(self, job: Job) -> RunResult:
        """Execute a job; when its blueprint runs out of retries on a rate limit and a
        fallback may take it, go on there (:mod:`llmd.jobs.moving`)."""
        while True:
            try:
                return await self._execute(job)
            except MoveTo as move:
                await moving.move(self, job, move.route)

    def _run_env(self, bp: Blueprint, cwd: str | None) -> dict[str, str]:
        """A run's environment: the blueprint's, with the shell's notion of the working
        directory the run's, not the daemon's."""
        env = argv_mod.child_env(self.environ, bp)
        env.pop("OLDPWD", None)
        env.pop("PWD", None)
        with contextlib.suppress(OSError):  # the daemon's own directory may be gone
            env["PWD"] = cwd if cwd is not None else os.getcwd()
        return env

    def _driver(self, job: Job) -> Driver:
        """How this job's attempts are carried out: by a warm process when its blueprint
        keeps them and one matches, else a process each."""
        oneshot = OneShot(self.attempt_factory)
        if job.bp is not None and job.bp.warm.enabled and job.bp.warm.protocol != "stream-json":
            return AgentDriver(self.agents, oneshot) if self.agents.running else oneshot
        # A warm process is for one cwd: none matches a worktree made for this run alone,
        # and one started for it would outlive the worktree unused.
        if (job.bp is not None and job.bp.warm.enabled and self.warm.running
                and job.worktree is None):
            return WarmDriver(self.warm, oneshot)
        return oneshot

    async def _one_attempt(self, job: Job, bp: Blueprint, inv: argv_mod.Invocation,
                           env: dict[str, str]) -> Outcome:
        attempt = self._driver(job).attempt(AttemptSpec(
            blueprint=job.blueprint, bp=bp, invocation=inv, env=env, cwd=job.cwd,
            on_spawn=lambda pid: self._spawned(job, pid), model=job.params.model,
            session=job.params.session, edit=job.params.edit))
        job.attempt = attempt.process
        job.live_text = []  # jobs.output follows the attempt in flight
        # Known chatter on stderr is not shown to listeners; the record keeps it.
        noise = NoiseFilter(bp.stderr_ignore)

        async def show(stream: Stream, text: str) -> None:
            if stream == "stdout":
                job.streamed_stdout = True
            payload = {"job": job.id, "seq": job.seq, "stream": stream, "text": text}
            job.seq += 1
            await self._publish(job, "llm.output", payload)

        async def on_text(stream: Stream, text: str) -> None:
            if stream == "stdout" and bp.parser != "text":
                # A plain-text attempt's kept stdout is its text: no second copy is kept.
                job.live_text.append(text)
            if job.first_output is None and stream == "stdout":
                job.first_output = trio.current_time()
            if not job.listeners:
                return
            if stream == "stderr" and not (text := noise.feed(text)):
                return
            await show(stream, text)

        outcome = await attempt.run(on_text)
        if (rest := noise.flush()) and job.listeners:
            await show("stderr", rest)
        job.warm = outcome.warm
        return outcome

    def _result(self, job: Job, attempt: AttemptProcess, parsed: ParseResult,
                duration: float) -> RunResult:
        text = parsed.text
        value: Any = None
        json_error: str | None = None
        if job.params.json:
            value, json_error = extract_json(text)
        cost, cost_source = usage.run_cost(parsed.cost_usd, parsed.usage, job.model,
                                           self.registry.doc.prices)
        return RunResult(job=job.id, blueprint=job.blueprint, state="succeeded", text=text,
                         output=attempt.stdout, stderr=attempt.stderr_tail,
                         exit_code=attempt.exit_code, attempts=job.attempts,
                         duration_s=round(duration, 6), truncated=attempt.truncated,
                         json=value, json_error=json_error, session=parsed.session,
                         usage=parsed.usage, cost_usd=cost, cost_source=cost_source,
                         requested_blueprint=job.requested,
                         fallback_reason=job.fallback_reason, warm=job.warm)


def _result_chars(job: Job) -> int:
    # A failed job keeps the text its structured output streamed (for jobs.output).
    live = sum(map(len, job.live_text))
    result = job.result
    if result is None:
        return live
    return live + len(result.text) + (len(result.output) if result.output is not result.text
                                      else 0)


def _is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an ordinary exception (possibly grouped, with cancellations),
    not KeyboardInterrupt, SystemExit or the like."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not _only_cancelled(e)]
        return bool(leaves) and all(_is_failure(e) for e in leaves)
    return isinstance(exc, Exception)


def _only_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is trio's cancellation (nurseries may wrap it in a group)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False
