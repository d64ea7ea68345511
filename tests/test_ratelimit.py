"""Failure classification and Retry-After extraction."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmd.config import DEFAULT_RATE_LIMIT_PATTERNS, parse_registry
from llmd.parsers.ratelimit import (
    DEFAULT_PATTERNS,
    MAX_RETRY_AFTER_S,
    Verdict,
    classify,
    find_retry_after,
    last_error_line,
    verdict_from_message,
)
from tests.harness import recorded_exit

FIXTURES = Path(__file__).parent / "fixtures" / "real-clis"


def text_only(name: str) -> Verdict:
    """Classify a recording from its exit status and raw text alone (no parser)."""
    out = (FIXTURES / f"{name}.out").read_text()
    err = (FIXTURES / f"{name}.err").read_text()
    return classify(recorded_exit(name), out[-8192:], err[-8192:], DEFAULT_PATTERNS)


RATE_LIMITED = sorted(p.stem for p in FIXTURES.glob("*_429*.out"))
DOWN = sorted(p.stem for p in FIXTURES.glob("*_down*.out"))


def test_there_are_recordings() -> None:
    assert len(RATE_LIMITED) >= 8 and len(DOWN) >= 6


@pytest.mark.parametrize("name", RATE_LIMITED)
def test_default_patterns_fire_on_every_429_recording(name: str) -> None:
    verdict = text_only(name)
    assert verdict.kind == "rate_limit", verdict
    assert verdict.reason.startswith("rate limit: ") and "\n" not in verdict.reason


@pytest.mark.parametrize("name", DOWN)
def test_default_patterns_stay_quiet_on_unreachable_endpoints(name: str) -> None:
    verdict = text_only(name)
    assert verdict.kind == "failure", verdict
    assert verdict.reason.startswith("the CLI failed (")


@pytest.mark.parametrize(("name", "where"), [
    ("claude_429_r0", "out"), ("claude_429_default_stream", "out"),
    ("codex_429_r0", "out"), ("codex_429_default", "out"),
    ("gemini_429_fast", "err"), ("gemini_429_default_stream", "err"),
    ("llm_429", "err"),
])
def test_where_each_cli_shows_its_429(name: str, where: str) -> None:
    text = (FIXTURES / f"{name}.{where}").read_text()
    assert any(p.search(text) for p in DEFAULT_PATTERNS)


def test_recorded_retry_hints() -> None:
    assert text_only("llm_429").retry_after_s == 1.0  # "Please try again in 1s."


@pytest.mark.parametrize("text", [
    "request took 429ms",
    "took 429 ms",  # a timing, not a status: a bare number never counts
    "request 3f2a4290-1c2d-4e5f-a429-0123456789ab failed",
    "quota: 12 files indexed",
    "SyntaxError at line 429",
    "error at line 429",
    "wrote 429 bytes",
    '{"type":"rate_limit_event","rate_limit_info":{"status":"allowed"}}',
    "the overloaded operator+ is ambiguous",
    "port 4290 refused",
])
def test_default_patterns_do_not_fire(text: str) -> None:
    assert not [p.pattern for p in DEFAULT_PATTERNS if p.search(text)]
    assert classify(1, text, text, DEFAULT_PATTERNS).kind == "failure"


@pytest.mark.parametrize("text", [
    "Error: Error code: 429 - Rate limit reached",
    "HTTP/1.1 429 Too Many Requests",
    "Attempt 1 failed with status 429. Retrying",
    '{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}',
    '"api_error_status":429',
    "rate_limit_error",
    "You are being rate-limited",
    "rateLimitExceeded",
    "Resource has been exhausted (e.g. check quota).",
    "Quota exceeded for quota metric",
    "API Error: 529 Overloaded",
    '{"type":"overloaded_error","message":"Overloaded"}',
    "Claude AI usage limit reached|1700000000",
    "You've hit your usage limit.",
    "5-hour limit reached \u2219 resets 3pm",
    "Weekly limit reached \u2219 resets Dec 9, 10am",
])
def test_default_patterns_fire(text: str) -> None:
    assert classify(1, "", text, DEFAULT_PATTERNS).kind == "rate_limit"


def test_registry_compiles_the_defaults() -> None:
    reg = parse_registry('[blueprints.x]\ncommand = ["x", "{prompt}"]\n')
    assert [p.pattern for p in reg.rate_limit_res["x"]] == list(DEFAULT_RATE_LIMIT_PATTERNS)


def test_success_is_ok_whatever_the_text_says() -> None:
    text = "Rate limits: 429 Too Many Requests means you were rate limited. 401 Unauthorized."
    assert classify(0, text, text, DEFAULT_PATTERNS) == Verdict("ok")


def test_parser_signal_wins() -> None:
    signal = Verdict("failure", None, "API Error: 500")
    assert classify(1, "rate limit", "rate limit", DEFAULT_PATTERNS, signal) is signal
    assert classify(0, "", "", DEFAULT_PATTERNS, signal) is signal


def test_rate_limit_signal_takes_a_retry_after_from_the_text() -> None:
    signal = Verdict("rate_limit", None, "rate limit: x")
    assert classify(1, "", "Retry-After: 7", DEFAULT_PATTERNS, signal) == Verdict(
        "rate_limit", 7.0, "rate limit: x")
    with_hint = Verdict("rate_limit", 2.0, "rate limit: x")
    assert classify(1, "", "Retry-After: 7", DEFAULT_PATTERNS, with_hint) is with_hint


def test_custom_patterns_are_used() -> None:
    patterns = [re.compile(r"(?i)\bslow down\b")]
    assert classify(2, "", "please SLOW DOWN", patterns).kind == "rate_limit"
    assert classify(2, "", "429 Too Many Requests", patterns).kind == "failure"


def test_killed_child_without_exit_status() -> None:
    verdict = classify(None, "", "", DEFAULT_PATTERNS)
    assert verdict == Verdict("failure", None, "the CLI failed (did not exit by itself)")


@pytest.mark.parametrize("text", [
    "Error: unexpected status 401 Unauthorized",
    "401 Unauthorized",
    "HTTP status 403: forbidden",
    "Invalid API key · Please run /login",
    "Not logged in",
    'API Error: 401 {"type":"error","error":{"type":"authentication_error"}}',
    "Error: Incorrect API key provided: sk-...",
    "API key not valid. Please pass a valid API key.",
    "Authentication failed",
    "Please set an Auth method in your settings.json",
    "OAuth token has expired",
    "UNAUTHENTICATED",
])
def test_auth_failures(text: str) -> None:
    verdict = classify(1, "", text, DEFAULT_PATTERNS)
    assert verdict.kind == "auth", text
    assert "log in" in verdict.reason and "API key" in verdict.reason


@pytest.mark.parametrize("text", [
    "author: somebody", "line 401", "took 401 ms", "authorized users only", "authenticated ok",
    "the auth module crashed",
])
def test_not_auth(text: str) -> None:
    assert classify(1, "", text, DEFAULT_PATTERNS).kind == "failure"


def test_rate_limit_is_tested_before_auth() -> None:
    # gemini's quota message also says "switch to another /auth method"
    text = "Resource has been exhausted. Please wait, or switch to another /auth method"
    assert classify(1, "", text, DEFAULT_PATTERNS).kind == "rate_limit"


def test_failure_reason_quotes_the_telling_line() -> None:
    stderr = (FIXTURES / "gemini_down_fast.err").read_text()
    verdict = classify(1, "", stderr, DEFAULT_PATTERNS)
    assert "fetch failed" in verdict.reason and "    at " not in verdict.reason
    assert last_error_line("", "") == ""
    assert last_error_line("just output") == "just output"


def test_reasons_are_one_short_line() -> None:
    long = "x " * 1000 + "rate limit " + "y\n" * 1000
    for verdict in (classify(1, long, long, DEFAULT_PATTERNS), verdict_from_message(long),
                    verdict_from_message("z " * 1000)):
        assert "\n" not in verdict.reason and len(verdict.reason) < 300


@pytest.mark.parametrize(("message", "status", "kind"), [
    ("anything", 429, "rate_limit"), ("anything", 529, "rate_limit"),
    ("anything", 401, "auth"), ("anything", 403, "auth"),
    ("Too Many Requests", None, "rate_limit"), ("invalid api key", None, "auth"),
    ("disk full", None, "failure"), ("disk full", 500, "failure"), ("", None, "failure"),
])
def test_verdict_from_message(message: str, status: int | None, kind: str) -> None:
    verdict = verdict_from_message(message, status)
    assert verdict.kind == kind and verdict.reason


@pytest.mark.parametrize(("text", "seconds"), [
    ("Retry-After: 20", 20.0),
    ("retry-after: 20", 20.0),
    ("retry after 20s", 20.0),
    ('"retry_after_s": 3', 3.0),
    ('{"retry_after": 2.5}', 2.5),
    ("Please try again in 1.5 seconds.", 1.5),
    ("Please try again in 1s.", 1.0),
    ("retry in 500ms", 0.5),
    ("retry in 500ms.", 0.5),
    ('"retry_delay_ms":2000', 2.0),
    ('"retry_delay_ms":1077.5260681432505', 1.0775260681432505),
    ("retryDelayMs: 1500", 1.5),
    ('"retryDelay": "37s"', 37.0),
    ("Please try again in 6m0s", 360.0),
    ("retrying in 2 minutes", 120.0),
    ("Retry-After-Ms: 250", 0.25),
    ("retry after 1h", 3600.0),
    ("Retry-After: 0", 0.0),
    ("first retry in 5s, then Retry-After: 9", 9.0),  # the last one is the latest
])
def test_find_retry_after(text: str, seconds: float) -> None:
    assert find_retry_after(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", "no hint here", "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT", "retry after -5",
    "retry after 100000", "try again in 2 days", "retryDelayMs: undefined",
    "retry later", "took 429 ms",
])
def test_find_retry_after_absent_or_absurd(text: str) -> None:
    assert find_retry_after(text) is None


def test_absurd_value_does_not_hide_a_sane_one() -> None:
    assert find_retry_after("Retry-After: 5 ... retry after 99999999") == 5.0


@given(st.text())
def test_find_retry_after_never_raises(text: str) -> None:
    value = find_retry_after(text)
    assert value is None or 0.0 <= value <= MAX_RETRY_AFTER_S


@given(st.integers(min_value=0, max_value=86400))
def test_find_retry_after_reads_any_sane_header(seconds: int) -> None:
    assert find_retry_after(f"HTTP/1.1 429\r\nRetry-After: {seconds}\r\n") == seconds


@given(exit_code=st.one_of(st.none(), st.integers(-9, 255)), out=st.text(), err=st.text())
def test_classify_never_raises(exit_code: int | None, out: str, err: str) -> None:
    verdict = classify(exit_code, out, err, DEFAULT_PATTERNS)
    assert verdict.kind in ("ok", "rate_limit", "auth", "failure")
    assert (verdict.kind == "ok") == (exit_code == 0)
    assert "\n" not in verdict.reason
