"""Back-off policy after a rate limit: how long to wait, and when to give up.

Invariants:
- Pure: the caller passes the random source and the time left; nothing here sleeps or
  reads a clock.
- Every delay returned lies in ``[base_delay, max_delay]`` (when ``base_delay <=
  max_delay``, which the configuration enforces).
- Exponential with jitter: for attempt ``n`` (1-based, the attempt that just failed) the
  cap is ``min(max_delay, base_delay * 2**(n-1))`` and the delay is uniform in
  ``[cap/2, cap]``, raised to ``base_delay``.
- A Retry-After from the CLI replaces the computed delay when it fits under
  ``max_delay``; a larger one makes :meth:`Backoff.next_delay` give up, so the caller
  reports it rather than waiting longer than the blueprint allows.
- :meth:`Backoff.next_delay` never returns a delay that reaches the deadline.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from llmd.config import RetrySection

# 2.0 ** 1024 overflows; far beyond any max_delay anyway.
_MAX_EXPONENT = 1000


@dataclass(frozen=True)
class Backoff:
    """A blueprint's retry policy.

    Attributes:
        max_attempts: Attempts in all, the first included (1 means never retry).
        base_delay: The shortest wait, in seconds.
        max_delay: The longest wait, in seconds.
    """

    max_attempts: int
    base_delay: float
    max_delay: float

    @classmethod
    def from_config(cls, section: RetrySection) -> Backoff:
        """Build the policy from a blueprint's ``[retry]`` table."""
        return cls(section.max_attempts, section.base_delay, section.max_delay)

    def _clamp(self, value: float) -> float:
        return min(self.max_delay, max(self.base_delay, value))

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Return the wait after attempt number ``attempt`` failed.

        Args:
            attempt: The 1-based number of the attempt that just failed.
            rng: The random source for the jitter.
            retry_after: A delay the CLI asked for; used (raised to ``base_delay``,
                capped at ``max_delay``) instead of the computed one.

        Returns:
            Seconds, within ``[base_delay, max_delay]``.
        """
        if retry_after is not None and retry_after >= 0 and math.isfinite(retry_after):
            return self._clamp(retry_after)
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        cap = min(self.max_delay, self.base_delay * 2.0 ** exponent)
        return self._clamp(rng.uniform(cap / 2, cap))

    def next_delay(self, attempts_done: int, remaining: float | None, rng: random.Random,
                   retry_after: float | None = None) -> float | None:
        """Decide whether to try again, and after how long.

        Args:
            attempts_done: Attempts made so far (all failed).
            remaining: Seconds left before the run's deadline; ``None`` for no deadline.
            rng: The random source for the jitter.
            retry_after: A delay the CLI asked for, if any.

        Returns:
            The wait in seconds, or ``None`` to give up: the attempts are spent, the CLI
            asked for longer than ``max_delay``, or the wait would reach the deadline.
        """
        if attempts_done >= self.max_attempts:
            return None
        if retry_after is not None and not retry_after >= 0:
            retry_after = None  # negative or NaN: not a request anyone can honour
        if retry_after is not None and retry_after > self.max_delay:
            return None
        wait = self.delay(attempts_done, rng, retry_after)
        if remaining is not None and remaining <= wait:
            return None
        return wait
