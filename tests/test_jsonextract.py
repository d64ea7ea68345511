"""Finding the JSON object or array in an answer."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmd.parsers.jsonextract import NO_JSON, extract_json


@pytest.mark.parametrize(("text", "value"), [
    ('{"a": 1}', {"a": 1}),
    ("[1, 2]", [1, 2]),
    ('Here you go:\n```json\n{"a": 1}\n```\nDone.', {"a": 1}),
    ('```\n[true, null]\n```', [True, None]),
    ('```JSON\n{"a": 1}\n```', {"a": 1}),
    ('~~~json\n{"t": "~"}\n~~~', {"t": "~"}),
    ('  ```json\n  {"indented": true}\n  ```', {"indented": True}),
    ('```python\nx = {"py": 1}\n```\n```json\n{"js": 2}\n```', {"js": 2}),
    ('```json\n{"first": 1}\n```\n```json\n{"second": 2}\n```', {"first": 1}),
    ('```json\n42\n```\n```json\n{"obj": 1}\n```', {"obj": 1}),
    ('```json\n{"unclosed": 1}\n', {"unclosed": 1}),
    ('The {braces} in prose, then {"k": [1, {"n": null}]} and {"later": 1}',
     {"k": [1, {"n": None}]}),
    ('answer = {"a": "}{"} trailing', {"a": "}{"}),
    ('prose {"a": 1', None),  # incomplete
    ("```json\nnot json\n```\nbut here: [1, 2]", [1, 2]),
    ('Outer [1, {"inner": true} unclosed', {"inner": True}),
])
def test_examples(text: str, value: object) -> None:
    found, error = extract_json(text)
    assert found == value
    assert (error is None) == (value is not None)


def test_fenced_block_wins_over_earlier_prose_json() -> None:
    text = 'First [1] then:\n```json\n{"real": true}\n```'
    assert extract_json(text) == ({"real": True}, None)


def test_nothing_found() -> None:
    for text in ("", "plain words", "42", '"a string"', "true", "{not json}", "[1, 2"):
        assert extract_json(text) == (None, NO_JSON)


def test_broken_fence_is_reported() -> None:
    value, error = extract_json('```json\n{"a": 1,}\n```')
    assert value is None
    assert error is not None and error.startswith("fenced block is not valid JSON: ")


def test_broken_unlabelled_fence_of_code_is_not_blamed() -> None:
    assert extract_json("```\nls -la\n```") == (None, NO_JSON)


def test_scalar_fence_says_why() -> None:
    _value, error = extract_json("```json\n42\n```")
    assert error == "fenced block is not valid JSON: it holds a int, not an object or array"


def test_nan_and_infinity_are_not_json() -> None:
    assert extract_json("[NaN]") == (None, NO_JSON)
    assert extract_json('{"x": Infinity} or [1]') == ([1], None)


def test_deep_nesting_does_not_raise() -> None:
    value, error = extract_json("[" * 100_000 + "]" * 100_000)
    assert value is None and error is not None
    text = "[" * 5000 + ' {"ok": 1}'
    value, error = extract_json(text)
    assert error is not None or value == {"ok": 1}


@pytest.mark.parametrize("text", [
    "{" * 10_000_000,
    "[" * 10_000_000,
    '{"a":' * 2_000_000,
    "[1," * 3_000_000,
    '["[", ' * 1_500_000,
    "x{" * 5_000_000,
    '{"' * 5_000_000,
    "[0 " * 3_000_000,
    '{"a" ' * 2_000_000,
])
def test_ten_megabytes_of_openers_is_fast(text: str) -> None:
    start = time.perf_counter()
    value, error = extract_json(text)
    assert value is None and error is not None and error.startswith(NO_JSON)
    assert time.perf_counter() - start < 10


def test_json_after_many_failed_candidates_is_found() -> None:
    for noise in ("{x} " * 100_000, '{"a" ' * 1000, "[1 " * 1000, "[[[x "):
        assert extract_json(noise + '{"found": true}') == ({"found": True}, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
containers = st.one_of(st.lists(json_values, max_size=4),
                       st.dictionaries(st.text(max_size=5), json_values, max_size=4))
prose = st.text(alphabet=st.characters(exclude_characters="{[`~", codec="utf-8"), max_size=40)


@given(st.text())
def test_never_raises(text: str) -> None:
    value, error = extract_json(text)
    assert (value is None) != (error is None)
    assert value is None or isinstance(value, (dict, list))


@settings(max_examples=200)
@given(value=containers, before=prose, after=st.text(max_size=40), indent=st.sampled_from(
    [None, 2]))
def test_round_trip_in_prose(value: object, before: str, after: str, indent: int | None) -> None:
    text = before + json.dumps(value, indent=indent) + after
    assert extract_json(text) == (value, None)


@settings(max_examples=200)
@given(value=containers, before=prose, after=prose, label=st.sampled_from(["json", ""]),
       noise=st.sampled_from(["", "[1] and {", '{"decoy": 1} ']))
def test_round_trip_in_a_fence(value: object, before: str, after: str, label: str,
                               noise: str) -> None:
    text = f"{noise}{before}\n```{label}\n{json.dumps(value, indent=2)}\n```\n{after}"
    assert extract_json(text) == (value, None)
