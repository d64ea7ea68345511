"""Budgets (llmd.budget, llmd.routing): days and months turning on trio's virtual clock,
and -32009 and the budget fallback through the real daemon."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.budget import BudgetBook
from llmd.config import parse_registry
from tests.harness import DaemonFactory, registry_toml

FIXTURES = Path(__file__).parent / "fixtures" / "real-clis"
# Local time of the book in these tests: a fixed zone east of UTC, so that local midnight
# and UTC midnight differ.
ZONE = _dt.timezone(_dt.timedelta(hours=2))


def book(toml: str, start: _dt.datetime) -> BudgetBook:
    """A book whose clock is ``start`` plus trio's (virtual) time."""
    registry = parse_registry('[blueprints.a]\ncommand = ["a"]\nprompt = "stdin"\n'
                              '[blueprints.b]\ncommand = ["b"]\nprompt = "stdin"\n' + toml)
    return BudgetBook(registry, lambda: start + _dt.timedelta(seconds=trio.current_time()))


async def test_a_day_limit_resets_at_local_midnight(autojump_clock: trio.abc.Clock) -> None:
    start = _dt.datetime(2030, 3, 1, 23, 0, tzinfo=ZONE)
    ledger = book("[blueprints.a.budget]\ndaily_usd = 1.0\ndaily_runs = 3\n", start)
    ledger.run_ended("a", 0.6)
    assert ledger.exhausted("a") is None
    ledger.run_ended("a", 0.5)
    over = ledger.exhausted("a")
    assert over is not None and over.budget == "daily_usd"
    # Local midnight of 2030-03-02 is 22:00 UTC on the 1st.
    assert over.data() == {"blueprint": "a", "budget": "daily_usd", "spent_usd": 1.1,
                           "limit": 1.0, "resets_at": "2030-03-01T22:00:00.000Z"}
    assert ledger.exhausted("b") is None  # another blueprint's spending is its own
    await trio.sleep(59 * 60)  # 23:59
    assert ledger.exhausted("a") is not None
    await trio.sleep(61)  # 00:00:01 the next day
    assert ledger.exhausted("a") is None
    for _ in range(3):
        ledger.run_ended("a", None)  # no known cost: runs count, dollars do not
    over = ledger.exhausted("a")
    assert over is not None and over.data()["runs"] == 3 and over.budget == "daily_runs"


async def test_a_month_limit_spans_days_and_resets_on_the_first(
        autojump_clock: trio.abc.Clock) -> None:
    start = _dt.datetime(2030, 2, 27, 12, 0, tzinfo=ZONE)  # not a leap year
    ledger = book("[budget]\nmonthly_usd = 10.0\n", start)
    for _ in range(2):
        ledger.run_ended("a", 3.0)
        ledger.run_ended("b", 2.0)
        await trio.sleep(24 * 3600)  # the 28th, then March 1st
    # Five dollars of them, on the 27th and 28th, are February's; none is March's.
    assert ledger.exhausted(None) is None
    ledger.seed([("2030-03-01", "a", 1, 9.5), ("2030-02-10", "a", 1, 100.0)])
    ledger.run_ended("b", 0.5)
    over = ledger.exhausted(None)
    assert over is not None and over.budget == "monthly_usd"
    assert over.data()["spent_usd"] == 10.0
    assert over.resets_at == "2030-03-31T22:00:00.000Z"
    await trio.sleep(31 * 24 * 3600)
    assert ledger.exhausted(None) is None


async def test_the_80_percent_warning_is_logged_once_per_period(
        autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "llmd.budget")
    start = _dt.datetime(2030, 3, 1, 8, 0, tzinfo=ZONE)
    ledger = book("[blueprints.a.budget]\ndaily_usd = 5.0\n", start)
    ledger.run_ended("a", 3.9)
    assert not caplog.records
    ledger.run_ended("a", 0.2)
    ledger.run_ended("a", 0.2)
    assert [r.getMessage() for r in caplog.records] == [
        "budget daily_usd of a: 82% used ($4.10 of $5 today)"]
    await trio.sleep(24 * 3600)
    ledger.run_ended("a", 4.5)
    assert len(caplog.records) == 2
    status = ledger.status()
    assert status == [{"blueprint": "a", "budget": "daily_usd", "spent_usd": 4.5, "limit": 5.0,
                       "resets_at": "2030-03-02T22:00:00.000Z", "spent": 4.5,
                       "text": "$4.50 of $5 today", "warning": True, "exhausted": False}]


def priced(fake_bin: Path, **budgets: str) -> str:
    """Blueprints that answer with claude's recorded stream (cost $0.0002 a run)."""
    claude = {"command": ["@fakecli", "stdin"], "prompt": "stdin",
              "parser": "claude-stream-json"}
    return registry_toml(fake_bin, {
        "dear": {**claude, "fallbacks": ["cheap"]},
        "cheap": claude,
        "plain": {"command": ["@fakecli", "text", "hello"], "prompt": "stdin"},
    }, extra="".join(budgets.values()))


async def test_budget_exhausted_through_the_daemon(daemon_factory: DaemonFactory,
                                                   fake_bin: Path) -> None:
    stream = (FIXTURES / "claude_stream.out").read_text()
    d = await daemon_factory(priced(
        fake_bin, dear="[blueprints.dear.budget]\ndaily_usd = 0.0003\nfallback = false\n"))
    client = await d.connect()
    with trio.fail_after(60):
        for n in range(2):
            reply = await client.call("llm.run", {"blueprint": "dear", "prompt": stream}, id=n)
            assert reply["result"]["cost_usd"] == 0.0002
            assert reply["result"]["cost_source"] == "cli"
        refused = await client.call("llm.run", {"blueprint": "dear", "prompt": stream}, id=5)
        status = await client.call("budget.status", None, id=6)
        other = await client.call("llm.run", {"blueprint": "cheap", "prompt": stream}, id=7)
    error = refused["error"]
    assert error["code"] == -32009, refused
    data = error["data"]
    assert data["budget"] == "daily_usd" and data["blueprint"] == "dear"
    assert data["spent_usd"] == 0.0004 and data["limit"] == 0.0003
    assert data["resets_at"].endswith("Z")
    [use] = status["result"]["budgets"]
    assert use["exhausted"] and use["text"] == "$0.00 of $0.0003 today"
    assert other["result"]["state"] == "succeeded"


async def test_budget_fallback_through_the_daemon(daemon_factory: DaemonFactory,
                                                  fake_bin: Path) -> None:
    stream = (FIXTURES / "claude_stream.out").read_text()
    d = await daemon_factory(priced(
        fake_bin, dear="[blueprints.dear.budget]\ndaily_runs = 1\n",
        all="[budget]\ndaily_runs = 3\n"))
    client = await d.connect()
    results: list[dict[str, Any]] = []
    with trio.fail_after(60):
        for n in range(3):
            reply = await client.call("llm.run", {"blueprint": "dear", "prompt": stream}, id=n)
            results.append(reply["result"])
        pinned = await client.call("llm.run", {"blueprint": "dear", "prompt": stream,
                                               "model": "m"}, id=9)
        over_all = await client.call("llm.run", {"blueprint": "plain", "prompt": ""}, id=10)
    assert [r["blueprint"] for r in results] == ["dear", "cheap", "cheap"]
    assert results[0]["fallback_reason"] is None
    assert [r["fallback_reason"] for r in results[1:]] == ["budget", "budget"]
    assert results[1]["requested_blueprint"] == "dear"
    # The three runs spent [budget]'s three: nothing starts any more, fallback or not.
    assert pinned["error"]["code"] == -32009
    assert over_all["error"]["code"] == -32009
    assert over_all["error"]["data"]["blueprint"] is None
    assert over_all["error"]["data"]["runs"] == 3


async def test_a_job_cancelled_in_the_queue_is_no_run_before_or_after_a_restart(
        daemon_factory: DaemonFactory, fake_bin: Path, short_tmp: Path) -> None:
    toml = registry_toml(fake_bin, {
        "slow": {"command": ["@fakecli", "sleep", "60"], "prompt": "stdin",
                 "max_concurrency": 1},
    }, extra="[budget]\ndaily_runs = 10\n")
    state = {"XDG_STATE_HOME": str(short_tmp / "state")}
    first = await daemon_factory(toml, env=state)
    client = await first.connect()
    with trio.fail_after(60):
        jobs = [(await client.call("llm.run", {"blueprint": "slow", "prompt": "x",
                                               "detach": True}, id=n))["result"]["job"]
                for n in range(2)]
        for job in reversed(jobs):  # the queued one first, then the one running
            await client.call("llm.cancel", {"job": job})
            record = await client.call("jobs.get", {"job": job, "wait": True})
            assert record["result"]["state"] == "cancelled"
        assert record["result"]["started_at"] is not None
        before = await client.call("budget.status")
    assert before["result"]["budgets"][0]["runs"] == 1
    assert await first.stop() == 0
    second = await daemon_factory(toml, env=state)
    client = await second.connect()
    with trio.fail_after(60):
        after = await client.call("budget.status")
        used = await client.call("usage.summary")
    assert after["result"]["budgets"][0]["runs"] == 1
    assert used["result"]["total"]["runs"] == 1
