"""Gemini CLI's structured outputs: ``gemini-stream-json`` and ``gemini-json``.

Invariants:
- Stream (``-o stream-json``): ``init`` gives the session; each assistant ``message``
  (``"delta": true``) is streamed as it comes; text after a tool call is preceded by a
  blank line; the ``result`` event gives usage (its ``stats``) and, with ``"status":
  "error"``, the run's error.
- Document (``-o json``): ``{"session_id", "response", "stats", "error"?}`` parsed at
  the end; usage sums ``stats.models.*.tokens`` over all models (the routing call too).
  On failure gemini writes the error object to stderr and nothing to stdout, so an empty
  document yields no verdict: :func:`llmd.parsers.ratelimit.classify` reads stderr.
- "Resource has been exhausted", 429 and ``RESOURCE_EXHAUSTED`` are rate limits; error
  code 41 (gemini's auth failure exit code), 401 and 403 are auth failures.
- gemini retries a failed request for minutes (``general.maxAttempts``, 10 by default;
  its model router's requests 5 times whatever the settings) and tells of each retry
  only on stderr (``Attempt 1 failed with status 429. Retrying with backoff...``). The
  first such line for a 429, 401 or 403, or for a request that could not be sent at
  all (``fetch failed``: the endpoint is unreachable), is an immediate Signal.
"""

from __future__ import annotations

import re
from typing import Any

from llmd.parsers.base import (
    Event,
    JsonLinesParser,
    LineSplitter,
    Signal,
    get_dict,
    get_int,
    get_str,
)
from llmd.parsers.ratelimit import Verdict, auth_verdict, verdict_from_message

SEPARATOR = "\n\n"
# One line per retry, on stderr, before gemini waits and tries again.
_RETRY_RE = re.compile(r"^Attempt \d+ failed(?: with status (?P<status>\d{3}))?\. "
                       r"Retrying with backoff\.\.\. ?(?P<error>.*)$")
_UNREACHABLE = "fetch failed"
_GEMINI_AUTH_EXIT = 41
# stats key -> usage key, for the stream's flat stats.
_FLAT_USAGE = {"input_tokens": "input_tokens", "output_tokens": "output_tokens",
               "total_tokens": "total_tokens", "cached": "cached_input_tokens"}


def error_verdict(error: dict[str, Any]) -> Verdict:
    """Classify gemini's ``{"type", "message", "code"?}`` error object."""
    message = get_str(error, "message") or get_str(error, "type") or "gemini reported an error"
    code = get_int(error, "code")
    if code == _GEMINI_AUTH_EXIT:
        return auth_verdict(message)
    return verdict_from_message(message, code)


def retry_verdict(line: str) -> Verdict | None:
    """The verdict of a stderr line that tells of a retry worth stopping for, if it is one."""
    match = _RETRY_RE.match(line)
    if match is None:
        return None
    status = int(match["status"]) if match["status"] else None
    error = match["error"] or line
    verdict = verdict_from_message(error, status)
    if verdict.kind in ("rate_limit", "auth"):
        return verdict
    if status is None and _UNREACHABLE in error:
        return Verdict("failure", None,
                       f"gemini cannot reach its API ({verdict.reason}); it would retry "
                       "for minutes")
    return None


def stats_usage(stats: dict[str, Any]) -> dict[str, int] | None:
    """Token usage from either shape of gemini's ``stats``."""
    usage: dict[str, int] = {}
    for key, name in _FLAT_USAGE.items():
        value = get_int(stats, key)
        if value is not None:
            usage[name] = value
    if usage:
        return usage
    for model in get_dict(stats, "models").values():
        if not isinstance(model, dict):
            continue
        tokens = get_dict(model, "tokens")
        prompt = get_int(tokens, "prompt")
        for name, value in (("input_tokens", prompt if prompt is not None
                             else get_int(tokens, "input")),
                            ("output_tokens", get_int(tokens, "candidates")),
                            ("total_tokens", get_int(tokens, "total")),
                            ("cached_input_tokens", get_int(tokens, "cached"))):
            if value is not None:
                usage[name] = usage.get(name, 0) + value
    return usage or None


class GeminiStreamParser(JsonLinesParser):
    """``gemini -o stream-json``."""

    wanted_types: frozenset[str] | None = frozenset(
        {"init", "message", "tool_use", "tool_result", "error", "result"})

    def __init__(self) -> None:
        super().__init__()
        self._stderr = LineSplitter()

    def feed_stderr(self, chunk: str) -> list[Event]:
        """Signal the first retry gemini would spend minutes on (see the module doc)."""
        events: list[Event] = []
        for line in self._stderr.feed(chunk):
            verdict = retry_verdict(line)
            if verdict is not None and not self.out.signalled:
                self.out.signalled = True
                events.append(Signal(verdict))
        return events

    def on_event(self, event: dict[str, Any]) -> None:
        """Dispatch one event by its ``type``."""
        kind = event.get("type")
        if kind == "init":
            self.result.session = get_str(event, "session_id") or self.result.session
        elif kind == "message":
            if event.get("role") == "assistant":
                self.out.emit(get_str(event, "content") or "", SEPARATOR)
        elif kind in ("tool_use", "tool_result"):
            self.out.separate_next = True
        elif kind == "error":
            verdict = verdict_from_message(get_str(event, "message") or "")
            if verdict.kind in ("rate_limit", "auth"):
                self.out.signal(verdict)
        elif kind == "result":
            self.result.session = get_str(event, "session_id") or self.result.session
            usage = stats_usage(get_dict(event, "stats"))
            if usage:
                self.result.usage = usage
            if event.get("status") == "error":
                self.result.error = error_verdict(get_dict(event, "error"))


class GeminiJsonParser(GeminiStreamParser):
    """``gemini -o json``: one document, parsed at the end."""

    whole_document = True
    wanted_types = None

    def __init__(self) -> None:
        super().__init__()
        self._final: str | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        """Read the document (or, tolerated, stream events)."""
        if "type" in event and "response" not in event:
            super().on_event(event)
            return
        self.result.session = get_str(event, "session_id") or self.result.session
        self._final = get_str(event, "response")
        usage = stats_usage(get_dict(event, "stats"))
        if usage:
            self.result.usage = usage
        error = event.get("error")
        if isinstance(error, dict):
            self.result.error = error_verdict(error)

    def on_end(self) -> None:
        """Stream the response."""
        self.out.settle(self._final)
