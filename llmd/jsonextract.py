"""Find the JSON object or array in a model's answer (the run result's ``json`` field).

Invariants:
- Pure, and never raises on any ``str``: every failure becomes ``(None, reason)``.
- Only objects and arrays count; a bare ``42`` or ``"x"`` is not "the JSON" of an answer.
- Order: the first fenced block (```` ```json ```` or a bare ```` ``` ````, also ``~~~``)
  whose body parses to an object or array; else the first position in the text where a
  complete object or array starts.
- Strict JSON: ``NaN``/``Infinity`` are refused, so the value always re-encodes as JSON.
- Bounded work: finding the fences is one linear pass; the scan tries ``{``/``[``
  positions left to right, and each failed try is charged the characters it examined
  (its error position; the rest of the text when the failure carries no position, such as
  nesting deeper than the interpreter's recursion limit). Once the charges pass
  ``SCAN_BUDGET_FACTOR * len(text) + SCAN_BUDGET_SLACK`` the scan stops and says so.
  Text such as 10 MB of ``{{{{`` costs one character per try, so it is linear; only
  adversarial text (long valid prefixes that never close) exhausts the budget.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

NO_JSON = "no JSON object or array found in the answer"
SCAN_BUDGET_FACTOR = 4
SCAN_BUDGET_SLACK = 1 << 16

# A fence line: up to three spaces, then ``` or ~~~ (three or more), then an info string.
_FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^\n`]*?)[ \t]*$", re.MULTILINE)
_JSONISH_INFO = re.compile(r"(?i)^(?:json[a-z0-9]*|)$")
_START_RE = re.compile(r"[{\[]")


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


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
        value = _DECODER.decode(body.strip())
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as exc:
        return None, str(exc)
    if isinstance(value, (dict, list)):
        return value, None
    return None, f"it holds a {type(value).__name__}, not an object or array"


def _scan(text: str) -> tuple[object | None, str | None]:
    budget = SCAN_BUDGET_FACTOR * len(text) + SCAN_BUDGET_SLACK
    spent = 0
    for match in _START_RE.finditer(text):
        start = match.start()
        try:
            value, _end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            spent += max(1, exc.pos - start)
        except (ValueError, RecursionError):
            # No position to charge by (huge integer, NaN, nesting): assume the worst.
            spent += len(text) - start
        else:
            return value, None
        if spent > budget:
            return None, f"{NO_JSON} (search stopped after examining {spent} characters)"
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
