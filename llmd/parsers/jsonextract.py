"""Find the JSON object or array in a model's answer (the run result's ``json`` field).

Invariants:
- Pure, and never raises on any ``str``: every failure becomes ``(None, reason)``.
- Only objects and arrays count; a bare ``42`` or ``"x"`` is not "the JSON" of an answer.
- Order: the first fenced block (```` ```json ```` or a bare ```` ``` ````, also ``~~~``)
  whose body parses to an object or array; else the first position in the text where a
  complete object or array starts.
- Strict JSON (msgspec): ``NaN``/``Infinity`` are refused, so the value always
  re-encodes as JSON.
- Bounded work: finding the fences is one linear pass. The scan tries, left to right on
  the UTF-8 bytes, only the positions where an object or array can start (``{`` before
  ``"`` or ``}``, ``[`` before a value or ``]``; so 10 MB of ``{{{{`` has no candidate),
  each on a zero-copy view. Each failed try is charged ``max(TRY_COST, bytes it
  examined)`` (the rest of the text when the error gives no position: truncated input,
  nesting past the recursion limit); once the charges pass ``SCAN_BUDGET_FACTOR * len +
  SCAN_BUDGET_SLACK`` the scan stops and says so. The work is thus O(len) bytes decoded
  and at most ``(4 * len + 64 KiB) / 64`` tries; only adversarial text (thousands of
  near-valid candidates) exhausts the budget, never a normal answer.
"""

from __future__ import annotations

import re

import msgspec

NO_JSON = "no JSON object or array found in the answer"
SCAN_BUDGET_FACTOR = 4
SCAN_BUDGET_SLACK = 1 << 16
TRY_COST = 64

# A fence line: up to three spaces, then ``` or ~~~ (three or more), then an info string.
_FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^\n`]*?)[ \t]*$", re.MULTILINE)
_JSONISH_INFO = re.compile(r"(?i)^(?:json[a-z0-9]*|)$")
# Where a JSON object or array can start: "{" before a key or "}", "[" before a value or "]".
_CANDIDATE_RE = re.compile(rb'\{\s*["}]|\[\s*[\[\]{"\-0-9tfn]')
_BYTE_RE = re.compile(r"\(byte (\d+)\)")
_DECODE_ERRORS = (msgspec.DecodeError, ValueError, RecursionError)


def _fences(text: str) -> list[tuple[str, str]]:
    """Return ``(info, body)`` for each fenced block, in order (an unclosed one runs to
    the end, as in CommonMark)."""
    blocks: list[tuple[str, str]] = []
    opener: re.Match[str] | None = None
    for match in _FENCE_RE.finditer(text):
        if opener is None:
            opener = match
            continue
        mark, info = match.group(1), match.group(2)
        closes = (mark[0] == opener.group(1)[0] and len(mark) >= len(opener.group(1))
                  and not info)
        if closes:
            blocks.append((opener.group(2), text[opener.end() + 1:match.start()]))
            opener = None
    if opener is not None:
        blocks.append((opener.group(2), text[opener.end() + 1:]))
    return blocks


def _decode_whole(body: str) -> tuple[object | None, str | None]:
    try:
        value = msgspec.json.decode(body.strip().encode("utf-8", "replace"))
    except RecursionError:
        return None, "nested too deeply"
    except _DECODE_ERRORS as exc:
        return None, str(exc)
    if isinstance(value, (dict, list)):
        return value, None
    return None, f"it holds a {type(value).__name__}, not an object or array"


def _try(view: memoryview, start: int) -> tuple[object | None, int]:
    """Decode the value at ``start``: ``(value, 0)``, or ``(None, bytes examined)``."""
    try:
        return msgspec.json.decode(view[start:]), 0
    except RecursionError:
        return None, len(view) - start
    except _DECODE_ERRORS as exc:
        message = str(exc)
        where = _BYTE_RE.search(message)
        if where is None:  # truncated input, or a number out of range
            return None, len(view) - start
        pos = int(where.group(1))
        if "trailing characters" in message:
            # A complete value followed by more text; msgspec reports the byte just past
            # the first trailing one, so the value lies within the first pos - 1 bytes.
            for end in (pos - 1, pos):
                try:
                    return msgspec.json.decode(view[start:start + end]), 0
                except _DECODE_ERRORS:
                    continue
        return None, pos


def _scan(text: str) -> tuple[object | None, str | None]:
    # Bytes, so that each try decodes a zero-copy view from its start to the end.
    data = text.encode("utf-8", "replace")
    view = memoryview(data)
    budget = SCAN_BUDGET_FACTOR * len(data) + SCAN_BUDGET_SLACK
    spent = 0
    for match in _CANDIDATE_RE.finditer(data):
        value, examined = _try(view, match.start())
        if value is not None:
            return value, None
        spent += max(TRY_COST, examined)
        if spent > budget:
            return None, f"{NO_JSON} (search stopped after examining {spent} bytes)"
    return None, NO_JSON


def extract_json(text: str) -> tuple[object | None, str | None]:
    """Find the JSON object or array in an answer.

    Args:
        text: The model's final answer.

    Returns:
        ``(value, None)`` when found (a ``dict`` or ``list``), else ``(None, reason)``:
        ``"fenced block is not valid JSON: ..."`` when a JSON (or unlabelled) fence was
        there but broken and nothing else was found, or ``"no JSON object or array found
        in the answer"``.
    """
    fence_error: str | None = None
    for info, body in _fences(text):
        if not _JSONISH_INFO.match(info):
            continue
        value, error = _decode_whole(body)
        if error is None:
            return value, None
        if fence_error is None and (info or body.lstrip()[:1] in ("{", "[")):
            fence_error = f"fenced block is not valid JSON: {error}"
    value, error = _scan(text)
    if error is None:
        return value, None
    if fence_error is not None and error == NO_JSON:
        return None, fence_error
    return None, error
