"""Failure classification: was a finished attempt fine, rate limited, refused auth, or broken?

Invariants:
- Pure: text in, :class:`Verdict` out; no I/O, no clock.
- Exit status 0 with no structured signal is always ``"ok"``: a successful answer may
  well talk about rate limits or 401s.
- A structured signal from the output parser (``signal``) beats any text matching.
- Text matching never fires on a bare number: "took 429 ms", "line 429" and UUIDs holding
  ``429`` are not rate limits; a status word must stand next to the code.
- Rate limit is tested before auth, auth before plain failure; ``reason`` is one short
  line that quotes what was matched.
- :func:`find_retry_after` only returns delays in ``[0, 86400]`` seconds.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llmd.config import DEFAULT_RATE_LIMIT_PATTERNS

Kind = Literal["ok", "rate_limit", "auth", "failure"]

MAX_RETRY_AFTER_S = 86400.0
_SNIPPET_CHARS = 160

AUTH_HINT = "log in to the CLI (or set its API key) and try again"

DEFAULT_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p) for p in DEFAULT_RATE_LIMIT_PATTERNS)

# Conservative on purpose: whole words, and status codes only next to a status word.
AUTH_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"(?i)(?<![a-z0-9])(?:status|code|http|error)\W{0,3}(?:code\W{0,3})?40[13]\b",
    r"(?i)\b401 unauthorized\b|\b403 forbidden\b",
    r"(?i)\bunauthori[sz]ed\b",
    r"\bUNAUTHENTICATED\b",
    r"(?i)\b(?:invalid|incorrect|missing|no) (?:x-)?api[ _-]?key\b",
    r"(?i)\bapi[ _-]?key (?:not valid|is (?:invalid|missing|not set|required)"
    r"|not (?:set|found|provided))\b",
    r"(?i)\bnot logged in\b",
    r"(?i)\bplease run /login\b",
    r"(?i)\bauthentication(?:_error|_failed)?\b",
    r"(?i)\b(?:failed to|could not|unable to) authenticate\b",
    r"(?i)\b(?:set an|invalid) auth method\b",
    r"(?i)\b(?:oauth token|token|credentials?) (?:has |have )?(?:expired|been revoked)\b",
))


@dataclass(frozen=True)
class Verdict:
    """How one attempt ended.

    Attributes:
        kind: ``ok``, ``rate_limit`` (back off and retry), ``auth`` (never retry: the user
            must log in or set a key) or ``failure``.
        retry_after_s: A delay the CLI or its provider asked for, when known.
        reason: One short line for the error message.
    """

    kind: Kind
    retry_after_s: float | None = None
    reason: str = ""


OK = Verdict("ok")

# --- Retry-After ------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = (r"(?:ms|msecs?|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?)"
         r"(?![a-z])")
# After the first number: units (Go-style "6m0s" included), or none, and then no
# further digits or words ("in 3 attempts" is not a delay).
_DURATION_TAIL = (r"(?:\s*" + _UNIT + r"(?:" + _NUMBER + _UNIT + r")*"
                  r"|(?!\d|\.\d|[ \t]*[a-z]))")
_RETRY_RE = re.compile(
    r"""(?ix)
    (?:
        retry[-_ ]?after(?:(?P<ms1>[-_ ]?ms)|[-_ ]?s(?![a-z]))?   # Retry-After, retry_after_s
      | retry[-_ ]?delay(?P<ms2>[-_ ]?ms)?(?:[-_ ]?s(?![a-z]))?   # retry_delay_ms, retryDelayMs
      | (?:try\ again|retry(?:ing)?)\ in                          # try again in 1.5 seconds
    )
    ["']?\s*[:=]?\s*["']?
    (?P<dur>""" + _NUMBER + _DURATION_TAIL + ")",
)
_PART_RE = re.compile(r"(?i)(" + _NUMBER + r")\s*(" + _UNIT + r")?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _unit_seconds(unit: str) -> float:
    unit = unit.lower()
    if unit.startswith(("ms", "msec", "milli")):
        return _UNIT_SECONDS["ms"]
    return _UNIT_SECONDS[unit[0]]


def duration(text: str, default_unit: float = 1.0) -> float:
    """The seconds ``text`` spells: every number with its unit, summed ("4h 12m", "6m0s",
    "2 hours, 5 minutes", "500ms"); a number without a unit counts ``default_unit``
    seconds."""
    total = 0.0
    for number, unit in _PART_RE.findall(text):
        total += float(number) * (_unit_seconds(unit) if unit else default_unit)
    return total


def find_retry_after(text: str) -> float | None:
    """Find the delay a CLI or its provider asked for before the next try.

    Understands ``Retry-After: 20``, ``retry after 20s``, ``"retry_after_s": 3``,
    ``try again in 1.5 seconds``, ``retry in 500ms``, ``"retry_delay_ms":2000``,
    ``retryDelay: "37s"`` and Go-style ``6m0s``. A bare number is seconds unless the key
    says milliseconds; a number followed by a word that is no unit ("in 3 attempts") is
    not a delay. When several appear, the last one wins (it is the most recent).

    Args:
        text: Any CLI output.

    Returns:
        Seconds, or ``None`` when no sane value (0 to 1 day) is present.
    """
    found: float | None = None
    for match in _RETRY_RE.finditer(text):
        default_unit = 0.001 if (match.group("ms1") or match.group("ms2")) else 1.0
        value = duration(match.group("dur"), default_unit)
        if 0.0 <= value <= MAX_RETRY_AFTER_S:
            found = value
    return found


# --- classification ---------------------------------------------------------

def _snippet(text: str, start: int, end: int) -> str:
    """The line around ``text[start:end]``, cut to one short line."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    if line_end < 0:
        line_end = len(text)
    lo = max(line_start, start - _SNIPPET_CHARS // 3)
    hi = min(line_end, max(end, lo + _SNIPPET_CHARS))
    out = " ".join(text[lo:hi].split())
    if lo > line_start:
        out = "..." + out
    if hi < line_end:
        out += "..."
    return out


def _one_line(text: str) -> str:
    """``text`` on one line, cut to a readable length."""
    out = " ".join(text.split())
    return out if len(out) <= _SNIPPET_CHARS else out[:_SNIPPET_CHARS - 3] + "..."


def _search(patterns: Sequence[re.Pattern[str]], *texts: str) -> str | None:
    for text in texts:
        if not text:
            continue
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                return _snippet(text, match.start(), match.end())
    return None


_FRAME_RE = re.compile(r"^\s*(?:at |\}|\{|\]|\[|\^|\.\.\.)")
_ERRORISH_RE = re.compile(r"(?i)error|fail|fatal|exception|refused|denied|unable|cannot")


def last_error_line(*texts: str) -> str:
    """Pick the most telling line of a failure's output, for a message.

    Looks from the end for a line that reads like an error (skipping stack frames),
    in each text in turn, else the last non-empty line.

    Args:
        texts: Output tails, most telling first (usually stderr, then stdout).

    Returns:
        One short line, possibly empty.
    """
    fallback = ""
    for text in texts:
        lines = [ln for ln in text.splitlines() if ln.strip() and not _FRAME_RE.match(ln)]
        for line in reversed(lines):
            if _ERRORISH_RE.search(line):
                return _tail(line)
        if lines and not fallback:
            fallback = _tail(lines[-1])
    return fallback


def _tail(line: str) -> str:
    # A long error line ends with its most specific part ("...: fetch failed").
    out = " ".join(line.split())
    return out if len(out) <= _SNIPPET_CHARS else "..." + out[-(_SNIPPET_CHARS - 3):]


def rate_limit_verdict(snippet: str, retry_after: float | None = None) -> Verdict:
    """Build a rate-limit verdict whose reason quotes ``snippet``."""
    return Verdict("rate_limit", retry_after, f"rate limit: {_one_line(snippet)}".rstrip(": "))


def auth_verdict(snippet: str) -> Verdict:
    """Build an auth verdict whose reason quotes ``snippet`` and says what to do."""
    head = f"auth: {_one_line(snippet)}" if snippet else "auth failed"
    return Verdict("auth", None, f"{head}; {AUTH_HINT}")


def verdict_from_message(message: str, status: int | None = None) -> Verdict:
    """Classify an error message that a CLI's structured output reported.

    Args:
        message: The CLI's own error text.
        status: An HTTP-like status the CLI reported next to it, when known.

    Returns:
        ``rate_limit`` (429, 529, or a default rate-limit pattern), ``auth`` (401, 403, or
        an auth pattern), else ``failure``; never ``ok``.
    """
    one_line = _one_line(message)
    retry_after = find_retry_after(message)
    if status in (429, 529):
        return rate_limit_verdict(one_line or f"status {status}", retry_after)
    if status in (401, 403):
        return auth_verdict(one_line or f"status {status}")
    if _search(DEFAULT_PATTERNS, message) is not None:
        return rate_limit_verdict(one_line, retry_after)
    if _search(AUTH_PATTERNS, message) is not None:
        return auth_verdict(one_line)
    return Verdict("failure", None, one_line or "the CLI reported an error")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(exit_code: int | None, stdout_tail: str, stderr_tail: str,
             patterns: Sequence[re.Pattern[str]], signal: Verdict | None = None) -> Verdict:
    """Classify a finished attempt.

    Args:
        exit_code: The child's exit status; ``None`` when it did not exit by itself
            (killed, or unknown).
        stdout_tail: The end of its stdout.
        stderr_tail: The end of its stderr.
        patterns: The blueprint's compiled rate-limit patterns.
        signal: A verdict the output parser drew from the CLI's structured output; it
            wins when given (filled in with a Retry-After from the text if it lacks one).

    Returns:
        The verdict.
    """
    if signal is not None:
        if signal.kind == "rate_limit" and signal.retry_after_s is None:
            found = find_retry_after(f"{stderr_tail}\n{stdout_tail}")
            if found is not None:
                return Verdict(signal.kind, found, signal.reason)
        return signal
    if exit_code == 0:
        return OK
    hit = _search(patterns, stderr_tail, stdout_tail)
    if hit is not None:
        return rate_limit_verdict(hit, find_retry_after(f"{stderr_tail}\n{stdout_tail}"))
    hit = _search(AUTH_PATTERNS, stderr_tail, stdout_tail)
    if hit is not None:
        return auth_verdict(hit)
    if exit_code is None:
        status = "did not exit by itself"
    elif exit_code < 0:
        status = f"killed by signal {-exit_code}, {_signal_name(-exit_code)}"
    else:
        status = f"exit status {exit_code}"
    detail = last_error_line(stderr_tail, stdout_tail)
    reason = f"the CLI failed ({status})" + (f": {detail}" if detail else "")
    return Verdict("failure", None, reason)
