"""Health, cooldowns and fallbacks through the real daemon and client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, llmc, registry_toml

pytestmark = pytest.mark.usefixtures("fake_bin")


def registry(fake_bin: Path, short_tmp: Path) -> str:
    hang = short_tmp / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 1000\n")
    hang.chmod(0o755)
    fail = short_tmp / "fail.sh"
    fail.write_text("#!/bin/sh\necho 'error: not logged in' >&2\nexit 3\n")
    fail.chmod(0o755)
    count = short_tmp / "rl.count"
    return registry_toml(fake_bin, {
        "good": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "bad": {"command": [str(fail)], "prompt": "stdin"},
        "absent": {"command": ["not-installed-cli-xyz"], "prompt": "stdin"},
        "hangs": {"command": [str(hang)], "prompt": "stdin"},
        "limited": {"command": ["@fakecli", "ratelimit", "1000", str(count)],
                    "prompt": "stdin", "fallbacks": ["bad", "good"],
                    "retry": {"max_attempts": 1}},
        "alone": {"command": ["@fakecli", "ratelimit", "1000", str(count)],
                  "prompt": "stdin", "retry": {"max_attempts": 1}},
    }, extra="""
[blueprints.hangs.health]
timeout = 1.0
""")


async def test_the_five_states(daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin, short_tmp))
    client = await d.connect()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            checked: dict[str, Any] = {}

            async def check_all() -> None:
                reply = await client.call("health.check", id="check")
                checked.update(reply["result"]["blueprints"])

            nursery.start_soon(check_all)
            # While the hanging probe runs, the cache answers at once.
            other = await d.connect()
            reply = await other.call("health.status")
            assert set(reply["result"]["blueprints"]) >= {"good", "bad", "absent", "hangs"}
    assert checked["good"]["state"] == "healthy"
    assert checked["good"]["version"] == "1.2.3"
    assert checked["bad"]["state"] == "unhealthy"
    assert "not logged in" in checked["bad"]["detail"]
    assert checked["absent"]["state"] == "missing"
    assert "not-installed-cli-xyz" in checked["absent"]["detail"]
    assert checked["hangs"]["state"] == "unhealthy"
    # A run on a missing blueprint fails at once, without a spawn.
    with trio.fail_after(10):
        reply = await client.call("llm.run", {"blueprint": "absent", "prompt": "x"}, id=2)
    assert reply["error"]["code"] == -32002
    proc = await llmc(d, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["blueprints"]["good"]["state"] == "healthy"


async def test_rate_limit_cools_down_and_falls_back(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin, short_tmp))
    client = await d.connect()
    with trio.fail_after(30):
        await client.call("health.check", id=0)
        # Out of retries on a rate limit, the run itself moves on to a usable fallback.
        reply = await client.call("llm.run", {"blueprint": "limited", "prompt": "x"}, id=1)
        assert (reply["result"]["blueprint"], reply["result"]["text"]) == ("good", "x")
        status = await client.call("health.status", {"blueprint": "limited"}, id=2)
        entry = status["result"]["blueprints"]["limited"]
        assert entry["state"] == "cooling_down"
        assert entry["cooldown_until"]
        # "bad" is unhealthy, so the run moves to "good".
        reply = await client.call("llm.run", {"blueprint": "limited", "prompt": "moved"}, id=3)
        result = reply["result"]
        assert result["blueprint"] == "good"
        assert result["requested_blueprint"] == "limited"
        assert "rate limited" in result["fallback_reason"]
        assert result["text"] == "moved"
        # A session cannot move to another CLI.
        reply = await client.call("llm.run", {"blueprint": "limited", "prompt": "x",
                                              "session": "s-1"}, id=6)
        assert reply["error"]["code"] == -32004
        assert "cannot move" in reply["error"]["message"]
        # A blueprint without fallbacks is never swapped.
        reply = await client.call("llm.run", {"blueprint": "alone", "prompt": "x"}, id=4)
        assert reply["error"]["code"] == -32004
        reply = await client.call("llm.run", {"blueprint": "alone", "prompt": "x"}, id=5)
        assert reply["error"]["code"] == -32004
        assert reply["error"]["data"]["retry_after_s"] > 0
        assert "no fallbacks" in reply["error"]["message"]
