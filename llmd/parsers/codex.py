"""The ``codex-jsonl`` parser: ``codex exec --json``.

Invariants:
- ``thread.started``'s ``thread_id`` is the session (``codex exec resume`` takes it).
- Answer text is the ``text`` of each completed ``agent_message`` item, streamed as the
  item completes (codex gives whole items only); several messages in one run are joined
  by a blank line, as a reader would see them.
- Usage is summed over ``turn.completed`` events.
- ``turn.failed`` sets the run's error. An ``error`` event that reads as a rate limit
  ("Reconnecting... 1/5 (... 429 Too Many Requests)") or an auth failure is an
  immediate Signal; other ``error`` events ("Reconnecting... waiting for network") are
  kept, and become the error only when the output ends without a completed turn.
"""

from __future__ import annotations

from typing import Any

from llmd.parsers.base import JsonLinesParser, get_dict, get_str, int_fields
from llmd.parsers.ratelimit import verdict_from_message

SEPARATOR = "\n\n"
# "assistant_message" is what codex called the item before agent_message.
_MESSAGE_ITEMS = frozenset({"agent_message", "assistant_message"})


class CodexParser(JsonLinesParser):
    """``codex exec --json``."""

    wanted_types = frozenset({"thread.started", "item.completed", "turn.completed",
                              "turn.failed", "error"})

    def __init__(self) -> None:
        super().__init__()
        self._completed = False
        self._last_error: str | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        """Dispatch one event by its ``type``."""
        kind = event.get("type")
        if kind == "thread.started":
            self.result.session = get_str(event, "thread_id") or self.result.session
        elif kind == "item.completed":
            item = get_dict(event, "item")
            if get_str(item, "type") in _MESSAGE_ITEMS:
                self.out.separate_next = True
                self.out.emit(get_str(item, "text") or "", SEPARATOR)
        elif kind == "turn.completed":
            self._completed = True
            usage = int_fields(get_dict(event, "usage"))
            if usage:
                total = self.result.usage or {}
                for key, value in usage.items():
                    total[key] = total.get(key, 0) + value
                self.result.usage = total
        elif kind == "turn.failed":
            message = (get_str(get_dict(event, "error"), "message") or self._last_error
                       or "codex reported a failed turn")
            self.result.error = verdict_from_message(message)
        elif kind == "error":
            text = get_str(event, "message")
            if text:
                self._last_error = text
                verdict = verdict_from_message(text)
                if verdict.kind in ("rate_limit", "auth"):
                    self.out.signal(verdict)

    def on_end(self) -> None:
        """A run that ended without a completed turn failed with its last error."""
        if self.result.error is None and not self._completed and self._last_error:
            self.result.error = verdict_from_message(self._last_error)
