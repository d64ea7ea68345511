"""The quota-window parser (llmd.parsers.quota): a table of real messages, collected from
the CLIs' recordings and their pinned sources, and properties over generated ones."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmd.parsers.quota import MAX_AHEAD, reset_time, seconds_until_reset

UTC = _dt.timezone.utc
PARIS = ZoneInfo("Europe/Paris")
# "Now" in the table: 10:30 UTC on a winter day, local time UTC+1 (as Paris then).
NOW = _dt.datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
LOCAL = NOW.astimezone(_dt.timezone(_dt.timedelta(hours=1)))


def utc(day: int, hour: int, minute: int = 0, second: float = 0) -> _dt.datetime:
    return _dt.datetime(2026, 12, day, hour, minute, tzinfo=UTC) + _dt.timedelta(
        seconds=second)


TABLE: list[tuple[str, str, _dt.datetime | None]] = [
    # claude: the subscription window, in its own words and as its stream's rate-limit event.
    ("claude", "5-hour limit reached \u2219 resets 3pm", utc(6, 14)),
    ("claude", "You've hit your limit \u00b7 resets 3pm (Europe/Paris)", utc(6, 14)),
    ("claude", "Claude AI usage limit reached|1796571000", utc(6, 15, 30)),
    ("claude", '{"type":"rate_limit_event","rate_limit_info":{"status":"rejected",'
               '"resetsAt":1796571000,"rateLimitType":"five_hour"}}', utc(6, 15, 30)),
    ("claude", "anthropic-ratelimit-unified-reset: 1796571000", utc(6, 15, 30)),
    ("claude", "Limit reached \u00b7 resets Dec 8 at 9am (Europe/Paris)", utc(8, 8)),
    # codex: the usage limit, in its formats (%-I:%M %p, %b %-d %-I:%M %p, ..., %Y ...).
    ("codex", "You've hit your usage limit. Upgrade to Pro "
              "(https://chatgpt.com/explore/pro), or try again at 3:05 PM.", utc(6, 14, 5)),
    ("codex", "You've hit your usage limit. Try again at Dec 7 3:05 PM.", utc(7, 14, 5)),
    ("codex", "You've hit your usage limit. Try again at Dec 7, 2026 3:05 PM.", utc(7, 14, 5)),
    ("codex", '{"type":"error","error":{"type":"usage_limit_reached","resets_at":1796571000,'
              '"plan_type":"plus"}}', utc(6, 15, 30)),
    ("codex", '{"type":"usage_limit_reached","resets_in_seconds":15120}', utc(6, 14, 42)),
    ("codex", '"primary_window":{"used_percent":100,"limit_window_seconds":18000,'
              '"reset_after_seconds":600}', utc(6, 10, 40)),
    # gemini: its quota dialog (Intl "h:mm AM zone") and Google's API errors.
    ("gemini", "Usage limit reached for gemini-2.5-pro.\nAccess resets at 3:05 PM UTC.",
     utc(6, 15, 5)),
    ("gemini", "Access resets at 7:05 AM PST.", utc(6, 15, 5)),
    ("gemini", "Quota exceeded for quota metric 'Generate Content API requests per minute'. "
               "Please retry in 25.6s.", utc(6, 10, 30, 25.6)),
    ("gemini", '"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", '
               '"retryDelay": "41s"}]', utc(6, 10, 30, 41)),
    # openai and llm: the API's own words (tests/fixtures/real-clis/openai_429*.err).
    ("openai", "Error: Error code: 429 - Rate limit reached for requests. "
               "Please try again in 1s.", utc(6, 10, 30, 1)),
    ("openai", "Rate limit reached for gpt-4o on tokens per min. Please try again in 6m0s.",
     utc(6, 10, 36)),
    ("openai", "Please try again in 4h 12m.", utc(6, 14, 42)),
    ("openai", "try again in 2 hours, 5 minutes and 30 seconds", utc(6, 12, 35, 30)),
    # HTTP
    ("http", "HTTP/1.1 429 Too Many Requests\nRetry-After: 120\n", utc(6, 10, 32)),
    ("http", "Retry-After: Sun, 06 Dec 2026 11:00:00 GMT", utc(6, 11)),
    ("text", "resets at 15:00 (Europe/Paris)", utc(6, 14)),
    ("text", "resets at 15:00", utc(6, 14)),  # local time
    ("text", "try again at 9:00", utc(7, 8)),  # already past today: tomorrow
    ("text", "resets at 2026-12-06T18:00:00Z", utc(6, 18)),
    ("text", "resets at 16:00 GMT+2", utc(6, 14)),
    # Ignored: no time, a bare number, past, too far ahead, nonsense.
    ("gemini", "Resource has been exhausted (e.g. check quota).", None),
    ("text", "resets 3", None),
    ("text", "rate limited, try again later", None),
    ("text", "resets at 2026-12-01T00:00:00Z", None),
    ("text", "try again in 30 days", None),
    ("codex", "Try again at Feb 30 3:05 PM.", None),
    ("text", "retry at 25:99", None),
]


@pytest.mark.parametrize(("cli", "message", "expected"), TABLE,
                         ids=[f"{c}-{n}" for n, (c, _, _) in enumerate(TABLE)])
def test_real_messages(cli: str, message: str, expected: _dt.datetime | None) -> None:
    assert reset_time(message, LOCAL) == expected


def test_a_structured_field_beats_a_sentence() -> None:
    text = 'resets 3pm {"resets_in_seconds": 60}'
    assert reset_time(text, LOCAL) == utc(6, 10, 31)


ZONES = st.sampled_from([UTC, PARIS, ZoneInfo("America/Los_Angeles"), ZoneInfo("Asia/Tokyo"),
                         _dt.timezone(_dt.timedelta(hours=-3, minutes=-30))])
MOMENTS = st.datetimes(min_value=_dt.datetime(2000, 1, 1), max_value=_dt.datetime(2090, 1, 1),
                       timezones=ZONES)


@given(st.text(max_size=300), MOMENTS)
def test_any_text_gets_an_answer_within_the_window(text: str, now: _dt.datetime) -> None:
    when = reset_time(text, now)
    assert when is None or now < when <= now + MAX_AHEAD


@given(st.integers(0, 6), st.integers(0, 23), st.integers(0, 59), st.integers(1, 59), MOMENTS)
def test_relative_durations_are_exact(days: int, hours: int, minutes: int, seconds: int,
                                      now: _dt.datetime) -> None:
    text = f"Please try again in {days}d {hours}h {minutes}m {seconds}s."
    expected = _dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    got = seconds_until_reset(text, now)
    if expected <= MAX_AHEAD:
        assert got == expected.total_seconds()
    else:
        assert got is None


@given(st.integers(1, 12), st.integers(0, 59), st.booleans(), MOMENTS,
       st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Kolkata", "UTC"]))
def test_a_time_of_day_is_the_next_one_in_its_zone(hour: int, minute: int, pm: bool,
                                                   now: _dt.datetime, zone: str) -> None:
    text = f"resets at {hour}:{minute:02d} {'PM' if pm else 'AM'} ({zone})"
    when = reset_time(text, now)
    assert when is not None
    there = when.astimezone(ZoneInfo(zone))
    assert (there.hour, there.minute) == (hour % 12 + (12 if pm else 0), minute) or \
        _dt.timedelta(0) < there.utcoffset() - now.astimezone(ZoneInfo(zone)).utcoffset()  # type: ignore[operator]
    # The next such moment: after now, within a day (and an hour, across a DST change).
    assert now < when <= now + _dt.timedelta(hours=25)


RECORDED = Path(__file__).parent / "fixtures" / "real-clis"


@pytest.mark.parametrize(("recording", "seconds"), [
    ("llm_429.err", 1.0),                       # "Please try again in 1s."
    ("gemini_429_fast.err", None),              # "Please wait and try again later."
    ("gemini_429_default_stream.out", None),
    ("claude_429_r0.out", None),                # the mock's 429 carries no reset time
    ("codex_429_r0.err", None),
])
def test_recorded_rate_limits_of_the_real_clis(recording: str, seconds: float | None) -> None:
    text = (RECORDED / recording).read_text()
    assert seconds_until_reset(text, LOCAL) == seconds
