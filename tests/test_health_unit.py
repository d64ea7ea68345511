"""The health monitor on trio's virtual clock, with scripted probes (no processes).

Every blueprint sets ``env.BP`` to its own name, so a scripted attempt knows which
blueprint it stands in for; intervals of minutes run in no time with ``autojump_clock``.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from llmd.config import Registry, parse_registry
from llmd.errors import ExecutableMissing, RateLimited, UnknownBlueprint
from llmd.health.monitor import HealthMonitor, _version
from llmd.routing import Route, route

EPOCH = 1_700_000_000.0


@dataclass
class Step:
    exit_code: int = 0
    stdout: str = "tool 1.2.3\n"
    stderr: str = ""
    seconds: float = 1.0
    raises: Exception | None = None


class Script:
    """Hands out scripted probe results per blueprint and records what ran when."""

    def __init__(self, **steps: list[Step]) -> None:
        self.steps: dict[str, deque[Step]] = {k: deque(v) for k, v in steps.items()}
        self.default: dict[str, Step] = {}
        self.started: list[tuple[float, str, list[str]]] = []
        self.cancelled: list[str] = []
        self.running: dict[str, int] = defaultdict(int)
        self.most_at_once: dict[str, int] = defaultdict(int)

    def times(self, name: str) -> list[float]:
        return [t for t, n, _ in self.started if n == name]

    def factory(self) -> Callable[..., Any]:
        script = self

        class ScriptedAttempt:
            def __init__(self, invocation: Any, *, env: Any, **_: Any) -> None:
                self.invocation = invocation
                self.name = env["BP"]
                self.exit_code: int | None = None
                self.stdout = ""
                self.stderr_tail = ""

            async def run(self) -> int:
                queue = script.steps.get(self.name)
                step = queue.popleft() if queue else script.default.get(self.name, Step())
                script.started.append((trio.current_time(), self.name,
                                       list(self.invocation.argv)))
                script.running[self.name] += 1
                script.most_at_once[self.name] = max(script.most_at_once[self.name],
                                                     script.running[self.name])
                try:
                    await trio.sleep(step.seconds)
                except trio.Cancelled:
                    script.cancelled.append(self.name)
                    raise
                finally:
                    script.running[self.name] -= 1
                if step.raises is not None:
                    raise step.raises
                self.stdout, self.stderr_tail = step.stdout, step.stderr
                self.exit_code = step.exit_code
                return step.exit_code

        return ScriptedAttempt


def registry(*names: str, extra: str = "", **per_bp: str) -> Registry:
    """Blueprints running /bin/sh; ``per_bp`` adds TOML lines to a blueprint's table."""
    text = ""
    for name in names:
        lines = per_bp.get(name, "")
        command = "" if "command =" in lines.split("[")[0] else (
            'command = ["/bin/sh", "{prompt}"]\n')
        text += f'[blueprints.{name}]\n{command}env = {{ BP = "{name}" }}\n{lines}\n'
    return parse_registry(text + extra)


def monitor(reg: Registry, script: Script, environ: dict[str, str] | None = None,
            seed: int = 1) -> HealthMonitor:
    return HealthMonitor(reg, environ or {"PATH": "/usr/bin:/bin"}, rng=random.Random(seed),
                         attempt_factory=script.factory(),
                         wall_clock=lambda: EPOCH + trio.current_time())


async def test_probes_once_per_interval(autojump_clock: Any) -> None:
    script = Script()
    mon = monitor(registry("a", a="[blueprints.a.health]\ninterval = 300"), script)
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        await trio.sleep(2995)
        nursery.cancel_scope.cancel()
    times = script.times("a")
    assert len(times) == 10
    assert times[0] == 0  # the first probe at start
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The second comes an interval plus a little jitter later, the rest an interval apart.
    assert 300 <= gaps[0] <= 310
    assert gaps[1:] == pytest.approx([300] * 8)
    # The default probe is the blueprint's program with --version.
    assert script.started[0][2] == ["/bin/sh", "--version"]
    assert mon.status("a")["a"]["state"] == "healthy"


async def test_first_probes_start_at_once_bounded_and_later_ones_spread(
        autojump_clock: Any) -> None:
    names = [f"b{i}" for i in range(10)]
    script = Script()
    mon = monitor(registry(*names), script, seed=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        await trio.sleep(700)
        nursery.cancel_scope.cancel()
    firsts = sorted(script.times(name)[0] for name in names)
    # Each probe takes 1 s; two at a time: every blueprint is known within 5 s.
    assert firsts == [float(second) for second in range(5) for _ in range(2)]
    assert all(mon.status(name)[name]["state"] == "healthy" for name in names)
    seconds = [script.times(name)[1] for name in names]
    assert all(300 <= at <= 310 for at in seconds)
    assert len(set(seconds)) == len(names)  # apart, not all at once again


async def test_probe_timeout_kills_it_at_exactly_the_timeout(autojump_clock: Any) -> None:
    script = Script(a=[Step(seconds=float("inf"))])
    mon = monitor(registry("a", a="[blueprints.a.health]\ntimeout = 5"), script)
    start = trio.current_time()
    entry = (await mon.check("a"))["a"]
    assert trio.current_time() - start == 5.0
    assert script.cancelled == ["a"]
    assert entry["state"] == "unhealthy"
    assert entry["detail"] == "timed out after 5 s"
    assert entry["latency_s"] == 5.0
    assert entry["checked_at"] == "2023-11-14T22:13:25.000Z"


async def test_a_check_during_a_scheduled_probe_waits_for_it(autojump_clock: Any) -> None:
    script = Script(a=[Step(seconds=20, stdout="tool 9.9\n")])
    mon = monitor(registry("a"), script)
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        while not script.started:
            await trio.sleep(0.5)
        began = script.started[0][0]
        results: list[dict[str, Any]] = []

        async def check() -> None:
            results.append(await mon.check("a"))

        async with trio.open_nursery() as checks:
            for _ in range(3):
                checks.start_soon(check)
        nursery.cancel_scope.cancel()
    assert len(script.started) == 1
    assert script.most_at_once["a"] == 1
    assert trio.current_time() == pytest.approx(began + 20)
    assert results[0] == results[1] == results[2]
    assert results[0]["a"]["version"] == "9.9"


async def test_concurrent_checks_without_the_scheduler_share_one_probe(
        autojump_clock: Any) -> None:
    script = Script(a=[Step(seconds=3)], b=[Step(seconds=3)])
    mon = monitor(registry("a", "b"), script)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(mon.check)
    assert sorted(n for _, n, _ in script.started) == ["a", "b"]
    assert trio.current_time() == pytest.approx(3)  # both blueprints probed at once


async def test_cooldown_expires_back_to_the_probed_state(autojump_clock: Any,
                                                         caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="llmd.health")
    script = Script()
    script.default["a"] = Step(exit_code=1, stderr="\n  not logged in  \nmore\n")
    mon = monitor(registry("a", "b", b="[blueprints.b.health]\ncooldown = 45"), script)
    await mon.check()
    assert mon.status("a")["a"]["state"] == "unhealthy"
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        start = trio.current_time()
        mon.note_rate_limited("a", 30.0)
        mon.note_rate_limited("a", 5.0)  # a shorter hint never shortens a cooldown
        mon.note_rate_limited("b", None)
        a = mon.status("a")["a"]
        assert a["state"] == "cooling_down"
        assert a["detail"] == "exit status 1: not logged in"  # the probe's finding stays
        assert a["cooldown_until"] == "2023-11-14T22:13:51.000Z"
        await trio.sleep_until(start + 29.9)
        assert mon.status("a")["a"]["state"] == "cooling_down"
        await trio.sleep_until(start + 30)
        await trio.testing.wait_all_tasks_blocked()
        # The scheduler ends it by itself: the transition is logged without a status call.
        assert "a is unhealthy (was cooling_down)" in caplog.text
        a = mon.status("a")["a"]
        assert (a["state"], a["cooldown_until"]) == ("unhealthy", None)
        assert mon.status("b")["b"]["state"] == "cooling_down"
        await trio.sleep_until(start + 45)
        b = mon.status("b")["b"]
        assert (b["state"], b["cooldown_until"]) == ("healthy", None)
        nursery.cancel_scope.cancel()
    # Two checked, two first scheduled probes: ending a cooldown takes no probe.
    assert len(script.started) == 4


async def test_fallbacks_are_taken_in_order_skipping_unusable_ones(
        autojump_clock: Any) -> None:
    names = ("a", "sick", "gone", "cool", "fresh", "good", "later")
    reg = registry(*names, a='fallbacks = ["sick", "gone", "cool", "fresh", "good", "later"]',
                   gone='command = ["llmd-no-such-cli", "{prompt}"]')
    script = Script(sick=[Step(exit_code=2, stderr="boom")])
    mon = monitor(reg, script)
    await mon.check()
    assert route(mon, reg, "a") == Route("a", "a")
    mon.note_rate_limited("cool", 600)
    mon.note_rate_limited("a", 90)
    assert route(mon, reg, "a") == Route(
        "fresh", "a", "a is rate limited until 2023-11-14T22:14:51.000Z; using fresh")
    assert route(mon, reg, "a").swapped
    mon.note_rate_limited("fresh", 600)
    assert route(mon, reg, "a").blueprint == "good"
    mon.note_rate_limited("good", 600)
    assert route(mon, reg, "a").blueprint == "later"


async def test_an_unprobed_fallback_is_usable(autojump_clock: Any) -> None:
    reg = registry("a", "b", a='fallbacks = ["b"]')
    mon = monitor(reg, Script())
    mon.note_rate_limited("a", None)
    assert mon.status("b")["b"]["state"] == "unknown"
    assert route(mon, reg, "a").blueprint == "b"
    # A run with a session or a model stays with its CLI, and is told how long is left.
    with pytest.raises(RateLimited) as info:
        route(mon, reg, "a", pinned=True)
    assert info.value.data == {"blueprint": "a", "retry_after_s": 60.0,
                               "cooldown_until": "2023-11-14T22:14:20.000Z"}
    assert "cannot move to a fallback" in info.value.message


async def test_no_usable_fallback_is_rate_limited_with_retry_after(autojump_clock: Any) -> None:
    script = Script(b=[Step(exit_code=1, stdout="auth expired")])
    reg = registry("a", "b", a='fallbacks = ["b"]')
    mon = monitor(reg, script)
    await mon.check()
    mon.note_rate_limited("a", 120)
    await trio.sleep(20)
    with pytest.raises(RateLimited) as info:
        route(mon, reg, "a")
    assert info.value.code == -32004
    assert info.value.data == {"blueprint": "a", "retry_after_s": 100.0,
                               "cooldown_until": "2023-11-14T22:15:21.000Z"}
    assert "none of its fallbacks (b)" in info.value.message
    assert mon.status("b")["b"]["detail"] == "exit status 1: auth expired"
    await trio.sleep(100)
    assert route(mon, reg, "a") == Route("a", "a")


async def test_a_blueprint_without_fallbacks_is_never_swapped(autojump_clock: Any) -> None:
    script = Script(a=[Step(exit_code=1, stderr="flaky")])
    reg = registry("a", "b", b='fallbacks = ["a"]')
    mon = monitor(reg, script)
    await mon.check()
    # Unhealthy still runs: probes can be wrong.
    assert route(mon, reg, "a") == Route("a", "a")
    mon.note_rate_limited("a", None)
    with pytest.raises(RateLimited) as info:
        route(mon, reg, "a")  # "b" is healthy, but "a" does not name it
    assert info.value.data["retry_after_s"] == 60.0
    assert "no fallbacks" in info.value.message


async def test_missing_executable_is_refused_without_a_spawn(autojump_clock: Any,
                                                              tmp_path: Path) -> None:
    reg = registry("a", a='command = ["llmd-fake-cli", "{prompt}"]')
    script = Script()
    mon = monitor(reg, script, environ={"PATH": str(tmp_path)})
    entry = (await mon.check("a"))["a"]
    assert entry["state"] == "missing"
    assert "'llmd-fake-cli'" in entry["detail"] and str(tmp_path) in entry["detail"]
    assert entry["latency_s"] is None
    with pytest.raises(ExecutableMissing) as info:
        route(mon, reg, "a")
    assert info.value.code == -32002
    assert info.value.data == {"blueprint": "a", "executable": "llmd-fake-cli",
                               "path": str(tmp_path)}
    assert str(tmp_path) in info.value.message
    assert script.started == []
    # Installed since the probe: runs go through at once, and a probe follows.
    program = tmp_path / "llmd-fake-cli"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert route(mon, reg, "a") == Route("a", "a")
    assert (await mon.check("a"))["a"]["state"] == "healthy"


async def test_transitions_are_logged_once(autojump_clock: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="llmd.health")
    bad = Step(exit_code=1, stderr="down")
    script = Script(a=[Step(), Step(), Step(), bad, bad, bad, Step()])
    mon = monitor(registry("a", a="[blueprints.a.health]\ninterval = 60"), script)
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        await trio.sleep(6 * 60 + 30)
        nursery.cancel_scope.cancel()
    assert len(script.times("a")) == 7
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == ["health: a is healthy (was unknown): version 1.2.3",
                     "health: a is unhealthy (was healthy): exit status 1: down",
                     "health: a is healthy (was unhealthy): version 1.2.3"]


@pytest.mark.parametrize(("text", "version"), [
    ("2.0.14 (Claude Code)\n", "2.0.14"),
    ("codex-cli 0.46.0\n", "0.46.0"),
    ("gemini v0.9.0-nightly.20251001+abc.\n", "0.9.0-nightly.20251001+abc"),
    ("llm, version 0.27.1", "0.27.1"),
    ("Python 3.11.7", "3.11.7"),
    ("built on x86_64, release 10\n", None),
    ("", None),
])
def test_version_parsing(text: str, version: str | None) -> None:
    assert _version(text) == version


async def test_version_from_stderr_and_details_from_stdout(autojump_clock: Any) -> None:
    script = Script(a=[Step(stdout="", stderr="tool version 4.5.6-rc1\n")],
                    b=[Step(exit_code=7, stdout="\n\n  usage: tool [--help]\n")],
                    c=[Step(exit_code=-9, stdout="")])
    mon = monitor(registry("a", "b", "c"), script)
    result = await mon.check()
    assert result["a"]["version"] == "4.5.6-rc1"
    assert result["b"]["detail"] == "exit status 7: usage: tool [--help]"
    assert result["c"]["detail"] == "killed by signal 9"
    assert set(result["a"]) == {"state", "checked_at", "latency_s", "version", "detail",
                                "cooldown_until"}


async def test_prompt_probes_go_through_the_blueprints_command(autojump_clock: Any) -> None:
    health = '[blueprints.{}.health]\nprompt = "say pong"\nexpect = "pong"'
    script = Script(a=[Step(stdout="pong 1.0\n")], b=[Step(stdout="no idea")],
                    c=[Step(stdout="tool 3.0")])
    reg = registry("a", "b", "c", a=health.format("a"), b=health.format("b"),
                   c='[blueprints.c.health]\ncommand = ["/bin/sh", "-c", "status"]')
    mon = monitor(reg, script)
    result = await mon.check()
    argv = {name: args for _, name, args in script.started}
    assert argv == {"a": ["/bin/sh", "say pong"], "b": ["/bin/sh", "say pong"],
                    "c": ["/bin/sh", "-c", "status"]}
    assert (result["a"]["state"], result["a"]["version"]) == ("healthy", None)
    assert result["b"]["state"] == "unhealthy"
    assert result["b"]["detail"] == "the answer does not contain 'pong': no idea"
    assert result["c"]["version"] == "3.0"


async def test_set_registry_reprobes_changed_and_new_only(autojump_clock: Any) -> None:
    script = Script()
    mon = monitor(registry("a", "b", "c"), script)
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        await trio.sleep(20)
        assert len(script.started) == 3
        mon.note_rate_limited("b", 300)
        mon.set_registry(registry("a", "b", "d", b='description = "changed"'))
        assert list(mon.status()) == ["a", "b", "d"]
        assert mon.status("d")["d"]["state"] == "unknown"
        assert mon.status("b")["b"]["state"] == "cooling_down"  # the account still is
        with pytest.raises(UnknownBlueprint):
            mon.status("c")
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    assert sorted(n for t, n, _ in script.started if t > 20) == ["b", "d"]
    assert all(t <= 21 + 1 for t, n, _ in script.started if t > 20)


async def test_a_reload_cancels_the_probe_of_a_changed_blueprint(autojump_clock: Any) -> None:
    script = Script(a=[Step(seconds=100, stdout="old 1.0"), Step(stdout="new 2.0")])
    mon = monitor(registry("a"), script)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mon.run)
        waiting: list[dict[str, Any]] = []

        async def check() -> None:
            waiting.append(await mon.check("a"))

        while not script.started:
            await trio.sleep(0.5)
        nursery.start_soon(check)
        await trio.testing.wait_all_tasks_blocked()
        mon.set_registry(registry("a", a='description = "v2"'))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert script.cancelled == ["a"]
    # The waiting check did not settle for the cancelled probe's non-answer.
    assert waiting[0]["a"]["version"] == "2.0"


async def test_unknown_names_are_refused(autojump_clock: Any) -> None:
    reg = registry("a")
    mon = monitor(reg, Script())
    for call in (lambda: mon.status("zz"), lambda: route(mon, reg, "zz")):
        with pytest.raises(UnknownBlueprint) as info:
            call()
        assert info.value.code == -32001
    with pytest.raises(UnknownBlueprint):
        await mon.check("zz")
    mon.note_rate_limited("zz", 5)  # a run of a blueprint removed meanwhile: ignored
    assert mon.status() == {"a": {"state": "unknown", "checked_at": None, "latency_s": None,
                                  "version": None, "detail": None, "cooldown_until": None}}


async def test_a_bug_while_probing_is_logged_and_the_scheduler_goes_on(
        autojump_clock: Any, caplog: Any) -> None:
    script = Script(a=[Step(raises=RuntimeError("oops"))])
    mon = monitor(registry("a", a="[blueprints.a.health]\ninterval = 60"), script)
    async with trio.open_nursery() as nursery:
        await nursery.start(mon.run)
        await trio.sleep(15)
        entry = mon.status("a")["a"]
        assert entry["state"] == "unhealthy"
        assert "internal error" in entry["detail"]
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert mon.status("a")["a"]["state"] == "healthy"
