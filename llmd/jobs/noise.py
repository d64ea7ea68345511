"""Dropping a CLI's known stderr chatter from what a run's listeners are shown.

A blueprint's ``stderr_ignore`` lists regular expressions; a stderr line that one of them
matches (``re.search``) is noise: banners about terminal colours, missing helpers, reading
stdin. Such a line is left out of the ``llm.output`` notifications only.

Invariants:
- Only what listeners are shown is filtered: the attempt's kept ``stderr`` (the record, the
  error data, rate-limit classification) is the child's, unchanged.
- Lines are judged whole: text up to a newline is held back until its line is complete, and
  :meth:`NoiseFilter.flush` hands out what is left when the attempt ends. Without patterns
  the filter passes every chunk through at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class NoiseFilter:
    """Filters one attempt's stderr text, line by line.

    Args:
        patterns: The blueprint's ``stderr_ignore`` expressions (validated by the config).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self._res = tuple(re.compile(p) for p in patterns)
        self._partial = ""

    @property
    def active(self) -> bool:
        """Whether any pattern is configured."""
        return bool(self._res)

    def feed(self, text: str) -> str:
        """Return what of ``text`` may be shown now (complete lines that are not noise)."""
        if not self._res:
            return text
        lines = (self._partial + text).splitlines(keepends=True)
        self._partial = ""
        if lines and not lines[-1].endswith(("\n", "\r")):
            self._partial = lines.pop()
        return "".join(line for line in lines if not self.is_noise(line))

    def flush(self) -> str:
        """Return the last, unterminated line unless it is noise."""
        rest, self._partial = self._partial, ""
        return "" if not rest or self.is_noise(rest) else rest

    def is_noise(self, line: str) -> bool:
        """Whether one line matches a pattern (its line ending aside)."""
        body = line.rstrip("\r\n")
        return any(r.search(body) for r in self._res)
