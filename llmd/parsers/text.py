"""The ``text`` parser: stdout is the answer.

Invariants:
- Every non-empty chunk is forwarded as it comes, unchanged; ``text`` is all of stdout.
- No verdict: failures of plain-text CLIs are classified from the exit status and the
  output by :func:`llmd.parsers.ratelimit.classify`.
"""

from __future__ import annotations

from llmd.parsers.base import Event, ParseResult, TextDelta


class TextParser:
    """Plain stdout: each chunk is a delta."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, chunk: str) -> list[Event]:
        """Forward ``chunk`` as it is."""
        if not chunk:
            return []
        self._parts.append(chunk)
        return [TextDelta(chunk)]

    def feed_stderr(self, chunk: str) -> list[Event]:
        """Plain-text CLIs are classified once they exit: no events."""
        return []

    def finish(self) -> tuple[list[Event], ParseResult]:
        """Nothing is held back; the text is all of stdout."""
        return [], ParseResult("".join(self._parts))
