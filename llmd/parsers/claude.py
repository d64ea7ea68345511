"""Claude Code's structured outputs: ``claude-stream-json`` and ``claude-json``.

``claude -p --output-format stream-json --verbose [--include-partial-messages]`` prints
one event per line; ``claude -p --output-format json`` prints one ``result`` object (with
``--verbose``, an array of all events), parsed whole at the end.

Invariants:
- Answer text comes from ``stream_event`` text deltas when partial messages are on, else
  from the text blocks of ``assistant`` messages; a message whose deltas were streamed is
  not repeated. Text blocks and messages after the first are preceded by a blank line.
- Not answer text: sub-agent traffic (``parent_tool_use_id`` set) and Claude's synthetic
  error messages (an ``assistant`` event with a top-level ``error``).
- The ``result`` event gives the session, usage, cost and final answer. When it extends
  what was streamed (or nothing was) the rest is streamed at finish. When it reports an
  error (``is_error``, even under ``"subtype": "success"``), its text is the error's
  reason, never answer text; ``api_error_status`` 429/529 -> rate limit, 401/403 -> auth.
- ``system``/``api_retry`` for 429, 529, ``rate_limit`` or ``overloaded`` (and a
  ``rate_limit_event`` whose status is ``rejected``) is an immediate rate-limit Signal,
  with ``retry_delay_ms`` as the Retry-After; an auth retry is an auth Signal.
- The session id is the first one seen (every event carries it), or the result's.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from llmd.parsers.base import (
    JsonLinesParser,
    get_dict,
    get_int,
    get_number,
    get_str,
    int_fields,
)
from llmd.parsers.ratelimit import (
    Verdict,
    auth_verdict,
    find_retry_after,
    rate_limit_verdict,
    verdict_from_message,
)

SEPARATOR = "\n\n"
_RATE_LIMIT_ERRORS = frozenset({"rate_limit", "overloaded", "overloaded_error"})
_AUTH_ERRORS = frozenset({"authentication_failed", "authentication_error"})
_MAX_RESET_EPOCH = 1e11


class ClaudeStreamParser(JsonLinesParser):
    """``claude -p --output-format stream-json --verbose``."""

    # "user" lines (tool results) are often the bulkiest and never matter here.
    wanted_types = frozenset({"system", "stream_event", "assistant", "result",
                              "rate_limit_event"})

    def __init__(self) -> None:
        super().__init__()
        self._streamed_ids: set[str] = set()
        self._current_id: str | None = None
        self._partial = False
        self._final: str | None = None
        self._assistant_error: str | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        """Dispatch one event by its ``type``."""
        if self.result.session is None:
            self.result.session = get_str(event, "session_id")
        kind = event.get("type")
        if kind == "stream_event":
            self._stream_event(event)
        elif kind == "assistant":
            self._assistant(event)
        elif kind == "result":
            self._result(event)
        elif kind == "system":
            self._system(event)
        elif kind == "rate_limit_event":
            self._rate_limit_event(event)

    def _stream_event(self, event: dict[str, Any]) -> None:
        if event.get("parent_tool_use_id") is not None:
            return
        inner = get_dict(event, "event")
        kind = inner.get("type")
        if kind == "content_block_delta":
            delta = get_dict(inner, "delta")
            if delta.get("type") == "text_delta":
                text = get_str(delta, "text")
                if text:
                    self._partial = True
                    if self._current_id is not None:
                        self._streamed_ids.add(self._current_id)
                    self.out.emit(text, SEPARATOR)
        elif kind == "content_block_start":
            if get_dict(inner, "content_block").get("type") == "text":
                self.out.separate_next = True
        elif kind == "message_start":
            self._current_id = get_str(get_dict(inner, "message"), "id")
            self.out.separate_next = True

    def _assistant(self, event: dict[str, Any]) -> None:
        if event.get("parent_tool_use_id") is not None:
            return
        error = get_str(event, "error")
        if error:
            self._assistant_error = error
            return
        message = get_dict(event, "message")
        msg_id = get_str(message, "id")
        if msg_id in self._streamed_ids or (msg_id is None and self._partial):
            return
        content = message.get("content")
        if not isinstance(content, list):
            return
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                self.out.separate_next = True
                self.out.emit(get_str(block, "text") or "", SEPARATOR)

    def _result(self, event: dict[str, Any]) -> None:
        session = get_str(event, "session_id")
        if session:
            self.result.session = session
        usage = int_fields(get_dict(event, "usage"))
        if usage:
            self.result.usage = usage
        cost = get_number(event, "total_cost_usd")
        if cost is not None:
            self.result.cost_usd = cost
        text = get_str(event, "result")
        subtype = get_str(event, "subtype") or ""
        if event.get("is_error") is True or subtype.startswith("error"):
            self.result.error = self._error_verdict(event, text, subtype)
            self._final = None
        else:
            self._final = text

    def _error_verdict(self, event: dict[str, Any], text: str | None, subtype: str) -> Verdict:
        errors = event.get("errors")
        if not text and isinstance(errors, list):
            text = "; ".join(e for e in errors if isinstance(e, str))
        message = text or subtype or "Claude reported an error"
        status = get_int(event, "api_error_status")
        if status is None and self._assistant_error in _RATE_LIMIT_ERRORS:
            return rate_limit_verdict(message, find_retry_after(message))
        if status is None and self._assistant_error in _AUTH_ERRORS:
            return auth_verdict(message)
        return verdict_from_message(message, status)

    def _system(self, event: dict[str, Any]) -> None:
        if event.get("subtype") != "api_retry":
            return
        status = get_int(event, "error_status")
        error = get_str(event, "error") or ""
        delay_ms = get_number(event, "retry_delay_ms")
        retry_after = delay_ms / 1000 if delay_ms is not None and 0 <= delay_ms <= 864e5 else None
        what = f"status {status}" if status is not None else (error or "an error")
        detail = (f"Claude is retrying after {what} (attempt {get_int(event, 'attempt')} "
                  f"of {get_int(event, 'max_retries')})")
        if status in (429, 529) or error in _RATE_LIMIT_ERRORS:
            self.out.signal(rate_limit_verdict(detail, retry_after))
        elif status in (401, 403) or error in _AUTH_ERRORS:
            self.out.signal(auth_verdict(detail))

    def _rate_limit_event(self, event: dict[str, Any]) -> None:
        info = get_dict(event, "rate_limit_info")
        if info.get("status") != "rejected":
            return
        window = get_str(info, "rateLimitType") or "usage"
        resets = get_number(info, "resetsAt")
        when = ""
        if resets is not None and 0 < resets < _MAX_RESET_EPOCH:
            stamp = datetime.fromtimestamp(resets, tz=timezone.utc)
            when = f", resets at {stamp:%Y-%m-%dT%H:%M:%SZ}"
        self.out.signal(rate_limit_verdict(f"Claude's {window} limit is reached{when}"))

    def on_end(self) -> None:
        """Stream what the result adds to the streamed text."""
        self.out.settle(self._final)


class ClaudeJsonParser(ClaudeStreamParser):
    """``claude -p --output-format json``: one document, parsed at the end."""

    whole_document = True
