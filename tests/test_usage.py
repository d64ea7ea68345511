"""The usage ledger (llmd.jobs.usage, llmd.jobs.ledger, the store's ledger tables): sums
checked against hand-computed figures from real CLIs' recorded output, costs by source,
and a ledger that outlives pruned records."""

from __future__ import annotations

import datetime as _dt
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.config import Price
from llmd.errors import InvalidParams
from llmd.jobs import ledger, usage
from llmd.jobs.records import RunResult
from llmd.jobs.store import JobRow, JobStore
from llmd.parsers import make_parser
from llmd.timestamps import rfc3339

FIXTURES = Path(__file__).parent / "fixtures" / "real-clis"
PRICES = {"gemini-2.5-pro": Price(input_per_mtok=1.25, output_per_mtok=10.0)}


def parsed(parser: str, fixture: str) -> tuple[dict[str, int] | None, float | None]:
    p = make_parser(parser)
    p.feed((FIXTURES / fixture).read_text())
    _, result = p.finish()
    return result.usage, result.cost_usd


def finished(job: str, blueprint: str, at: str, *, model: str | None = None,
             cwd: str | None = None, tokens: dict[str, int] | None = None,
             cli_cost: float | None = None, state: str = "succeeded",
             duration: float = 2.0) -> JobRow:
    cost, source = usage.run_cost(cli_cost, tokens, model, PRICES)
    result = None
    error = None
    if state == "succeeded":
        result = RunResult(job=job, blueprint=blueprint, state="succeeded", text="t",
                           output="t", stderr="", exit_code=0, attempts=1, duration_s=duration,
                           usage=tokens, cost_usd=cost, cost_source=source)
    else:
        error = {"code": -32005, "message": "failed", "data": {"duration_s": duration}}
    return JobRow(job=job, blueprint=blueprint, state=state,  # type: ignore[arg-type]
                  created_at=at, started_at=at, finished_at=at, attempts=1,
                  request={"blueprint": blueprint, "prompt": "p", "cwd": cwd},
                  result=result, error=error, model=model)


def test_cost_sources() -> None:
    claude_tokens, claude_cost = parsed("claude-stream-json", "claude_stream.out")
    assert claude_cost == 0.0002
    assert usage.run_cost(claude_cost, claude_tokens, None, PRICES) == (0.0002, "cli")
    codex_tokens, codex_cost = parsed("codex-jsonl", "codex_json.out")
    assert codex_cost is None and codex_tokens is not None
    assert usage.run_cost(None, codex_tokens, "gpt-5", PRICES) == (None, None)
    gemini_tokens, _ = parsed("gemini-stream-json", "gemini_stream.out")
    # 20 input and 10 output tokens: (20 * 1.25 + 10 * 10) / 1e6
    assert usage.run_cost(None, gemini_tokens, "gemini-2.5-pro", PRICES) == (0.000125,
                                                                            "estimate")
    assert usage.run_cost(None, None, "gemini-2.5-pro", PRICES) == (None, None)


async def open_store(path: Path, **kw: Any) -> JobStore:
    return await JobStore.open(path, write_behind_delay=0, **kw)


async def test_ledger_sums(tmp_path: Path) -> None:
    claude_tokens, claude_cost = parsed("claude-stream-json", "claude_stream.out")
    codex_tokens, _ = parsed("codex-jsonl", "codex_json.out")
    gemini_tokens, _ = parsed("gemini-stream-json", "gemini_stream.out")
    rows = [
        finished("j1", "claude", "2030-03-01T10:00:00.000Z", tokens=claude_tokens,
                 cli_cost=claude_cost, cwd="/p/a"),
        finished("j2", "claude", "2030-03-01T11:00:00.000Z", tokens=claude_tokens,
                 cli_cost=claude_cost, cwd="/p/b"),
        finished("j3", "codex", "2030-03-01T12:00:00.000Z", tokens=codex_tokens, cwd="/p/a"),
        finished("j4", "gemini", "2030-03-02T12:00:00.000Z", tokens=gemini_tokens,
                 model="gemini-2.5-pro", cwd="/p/a"),
        finished("j5", "codex", "2030-03-02T13:00:00.000Z", state="failed", duration=1.5),
    ]
    with trio.fail_after(30):
        async with await open_store(tmp_path / "jobs.db") as store:
            for row in rows:
                assert await store.save_final(row)
            whole = await ledger.summary(store, None, None, ("blueprint",))
            by_cwd = await ledger.summary(store, None, None, ("cwd",))
            by_model = await ledger.summary(store, None, None, ("model",))
            finest = await ledger.summary(store, None, None, ("blueprint", "model", "cwd"))
            first_day = await ledger.summary(store, "2030-03-01T00:00:00Z",
                                             "2030-03-01T23:59:59Z", ())
    groups = {g["blueprint"]: g for g in whole["groups"]}
    assert groups["claude"] == {"blueprint": "claude", "runs": 2, "succeeded": 2, "failed": 0,
                                "input_tokens": 20, "output_tokens": 12, "cost_usd": 0.0004,
                                "duration_s": 4.0}
    assert groups["codex"] == {"blueprint": "codex", "runs": 2, "succeeded": 1, "failed": 1,
                               "input_tokens": 10, "output_tokens": 6, "cost_usd": None,
                               "duration_s": 3.5}
    assert groups["gemini"]["cost_usd"] == 0.000125
    assert whole["total"] == {"runs": 5, "succeeded": 4, "failed": 1, "input_tokens": 50,
                              "output_tokens": 28, "cost_usd": 0.000525, "duration_s": 9.5}
    assert {g["cwd"]: g["runs"] for g in by_cwd["groups"]} == {"/p/a": 3, "/p/b": 1, None: 1}
    # Every grain of the day sums adds up to the same.
    assert by_cwd["total"] == by_model["total"] == finest["total"] == whole["total"]
    assert {g["model"]: g["runs"] for g in by_model["groups"]} == {None: 4,
                                                                   "gemini-2.5-pro": 1}
    assert len(finest["groups"]) == 5
    assert first_day["total"]["runs"] == 3
    assert first_day["groups"] == [{**first_day["total"]}]


async def test_pruned_records_leave_their_days(tmp_path: Path) -> None:
    old = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=40)
    at = rfc3339(old)
    day = usage.local_day(at)
    tokens = {"input_tokens": 100, "output_tokens": 50}
    with trio.fail_after(30):
        async with await open_store(tmp_path / "jobs.db", max_age_days=30) as store:
            for n in range(3):
                assert await store.save_final(finished(f"o{n}", "claude", at, tokens=tokens,
                                                       cli_cost=0.5, model="m"))
            assert await store.save_final(finished("o3", "claude", at, tokens=tokens,
                                                   model="m"))
            before = await ledger.summary(store, None, None, ("day", "blueprint", "model"))
            assert await store.prune() == 4
            assert await store.get("o0") is None
            after = await ledger.summary(store, None, None, ("day", "blueprint", "model"))
            # Pruned twice over: a second fold into the same day adds to it.
            assert await store.save_final(finished("o4", "claude", at, model="m"))
            assert await store.prune() == 1
            again = await ledger.summary(store, day, day, ("day",))
    assert after == before
    assert after["groups"][0]["day"] == day
    assert after["total"]["runs"] == 4 and after["total"]["cost_usd"] == 1.5
    assert again["total"]["runs"] == 5 and again["total"]["input_tokens"] == 400
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone() == (0,)
    finally:
        conn.close()


async def test_bad_window_is_invalid_params(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with await open_store(tmp_path / "jobs.db") as store:
            with pytest.raises(InvalidParams):
                await ledger.summary(store, "yesterday", None, ())


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Paris's (UTC+1 in winter) for the test."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_window_is_whole_days_and_the_parts_at_its_edges(paris: None) -> None:
    assert ledger.window(None, None) == (("", "~"), [])
    # From 11:00 Paris on March 1st to the end of March 3rd: the 2nd and 3rd whole, the
    # rest of the 1st from the entries.
    assert ledger.window("2030-03-01T10:00:00Z", "2030-03-03") == (
        ("2030-03-02", "2030-03-03"),
        [("2030-03-01T10:00:00.000Z", "2030-03-01T23:00:00.000Z")])
    # Local days from local midnight: no part of a day.
    assert ledger.window("2030-03-01", "2030-03-01") == (("2030-03-01", "2030-03-01"), [])
    # Within one day: the entries alone.
    assert ledger.window("2030-03-01T10:00:00Z", "2030-03-01T12:00:00Z") == (
        None, [("2030-03-01T10:00:00.000Z", "2030-03-01T12:00:00.000Z")])
    # Across a change to summer time (March 31st 2030): that day is 23 hours long.
    assert ledger.window("2030-03-31T12:00:00+02:00", None) == (
        ("2030-04-01", "~"), [("2030-03-31T10:00:00.000Z", "2030-03-31T22:00:00.000Z")])


async def test_edges_and_whole_days_through_the_store(tmp_path: Path, paris: None) -> None:
    rows = [finished("e1", "a", "2030-03-01T09:00:00.000Z"),   # before the window
            finished("e2", "a", "2030-03-01T12:00:00.000Z"),   # in its first part-day
            finished("e3", "a", "2030-03-02T12:00:00.000Z"),   # a whole day
            finished("e4", "a", "2030-03-04T00:30:00.000Z")]   # after it (01:30 Paris)
    with trio.fail_after(30):
        async with await open_store(tmp_path / "jobs.db") as store:
            for row in rows:
                assert await store.save_final(row)
            assert await store.save_final(rows[1])  # written again: counted once
            got = await ledger.summary(store, "2030-03-01T10:00:00Z", "2030-03-03", ("day",))
    assert got["total"]["runs"] == 2
    assert [(g["day"], g["runs"]) for g in got["groups"]] == [("2030-03-01", 1),
                                                              ("2030-03-02", 1)]
