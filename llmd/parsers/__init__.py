"""Output parsers: a CLI's stdout in, live text deltas, early signals and a result out.

Invariants:
- Every parser is pure and incremental (see :mod:`llmd.parsers.base` for the interface):
  ``feed(chunk) -> events``, then ``finish() -> (events, result)``.
- The :class:`TextDelta` texts of ``feed`` and ``finish``, concatenated, equal
  ``ParseResult.text`` exactly, for every parser and any way of cutting the input.
- :data:`PARSERS` holds exactly the names that :data:`llmd.config.KNOWN_PARSERS`
  accepts in a blueprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from llmd.parsers.base import Event, Parser, ParseResult, ParserFactory, Signal, TextDelta
from llmd.parsers.claude import ClaudeJsonParser, ClaudeStreamParser
from llmd.parsers.codex import CodexParser
from llmd.parsers.gemini import GeminiJsonParser, GeminiStreamParser
from llmd.parsers.text import TextParser

__all__ = [
    "PARSERS",
    "Event",
    "ParseResult",
    "Parser",
    "ParserFactory",
    "Signal",
    "TextDelta",
    "make_parser",
]

PARSERS: Mapping[str, ParserFactory] = MappingProxyType({
    "text": TextParser,
    "claude-stream-json": ClaudeStreamParser,
    "claude-json": ClaudeJsonParser,
    "codex-jsonl": CodexParser,
    "gemini-stream-json": GeminiStreamParser,
    "gemini-json": GeminiJsonParser,
})


def make_parser(name: str) -> Parser:
    """Make a fresh parser for one run.

    Args:
        name: A blueprint's ``parser`` value.

    Returns:
        A new parser.

    Raises:
        KeyError: No parser has that name.
    """
    try:
        factory = PARSERS[name]
    except KeyError:
        raise KeyError(f"unknown parser {name!r} (known: {', '.join(sorted(PARSERS))})") from None
    return factory()
