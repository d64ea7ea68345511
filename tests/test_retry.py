"""The back-off policy."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from llmd.config import RetrySection
from llmd.jobs.retry import Backoff

POLICY = Backoff(max_attempts=5, base_delay=1.0, max_delay=30.0)


def test_first_retry_waits_the_base_delay() -> None:
    # cap = base for attempt 1; uniform in [base/2, base] raised to base is base.
    rng = random.Random(1)
    assert {POLICY.delay(1, rng) for _ in range(50)} == {1.0}


def test_delays_grow_exponentially_within_their_band() -> None:
    rng = random.Random(42)
    for attempt, cap in ((2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (60, 30.0)):
        for _ in range(200):
            assert max(1.0, cap / 2) <= POLICY.delay(attempt, rng) <= cap


def test_seeded_delays_are_reproducible() -> None:
    first = [POLICY.delay(n, random.Random(7)) for n in range(1, 8)]
    again = [POLICY.delay(n, random.Random(7)) for n in range(1, 8)]
    assert first == again
    assert len({POLICY.delay(4, random.Random(s)) for s in range(20)}) > 1  # jitter


def test_retry_after_is_honoured() -> None:
    rng = random.Random(0)
    assert POLICY.delay(3, rng, retry_after=12.5) == 12.5
    assert POLICY.delay(3, rng, retry_after=0.1) == 1.0  # at least base_delay
    assert POLICY.next_delay(1, None, rng, retry_after=30.0) == 30.0


def test_retry_after_longer_than_max_delay_gives_up() -> None:
    rng = random.Random(0)
    assert POLICY.next_delay(1, None, rng, retry_after=30.5) is None
    assert POLICY.next_delay(1, None, rng, retry_after=float("inf")) is None
    assert POLICY.delay(1, rng, retry_after=3600) == 30.0  # delay() itself clamps


def test_unusable_retry_after_is_ignored() -> None:
    rng = random.Random(0)
    assert POLICY.next_delay(1, None, rng, retry_after=-4.0) == 1.0
    assert POLICY.next_delay(1, None, rng, retry_after=float("nan")) == 1.0


def test_gives_up_when_attempts_are_spent() -> None:
    rng = random.Random(0)
    assert POLICY.next_delay(4, None, rng) is not None
    assert POLICY.next_delay(5, None, rng) is None
    assert Backoff(1, 1.0, 2.0).next_delay(1, None, rng) is None


def test_never_sleeps_past_the_deadline() -> None:
    rng = random.Random(0)
    assert POLICY.next_delay(1, 1.0, rng) is None  # remaining == delay
    assert POLICY.next_delay(1, 1.01, rng) == 1.0
    assert POLICY.next_delay(1, 0.0, rng) is None
    assert POLICY.next_delay(1, 100.0, rng, retry_after=20.0) == 20.0
    assert POLICY.next_delay(1, 19.0, rng, retry_after=20.0) is None


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert POLICY.delay(10**9, random.Random(0)) <= 30.0
    assert POLICY.delay(0, random.Random(0)) == 1.0
    assert POLICY.delay(-3, random.Random(0)) == 1.0


def test_from_config() -> None:
    assert Backoff.from_config(RetrySection(4, 0.5, 8.0)) == Backoff(4, 0.5, 8.0)


def test_zero_base_delay() -> None:
    policy = Backoff(3, 0.0, 10.0)
    assert policy.delay(5, random.Random(0)) == 0.0
    assert policy.next_delay(1, None, random.Random(0)) == 0.0


bounds = st.tuples(st.floats(0, 1000, allow_nan=False), st.floats(0, 1000, allow_nan=False)).map(
    sorted)


@given(bounds=bounds, max_attempts=st.integers(1, 20), attempts_done=st.integers(0, 30),
       remaining=st.one_of(st.none(), st.floats(-10, 5000, allow_nan=False)),
       retry_after=st.one_of(st.none(), st.floats(-10, 5000, allow_nan=False)),
       seed=st.integers(0, 2**32))
def test_delay_always_in_range_and_deadline_never_crossed(
        bounds: list[float], max_attempts: int, attempts_done: int, remaining: float | None,
        retry_after: float | None, seed: int) -> None:
    base, top = bounds
    policy = Backoff(max_attempts, base, top)
    rng = random.Random(seed)
    assert base <= policy.delay(attempts_done, rng, retry_after) <= top
    wait = policy.next_delay(attempts_done, remaining, rng, retry_after)
    if wait is None:
        return
    assert base <= wait <= top
    assert attempts_done < max_attempts
    assert remaining is None or wait < remaining
    if retry_after is not None and retry_after >= 0:
        assert wait == max(base, retry_after)
