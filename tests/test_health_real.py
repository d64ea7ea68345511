"""The health monitor against real executables: each state from a real process.

No virtual clock here; every test is bounded by ``trio.fail_after`` and synchronises
on ``check()`` (or on the spawn itself), never on a sleep.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.config import Registry, parse_registry
from llmd.errors import ExecutableMissing, RateLimited
from llmd.health.monitor import HealthMonitor
from llmd.process.supervisor import Attempt
from llmd.routing import route
from tests.conftest import assert_all_die

SCRIPTS = {
    "goodcli": 'print("goodcli version 3.4.5 (test build)")\n',
    "badcli": 'import sys\nsys.stderr.write("\\n  error: not logged in\\nsee --help\\n")\n'
              "sys.exit(3)\n",
    "hangcli": """import os, time
pids = [os.getpid()]
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
pids.append(child)
with open(PIDFILE + ".tmp", "w") as f:
    f.write(" ".join(map(str, pids)))
os.rename(PIDFILE + ".tmp", PIDFILE)
time.sleep(60)
""",
}


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for name, body in SCRIPTS.items():
        script = path / name
        script.write_text(f"#!{sys.executable} -S\nPIDFILE = {json.dumps(str(tmp_path / 'pids'))}\n"
                          + body)
        script.chmod(0o755)
    broken = path / "brokencli"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    return path


def registry(**commands: str) -> Registry:
    text = ""
    for name, program in commands.items():
        text += (f'[blueprints.{name}]\ncommand = ["{program}", "{{prompt}}"]\n'
                 f"[blueprints.{name}.health]\ntimeout = 1.0\n")
    return parse_registry(text)


async def test_each_state_from_a_real_executable(bindir: Path, tmp_path: Path) -> None:
    reg = registry(good="goodcli", bad="badcli", gone="llmd-test-not-installed",
                   hang="hangcli", broken="brokencli")
    mon = HealthMonitor(reg, {"PATH": str(bindir)})
    with trio.fail_after(10):
        assert {e["state"] for e in mon.status().values()} == {"unknown"}
        started = time.monotonic()
        result = await mon.check()
        elapsed = time.monotonic() - started
    good, bad, gone = result["good"], result["bad"], result["gone"]
    assert (good["state"], good["version"], good["detail"]) == ("healthy", "3.4.5", None)
    assert 0 < good["latency_s"] < 5
    assert good["checked_at"].endswith("Z")
    assert (bad["state"], bad["detail"]) == ("unhealthy", "exit status 3: error: not logged in")
    assert gone["state"] == "missing"
    assert "'llmd-test-not-installed'" in gone["detail"] and str(bindir) in gone["detail"]
    assert result["broken"]["state"] == "missing"
    assert result["broken"]["detail"].startswith(f"cannot run {bindir / 'brokencli'}")
    hang = result["hang"]
    assert hang["state"] == "unhealthy"
    assert hang["detail"] == "timed out after 1 s"
    # Probes run concurrently: the whole check took about the longest one.
    assert elapsed < 4
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    # SIGKILL has been sent to the whole group; the kernel takes a moment to deliver it.
    await assert_all_die(pids)


async def test_rate_limited_blueprint_cools_down(bindir: Path) -> None:
    reg = registry(good="goodcli")
    mon = HealthMonitor(reg, {"PATH": str(bindir)})
    with trio.fail_after(10):
        assert (await mon.check("good"))["good"]["state"] == "healthy"
        mon.note_rate_limited("good", 30.0)
        entry = mon.status("good")["good"]
        assert entry["state"] == "cooling_down"
        assert entry["cooldown_until"] is not None and entry["version"] == "3.4.5"
        with pytest.raises(RateLimited) as info:
            route(mon, reg, "good")
        assert 29 < info.value.data["retry_after_s"] <= 30
        # A probe meanwhile does not end the cooldown.
        assert (await mon.check("good"))["good"]["state"] == "cooling_down"


async def test_missing_is_refused_by_route(bindir: Path) -> None:
    reg = registry(gone="llmd-test-not-installed")
    mon = HealthMonitor(reg, {"PATH": str(bindir)})
    with trio.fail_after(10):
        await mon.check()
    with pytest.raises(ExecutableMissing) as info:
        route(mon, reg, "gone")
    assert info.value.code == -32002


async def test_status_answers_at_once_while_a_probe_hangs(bindir: Path) -> None:
    spawned = trio.Event()

    def factory(*args: Any, **kwargs: Any) -> Attempt:
        return Attempt(*args, **{**kwargs, "on_spawn": lambda _pid: spawned.set()})

    mon = HealthMonitor(registry(hang="hangcli", good="goodcli"), {"PATH": str(bindir)},
                        attempt_factory=factory)
    with trio.fail_after(10):
        assert (await mon.check("good"))["good"]["state"] == "healthy"
        spawned = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mon.check, "hang")
            await spawned.wait()
            started = time.perf_counter()
            answer = mon.status()
            took = time.perf_counter() - started
            assert answer["hang"]["state"] == "unknown"
            assert answer["good"]["state"] == "healthy"
            assert took < 0.05
        assert mon.status("hang")["hang"]["state"] == "unhealthy"
