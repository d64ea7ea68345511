"""The warm pool: its policy (llmd.drivers.pool) without processes, then the pool and the
warm driver (llmd.drivers.warm) with scripted processes on trio's virtual clock, so that
idle_ttl, eviction and the hand-off bound run in no time.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import trio

from llmd.config import parse_registry
from llmd.drivers import AttemptSpec
from llmd.drivers import warm as warm_mod
from llmd.drivers.pool import Limits, PoolCore, Slot, WarmKey
from llmd.drivers.warm import WarmPool, WarmProcess
from llmd.jobs.manager import JobManager
from llmd.jobs.records import RunParams
from llmd.jobs.worktree import Worktrees
from llmd.process.argv import Invocation
from tests.test_jobs_unit import Script, Step


def key(blueprint: str = "a", cwd: str = "/p") -> WarmKey:
    return WarmKey(blueprint, cwd, None, ("prog",), ())


# --- the policy ------------------------------------------------------------------------

def started(core: PoolCore, k: WarmKey, now: float) -> Slot:
    plan = core.plan_start(k, now)
    assert plan is not None
    slot, _ = plan
    assert core.started(slot, now)
    return slot


def test_fresh_serves_only_runs_without_a_session_and_bound_only_its_own() -> None:
    core = PoolCore(4, {"a": Limits()})
    slot = started(core, key(), 0)
    assert core.claim(key(), "s1", 1) is None
    assert core.claim(key("a", "/q"), None, 1) is None
    assert core.claim(key(), None, 1) is slot and slot.state == "busy"
    assert core.claim(key(), None, 2) is None  # busy
    assert core.release(slot, "s1", 3)
    assert core.claim(key(), None, 4) is None  # bound: never another conversation
    assert core.claim(key(), "s2", 4) is None
    assert core.claim(key(), "s1", 5) is slot


def test_a_process_without_a_session_to_bind_is_not_kept() -> None:
    core = PoolCore(4, {"a": Limits()})
    slot = started(core, key(), 0)
    core.claim(key(), None, 1)
    assert not core.release(slot, None, 2)
    assert core.slots == []


def test_one_fresh_process_per_key() -> None:
    core = PoolCore(4, {"a": Limits()})
    assert core.plan_start(key(), 0) is not None
    assert core.plan_start(key(), 1) is None  # still starting
    assert core.plan_start(key("a", "/q"), 1) is not None


def test_max_idle_evicts_the_least_recently_used_of_the_blueprint() -> None:
    core = PoolCore(10, {"a": Limits(max_idle=2), "b": Limits(max_idle=2)})
    old = started(core, key("a", "/1"), 0)
    other = started(core, key("b", "/1"), 1)
    new = started(core, key("a", "/2"), 5)
    plan = core.plan_start(key("a", "/3"), 9)
    assert plan is not None
    assert plan[1] == [old]
    assert other in core.slots and new in core.slots


def test_warm_max_evicts_the_least_recently_used_of_all_but_never_a_busy_one() -> None:
    core = PoolCore(2, {"a": Limits(), "b": Limits()})
    first = started(core, key("a"), 0)
    second = started(core, key("b"), 1)
    core.claim(key("a"), None, 2)  # first is busy now, and the most recently used
    plan = core.plan_start(key("b", "/q"), 3)
    assert plan is not None and plan[1] == [second]
    assert core.plan_start(key("a", "/r"), 4) is None  # only busy or starting ones left
    assert first in core.slots


def test_nothing_starts_without_room_or_for_a_blueprint_without_warmth() -> None:
    assert PoolCore(0, {"a": Limits()}).plan_start(key(), 0) is None
    assert PoolCore(4, {"a": Limits(max_idle=0)}).plan_start(key(), 0) is None
    assert PoolCore(4, {}).plan_start(key(), 0) is None


def test_idle_ttl_expires_idle_processes_only() -> None:
    core = PoolCore(4, {"a": Limits(idle_ttl=10)})
    idle = started(core, key("a", "/1"), 0)
    busy = started(core, key("a", "/2"), 0)
    core.claim(key("a", "/2"), None, 1)
    assert core.next_expiry() == 10
    assert core.expire(9.9) == []
    assert core.expire(10) == [idle]
    assert core.slots == [busy] and core.next_expiry() == float("inf")


def test_a_release_beyond_max_idle_ends_the_oldest_idle() -> None:
    core = PoolCore(4, {"a": Limits(max_idle=1)})
    slot = started(core, key("a", "/1"), 0)
    core.claim(key("a", "/1"), None, 1)
    fresh = started(core, key("a", "/1"), 2)
    assert core.release(slot, "s", 3)
    assert fresh not in core.slots and slot in core.slots


def test_a_reload_ends_the_idle_processes_of_a_changed_blueprint() -> None:
    core = PoolCore(4, {"a": Limits(), "b": Limits()})
    idle = started(core, key("a", "/1"), 0)
    busy = started(core, key("a", "/2"), 0)
    kept = started(core, key("b"), 0)
    core.claim(key("a", "/2"), None, 1)
    assert core.configure(4, {"a": Limits(), "b": Limits()}, {"a"}) == [idle]
    assert busy.retired
    assert core.claim(key("a", "/2"), None, 2) is None
    assert not core.release(busy, "s", 3)  # retired: it ends after its run
    assert core.slots == [kept]
    assert core.configure(0, {"b": Limits()}, set()) == [kept]


# --- the pool and the driver, with scripted processes ----------------------------------

REGISTRY = """
[daemon]
warm_max = {warm_max}
[blueprints.claude]
command = ["sh"]
prompt = "stdin"
parser = "claude-stream-json"
resume_args = ["--resume", "{{session}}"]
[blueprints.claude.warm]
enabled = true
idle_ttl = 600
max_idle = 2
[blueprints.claude.retry]
max_attempts = 1
"""


def result_line(text: str, session: str, total_cost: float) -> str:
    return json.dumps({"type": "result", "subtype": "success", "is_error": False,
                       "result": text, "session_id": session, "total_cost_usd": total_cost,
                       "usage": {"input_tokens": 3, "output_tokens": 1}}) + "\n"


def answer(n: int) -> list[str | None]:
    """A claude turn: init, the text, the result with the process's total cost."""
    session = "S"
    return [json.dumps({"type": "system", "subtype": "init", "session_id": session}) + "\n",
            json.dumps({"type": "assistant", "session_id": session,
                        "message": {"id": f"m{n}", "role": "assistant",
                                    "content": [{"type": "text", "text": f"warm {n}"}]}})
            + "\n",
            result_line(f"warm {n}", session, 0.25 * n)]


class Scripted(WarmProcess):
    """A warm process without a process: it answers each prompt from a script."""

    made: ClassVar[list[Scripted]] = []
    script: ClassVar[Callable[[int], list[str | None]]] = staticmethod(answer)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.received: list[dict[str, Any]] = []
        self._out, self._outbox = trio.open_memory_channel[str | None](64)
        Scripted.made.append(self)

    async def send(self, data: bytes) -> None:
        if self.dead.is_set():
            raise trio.BrokenResourceError("gone")
        self.received.append(json.loads(data))
        for chunk in type(self).script(len(self.received)):
            self._out.send_nowait(chunk)

    async def run(self, key: WarmKey, on_started: Callable[[WarmProcess], None]) -> None:
        try:
            with self.scope:
                on_started(self)
                async for chunk in self._outbox:
                    if chunk is None:  # the process exits
                        break
                    await self._send.send(chunk)
        finally:
            self._send.close()
            self.dead.set()
            self.on_gone(self)


@asynccontextmanager
async def serving(warm_max: int = 4, script: Callable[[int], list[str | None]] = answer,
                  *steps: Step) -> AsyncIterator[tuple[JobManager, Script]]:
    Scripted.made = []
    Scripted.script = staticmethod(script)
    registry = parse_registry(REGISTRY.format(warm_max=warm_max))
    oneshot = Script(*steps)
    jm = JobManager(registry, environ={"PATH": "/bin:/usr/bin"}, rng=random.Random(1),
                    attempt_factory=oneshot.factory(),
                    warm=WarmPool(registry, process_factory=Scripted))
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.serve)
        yield jm, oneshot
        nursery.cancel_scope.cancel()


async def run(jm: JobManager, prompt: str = "p", **params: Any) -> Any:
    job = jm.submit(RunParams(blueprint="claude", prompt=prompt, timeout=3600, **params))
    return await jm.run(job)


ONE_SHOT = Step(stdout=result_line("cold", "C", 0.5))


async def until_idle(jm: JobManager, count: int = 1) -> None:
    with trio.fail_after(5):
        while jm.warm.core.counts()["idle"] < count:
            await trio.sleep(0.001)


async def test_a_run_finds_the_process_its_predecessor_left(autojump_clock: Any) -> None:
    async with serving(4, answer, ONE_SHOT) as (jm, oneshot):
        first = await run(jm, "one")
        assert (first.warm, first.text, first.cost_usd) == (False, "cold", 0.5)
        await until_idle(jm)
        second = await run(jm, "two")
        assert (second.warm, second.text, second.session) == (True, "warm 1", "S")
        assert second.cost_usd == 0.25 and second.exit_code == 0
        # It served "two"; a fresh one waits for the next run without a session.
        process, fresh = Scripted.made
        assert fresh.received == []
        assert process.received[0]["message"]["content"] == [{"type": "text", "text": "two"}]
        # Bound to S, it serves the run resuming S; its cost is the turn's, not the total.
        third = await run(jm, "three", session="S")
        assert (third.warm, third.text, third.cost_usd) == (True, "warm 2", 0.25)
        assert len(process.received) == 2 and len(oneshot.started) == 1


async def test_prewarm_starts_one_process_that_the_next_run_uses(autojump_clock: Any) -> None:
    async with serving() as (jm, oneshot):
        assert jm.prewarm("claude")
        assert not jm.prewarm("claude")  # one is there already
        await until_idle(jm)
        assert (await run(jm)).warm
        assert oneshot.started == []


async def test_idle_ttl_ends_an_unused_process(autojump_clock: Any) -> None:
    async with serving() as (jm, _):
        jm.prewarm("claude")
        await until_idle(jm)
        [process] = Scripted.made
        await trio.sleep(599)
        assert not process.dead.is_set()
        await trio.sleep(2)
        assert process.dead.is_set() and jm.warm.core.counts()["processes"] == 0


async def test_warm_max_evicts_the_least_recently_used(autojump_clock: Any,
                                                       tmp_path: Any) -> None:
    dirs = []
    for name in "abc":
        (tmp_path / name).mkdir()
        dirs.append(str(tmp_path / name))
    async with serving(2) as (jm, _):
        jm.prewarm("claude", dirs[0])
        await until_idle(jm)
        await trio.sleep(10)
        jm.prewarm("claude", dirs[1])
        await until_idle(jm, 2)
        await trio.sleep(10)
        assert jm.prewarm("claude", dirs[2])
        a, b, c = Scripted.made
        with trio.fail_after(5):
            await a.dead.wait()
        await until_idle(jm, 2)
        assert not b.dead.is_set() and not c.dead.is_set()
        assert jm.warm.core.counts()["processes"] == 2


def silent(n: int) -> list[str | None]:
    return []


def garbage(n: int) -> list[str | None]:
    return ["Welcome to the interactive mode!\n"]


def exits(n: int) -> list[str | None]:
    return [None]


async def test_a_silent_process_is_killed_and_the_run_goes_one_shot(
        autojump_clock: Any) -> None:
    async with serving(4, silent, ONE_SHOT, ONE_SHOT) as (jm, oneshot):
        jm.prewarm("claude")
        await until_idle(jm)
        started_at = trio.current_time()
        result = await run(jm)
        assert (result.warm, result.text) == (False, "cold")
        assert trio.current_time() - started_at >= warm_mod.HANDOFF_TIMEOUT
        assert Scripted.made[0].dead.is_set() and len(oneshot.started) == 1


async def test_garbage_or_death_before_any_text_goes_one_shot_at_once(
        autojump_clock: Any) -> None:
    for script in (garbage, exits):
        async with serving(4, script, ONE_SHOT) as (jm, oneshot):
            jm.prewarm("claude")
            await until_idle(jm)
            started_at = trio.current_time()
            result = await run(jm)
            assert (result.warm, result.text) == (False, "cold"), script.__name__
            assert trio.current_time() - started_at < 1
            assert Scripted.made[0].dead.is_set() and len(oneshot.started) == 1


def dies_mid_answer(n: int) -> list[str | None]:
    return [*answer(n)[:2], None]


async def test_death_after_text_streamed_fails_the_run_as_a_crash(autojump_clock: Any) -> None:
    from llmd.errors import CliFailed  # noqa: PLC0415

    async with serving(4, dies_mid_answer) as (jm, oneshot):
        jm.prewarm("claude")
        await until_idle(jm)
        job = jm.submit(RunParams(blueprint="claude", prompt="p", timeout=60))
        streamed: list[str] = []

        async def listen(method: str, payload: dict[str, Any]) -> None:
            if method == "llm.output":
                streamed.append(payload["text"])

        job.listeners.append(listen)
        try:
            await jm.run(job)
        except CliFailed as exc:
            assert exc.code == -32005
        else:
            raise AssertionError("the run succeeded")
        assert streamed == ["warm 1"] and oneshot.started == []


def rate_limited(n: int) -> list[str | None]:
    return [json.dumps({"type": "system", "subtype": "api_retry", "attempt": 1,
                        "error_status": 429, "error": "rate_limit",
                        "retry_delay_ms": 2000, "session_id": "S"}) + "\n"]


async def test_a_rate_limit_signal_kills_the_process_and_ends_the_run(
        autojump_clock: Any) -> None:
    from llmd.errors import RateLimited  # noqa: PLC0415

    async with serving(4, rate_limited) as (jm, _):
        jm.prewarm("claude")
        await until_idle(jm)
        started_at = trio.current_time()
        try:
            await run(jm)
        except RateLimited as exc:
            assert exc.code == -32004
        else:
            raise AssertionError("the run succeeded")
        assert trio.current_time() - started_at < 1
        assert Scripted.made[0].dead.is_set()


async def test_a_reload_that_changes_the_blueprint_ends_its_processes(
        autojump_clock: Any) -> None:
    async with serving() as (jm, _):
        jm.prewarm("claude")
        await until_idle(jm)
        changed = parse_registry(REGISTRY.format(warm_max=4).replace("idle_ttl = 600",
                                                                     "idle_ttl = 60"))
        jm.set_registry(changed)
        with trio.fail_after(5):
            await Scripted.made[0].dead.wait()
        assert jm.warm.core.counts()["processes"] == 0


def error_result(n: int) -> list[str | None]:
    return [json.dumps({"type": "result", "subtype": "success", "is_error": True,
                        "result": "Invalid API key", "session_id": "S",
                        "total_cost_usd": 0}) + "\n"]


async def test_a_failed_turn_ends_the_process_and_the_run_fails_as_one_shot_would(
        autojump_clock: Any) -> None:
    from llmd.errors import CliFailed  # noqa: PLC0415

    async with serving(4, error_result) as (jm, oneshot):
        jm.prewarm("claude")
        await until_idle(jm)
        try:
            await run(jm)
        except CliFailed as exc:
            assert exc.code == -32005
        else:
            raise AssertionError("the run succeeded")
        with trio.fail_after(5):
            await Scripted.made[0].dead.wait()
        # Not replaced after a failure: the next run goes one-shot.
        assert len(Scripted.made) == 1 and oneshot.started == []


async def test_a_run_in_a_worktree_of_its_own_starts_no_warm_process(tmp_path: Path) -> None:
    """A worktree is made for one run: no warm process matches its cwd, and one started
    for it would outlive it unused (evicting one that serves the project)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                  "--allow-empty", "-m", "first"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    Scripted.made = []
    registry = parse_registry(REGISTRY.format(warm_max=4))
    oneshot = Script(ONE_SHOT, ONE_SHOT)
    jm = JobManager(registry, environ={"PATH": "/bin:/usr/bin"}, rng=random.Random(1),
                    attempt_factory=oneshot.factory(),
                    warm=WarmPool(registry, process_factory=Scripted),
                    worktrees=Worktrees(tmp_path / "worktrees"))
    with trio.fail_after(30):  # (git runs for real: no virtual clock)
        async with trio.open_nursery() as nursery:
            await nursery.start(jm.serve)
            isolated = await run(jm, cwd=str(repo), isolate="worktree")
            assert isolated.exit_code == 0 and isolated.warm is False
            assert Scripted.made == []  # nothing started for the worktree
            plain = await run(jm, cwd=str(repo))
            assert plain.warm is False
            await until_idle(jm)  # the project's own run leaves one, as before
            assert [p.slot.key.cwd for p in Scripted.made] == [str(repo)]
            nursery.cancel_scope.cancel()


def test_an_edit_run_has_a_warm_key_of_its_own_with_the_edit_flags() -> None:
    bp = msgspec.structs.replace(parse_registry(REGISTRY.format(warm_max=4))
                                 .blueprints["claude"], edit_args=["--permission-mode",
                                                                   "acceptEdits"])

    def key(edit: bool) -> WarmKey | None:
        return warm_mod.warm_key(AttemptSpec(
            blueprint="claude", bp=bp, invocation=Invocation(["/bin/sh"], b"p"),
            env={"PATH": "/bin"}, cwd="/w", on_spawn=lambda pid: None, edit=edit))

    plain, edit = key(False), key(True)
    assert plain is not None and edit is not None and plain != edit
    assert edit.argv[:3] == ("/bin/sh", "--permission-mode", "acceptEdits")
    assert "acceptEdits" not in plain.argv
