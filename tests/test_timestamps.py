"""Timestamps (llmd.timestamps): every moment written in UTC whatever its zone, and local
midnight with the offset of its own date."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterator

import pytest

from llmd.timestamps import local_midnight, rfc3339


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is Europe/Paris for the test."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_an_aware_datetime_in_any_zone_is_written_in_utc() -> None:
    east = _dt.timezone(_dt.timedelta(hours=5, minutes=30))
    when = _dt.datetime(2026, 12, 6, 3, 15, 0, 123456, tzinfo=east)
    assert rfc3339(when) == "2026-12-05T21:45:00.123Z"
    assert rfc3339(when.astimezone(_dt.timezone.utc)) == "2026-12-05T21:45:00.123Z"
    assert rfc3339(when.timestamp()) == "2026-12-05T21:45:00.123Z"


def test_local_midnight_has_the_offset_of_its_own_date(paris: None) -> None:
    # Summer time begins in Paris at 02:00 on 29 March 2026.
    before, after = local_midnight(_dt.date(2026, 3, 29)), local_midnight(_dt.date(2026, 3, 30))
    assert before.utcoffset() == _dt.timedelta(hours=1)
    assert after.utcoffset() == _dt.timedelta(hours=2)
    assert (before.hour, before.minute, after.hour) == (0, 0, 0)
    assert rfc3339(before) == "2026-03-28T23:00:00.000Z"
    assert rfc3339(after) == "2026-03-29T22:00:00.000Z"
    assert rfc3339(_dt.datetime(2026, 7, 1, 12)) == "2026-07-01T10:00:00.000Z"  # naive: local
