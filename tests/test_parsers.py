"""The output parsers, on every real recording and on synthetic edge cases.

Every ``.out`` recording in ``fixtures/real-clis`` is parsed whole and in random-sized
chunks; the extracted text, session, usage, cost and the failure class (the parser's
verdict run through :func:`llmd.parsers.ratelimit.classify` with the recorded exit status) are
asserted. The streaming invariant (deltas concatenate to ``ParseResult.text``) is checked
on every parse.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmd.config import KNOWN_PARSERS
from llmd.parsers import PARSERS, ParseResult, Signal, TextDelta, make_parser
from llmd.parsers.base import LineSplitter, decode_document
from llmd.parsers.ratelimit import DEFAULT_PATTERNS, Verdict, classify
from tests.harness import recorded_exit

FIXTURES = Path(__file__).parent / "fixtures" / "real-clis"
HELLO = "Hello from the mock LLM server."
HELLO_LINE = HELLO + "\n"  # plain-text CLIs end the answer with a newline


@dataclass
class Parsed:
    """Everything one parse produced."""

    result: ParseResult
    deltas: list[str]
    signals: list[Verdict]


def parse(parser_name: str, data: str, chunks: list[int] | None = None) -> Parsed:
    """Feed ``data`` whole, or cut at the given sizes; check the streaming invariant."""
    parser = make_parser(parser_name)
    events = []
    if chunks is None:
        events += parser.feed(data)
    else:
        pos = 0
        for size in chunks:
            events += parser.feed(data[pos:pos + size])
            pos += size
        events += parser.feed(data[pos:])
    tail, result = parser.finish()
    events += tail
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    signals = [e.verdict for e in events if isinstance(e, Signal)]
    assert "".join(deltas) == result.text
    assert len(signals) <= 1
    return Parsed(result, deltas, signals)


def random_chunks(data: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes = []
    total = 0
    while total < len(data):
        size = rng.choice([1, 2, 3, 7, 64, 333, 4096])
        sizes.append(size)
        total += size
    return sizes


@dataclass(frozen=True)
class Expect:
    """What a recording must parse to."""

    parser: str
    text: str = HELLO
    session: str | None = None
    usage: dict[str, int] = field(default_factory=dict)  # a subset that must be present
    cost: float | None = None
    kind: str = "ok"
    signal: str | None = None  # the kind of the early Signal, if one must come
    signal_retry_after: float | None = None


EXPECTED: dict[str, Expect] = {
    # claude: stream-json puts the session in every event; errors come on stdout as a
    # result with is_error true (subtype still "success") and api_error_status.
    "claude_429_default_stream": Expect(
        "claude-stream-json", "", "0065e03e-0800-4d2c-8631-54182cc27d3d",
        {"input_tokens": 0, "output_tokens": 0}, 0.0, "rate_limit", "rate_limit", 1.0),
    "claude_429_r0": Expect(
        "claude-json", "", "9c981772-382d-4130-a63b-f210fda318a3",
        {"input_tokens": 0, "output_tokens": 0}, 0.0, "rate_limit"),
    "claude_429_r1_stream": Expect(
        "claude-stream-json", "", "1c441b6d-8a9c-45d9-bb00-ef0ebe688eff",
        {"output_tokens": 0}, 0.0, "rate_limit", "rate_limit", 1.0),
    "claude_down_default_stream": Expect(
        "claude-stream-json", "", "0b271be7-7490-4909-afce-c5eb0f5c7d6d", {}, 0.0, "failure"),
    "claude_down_r0": Expect(
        "claude-json", "", "60e4d4ab-3fab-4379-b93e-83f4ff82308c", {}, 0.0, "failure"),
    "claude_json": Expect(
        "claude-json", HELLO, "e984928a-7a34-4b1a-bc18-fda8588d7f5d",
        {"input_tokens": 10, "output_tokens": 6, "cache_read_input_tokens": 0,
         "cache_creation_input_tokens": 0}, 0.0002),
    "claude_stream": Expect(
        "claude-stream-json", HELLO, "c28757ac-ff79-46d1-a709-04b8c88149d4",
        {"input_tokens": 10, "output_tokens": 6}, 0.0002),
    "claude_stream_partial": Expect(
        "claude-stream-json", HELLO, "6f2567ee-063b-474f-a391-668fbfcdfd5f",
        {"input_tokens": 10, "output_tokens": 6}, 0.0002),
    "claude_text": Expect("text", HELLO_LINE),
    "claude_version": Expect("text", "2.1.197 (Claude Code)\n"),
    # codex: the session is thread.started's thread_id; errors are "error" events and a
    # final turn.failed; unreachable endpoint never ends (killed: 124 from timeout(1)).
    "codex_429_default": Expect(
        "codex-jsonl", "", "01a2195d-7007-7ac0-9227-8aad58cd23f7", {}, None, "rate_limit",
        "rate_limit"),
    "codex_429_r0": Expect(
        "codex-jsonl", "", "01a2195d-6eb0-7020-9e19-8fbfa5b5d91b", {}, None, "rate_limit",
        "rate_limit"),
    "codex_down_default": Expect(
        "codex-jsonl", "", "01a2194f-3ddb-7811-94df-9d4fbf265fe5", {}, None, "failure"),
    "codex_down_hangs": Expect(
        "codex-jsonl", "", "01a2195d-8517-7270-91c4-43aab40f7622", {}, None, "failure"),
    "codex_json": Expect(
        "codex-jsonl", HELLO, "01a2195d-6d3d-7e31-9597-40f234cd1c3f",
        {"input_tokens": 10, "output_tokens": 6, "cached_input_tokens": 0}),
    "codex_text": Expect("text", HELLO_LINE),
    "codex_version": Expect("text", "codex-cli 0.171.0\n"),
    # gemini: init carries the session; the stream's result has status "error" and only
    # the message "Resource has been exhausted" (the 429 itself is on stderr).
    "gemini_429_default_stream": Expect(
        "gemini-stream-json", "", "64ffd851-9e64-4f1d-9441-da54c337c270",
        {"input_tokens": 0, "output_tokens": 0}, None, "rate_limit"),
    "gemini_429_fast": Expect(
        "gemini-stream-json", "", "2774aa88-ea47-4a31-9cb2-ad2a1b11f730",
        {"input_tokens": 0, "output_tokens": 0}, None, "rate_limit"),
    "gemini_down_default_stream": Expect(
        "gemini-stream-json", "", "d44d55f0-9fea-44a8-b401-d56fbaa698b9", {}, None, "failure"),
    "gemini_down_fast": Expect(
        "gemini-stream-json", "", "5679775d-996f-4ed2-a47a-1108cb94a13b", {}, None, "failure"),
    "gemini_json": Expect(
        "gemini-json", HELLO, "ef6b68b6-4324-487f-9a1e-b8803c041aca",
        {"input_tokens": 20, "output_tokens": 10, "total_tokens": 30}),
    "gemini_stream": Expect(
        "gemini-stream-json", HELLO, "b4433c4d-a1b1-4ec7-876a-0833cd024438",
        {"input_tokens": 20, "output_tokens": 10, "total_tokens": 30}),
    "gemini_stream_m25": Expect(
        "gemini-stream-json", HELLO, "ed21b46b-fae7-4a92-af25-b1f2156e4fac",
        {"input_tokens": 10, "output_tokens": 6}),
    "gemini_text": Expect("text", HELLO_LINE),
    "gemini_version": Expect("text", "0.61.0\n"),
    # llm: plain text; errors only on stderr.
    "llm_429": Expect("text", "", kind="rate_limit"),
    "llm_down": Expect("text", "", kind="failure"),
    "llm_echo": Expect("text", (FIXTURES / "llm_echo.out").read_text()),
    "llm_echo_raw": Expect("text", "exact reply text\n"),
    "llm_markov": Expect("text", (FIXTURES / "llm_markov.out").read_text()),
    "llm_mock_chat": Expect("text", HELLO_LINE),
    "llm_mock_chat_nostream": Expect("text", HELLO_LINE),
    "llm_version": Expect("text", "llm, version 0.36\n"),
}

RECORDINGS = sorted(p.stem for p in FIXTURES.glob("*.out")
                    if p.stem.split("_")[0] in ("claude", "codex", "gemini", "llm"))


def test_every_recording_has_an_expectation() -> None:
    assert RECORDINGS, "fixtures missing"
    assert set(RECORDINGS) == set(EXPECTED)


def check(name: str, parsed: Parsed) -> None:
    expect = EXPECTED[name]
    result = parsed.result
    assert result.text == expect.text
    if expect.parser != "text":
        assert result.session == expect.session
    if expect.usage:
        assert result.usage is not None
        assert {k: result.usage[k] for k in expect.usage} == expect.usage
    assert result.cost_usd == expect.cost
    stdout = (FIXTURES / f"{name}.out").read_text()
    stderr = (FIXTURES / f"{name}.err").read_text()
    verdict = classify(recorded_exit(name), stdout[-8192:], stderr[-8192:], DEFAULT_PATTERNS,
                       result.error)
    assert verdict.kind == expect.kind, verdict
    if expect.kind != "ok":
        assert verdict.reason and "\n" not in verdict.reason
    if expect.signal is None:
        assert parsed.signals == []
    else:
        assert [s.kind for s in parsed.signals] == [expect.signal]
        assert parsed.signals[0].retry_after_s == expect.signal_retry_after


@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_whole(name: str) -> None:
    data = (FIXTURES / f"{name}.out").read_text()
    check(name, parse(EXPECTED[name].parser, data))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_in_random_chunks(name: str, seed: int) -> None:
    data = (FIXTURES / f"{name}.out").read_text()
    whole = parse(EXPECTED[name].parser, data)
    cut = parse(EXPECTED[name].parser, data, random_chunks(data, seed))
    check(name, cut)
    assert cut.result == whole.result


@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_char_by_char(name: str) -> None:
    data = (FIXTURES / f"{name}.out").read_text()
    check(name, parse(EXPECTED[name].parser, data, [1] * len(data)))


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
@pytest.mark.parametrize("name", RECORDINGS)
def test_any_parser_on_any_recording_never_raises(parser_name: str, name: str) -> None:
    parse(parser_name, (FIXTURES / f"{name}.out").read_text(), random_chunks("x" * 9000, 1))


def test_partial_messages_stream_live() -> None:
    parsed = parse("claude-stream-json", (FIXTURES / "claude_stream_partial.out").read_text())
    assert parsed.deltas == ["Hello ", "from ", "the ", "mock ", "LLM ", "server."]


def test_gemini_stream_deltas_live() -> None:
    parsed = parse("gemini-stream-json", (FIXTURES / "gemini_stream.out").read_text())
    assert parsed.deltas == ["Hello ", "from ", "the ", "mock ", "LLM ", "server."]


def test_claude_signal_comes_before_the_result() -> None:
    parser = make_parser("claude-stream-json")
    recorded = (FIXTURES / "claude_429_default_stream.out").read_text().splitlines(True)
    events = parser.feed("".join(recorded[:2]))  # init + the first api_retry
    assert len(events) == 1 and isinstance(events[0], Signal)
    verdict = events[0].verdict
    assert (verdict.kind, verdict.retry_after_s) == ("rate_limit", 1.0)
    assert "429" in verdict.reason


def test_codex_reconnect_429_is_an_immediate_signal() -> None:
    parser = make_parser("codex-jsonl")
    recorded = (FIXTURES / "codex_429_default.out").read_text().splitlines(True)
    events = parser.feed("".join(recorded[:3]))
    assert [type(e) for e in events] == [Signal]


def test_codex_waiting_for_network_is_no_signal_but_kept() -> None:
    data = (FIXTURES / "codex_down_hangs.out").read_text()
    parsed = parse("codex-jsonl", data)
    assert parsed.signals == []
    assert parsed.result.error is not None
    assert "waiting for network" in parsed.result.error.reason


@pytest.mark.parametrize(("recording", "kind"), [
    ("gemini_429_default_stream.err", "rate_limit"),  # "Attempt 1 failed with status 429"
    ("gemini_down_default_stream.err", "failure"),  # "Attempt 1 failed. ... fetch failed"
    ("gemini_429_fast.err", None),  # maxAttempts 1: no retry to cut short
    ("gemini_down_fast.err", None),
])
def test_gemini_retry_on_stderr_is_an_immediate_signal(recording: str,
                                                        kind: str | None) -> None:
    parser = make_parser("gemini-stream-json")
    text = (FIXTURES / recording).read_text()
    events = [e for i in range(0, len(text), 7) for e in parser.feed_stderr(text[i:i + 7])]
    assert not any(isinstance(e, TextDelta) for e in events)
    assert [e.verdict.kind for e in events if isinstance(e, Signal)] == ([kind] if kind else [])


def test_only_gemini_reads_stderr() -> None:
    line = "Attempt 1 failed with status 429. Retrying with backoff... _ApiError: {}\n"
    for name in sorted(PARSERS):
        expected = 1 if name.startswith("gemini") else 0
        assert len(make_parser(name).feed_stderr(line)) == expected, name


def test_gemini_json_error_goes_to_stderr() -> None:
    # With -o json gemini leaves stdout empty on failure; classify reads stderr.
    parsed = parse("gemini-json", "")
    assert parsed.result.text == "" and parsed.result.error is None
    stderr = (FIXTURES / "gemini_429_fast.err").read_text()
    assert classify(173, "", stderr, DEFAULT_PATTERNS, parsed.result.error).kind == "rate_limit"


# --- synthetic cases ------------------------------------------------------

def lines(*events: object) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def claude_assistant(text: str, msg_id: str, **extra: object) -> dict[str, object]:
    return {"type": "assistant", "session_id": "S",
            "message": {"id": msg_id, "content": [{"type": "text", "text": text}]}, **extra}


def claude_result(text: str, **extra: object) -> dict[str, object]:
    return {"type": "result", "subtype": "success", "is_error": False, "result": text,
            "session_id": "S", **extra}


def claude_delta(text: str) -> dict[str, object]:
    return {"type": "stream_event", "session_id": "S", "parent_tool_use_id": None,
            "event": {"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": text}}}


def claude_start(msg_id: str) -> dict[str, object]:
    return {"type": "stream_event", "session_id": "S",
            "event": {"type": "message_start", "message": {"id": msg_id}}}


def test_claude_result_alone_is_streamed_at_finish() -> None:
    parser = make_parser("claude-stream-json")
    assert parser.feed(lines(claude_result("the answer"))) == []
    events, result = parser.finish()
    assert events == [TextDelta("the answer")]
    assert result.text == "the answer"


def test_claude_result_extending_the_stream_adds_the_rest() -> None:
    parsed = parse("claude-stream-json",
                   lines(claude_start("m1"), claude_delta("Hel"), claude_result("Hello")))
    assert parsed.deltas == ["Hel", "lo"]


def test_claude_streamed_text_stands_when_the_result_differs() -> None:
    data = lines(claude_assistant("Let me look.", "m1"),
                 {"type": "user", "message": {"content": [{"type": "tool_result"}]}},
                 claude_assistant("It is 4.", "m2"), claude_result("It is 4."))
    parsed = parse("claude-stream-json", data)
    assert parsed.result.text == "Let me look.\n\nIt is 4."


def test_claude_partial_then_assistant_is_not_repeated() -> None:
    data = lines(claude_start("m1"), claude_delta("Hi"), claude_assistant("Hi", "m1"),
                 claude_start("m2"), claude_delta("there"), claude_assistant("there", "m2"),
                 claude_result("there"))
    assert parse("claude-stream-json", data).deltas == ["Hi", "\n\nthere"]


def test_claude_subagent_text_is_not_the_answer() -> None:
    data = lines(claude_assistant("sub", "m0", parent_tool_use_id="toolu_1"),
                 claude_assistant("main", "m1"), claude_result("main"))
    assert parse("claude-stream-json", data).result.text == "main"


def test_claude_json_verbose_array() -> None:
    doc = json.dumps([{"type": "system", "subtype": "init", "session_id": "S"},
                      claude_assistant("answer", "m1"),
                      claude_result("answer", total_cost_usd=0.5,
                                    usage={"input_tokens": 3, "output_tokens": 4})], indent=2)
    parsed = parse("claude-json", doc, random_chunks(doc, 3))
    assert parsed.result == ParseResult("answer", "S", {"input_tokens": 3, "output_tokens": 4},
                                        0.5, None)


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit"), (529, "rate_limit"),
                                              (401, "auth"), (403, "auth"), (500, "failure")])
def test_claude_api_error_status(status: int, kind: str) -> None:
    data = lines(claude_result("API Error: something", is_error=True, api_error_status=status))
    parsed = parse("claude-json", data)
    assert parsed.result.text == ""
    assert parsed.result.error is not None and parsed.result.error.kind == kind
    if kind == "auth":
        assert "log in" in parsed.result.error.reason


def test_claude_error_subtype_without_result_text() -> None:
    data = lines({"type": "result", "subtype": "error_max_turns", "is_error": True,
                  "session_id": "S"})
    error = parse("claude-stream-json", data).result.error
    assert error == Verdict("failure", None, "error_max_turns")


@pytest.mark.parametrize(("event", "kind"), [
    ({"error_status": 529, "error": "overloaded"}, "rate_limit"),
    ({"error_status": None, "error": "rate_limit"}, "rate_limit"),
    ({"error_status": 401, "error": "authentication_failed"}, "auth"),
    ({"error_status": None, "error": "unknown"}, None),
    ({"error_status": 500, "error": "server_error"}, None),
])
def test_claude_api_retry_signals(event: dict[str, object], kind: str | None) -> None:
    data = lines({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10,
                  "retry_delay_ms": 2500, **event})
    signals = parse("claude-stream-json", data).signals
    assert [s.kind for s in signals] == ([kind] if kind else [])
    if kind == "rate_limit":
        assert signals[0].retry_after_s == 2.5


def test_claude_rate_limit_event() -> None:
    allowed = {"type": "rate_limit_event",
               "rate_limit_info": {"status": "allowed", "resetsAt": 1771390800}}
    assert parse("claude-stream-json", lines(allowed)).signals == []
    rejected = {"type": "rate_limit_event",
                "rate_limit_info": {"status": "rejected", "resetsAt": 1771390800,
                                    "rateLimitType": "five_hour"}}
    signals = parse("claude-stream-json", lines(rejected)).signals
    assert signals[0].kind == "rate_limit"
    assert "five_hour" in signals[0].reason and "2026-02-18T05:00:00Z" in signals[0].reason


def test_codex_several_messages_are_joined_by_a_blank_line() -> None:
    def item(text: str) -> dict[str, object]:
        return {"type": "item.completed", "item": {"id": "i", "type": "agent_message",
                                                   "text": text}}
    data = lines({"type": "thread.started", "thread_id": "T"}, item("First."),
                 {"type": "item.completed", "item": {"type": "command_execution"}},
                 item("Second."),
                 {"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 2}},
                 {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 20}})
    parsed = parse("codex-jsonl", data)
    assert parsed.deltas == ["First.", "\n\nSecond."]
    assert parsed.result.usage == {"input_tokens": 11, "output_tokens": 22}
    assert parsed.result.error is None and parsed.result.session == "T"


def test_codex_unauthorized_is_auth() -> None:
    data = lines({"type": "error", "message": "unexpected status 401 Unauthorized: bad key"},
                 {"type": "turn.failed",
                  "error": {"message": "unexpected status 401 Unauthorized: bad key"}})
    parsed = parse("codex-jsonl", data)
    assert [s.kind for s in parsed.signals] == ["auth"]
    assert parsed.result.error is not None and parsed.result.error.kind == "auth"


def test_gemini_text_after_a_tool_is_separated() -> None:
    def msg(text: str) -> dict[str, object]:
        return {"type": "message", "role": "assistant", "content": text, "delta": True}
    data = lines({"type": "init", "session_id": "G"}, msg("Looking"), msg("..."),
                 {"type": "tool_use", "tool_name": "ls"}, {"type": "tool_result"},
                 msg("Done."), {"type": "result", "status": "success", "stats": {}})
    assert parse("gemini-stream-json", data).deltas == ["Looking", "...", "\n\nDone."]


@pytest.mark.parametrize(("error", "kind"), [
    ({"type": "Error", "message": "Please set an Auth method", "code": 41}, "auth"),
    ({"type": "ApiError", "message": "quota", "code": 429}, "rate_limit"),
    ({"type": "Error", "message": "boom"}, "failure"),
])
def test_gemini_json_error_object(error: dict[str, object], kind: str) -> None:
    parsed = parse("gemini-json", json.dumps({"session_id": "G", "error": error}, indent=2))
    assert parsed.result.session == "G"
    assert parsed.result.error is not None and parsed.result.error.kind == kind


def test_gemini_json_with_noise_around_the_document() -> None:
    doc = "Loaded cached credentials.\n" + json.dumps({"response": "hi"}, indent=1) + "\nbye\n"
    assert parse("gemini-json", doc).result.text == "hi"


def test_text_parser_passes_chunks_through() -> None:
    parser = make_parser("text")
    assert parser.feed("") == []
    assert parser.feed("a\nb") == [TextDelta("a\nb")]
    assert parser.finish() == ([], ParseResult("a\nb"))


def test_unknown_events_and_junk_lines_are_ignored() -> None:
    data = ("not json\n{\"type\":\"mystery\"}\n[1,2]\n\"str\"\n{\"type\":\"result\"\n\r\n"
            + json.dumps(claude_result("ok")) + "\r\n")
    for name in PARSERS:
        parse(name, data)
    assert parse("claude-stream-json", data).result.text == "ok"


def test_last_line_without_newline_is_parsed() -> None:
    data = lines(claude_start("m"), claude_delta("a")) + json.dumps(claude_result("ab"))
    assert parse("claude-stream-json", data).deltas == ["a", "b"]


def test_registry_matches_config() -> None:
    assert set(PARSERS) == KNOWN_PARSERS
    for name in PARSERS:
        assert make_parser(name) is not make_parser(name)
    with pytest.raises(KeyError, match="unknown parser"):
        make_parser("nope")


def test_line_splitter() -> None:
    splitter = LineSplitter()
    assert splitter.feed("ab") == []
    assert splitter.feed("c\nd\n\ne") == ["abc", "d", ""]
    assert splitter.feed("") == []
    assert splitter.rest() == "e"
    assert splitter.rest() == ""


def test_a_huge_line_in_small_chunks_is_linear() -> None:
    text = "y" * (16 * 1024 * 1024)
    data = json.dumps(claude_assistant(text, "m1")) + "\n" + json.dumps(claude_result("z"))
    parser = make_parser("claude-stream-json")
    start = time.perf_counter()
    streamed = []
    for pos in range(0, len(data), 1024):
        streamed += [e.text for e in parser.feed(data[pos:pos + 1024])
                     if isinstance(e, TextDelta)]
    events, result = parser.finish()
    elapsed = time.perf_counter() - start
    assert streamed == [text] and result.text == text and events == []
    assert elapsed < 5  # quadratic joining would take minutes


def test_decode_document_gives_up_quietly() -> None:
    assert decode_document("") is None
    assert decode_document("{" * 50 + "\n[" * 50) is None


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(PARSERS)), text=st.text(), cuts=st.lists(
    st.integers(min_value=0, max_value=50), max_size=20))
def test_any_text_never_raises_and_keeps_the_invariant(name: str, text: str,
                                                       cuts: list[int]) -> None:
    parse(name, text, cuts)


json_events = st.lists(st.sampled_from([
    claude_start("m1"), claude_delta("Hel"), claude_delta("lo"), claude_assistant("Hello", "m1"),
    claude_assistant("Other", "m2"), claude_result("Hello"), claude_result("x", is_error=True),
    {"type": "message", "role": "assistant", "content": "Hi", "delta": True},
    {"type": "item.completed", "item": {"type": "agent_message", "text": "Yo"}},
    {"type": "result", "status": "success", "stats": {"input_tokens": 1}},
    {"type": "error", "message": "429 Too Many Requests"},
]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(PARSERS)), events=json_events, data=st.data())
def test_event_mixes_cut_anywhere_parse_alike(name: str, events: list[dict[str, object]],
                                              data: st.DataObject) -> None:
    text = lines(*events)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(text) + 1), max_size=10))
    assert parse(name, text, cuts).result == parse(name, text).result
