"""A quota window's reset, read from a rate-limited CLI's message, sets the blueprint's
``cooldown_until`` in the real daemon (llmd.jobs.manager with llmd.parsers.quota)."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import trio

from llmd.parsers.quota import reset_time
from llmd.timestamps import rfc3339
from tests.harness import DaemonFactory, llmc, registry_toml


async def test_a_reset_time_in_the_message_sets_the_cooldown(daemon_factory: DaemonFactory,
                                                             fake_bin: Path) -> None:
    d = await daemon_factory(registry_toml(fake_bin, {
        "sub": {"command": ["@fakecli", "echo-fail"], "prompt": "stdin",
                "rate_limit_patterns": ["limit reached"],
                "retry": {"max_attempts": 1}}}), env={"TZ": "Asia/Tokyo"})
    message = "5-hour limit reached \u2219 resets 3pm"
    client = await d.connect()
    with trio.fail_after(60):
        before = _dt.datetime.now(ZoneInfo("Asia/Tokyo"))
        reply = await client.call("llm.run", {"blueprint": "sub", "prompt": message})
        after = _dt.datetime.now(ZoneInfo("Asia/Tokyo"))
        status = await client.call("health.status", {"blueprint": "sub"}, id=2)
        shown = await llmc(d, "status", "sub", env={"TZ": "Asia/Tokyo"})
    assert reply["error"]["code"] == -32004, reply
    entry = status["result"]["blueprints"]["sub"]
    assert entry["state"] == "cooling_down"
    # The next 3 pm in Tokyo, the daemon's local time (not the default 60 s cooldown).
    expected = {rfc3339(when.astimezone(_dt.timezone.utc))
                for when in (reset_time(message, before), reset_time(message, after))
                if when is not None}
    assert entry["cooldown_until"][:16] in {e[:16] for e in expected}, (entry, expected)
    out = shown.stdout.decode()
    assert re.search(r"cooling down until (\d{4}-\d\d-\d\d )?15:00 \((\d+h \d+m|\d+m \d+s)\)",
                     out), out
