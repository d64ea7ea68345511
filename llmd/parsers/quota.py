"""Quota windows: when a rate-limited CLI says its window reopens, as a moment.

Understands what the CLIs print and their providers send (the table in
``tests/test_quota.py`` holds the real messages): "resets 3pm", "resets at 15:00
(Europe/Paris)", "Access resets at 3:05 PM UTC.", "try again at Dec 7th, 2026 3:05 PM",
"try again in 4h 12m", "Please retry in 25.6s", ``Retry-After`` (seconds or an HTTP date),
and the reset fields of structured errors (``resetsAt``, ``resets_at``,
``resets_in_seconds``, ``retryDelay``, ``anthropic-ratelimit-unified-reset``).

Invariants:
- Pure: text and "now" in, an aware datetime (or None) out; no I/O, no clock.
- A structured field beats a sentence; a sentence's own time zone (an IANA name, an
  abbreviation with a fixed offset, a numeric offset) beats the local one (``now``'s).
- A time of day without a date is the next such moment (today's if still ahead, else
  tomorrow's).
- What lands in the past, or more than :data:`MAX_AHEAD` ahead, is ignored (None): a
  misread must not stop a blueprint for weeks.
- Never raises, whatever the text.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import re
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmd.parsers.ratelimit import duration

MAX_AHEAD = _dt.timedelta(days=7)
_SCAN_CHARS = 65536

# Abbreviations with one offset each; ambiguous ones (IST, CST in Asia...) are read as the
# North American or European ones the CLIs' formatters print.
_ABBREVIATIONS: dict[str, float] = {
    "UTC": 0, "GMT": 0, "Z": 0, "WET": 0, "BST": 1, "CET": 1, "CEST": 2, "EET": 2, "EEST": 3,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
    "AKST": -9, "AKDT": -8, "HST": -10, "JST": 9, "KST": 9, "AEST": 10, "AEDT": 11,
}
_MONTHS = {name: n for n, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    start=1)}

_EPOCH_FIELD = re.compile(
    r"""["']?(?:resetsAt|resets_at|resetAt|reset_at|overageResetsAt)["']?\s*[:=]\s*"""
    r"""["']?(\d{9,13}(?:\.\d+)?|\d{4}-\d\d-\d\d[T ][0-9:.]+(?:Z|[+-]\d\d:?\d\d)?)""")
_HEADER_EPOCH = re.compile(r"(?i)anthropic-ratelimit-unified-(?:\w+-)?reset\W{1,3}(\d{9,13})"
                           r"|usage limit reached\|(\d{9,13})")
_SECONDS_FIELD = re.compile(
    r"""["']?(?:resets_in_seconds|reset_after_seconds|resetsInSeconds|retry_after_s"""
    r"""|retryAfterSeconds)["']?\s*[:=]\s*(\d+(?:\.\d+)?)""")
_RETRY_DELAY = re.compile(r"""["']?retryDelay["']?\s*:\s*["']?(\d+(?:\.\d+)?)(ms|s)\b""")
_RETRY_AFTER = re.compile(
    r"(?im)\bretry-after\s*[:=]\s*(?:(\d+(?:\.\d+)?)\s*$|"
    r"([A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT))")
# Go-style durations ("6m0s") as well as spelled ones ("4 hours, 12 minutes").
_DURATION_PART = (r"\d+(?:\.\d+)?\s*(?:ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)"
                  r"(?=\d|\b)")
_RELATIVE = re.compile(
    r"(?i)\b(?:try(?:ing)? again|retry(?:ing)?|resets?|reopens?|available again|wait)"
    r"\s+(?:in|after)\s+(?:about\s+|~)?"
    rf"((?:{_DURATION_PART}[\s,]*(?:and\s+)?)+)")
_ZONE = (r"(?:\s*\((?P<iana>[A-Za-z_]+(?:/[A-Za-z_+-]+)+|UTC|GMT)\)"
         r"|\s*(?P<abbr>UTC|GMT|[A-Z]{3,4})\b(?:(?P<abbr_off>[+-]\d{1,2})(?::?(?P<abbr_min>\d\d))?)?"
         r"|\s*(?P<offset>[+-]\d\d:?\d\d)\b)?")
_ABSOLUTE = re.compile(
    r"(?i)\b(?:try(?:ing)? again|retry(?:ing)?|resets?|reopens?|available again|limit resets)"
    r"\s*(?:at|on)?\s*"
    r"(?:(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)"
    r"|(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+"
    r"(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?:(?P<year>\d{4}),?\s+)?(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?:(?::|h)(?P<minute>\d\d))?\s*(?P<ampm>[ap]\.?m\b\.?)?)"
    + _ZONE)


def _zone(match: re.Match[str], local: _dt.tzinfo) -> _dt.tzinfo:
    """The time zone a sentence names, else ``local``."""
    iana, abbr, offset = match.group("iana"), match.group("abbr"), match.group("offset")
    if iana:
        if iana.upper() in ("UTC", "GMT"):
            return _dt.timezone.utc
        try:
            return ZoneInfo(iana)
        except (ZoneInfoNotFoundError, ValueError):
            return local
    if abbr:
        hours = _ABBREVIATIONS.get(abbr.upper())
        if hours is None:
            return local
        if match.group("abbr_off"):  # "GMT+2", "UTC-5:30"
            sign = -1 if match.group("abbr_off").startswith("-") else 1
            hours += int(match.group("abbr_off")) + sign * int(match.group("abbr_min") or 0) / 60
        return _dt.timezone(_dt.timedelta(hours=hours))
    if offset:
        digits = offset.replace(":", "")
        sign = -1 if digits[0] == "-" else 1
        return _dt.timezone(sign * _dt.timedelta(hours=int(digits[1:3]),
                                                 minutes=int(digits[3:5])))
    return local


def _from_epoch(value: str) -> _dt.datetime:
    number = float(value)
    if number > 1e12:  # milliseconds
        number /= 1000
    return _dt.datetime.fromtimestamp(number, _dt.timezone.utc)


def _from_iso(value: str, local: _dt.tzinfo) -> _dt.datetime:
    when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    return when if when.tzinfo is not None else when.replace(tzinfo=local)


def _absolute(match: re.Match[str], now: _dt.datetime) -> _dt.datetime | None:
    local = now.tzinfo or _dt.timezone.utc
    if match.group("iso"):
        return _from_iso(match.group("iso"), local)
    hour, minute, ampm = int(match.group("hour")), match.group("minute"), match.group("ampm")
    if minute is None and ampm is None:
        return None  # "resets 3" is not a time
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.lower().startswith("p") else 0)
    if hour > 23 or int(minute or 0) > 59:
        return None
    zone = _zone(match, local)
    here = now.astimezone(zone)
    if match.group("mon"):
        year = int(match.group("year") or here.year)
        when = _dt.datetime(year, _MONTHS[match.group("mon").lower()[:3]],
                            int(match.group("day")), hour, int(minute or 0), tzinfo=zone)
        if match.group("year") is None and when < here - _dt.timedelta(days=1):
            when = when.replace(year=year + 1)  # "Jan 2" said on December 30th
        return when
    when = _dt.datetime.combine(here.date(), _dt.time(hour, int(minute or 0)), tzinfo=zone)
    if when <= here:
        when = _dt.datetime.combine(here.date() + _dt.timedelta(days=1),
                                    _dt.time(hour, int(minute or 0)), tzinfo=zone)
    return when


def _candidates(text: str, now: _dt.datetime) -> Iterator[_dt.datetime | None]:
    """Every reading of ``text``, the most trusted first (None: one that does not parse)."""
    local = now.tzinfo or _dt.timezone.utc
    readers: list[tuple[re.Pattern[str], Callable[[re.Match[str]], _dt.datetime | None]]] = [
        (_EPOCH_FIELD, lambda m: _from_epoch(m.group(1)) if m.group(1).replace(".", "")
         .isdigit() else _from_iso(m.group(1), local)),
        (_HEADER_EPOCH, lambda m: _from_epoch(m.group(1) or m.group(2))),
        (_SECONDS_FIELD, lambda m: now + _dt.timedelta(seconds=float(m.group(1)))),
        (_RETRY_DELAY, lambda m: now + _dt.timedelta(
            seconds=float(m.group(1)) * (0.001 if m.group(2) == "ms" else 1))),
        (_RETRY_AFTER, lambda m: now + _dt.timedelta(seconds=float(m.group(1))) if m.group(1)
         else email.utils.parsedate_to_datetime(m.group(2))),
        (_RELATIVE, lambda m: now + _dt.timedelta(seconds=duration(m.group(1)))),
        (_ABSOLUTE, lambda m: _absolute(m, now)),
    ]
    for pattern, read in readers:
        for match in pattern.finditer(text):
            try:
                yield read(match)
            except (ValueError, OverflowError, TypeError, IndexError):
                yield None  # a 30th of February, a year 99999


def reset_time(text: str, now: _dt.datetime) -> _dt.datetime | None:
    """When the quota window ``text`` speaks of reopens, if it says so.

    Args:
        text: A rate-limit message: stderr, stdout, a structured error.
        now: The current time, aware; its zone is the local one for times without a zone.

    Returns:
        The first reading (structured fields first) that lies after ``now`` and at most
        :data:`MAX_AHEAD` later, as an aware datetime; None when there is none.
    """
    if now.tzinfo is None:
        now = now.astimezone()
    for when in _candidates(text[-_SCAN_CHARS:], now):
        if when is not None and now < when <= now + MAX_AHEAD:
            return when
    return None


def seconds_until_reset(text: str, now: _dt.datetime) -> float | None:
    """:func:`reset_time` as seconds from ``now``."""
    when = reset_time(text, now)
    return None if when is None else (when - now).total_seconds()
