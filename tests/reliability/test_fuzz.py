"""Hypothesis on the pure layers, where tests/test_*.py do not reach already.

Those files fuzz the framer with any bytes and the dispatcher with any JSON value for
*shape*; here the properties are stronger or cover what they do not:

- framing: any bytes give the same messages however they are cut; valid LSP messages
  with malformed header sections between them all come through, in order;
- dispatch: every request is answered per the spec: exactly one reply per request with
  its id, none per notification, one per invalid element, an array for a batch;
- registry: any TOML document (tables generated from the schema's keys and any TOML
  values, serialised) and any text only ever raise ``ConfigError``; a registry that
  validates renders and can be spawned;
- argv: any valid command template with any prompt, model and session renders to the
  template with each value as one whole element, or is refused with -32602;
- parsers: real recordings mutated anywhere (any field of any event made any JSON value,
  junk lines between), cut at any points, never raise and parse alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmd.config import PLACEHOLDERS, Blueprint, parse_registry
from llmd.errors import ConfigError, InvalidParams
from llmd.parsers import PARSERS, Signal, TextDelta, make_parser
from llmd.parsers.ratelimit import DEFAULT_PATTERNS, classify
from llmd.process.argv import FORCED_ENV, child_env, render
from llmd.protocol.framing import Frame, Framer, FramingError, Message, TooLarge
from llmd.server.dispatch import Dispatcher, Method, Session
from tests.harness import feed_all
from tests.reliability.support import tally

FIXTURES = Path(__file__).parent.parent / "fixtures" / "real-clis"


@st.composite
def cuts_of(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=16)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def summary(frames: list[Frame]) -> tuple[list[bytes], int, bool]:
    """What must not depend on the cutting: the messages, the errors, the close."""
    bodies = [f.body for f in frames if isinstance(f, Message)]
    errors = sum(isinstance(f, FramingError) for f in frames)
    return bodies, errors, any(isinstance(f, TooLarge) for f in frames)


# --- framing -------------------------------------------------------------------------------

# Bytes with the framings' own tokens mixed in often enough to matter.
framing_bytes = st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\n", b"\r\n", b"\r\n\r\n", b"Content-Length: ", b"content-length:",
                     b"Content-Length: 5\r\n\r\n", b"Content-Length: -1\r\n\r\n",
                     b"Content-Length: 99999999999999999999\r\n\r\n", b'{"a":1}', b":",
                     b"Content-Type: x\r\n", b" ", b"\x00", b"\xff"])),
    max_size=30).map(b"".join)


@given(st.data(), framing_bytes, st.sampled_from([b"", b"Content-Length: ", b" \r\n"]),
       st.sampled_from([16, 64, 1024]))
@settings(max_examples=500, deadline=None)
def test_any_bytes_give_the_same_frames_however_cut(data: st.DataObject, raw: bytes,
                                                    prefix: bytes, limit: int) -> None:
    tally("inputs")
    stream = prefix + raw
    whole = summary(Framer(limit).feed(stream))
    chunks = data.draw(cuts_of(stream))
    framer = Framer(limit)
    assert summary(feed_all(framer, chunks)) == whole
    bytewise = [stream[i:i + 1] for i in range(len(stream))]
    assert summary(feed_all(Framer(limit), bytewise)) == whole
    assert framer.closed == whole[2]


def lsp_message(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n%b" % (len(body), body)


# A malformed header section: lines that never say content-length, then a blank line.
header_garbage = st.lists(
    st.one_of(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
              st.sampled_from(["X-Foo: bar", "no colon here", ": empty name", "Content-Type"])),
    min_size=1, max_size=3,
).filter(lambda lines: not any("content-length" in ln.lower() for ln in lines)).map(
    lambda lines: "".join(ln + "\r\n" for ln in lines).encode() + b"\r\n")


@given(st.data(), st.lists(st.tuples(st.binary(max_size=60), st.none() | header_garbage),
                           min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_lsp_recovers_every_message_around_malformed_headers(
        data: st.DataObject, parts: list[tuple[bytes, bytes | None]]) -> None:
    tally("inputs")
    stream = b""
    for body, garbage in parts:
        stream += lsp_message(body) + (garbage or b"")
    framer = Framer(64)
    frames = feed_all(framer, data.draw(cuts_of(stream)))
    bodies, errors, closed = summary(frames)
    assert bodies == [body for body, _ in parts]
    assert errors <= sum(1 for _, garbage in parts if garbage)
    assert not closed
    assert framer.buffered == 0 or parts[-1][1] is not None


# JSON request bodies whose text holds colons and header-like words, never the resync token.
request_bodies = st.builds(
    lambda i, text: json.dumps({"jsonrpc": "2.0", "id": i, "method": "m",
                                "params": {"t": text}}, ensure_ascii=False).encode(),
    st.integers(0, 10**6),
    st.text(st.sampled_from("ab: -\u00e9\r\n}Content-Type"), max_size=40),
).filter(lambda body: b"content-length:" not in body.lower())


@given(st.data(), st.lists(st.tuples(request_bodies, st.integers(0, 200), st.booleans()),
                           min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_lsp_a_too_short_length_never_swallows_the_next_message(
        data: st.DataObject, parts: list[tuple[bytes, int, bool]]) -> None:
    tally("inputs")
    stream = b""
    expected: list[bytes] = []
    for body, short, typed in parts:
        # Cut 0 (well-formed) up to all but the first byte; the header order varies too.
        length = len(body) - min(short, len(body) - 1)
        headers = b"Content-Length: %d\r\n" % length
        if typed:
            headers = b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + headers
        stream += headers + b"\r\n" + body
        expected.append(body[:length])
    frames = feed_all(Framer(1024), data.draw(cuts_of(stream)))
    bodies, errors, closed = summary(frames)
    assert bodies == expected
    assert errors <= sum(1 for _, short, _ in parts[:-1] if short)
    assert not closed


# --- dispatch --------------------------------------------------------------------------------


async def _echo(params: Any, ctx: Any) -> Any:
    return {"ok": True}


async def _boom(params: Any, ctx: Any) -> Any:
    raise RuntimeError("a bug")


METHODS = [Method("echo", _echo), Method("boom", _boom)]

finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=10)
json_any = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                        max_leaves=12)
valid_ids = st.integers(-(2**63), 2**63) | finite | st.text(max_size=8) | st.none()
message_members = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.just("2.0") | st.just("2.0") | json_any,
    "method": st.sampled_from(["echo", "boom", "nope", "$/cancelRequest"]) | json_any,
    "params": st.dictionaries(st.text(max_size=4), json_any, max_size=2)
    | st.lists(json_any, max_size=2) | json_any,
    "id": valid_ids | json_any,
})
elements = message_members | json_any


def valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float, str)) and not isinstance(value, bool))


def expected_reply_ids(element: Any) -> list[Any]:
    """The ids the spec's replies to one element carry ([] for a notification)."""
    if not isinstance(element, dict):
        return [None]
    has_id = "id" in element and valid_id(element["id"])
    well_formed = (element.get("jsonrpc") == "2.0" and isinstance(element.get("method"), str)
                   and ("params" not in element or isinstance(element["params"], (dict, list)))
                   and ("id" not in element or has_id))
    if well_formed and "id" not in element:
        return []
    return [element["id"] if has_id else None]


def id_key(value: Any) -> str:
    # 1 and 1.0 are different ids on the wire; json keeps them apart.
    return json.dumps(value)


@given(st.one_of(elements, st.lists(elements, min_size=1, max_size=6)))
@settings(max_examples=400, deadline=None)
async def test_every_request_is_answered_per_the_spec(message: Any) -> None:
    tally("inputs")
    data = json.dumps(message).encode()
    with trio.fail_after(5):
        reply = await Dispatcher(METHODS).handle(data, Session())
    batch = isinstance(message, list) and bool(message)
    if message == []:
        assert reply is not None
        assert json.loads(reply)["error"]["code"] == -32600  # one object, not an array
        return
    items = message if batch else [message]
    expected = Counter(id_key(i) for item in items for i in expected_reply_ids(item))
    if not expected:
        assert reply is None
        return
    assert reply is not None
    answer = json.loads(reply)
    assert isinstance(answer, list) == batch
    got = answer if batch else [answer]
    assert Counter(id_key(r["id"]) for r in got) == expected
    for r in got:
        assert r["jsonrpc"] == "2.0"
        assert ("result" in r) != ("error" in r)
        if "error" in r:
            assert r["error"]["code"] in (-32700, -32600, -32601, -32602, -32603)
            assert "Traceback" not in json.dumps(r)


@given(st.integers(1, 200_000), st.sampled_from(["[", '{"a":', '{"jsonrpc":"2.0","id":1,'
                                                 '"method":"echo","params":[']))
@example(100_000, "[")
@settings(max_examples=30, deadline=None)
async def test_any_nesting_depth_is_answered(depth: int, opener: str) -> None:
    tally("inputs")
    data = (opener * depth).encode()
    with trio.fail_after(10):
        reply = await Dispatcher(METHODS).handle(data, Session())
    assert reply is not None
    assert json.loads(reply)["error"]["code"] == -32700  # never closed: not JSON


@given(st.integers(1, 20_000), st.sampled_from(["id", "params"]))
@settings(max_examples=30, deadline=None)
async def test_huge_numbers_are_answered(digits: int, where: str) -> None:
    tally("inputs")
    number = "9" * digits
    doc = ('{"jsonrpc":"2.0","method":"echo","id":' + number + "}" if where == "id"
           else '{"jsonrpc":"2.0","method":"echo","id":1,"params":[' + number + "]}")
    with trio.fail_after(10):
        reply = await Dispatcher(METHODS).handle(doc.encode(), Session())
    assert reply is not None
    assert set(json.loads(reply)) >= {"jsonrpc", "id"}


# --- registry --------------------------------------------------------------------------------

# re.compile warns (FutureWarning) of patterns such as "[[" that a later Python may read
# otherwise; this suite turns warnings into errors, llmd does not.
IGNORE_RE_WARNINGS = pytest.mark.filterwarnings("ignore::FutureWarning")

toml_scalar = st.one_of(
    st.text(max_size=12), st.integers(), st.integers(-3, 100), st.floats(), st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)), st.dates(), st.times())
toml_any = st.recursive(toml_scalar, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                        max_leaves=10)
program = st.sampled_from(["cli", "/bin/true", "fakecli", "{prompt}", "", "{args}"])
element = st.one_of(st.sampled_from([*PLACEHOLDERS, "--", "-p", "{prompt}x"]),
                    st.text(max_size=8))
command = st.one_of(st.tuples(program, st.lists(element, max_size=5)).map(
    lambda t: [t[0], *t[1]]), st.just(["cli", "{prompt}"]), st.just(["cli"]))
timeout = st.sampled_from(["quick", "normal", "long", "nope"]) | st.floats() | st.integers()
pattern = st.sampled_from([r"(?i)rate", "(", r"\b429\b", "[a-", "(?P<x>a)(?P=x)", "a{2,3}"]) | (
    st.text(alphabet="ab()[]{}*+?|\\^$.-1,", max_size=10))
blueprint_fields: dict[str, st.SearchStrategy[Any]] = {
    "command": command,
    "description": st.text(max_size=10),
    "prompt": st.sampled_from(["arg", "stdin", "file"]),
    "parser": st.sampled_from([*PARSERS, "xml"]),
    "timeout": timeout,
    "max_concurrency": st.integers(-1, 10**20),
    "env": st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
    "env_remove": st.lists(st.text(max_size=6), max_size=3),
    "rate_limit_patterns": st.lists(pattern, max_size=3),
    "model_args": st.lists(st.sampled_from(["--model", "{model}", "-m", "{model}x"]),
                           max_size=3),
    "default_model": st.text(max_size=6),
    "resume_args": st.lists(st.sampled_from(["--resume", "{session}", "{prompt}"]),
                            max_size=3),
    "allow_dash_prompt": st.booleans(),
    "max_output_bytes": st.integers(-1, 10**12),
    "kill_grace": st.floats(),
    "fallbacks": st.lists(st.sampled_from(["a", "b", "self", "zz"]), max_size=2),
    "retry": st.fixed_dictionaries({}, optional={
        "max_attempts": st.integers(-1, 5), "base_delay": st.floats(),
        "max_delay": st.floats(), "jitter": toml_any}),
    "health": st.fixed_dictionaries({}, optional={
        "command": st.lists(st.text(max_size=5), max_size=3), "interval": st.floats(),
        "timeout": st.floats(), "prompt": st.text(max_size=5), "expect": st.text(max_size=5),
        "cooldown": st.floats()}),
}


@st.composite
def blueprint_table(draw: st.DrawFn) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, strategy in blueprint_fields.items():
        if key == "command" or draw(st.integers(0, 3)) == 0:
            table[key] = draw(st.one_of(strategy, strategy, toml_any))
    if draw(st.integers(0, 9)) == 0:
        table[draw(st.text(max_size=8))] = draw(toml_any)
    return table


registry_docs = st.fixed_dictionaries({}, optional={
    "daemon": st.fixed_dictionaries({}, optional={
        "max_jobs": st.integers(-1, 10**30), "max_queue": st.integers(-1, 100),
        "max_message_bytes": st.integers(0, 10**9), "log_level": st.sampled_from(
            ["info", "debug", "loud"]), "stop_grace": st.floats()}) | toml_any,
    "timeouts": st.dictionaries(st.text(max_size=8), st.floats() | st.integers() | toml_any,
                                max_size=3),
    "blueprints": st.dictionaries(st.sampled_from(["a", "b", "self", "a.b", "-x", "é"])
                                  | st.text(max_size=8), blueprint_table(), max_size=3),
    "extra": toml_any,
})


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_inline(v)}"
                           for k, v in value.items()) + "}"


def toml_document(doc: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """Serialise a table: plain keys first, then sub-tables under their own headers."""
    lines = [f"{toml_string(k)} = {toml_inline(v)}" for k, v in doc.items()
             if not isinstance(v, dict)]
    for key, value in doc.items():
        if isinstance(value, dict):
            sub = (*path, key)
            lines.append("[" + ".".join(toml_string(p) for p in sub) + "]")
            lines.append(toml_document(value, sub))
    return "\n".join(lines)


@IGNORE_RE_WARNINGS
@given(registry_docs)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_registry_document_is_accepted_or_refused_with_config_error(
        doc: dict[str, Any]) -> None:
    tally("inputs")
    text = toml_document(doc)
    try:
        registry = parse_registry(text, "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert exc.code == -32008
        return
    for bp in registry.blueprints.values():
        assert registry.timeout_for(bp, None) > 0


VALID = """\
[daemon]
max_jobs = 2
[timeouts]
quick = 5
[blueprints.a]
command = ["cli", "-p", "{prompt}"]
model_args = ["--model", "{model}"]
rate_limit_patterns = ['(?i)rate']
[blueprints.a.retry]
max_attempts = 2
[blueprints.b]
command = ["cli", "{args}"]
prompt = "stdin"
fallbacks = ["a"]
env = { X = "1" }
"""


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.integers(0, 2))
        if action == 0:
            text = text[:at] + draw(st.text(max_size=6)) + text[at:]
        elif action == 1:
            text = text[:at] + text[at + draw(st.integers(1, 10)):]
        else:
            text = text[:at] + draw(st.sampled_from(
                ["[", "]", "=", '"', "\n", "{", "}", ",", "[[blueprints.a]]", "\\u0000",
                 "nan", "1979-05-27", "0x1F", "'''", "#"])) + text[at:]
    return text


@IGNORE_RE_WARNINGS
@given(st.one_of(st.text(max_size=200), mutated_text(), st.binary(max_size=200)))
@settings(max_examples=500, deadline=None)
def test_any_text_is_accepted_or_refused_with_config_error(text: str | bytes) -> None:
    tally("inputs")
    with contextlib.suppress(ConfigError):
        parse_registry(text)


@IGNORE_RE_WARNINGS
@given(st.dictionaries(st.text(max_size=8), toml_any | registry_docs, max_size=3))
@settings(max_examples=150, deadline=None)
def test_any_mapping_is_accepted_or_refused_with_config_error(doc: dict[str, Any]) -> None:
    tally("inputs")
    with contextlib.suppress(ConfigError):
        parse_registry(doc)


DEEP = 5000


@pytest.mark.parametrize("text", [
    "a = " + "[" * DEEP + "]" * DEEP,
    "a = " + "{b = " * DEEP + "1" + "}" * DEEP,
    '[blueprints.x]\ncommand = ["cli", "{prompt}"]\nrate_limit_patterns = ["'
    + "(" * DEEP + ")" * DEEP + '"]',
    '[blueprints.x]\ncommand = ["cli", "{prompt}"]\nrate_limit_patterns = ["a{99999999999}"]',
], ids=["deep-array", "deep-inline-table", "deep-regex", "huge-regex-repeat"])
def test_pathological_registries_are_config_errors(text: str) -> None:
    tally("inputs")
    with pytest.raises(ConfigError):
        parse_registry(text)


def spawnable(argv: list[str], env: dict[str, str]) -> None:
    """What ``subprocess`` requires of an argv and an environment, or it raises ValueError."""
    for arg in argv:
        assert "\x00" not in arg, f"NUL in argument {arg!r}"
    for key, value in env.items():
        assert key and "=" not in key and "\x00" not in key, f"bad variable name {key!r}"
        assert "\x00" not in value, f"NUL in the value of {key!r}"


@IGNORE_RE_WARNINGS
@given(registry_docs, st.text(max_size=10), st.none() | st.text(max_size=5),
       st.none() | st.text(max_size=5))
@example({"blueprints": {"a": {"command": ["cli\x00", "{prompt}"]}}}, "hi", None, None)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_registry_that_validates_can_be_spawned(doc: dict[str, Any], prompt: str,
                                                  model: str | None, session: str | None) -> None:
    tally("inputs")
    try:
        registry = parse_registry(toml_document(doc))
    except ConfigError:
        return
    for name, bp in registry.blueprints.items():
        env = child_env({"PATH": "/usr/bin", "HOME": "/root"}, bp)
        spawnable(bp.command + bp.model_args + bp.resume_args + bp.health.command, env)
        try:
            inv = render(bp, name, prompt, model=model, session=session)
        except InvalidParams:
            continue
        spawnable(inv.argv, env)


# --- argv ------------------------------------------------------------------------------------

literal = st.text(max_size=8).filter(
    lambda s: "\x00" not in s and not any(p in s for p in PLACEHOLDERS))


@st.composite
def valid_blueprints(draw: st.DrawFn) -> Blueprint:
    mode = draw(st.sampled_from(["arg", "stdin"]))
    before = draw(st.lists(literal, max_size=3))
    after = draw(st.lists(literal, max_size=3))
    args_at = draw(st.sampled_from(["none", "before", "after"]))
    middle = ["{prompt}"] if mode == "arg" else []
    if args_at == "before":
        before.append("{args}")
    elif args_at == "after":
        after.insert(0, "{args}")
    doc = {"blueprints": {"x": {
        "command": ["cli", *before, *middle, *after], "prompt": mode,
        "allow_dash_prompt": draw(st.booleans()),
        "model_args": draw(st.sampled_from([[], ["--model", "{model}"], ["{model}"]])),
        "resume_args": draw(st.sampled_from([[], ["--resume", "{session}"]])),
        "env": draw(st.dictionaries(st.from_regex(r"[A-Z_]{1,6}", fullmatch=True), literal,
                                    max_size=3)),
        "env_remove": draw(st.lists(st.sampled_from(["SECRET", "PATH", "NO_COLOR"]),
                                    max_size=2)),
    }}}
    return parse_registry(doc).blueprints["x"]


@given(valid_blueprints(), st.text(), st.none() | st.text(max_size=10),
       st.none() | st.text(max_size=10))
@settings(max_examples=250, deadline=None)
def test_any_template_and_prompt_render_whole_or_are_refused(
        bp: Blueprint, prompt: str, model: str | None, session: str | None) -> None:
    tally("inputs")
    try:
        inv = render(bp, "x", prompt, model=model, session=session)
    except InvalidParams as exc:
        assert exc.code == -32602
        return
    if bp.prompt == "stdin":
        assert inv.stdin == prompt.encode("utf-8", "surrogatepass")
    else:
        assert inv.stdin is None
        assert "\x00" not in prompt
    extras = ([*(model if e == "{model}" else e for e in bp.model_args)] if model else []) + (
        [*(session if e == "{session}" else e for e in bp.resume_args)] if session else [])
    # The template, in order, with the prompt and each option value placed whole.
    expected = []
    for e in bp.command:
        if e == "{args}":
            expected += extras
        elif e == "{prompt}":
            if "{args}" not in bp.command:
                expected += extras
            expected.append(prompt)
        else:
            expected.append(e)
    if "{args}" not in bp.command and "{prompt}" not in bp.command:
        expected += extras
    assert inv.argv == expected
    env = child_env({"PATH": "/usr/bin", "SECRET": "s", "NOTIFY_SOCKET": "/x",
                     "LISTEN_FDS": "1"}, bp)
    assert all(env[k] == v for k, v in FORCED_ENV.items())
    assert "NOTIFY_SOCKET" not in env and "LISTEN_FDS" not in env
    assert not set(bp.env_remove) & set(env) - set(bp.env) - set(FORCED_ENV)


# --- parsers ---------------------------------------------------------------------------------


def recording_events(name: str) -> list[Any]:
    events: list[Any] = []
    for line in (FIXTURES / f"{name}.out").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append(line)
    return events


PARSER_OF = {"claude": ["claude-stream-json", "claude-json"], "codex": ["codex-jsonl"],
             "gemini": ["gemini-stream-json", "gemini-json"]}
RECORDINGS = {path.stem: recording_events(path.stem)
              for path in sorted(FIXTURES.glob("*.out"))
              if path.stem.split("_")[0] in PARSER_OF
              and path.read_text().lstrip()[:1] in ("{", "[")}


@st.composite
def mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with some of its members replaced, removed, or left alone."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return draw(json_any)
    if isinstance(value, dict) and depth < 6:
        out = {}
        for key, item in value.items():
            if draw(st.integers(0, 12)) == 0:
                continue
            out[key] = draw(mutate(item, depth + 1))
        return out
    if isinstance(value, list) and depth < 6:
        return [draw(mutate(item, depth + 1)) for item in value]
    return value


@st.composite
def mutated_recording(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(RECORDINGS)))
    parser = draw(st.sampled_from(PARSER_OF[name.split("_")[0]] + ["text"]))
    lines: list[str] = []
    for event in RECORDINGS[name]:
        if draw(st.integers(0, 15)) == 0:
            lines.append(draw(st.sampled_from(["", "not json", "{", '{"type":', "[1,2",
                                               '{"type":"result"}', "\x00\ufffd"])))
        changed = draw(mutate(event))
        lines.append(changed if isinstance(changed, str) else json.dumps(
            changed, ensure_ascii=draw(st.booleans())))
    return parser, "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


def test_codex_item_of_any_type_does_not_raise() -> None:
    tally("inputs")
    text = '{"type": "item.completed", "item": {"type": []}}\n'
    assert run_parser("codex-jsonl", text, [])[0].text == ""


def run_parser(name: str, text: str, cuts: list[int]) -> tuple[Any, list[str], int]:
    parser = make_parser(name)
    events = []
    pos = 0
    for cut in sorted(cuts):
        events += parser.feed(text[pos:cut])
        pos = max(pos, cut)
    events += parser.feed(text[pos:])
    tail, result = parser.finish()
    events += tail
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    signals = [e for e in events if isinstance(e, Signal)]
    assert "".join(deltas) == result.text
    assert len(signals) <= 1
    classify(0, text[-65536:], "", DEFAULT_PATTERNS,
             signals[0].verdict if signals else result.error)
    return result, deltas, len(signals)


@given(mutated_recording(), st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_recordings_cut_anywhere_never_raise_and_parse_alike(
        case: tuple[str, str], data: st.DataObject) -> None:
    tally("inputs")
    name, text = case
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    whole, _, whole_signals = run_parser(name, text, [])
    cut, _, cut_signals = run_parser(name, text, cuts)
    assert cut == whole
    assert cut_signals == whole_signals


@given(st.lists(st.text(max_size=30) | json_any.map(json.dumps), max_size=12), st.data())
@settings(max_examples=300, deadline=None)
def test_any_lines_to_any_parser_cut_anywhere(lines: list[str], data: st.DataObject) -> None:
    tally("inputs")
    text = "\n".join(lines)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    for name in PARSERS:
        whole, _, _ = run_parser(name, text, [])
        assert run_parser(name, text, cuts)[0] == whole

