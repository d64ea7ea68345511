"""The job manager's retry loop, deadlines and queues, on trio's virtual clock.

Attempts are scripted stand-ins for the supervisor (no processes), so back-off and
timeouts of minutes run in no time with ``autojump_clock``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from llmd import metrics
from llmd.config import parse_registry
from llmd.errors import Busy, Cancelled, CliFailed, InternalError, RateLimited, TimedOut
from llmd.jobs.job import Job
from llmd.jobs.manager import JobManager
from llmd.jobs.records import RunParams, RunResult, WorktreeInfo
from llmd.stats import RunStats


@dataclass
class Step:
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


class Script:
    """Hands out scripted attempts in order and records what ran when."""

    def __init__(self, *steps: Step) -> None:
        self.steps = deque(steps)
        self.started: list[tuple[float, str]] = []
        self.cancelled = 0

    def factory(self) -> Callable[..., Any]:
        script = self

        class ScriptedAttempt:
            def __init__(self, invocation: Any, *, on_output: Any, on_spawn: Any,
                         **_: Any) -> None:
                self.invocation = invocation
                self.on_output = on_output
                self.exit_code: int | None = None
                self.stdout = ""
                self.stderr_tail = ""
                self.truncated = False
                self.duration = 0.0

            async def run(self) -> int:
                step = script.steps.popleft() if script.steps else Step(seconds=float("inf"))
                script.started.append((trio.current_time(), self.invocation.argv[-1]))
                try:
                    await trio.sleep(step.seconds)
                except trio.Cancelled:
                    script.cancelled += 1
                    raise
                if step.stdout:
                    self.stdout = step.stdout
                    await self.on_output("stdout", step.stdout)
                if step.stderr:
                    self.stderr_tail = step.stderr
                    await self.on_output("stderr", step.stderr)
                self.exit_code = step.exit_code
                return step.exit_code

        return ScriptedAttempt


def manager(script: Script, toml: str = "") -> JobManager:
    registry = parse_registry(f"""
[daemon]
max_jobs = 4
max_queue = 2
[blueprints.cli]
command = ["/bin/sh", "{{prompt}}"]
max_concurrency = 1
[blueprints.cli.retry]
max_attempts = 3
base_delay = 2.0
max_delay = 30.0
{toml}
""")
    return JobManager(registry, environ={"PATH": "/bin:/usr/bin"}, rng=random.Random(7),
                      attempt_factory=script.factory())


RATE = Step(exit_code=1, stderr="Error: 429 Too Many Requests\n")


async def test_two_rate_limits_then_success_takes_three_attempts(autojump_clock: Any) -> None:
    script = Script(RATE, RATE, Step(stdout="fine"))
    jm = manager(script)
    states: list[tuple[str, dict[str, Any]]] = []

    async def listen(method: str, payload: dict[str, Any]) -> None:
        states.append((method, payload))

    job = jm.submit(RunParams(blueprint="cli", prompt="p", timeout=600))
    job.listeners.append(listen)
    result = await jm.run(job)
    assert result.attempts == 3
    assert result.text == "fine"
    assert job.state == "succeeded"
    gaps = [b[0] - a[0] for a, b in zip(script.started, script.started[1:], strict=False)]
    # Exponential with jitter, never below base_delay or above the cap of that step.
    assert gaps[0] == pytest.approx(2.0)  # first cap is base_delay itself
    assert 2.0 <= gaps[1] <= 4.0
    kinds = [p["state"] for m, p in states if m == "llm.state"]
    assert kinds == ["queued", "running", "retrying", "running", "retrying", "running",
                     "succeeded"]
    retry_in = [p["retry_in_s"] for m, p in states if p.get("state") == "retrying"]
    assert all(r >= 2.0 for r in retry_in)


async def test_exhausted_retries_give_rate_limited(autojump_clock: Any) -> None:
    script = Script(RATE, RATE, Step(exit_code=1, stderr="rate limit hit, retry after 7s"))
    jm = manager(script)
    job = jm.submit(RunParams(blueprint="cli", prompt="p", timeout=600))
    with pytest.raises(RateLimited) as info:
        await jm.run(job)
    assert info.value.code == -32004
    assert info.value.data["attempts"] == 3
    assert info.value.data["retry_after_s"] == 7.0
    assert job.state == "failed"


async def test_back_off_never_sleeps_past_the_deadline(autojump_clock: Any) -> None:
    script = Script(RATE, RATE, RATE)
    jm = manager(script)
    job = jm.submit(RunParams(blueprint="cli", prompt="p", timeout=3))
    start = trio.current_time()
    with pytest.raises(RateLimited):
        await jm.run(job)
    # One attempt, then a 2-4 s back-off would cross the 3 s deadline: give up at once.
    assert trio.current_time() - start < 3
    assert len(script.started) in (1, 2)


async def test_timeout_cancels_the_attempt_at_the_deadline(autojump_clock: Any) -> None:
    script = Script(Step(seconds=10_000))
    jm = manager(script)
    job = jm.submit(RunParams(blueprint="cli", prompt="p", timeout="quick"))
    start = trio.current_time()
    with pytest.raises(TimedOut) as info:
        await jm.run(job)
    assert trio.current_time() - start == pytest.approx(60.0)
    assert script.cancelled == 1
    assert info.value.code == -32003
    assert job.state == "timed_out"


async def test_other_failures_are_not_retried(autojump_clock: Any) -> None:
    script = Script(Step(exit_code=2, stderr="usage: cli [-h]\n"), Step(stdout="never"))
    jm = manager(script)
    job = jm.submit(RunParams(blueprint="cli", prompt="p"))
    with pytest.raises(CliFailed) as info:
        await jm.run(job)
    assert info.value.data["attempts"] == 1
    assert info.value.data["exit_code"] == 2
    assert "usage" in info.value.data["stderr"]
    assert len(script.steps) == 1


async def test_blueprint_slots_are_fifo_and_queue_is_bounded(autojump_clock: Any) -> None:
    script = Script(Step(seconds=5, stdout="a"), Step(seconds=5, stdout="b"),
                    Step(seconds=5, stdout="c"))
    jm = manager(script)
    async with trio.open_nursery() as nursery:
        for name in ("first", "second", "third"):
            nursery.start_soon(jm.run, jm.submit(RunParams(blueprint="cli", prompt=name,
                                                           timeout=600)))
            await trio.testing.wait_all_tasks_blocked()
        # max_concurrency 1 and max_queue 2: one runs, two wait, the next is refused.
        assert (jm.running, jm.queued) == (1, 2)
        with pytest.raises(Busy) as info:
            jm.submit(RunParams(blueprint="cli", prompt="fourth"))
        assert info.value.code == -32006
    assert [name for _t, name in script.started] == ["first", "second", "third"]
    assert [t for t, _n in script.started] == pytest.approx([0.0, 5.0, 10.0], abs=1e-6)


async def test_a_burst_admits_a_full_house_before_any_job_has_started(
        autojump_clock: Any) -> None:
    # Submitted back to back, before any job's task has taken its slot: those that will run
    # at once are not counted against the queue's bound.
    script = Script(*(Step(seconds=5, stdout=str(n)) for n in range(6)))
    jm = manager(script)
    jm.set_registry(parse_registry("""
[daemon]
max_jobs = 4
max_queue = 2
[blueprints.cli]
command = ["/bin/sh", "{prompt}"]
max_concurrency = 4
"""))
    async with trio.open_nursery() as nursery:
        jobs = [jm.submit(RunParams(blueprint="cli", prompt=str(n), timeout=600))
                for n in range(6)]
        with pytest.raises(Busy):
            jm.submit(RunParams(blueprint="cli", prompt="seventh"))
        for job in jobs:
            nursery.start_soon(jm.run, job)
        await trio.testing.wait_all_tasks_blocked()
        assert (jm.running, jm.queued) == (4, 2)


async def test_queue_wait_counts_against_the_timeout(autojump_clock: Any) -> None:
    script = Script(Step(seconds=50, stdout="a"), Step(seconds=1, stdout="b"))
    jm = manager(script)
    first = jm.submit(RunParams(blueprint="cli", prompt="first", timeout=600))
    second = jm.submit(RunParams(blueprint="cli", prompt="second", timeout=30))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jm.run, first)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(TimedOut) as info:
            await jm.run(second)
    assert "queue" in info.value.message
    assert second.state == "timed_out"
    assert jm.queued == 0


async def test_cancel_ends_a_running_job(autojump_clock: Any) -> None:
    script = Script(Step(seconds=1000))
    jm = manager(script)
    job = jm.submit(RunParams(blueprint="cli", prompt="p"))
    async with trio.open_nursery() as nursery:

        async def cancel_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert jm.cancel(job.id) is True

        nursery.start_soon(cancel_soon)
        with pytest.raises(Cancelled) as info:
            await jm.run(job)
    assert info.value.code == -32802
    assert job.state == "cancelled"
    assert jm.cancel(job.id) is False
    assert jm.running == 0 and jm.queued == 0


async def test_a_reload_removing_the_blueprint_and_category_leaves_admitted_jobs_alone(
        autojump_clock: Any) -> None:
    script = Script(Step(seconds=10_000), Step(stdout="queued one ran"))
    jm = manager(script, "[timeouts]\ncustom = 120\n")
    running = jm.submit(RunParams(blueprint="cli", prompt="a", timeout="custom"))
    queued = jm.submit(RunParams(blueprint="cli", prompt="b", timeout=600))
    errors: list[Exception] = []

    async def run(job: Any) -> None:
        try:
            await jm.run(job)
        except TimedOut as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, running)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(run, queued)
        await trio.testing.wait_all_tasks_blocked()
        jm.set_registry(parse_registry('[blueprints.other]\ncommand = ["x", "{prompt}"]\n'))
    # The timeout it was admitted with, not 0 s from a registry that lost it.
    assert [str(e) for e in errors] and "after 120 s" in errors[0].args[0]
    assert running.state == "timed_out"
    assert queued.state == "succeeded" and queued.result is not None
    assert queued.result.text == "queued one ran"


class Broken(RuntimeError):
    pass


def broken_factory(*_: Any, **__: Any) -> Any:
    raise Broken("a defect in one job's code path")


async def test_an_exception_of_one_job_fails_it_alone_with_32603(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    jm = manager(Script())
    jm.attempt_factory = broken_factory
    job = jm.submit(RunParams(blueprint="cli", prompt="p"))
    with pytest.raises(InternalError) as info:
        await jm.run(job)
    assert info.value.code == -32603
    assert job.state == "failed"
    assert "internal error" in caplog.text and job.id in caplog.text
    # Detached, in the manager's nursery: the manager (and the daemon) goes on.
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.serve)
        detached = jm.submit(RunParams(blueprint="cli", prompt="p", detach=True))
        jm.start_detached(detached)
        await detached.finished.wait()
        nursery.cancel_scope.cancel()
    assert detached.state == "failed"
    assert detached.error is not None and detached.error.code == -32603


def closing_attempt(jm: JobManager, outcome: Step, answers: list[bool]) -> Any:
    """Attempts that end with ``outcome``, llm.cancel landing as they close."""

    class ClosingAttempt:
        def __init__(self, invocation: Any, **_: Any) -> None:
            self.exit_code: int | None = None
            self.stdout = outcome.stdout
            self.stderr_tail = outcome.stderr
            self.truncated = False
            self.duration = 0.0

        async def run(self) -> int:
            await trio.sleep(1)
            self.exit_code = outcome.exit_code
            job = next(j for j in jm.jobs.values() if j.state == "running")
            answers.append(jm.cancel(job.id))  # the child has exited; nothing is recorded
            return outcome.exit_code

    return ClosingAttempt


async def test_a_cancel_landing_while_the_attempt_closes_wins(autojump_clock: Any) -> None:
    """The seam: llm.cancel arrives after the child exited, before the outcome is
    recorded (no checkpoint left in between). It said True, so the job ends cancelled."""
    jm = manager(Script())
    answers: list[bool] = []
    for outcome in (Step(stdout="fine"), Step(exit_code=3, stderr="failed anyway")):
        jm.attempt_factory = closing_attempt(jm, outcome, answers)
        job = jm.submit(RunParams(blueprint="cli", prompt="p"))
        with pytest.raises(Cancelled):
            await jm.run(job)
        assert job.state == "cancelled"
        assert job.result is None
    assert answers == [True, True]


async def test_finished_jobs_are_evicted_whatever_is_still_running(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmd.jobs.manager.KEEP_FINISHED", 5)
    monkeypatch.setattr("llmd.jobs.manager.KEEP_RESULT_CHARS", 1000)
    script = Script(Step(seconds=10_000), *[Step(stdout="x" * 300) for _ in range(20)])
    jm = manager(script, "[blueprints.cli2]\ncommand = [\"/bin/sh\", \"{prompt}\"]\n"
                         "max_concurrency = 4\n")
    old = jm.submit(RunParams(blueprint="cli", prompt="old", timeout=100_000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jm.run, old)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(20):
            await jm.run(jm.submit(RunParams(blueprint="cli2", prompt=str(n))))
            finished = [j for j in jm.jobs.values() if j.state == "succeeded"]
            assert len(jm.jobs) <= 5
            assert sum(len(j.result.text) for j in finished if j.result) <= 1000
        assert old.id in jm.jobs  # the live one stays
        nursery.cancel_scope.cancel()


async def test_queued_jobs_cancelled_at_shutdown_never_start(autojump_clock: Any) -> None:
    script = Script(Step(seconds=50, stdout="a"), Step(stdout="never"))
    jm = manager(script)
    first = jm.submit(RunParams(blueprint="cli", prompt="first", timeout=600))
    second = jm.submit(RunParams(blueprint="cli", prompt="second", timeout=600))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jm.run, first)
        await trio.testing.wait_all_tasks_blocked()
        jm.draining = True
        assert jm.cancel_queued("cancelled: llmd is shutting down") == 1
        with pytest.raises(Cancelled):
            await jm.run(second)
    assert first.state == "succeeded"
    assert second.state == "cancelled" and second.started_at is None
    assert [name for _t, name in script.started] == ["first"]


async def test_a_record_without_text_keeps_every_other_field_of_the_result() -> None:
    job = Job("j", RunParams(blueprint="b", prompt="p"), float("inf"))
    result = RunResult(job="j", blueprint="b", state="succeeded", text="answer",
                       output="raw", stderr="err", exit_code=0, attempts=2, duration_s=1.5,
                       truncated=True, json={"a": 1}, session="s", usage={"input_tokens": 3},
                       cost_usd=0.25, cost_source="cli", requested_blueprint="a",
                       fallback_reason="rate limited", warm=True,
                       worktree=WorktreeInfo(path="/w", base="abc", changed_files=1))
    job.result = result
    assert job.record().result == result
    bare = job.record(with_text=False).result
    assert bare is not None
    assert msgspec.structs.asdict(bare) == {**msgspec.structs.asdict(result),
                                            "text": "", "output": ""}
    assert job.result.text == "answer"  # the job's own result is left whole


async def test_the_time_a_failed_run_took_in_the_stats_leaves_out_its_queue(
        autojump_clock: Any) -> None:
    stats = RunStats(trio.current_time)
    script = Script(Step(seconds=100, stdout="first"), Step(seconds=5, exit_code=1))
    registry = manager(script).registry
    jm = JobManager(registry, environ={"PATH": "/bin:/usr/bin"}, rng=random.Random(7),
                    attempt_factory=script.factory(), on_finish=[metrics.observe(stats)])
    first = jm.submit(RunParams(blueprint="cli", prompt="a", timeout=600))
    second = jm.submit(RunParams(blueprint="cli", prompt="b", timeout=600))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jm.run, first)
        while first.state != "running":
            await trio.sleep(0)
        with pytest.raises(CliFailed):
            await jm.run(second)  # waits 100 s for the one slot, then fails in 5 s
    durations = {s.outcome: s.duration_s for s in stats.samples}
    assert durations["cli_failure"] == pytest.approx(5.0)
    assert durations["succeeded"] == pytest.approx(100.0)


async def test_the_streamed_text_of_failed_jobs_counts_towards_what_memory_keeps(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmd.jobs.manager.KEEP_RESULT_CHARS", 100)
    stream = (Path(__file__).parent / "fixtures" / "real-clis" / "claude_stream.out").read_text()
    script = Script(*[Step(exit_code=1, stdout=stream) for _ in range(20)])
    jm = manager(script, '[blueprints.structured]\ncommand = ["/bin/sh", "{prompt}"]\n'
                         'parser = "claude-stream-json"\n')
    for n in range(20):
        with pytest.raises(CliFailed):
            await jm.run(jm.submit(RunParams(blueprint="structured", prompt=str(n))))
        assert sum(len(t) for j in jm.jobs.values() for t in j.live_text) <= 100
    assert len(jm.jobs) < 20  # the oldest went
