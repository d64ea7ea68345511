"""The output-parser interface, and the machinery the JSON-lines parsers share.

Invariants:
- Pure and incremental: :meth:`Parser.feed` takes decoded stdout text cut at arbitrary
  points (not lines) and returns what it can say now; :meth:`Parser.finish` flushes.
- The texts of all :class:`TextDelta` events returned by ``feed`` and ``finish``,
  concatenated, equal :attr:`ParseResult.text` exactly. ``finish`` therefore returns
  events too: a structured parser may learn its final text only at the end (a single
  JSON document, or a ``result`` event that adds what was not streamed).
- A parser emits at most one :class:`Signal` per run: the caller acts on the first.
- Nothing the CLI prints raises: unknown events and non-JSON lines are ignored.
- Line splitting looks for ``\\n`` in new data only and joins a long line's pieces once,
  so a line of 100 MB costs linear time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import msgspec

from llmd.parsers.ratelimit import Verdict


@dataclass(frozen=True)
class TextDelta:
    """Live answer text to forward to a streaming client."""

    text: str


@dataclass(frozen=True)
class Signal:
    """An early failure seen in the stream (a rate-limit retry, say); act on it at once."""

    verdict: Verdict


Event: TypeAlias = TextDelta | Signal


@dataclass
class ParseResult:
    """What a finished run's stdout said.

    Attributes:
        text: The final answer text (the concatenation of every ``TextDelta``).
        session: The CLI's session id, to resume with.
        usage: Token counts; at least ``input_tokens`` and ``output_tokens`` when known.
        cost_usd: What the CLI says the run cost.
        error: Set when the CLI's own output reports a failure.
    """

    text: str
    session: str | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    error: Verdict | None = None


class Parser(Protocol):
    """An incremental parser of one run's stdout."""

    def feed(self, chunk: str) -> list[Event]:
        """Take the next piece of stdout; return the events it completes."""
        ...

    def finish(self) -> tuple[list[Event], ParseResult]:
        """Flush at end of output: the last events, and the result."""
        ...

    def feed_stderr(self, chunk: str) -> list[Event]:
        """Take the next piece of stderr; return the signals it completes (never text)."""
        ...


ParserFactory = Callable[[], Parser]


# A line (or whole document) longer than this is no event a parser can use: it is
# dropped as it comes instead of being held whole (a CLI may print 100 MB on one line).
MAX_LINE_CHARS = 32 << 20


class LineSplitter:
    """Cut a text stream into ``\\n``-terminated lines; keep the unfinished one.

    An unfinished line that grows past ``max_line`` characters is dropped, up to its end.
    """

    def __init__(self, max_line: int = MAX_LINE_CHARS) -> None:
        self._pending: list[str] = []
        self._size = 0
        self._max = max_line
        self._skipping = False

    def feed(self, chunk: str) -> list[str]:
        """Return the lines that ``chunk`` completes, without their ``\\n``."""
        parts = chunk.split("\n")
        if len(parts) == 1:
            self._hold(chunk)
            return []
        if self._skipping:
            parts[0] = ""
        elif self._pending:
            self._pending.append(parts[0])
            parts[0] = "".join(self._pending)
        self._pending = []
        self._size = 0
        self._skipping = False
        self._hold(parts.pop())
        return parts

    def _hold(self, text: str) -> None:
        if not text or self._skipping:
            return
        self._size += len(text)
        if self._size > self._max:
            self._pending = []
            self._size = 0
            self._skipping = True
        else:
            self._pending.append(text)

    def rest(self) -> str:
        """Return (and forget) the unterminated last line."""
        rest = "" if self._skipping else "".join(self._pending)
        self._pending = []
        self._size = 0
        self._skipping = False
        return rest


_DECODE_ERRORS = (msgspec.DecodeError, ValueError, RecursionError)


def decode_json(text: str) -> object:
    """Decode JSON text, or return ``None`` when it is not JSON (never raises)."""
    try:
        return msgspec.json.decode(text)
    except _DECODE_ERRORS:
        return None


def decode_document(text: str, max_tries: int = 8) -> object:
    """Decode a whole-output JSON document, tolerating noise before or after it.

    Tries the whole text, then (at most ``max_tries``) lines that start with ``{`` or
    ``[``, each decoded up to the end of its value.
    """
    value = decode_json(text)
    if value is not None:
        return value
    decoder = json.JSONDecoder()
    tries = 0
    pos = 0
    while tries < max_tries and pos < len(text):
        if text[pos] in "{[":
            tries += 1
            try:
                value = decoder.raw_decode(text, pos)[0]
            except _DECODE_ERRORS:
                value = None
            if value is not None:
                return value
        nl = text.find("\n", pos)
        if nl < 0:
            break
        pos = nl + 1
    return None


def get_str(obj: dict[str, Any], key: str) -> str | None:
    """``obj[key]`` when it is a string."""
    value = obj.get(key)
    return value if isinstance(value, str) else None


def get_int(obj: dict[str, Any], key: str) -> int | None:
    """``obj[key]`` when it is an integer (not a bool)."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def get_dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    """``obj[key]`` when it is an object, else an empty one."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def get_number(obj: dict[str, Any], key: str) -> float | None:
    """``obj[key]`` as a float when it is a number."""
    value = obj.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def int_fields(obj: dict[str, Any], rename: dict[str, str] | None = None) -> dict[str, int]:
    """The integer-valued fields of ``obj`` (nested objects skipped), optionally renamed."""
    out: dict[str, int] = {}
    for key, value in obj.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[(rename or {}).get(key, key)] = value
    return out


def iter_dicts(value: object) -> Iterator[dict[str, Any]]:
    """The event objects in a decoded value: itself, or the objects of an array."""
    if isinstance(value, dict):
        yield value
    elif isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


@dataclass
class Collector:
    """Accumulates a parser's events, its streamed text and its single signal."""

    events: list[Event] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    signalled: bool = False
    separate_next: bool = False

    def emit(self, text: str, separator: str = "") -> None:
        """Stream ``text``; when ``separate_next`` is set and text was already streamed,
        prefix ``separator`` (a new message or block begins)."""
        if not text:
            return
        if self.separate_next and self.parts and separator:
            text = separator + text
        self.separate_next = False
        self.parts.append(text)
        self.events.append(TextDelta(text))

    def signal(self, verdict: Verdict) -> None:
        """Report an early failure, once per run."""
        if not self.signalled:
            self.signalled = True
            self.events.append(Signal(verdict))

    def take(self) -> list[Event]:
        """Return and clear the pending events."""
        events, self.events = self.events, []
        return events

    def text(self) -> str:
        """Everything streamed so far."""
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def settle(self, final: str | None) -> None:
        """Reconcile the streamed text with the CLI's own final answer.

        Nothing streamed: stream ``final`` whole. ``final`` extends what was streamed:
        stream the rest. Otherwise what was streamed stands (it cannot be taken back).
        """
        if not final:
            return
        streamed = self.text()
        if not streamed:
            self.emit(final)
        elif len(final) > len(streamed) and final.startswith(streamed):
            self.separate_next = False
            self.emit(final[len(streamed):])


_TYPE_PREFIX = '{"type":"'
_TYPE_START = len(_TYPE_PREFIX)


class JsonLinesParser:
    """Base of the structured parsers: JSON lines (or one JSON document) in, events out.

    Subclasses set :attr:`wanted_types`, handle each decoded object in :meth:`on_event`,
    settle the final text in :meth:`on_end`, and fill :attr:`result` (all but ``text``).
    """

    #: Lines that begin ``{"type":"X"`` with X outside this set are skipped undecoded
    #: (a cheap prefilter: a CLI's bulkiest lines are often ones no parser needs).
    wanted_types: frozenset[str] | None = None
    #: Buffer the whole output and decode it at the end (``--output-format json``).
    whole_document: bool = False

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._doc: list[str] = []
        self._doc_size = 0
        self.out = Collector()
        self.result = ParseResult("")

    def feed(self, chunk: str) -> list[Event]:
        """Take the next piece of stdout; return the events it completes."""
        if self.whole_document:
            if self._doc_size <= MAX_LINE_CHARS:
                self._doc.append(chunk)
                self._doc_size += len(chunk)
                if self._doc_size > MAX_LINE_CHARS:
                    self._doc = []  # too large to be a document we can use
            return []
        for line in self._lines.feed(chunk):
            self._line(line)
        return self.out.take()

    def finish(self) -> tuple[list[Event], ParseResult]:
        """Flush at end of output: the last events, and the result."""
        if self.whole_document:
            doc = "".join(self._doc)
            self._doc = []
            value = decode_document(doc)
            if value is None:
                for line in doc.split("\n"):
                    self._line(line)
            else:
                for event in iter_dicts(value):
                    self.on_event(event)
        else:
            rest = self._lines.rest()
            if rest:
                self._line(rest)
        self.on_end()
        self.result.text = self.out.text()
        return self.out.take(), self.result

    def _line(self, line: str) -> None:
        wanted = self.wanted_types
        if wanted is not None and line.startswith(_TYPE_PREFIX):
            end = line.find('"', _TYPE_START, _TYPE_START + 64)
            if end > 0 and line[_TYPE_START:end] not in wanted:
                return
        for event in iter_dicts(decode_json(line)):
            self.on_event(event)

    def feed_stderr(self, chunk: str) -> list[Event]:
        """Most CLIs tell nothing on stderr that their stdout will not: no events."""
        return []

    def on_event(self, event: dict[str, Any]) -> None:
        """Handle one decoded event object."""

    def on_end(self) -> None:
        """Settle the text and the verdict once the output has ended."""
