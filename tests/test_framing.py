"""Tests for llmd.protocol.framing: both framings, every split, limits, resynchronisation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llmd.protocol.framing import MAX_HEADER_SECTION, Frame, Framer, FramingError, Message, TooLarge
from tests.harness import feed_all

NDJSON_STREAM = b'{"a":1}\n{"b":2}\r\n\n   \r\n{"c":[3]}\n'
NDJSON_MESSAGES = [Message(b'{"a":1}'), Message(b'{"b":2}'), Message(b'{"c":[3]}')]

LSP_STREAM = (
    b'Content-Length: 7\r\n\r\n{"a":1}'
    b'Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n'
    b'content-length: 9\r\n\r\n{"b":[2]}'
    b'CONTENT-LENGTH:2\r\n\r\n{}'
)
LSP_MESSAGES = [Message(b'{"a":1}'), Message(b'{"b":[2]}'), Message(b"{}")]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def mode_of(framer: Framer) -> str:
    # A call, so that type checkers do not carry a narrowed mode across feeds.
    return framer.mode


def lsp_encoder() -> Framer:
    framer = Framer(1 << 20)
    assert framer.feed(b"Content-Length: 0\r\n\r\n") == [Message(b"")]
    assert mode_of(framer) == "lsp"
    return framer


# --- NDJSON ------------------------------------------------------------------------------


def test_ndjson_messages_in_one_chunk() -> None:
    framer = Framer(1024)
    assert framer.feed(NDJSON_STREAM) == NDJSON_MESSAGES
    assert mode_of(framer) == "ndjson"
    assert framer.buffered == 0


def test_ndjson_partial_line_is_held() -> None:
    framer = Framer(1024)
    assert framer.feed(b'{"a":1}\n{"b"') == [Message(b'{"a":1}')]
    assert framer.buffered == 4
    assert framer.feed(b":2}") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [Message(b'{"b":2}')]
    assert framer.buffered == 0


@pytest.mark.parametrize(("stream", "expected"),
                         [(NDJSON_STREAM, NDJSON_MESSAGES), (LSP_STREAM, LSP_MESSAGES)])
def test_every_split_point_gives_the_same_messages(stream: bytes,
                                                   expected: list[Frame]) -> None:
    for cut in range(len(stream) + 1):
        assert feed_all(Framer(1024), [stream[:cut], stream[cut:]]) == expected, cut


@pytest.mark.parametrize(("stream", "expected"),
                         [(NDJSON_STREAM, NDJSON_MESSAGES), (LSP_STREAM, LSP_MESSAGES)])
def test_every_pair_of_split_points(stream: bytes, expected: list[Frame]) -> None:
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert feed_all(Framer(1024), chunks) == expected, (first, second)


@pytest.mark.parametrize(("stream", "expected"),
                         [(NDJSON_STREAM, NDJSON_MESSAGES), (LSP_STREAM, LSP_MESSAGES)])
def test_one_byte_at_a_time(stream: bytes, expected: list[Frame]) -> None:
    assert feed_all(Framer(1024), bytewise(stream)) == expected


def test_ndjson_blank_and_whitespace_lines_are_skipped() -> None:
    framer = Framer(1024)
    assert framer.feed(b"\n\r\n  \n\t\r\n[1]\n \n") == [Message(b"[1]")]


def test_ndjson_keeps_inner_whitespace_and_strips_only_one_cr() -> None:
    framer = Framer(1024)
    assert framer.feed(b"{}\n  [1] \r\r\n") == [Message(b"{}"), Message(b"  [1] \r")]


def test_ndjson_line_of_exactly_the_limit_is_accepted() -> None:
    framer = Framer(10)
    assert framer.feed(b"x" * 10 + b"\n") == [Message(b"x" * 10)]
    assert framer.feed(b"y" * 10 + b"\r") == []
    assert framer.buffered == 11
    assert framer.feed(b"\n") == [Message(b"y" * 10)]


def test_ndjson_complete_line_over_the_limit() -> None:
    framer = Framer(10)
    assert framer.feed(b"[1]\n" + b"x" * 11 + b"\n[2]\n") == [Message(b"[1]"), TooLarge(11)]
    assert framer.closed
    assert framer.buffered == 0
    assert framer.feed(b"[3]\n") == []


def test_ndjson_too_large_stops_buffering_at_once() -> None:
    limit = 1 << 20
    chunk = b"x" * 65536
    framer = Framer(limit)
    fed = 0
    frames: list[Frame] = []
    while not frames:
        frames = framer.feed(chunk)
        fed += len(chunk)
        assert framer.buffered <= limit + len(chunk)
        assert fed <= limit + len(chunk)
    assert frames == [TooLarge(limit + len(chunk))]
    assert fed == limit + len(chunk)
    assert framer.closed
    assert framer.buffered == 0
    # Closed: later bytes are dropped, not buffered.
    assert framer.feed(chunk) == []
    assert framer.feed(b"\n[1]\n") == []
    assert framer.buffered == 0


def test_ndjson_too_large_after_partial_message_in_same_chunk() -> None:
    framer = Framer(8)
    assert framer.feed(b"[1]\n" + b"y" * 9) == [Message(b"[1]"), TooLarge(9)]


# --- sniffing ----------------------------------------------------------------------------


def test_sniff_waits_for_a_possible_lsp_header_one_byte_at_a_time() -> None:
    framer = Framer(1024)
    header = b"Content-Length:"
    for i, byte in enumerate(bytewise(header)):
        assert framer.feed(byte) == []
        expected = "lsp" if i == len(header) - 1 else "unknown"
        assert mode_of(framer) == expected, i
    assert feed_all(framer, bytewise(b" 2\r\n\r\n{}")) == [Message(b"{}")]


def test_sniff_decides_ndjson_as_soon_as_the_prefix_cannot_match() -> None:
    framer = Framer(1024)
    assert framer.feed(b"c") == []
    assert mode_of(framer) == "unknown"
    assert framer.feed(b"on") == []
    assert mode_of(framer) == "unknown"
    assert framer.feed(b"x") == []
    assert mode_of(framer) == "ndjson"
    assert framer.feed(b"\n") == [Message(b"conx")]


def test_sniff_first_byte_not_c_is_ndjson_at_once() -> None:
    framer = Framer(1024)
    assert framer.feed(b"{") == []
    assert mode_of(framer) == "ndjson"


def test_sniff_skips_leading_whitespace_and_ignores_case() -> None:
    framer = Framer(1024)
    assert framer.feed(b"\r\n \t\n") == []
    assert mode_of(framer) == "unknown"
    assert framer.buffered == 0
    assert framer.feed(b"cOnTeNt-LeNgTh: 2\r\n\r\n[]") == [Message(b"[]")]
    assert mode_of(framer) == "lsp"


def test_sniff_whitespace_flood_is_not_buffered() -> None:
    framer = Framer(16)
    for _ in range(10):
        assert framer.feed(b" \n" * 1000) == []
    assert framer.buffered == 0
    assert mode_of(framer) == "unknown"


def test_sniff_content_length_without_colon_is_ndjson() -> None:
    framer = Framer(1024)
    assert framer.feed(b"Content-Length 5\n") == [Message(b"Content-Length 5")]
    assert mode_of(framer) == "ndjson"


def test_sniff_takes_content_type_first_for_lsp() -> None:
    # The LSP base protocol lets the headers come in any order.
    framer = Framer(1024)
    stream = (b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
              b"Content-Length: 2\r\n\r\n{}")
    assert feed_all(framer, bytewise(stream)) == [Message(b"{}")]
    assert mode_of(framer) == "lsp"
    assert Framer(1024).feed(b"content-TYPE:x\ncontent-length:3\n\n[1]") == [Message(b"[1]")]


def test_sniff_waits_while_either_header_name_may_follow() -> None:
    framer = Framer(1024)
    for part in (b"c", b"ontent-", b"T"):
        assert framer.feed(part) == []
        assert mode_of(framer) == "unknown"
    assert framer.feed(b"ypo\n") == [Message(b"content-Typo")]
    assert mode_of(framer) == "ndjson"


# --- LSP ---------------------------------------------------------------------------------


def test_lsp_accepts_bare_lf_and_blank_lines_between_messages() -> None:
    framer = Framer(1024)
    frames = framer.feed(b"Content-Length: 2\n\n{}\r\n\r\nContent-Length: 3\r\n\r\n[1]")
    assert frames == [Message(b"{}"), Message(b"[1]")]
    assert framer.buffered == 0


def test_lsp_body_may_hold_newlines_and_any_bytes() -> None:
    body = b'{"a":\n"\r\n\x00\xff"}'
    framer = Framer(1024)
    assert framer.feed(b"Content-Length: %d\r\n\r\n%b" % (len(body), body)) == [Message(body)]


def test_lsp_zero_length_body() -> None:
    assert Framer(10).feed(b"Content-Length: 0\r\n\r\n") == [Message(b"")]


def test_lsp_too_large_from_the_header_alone() -> None:
    framer = Framer(100)
    frames = framer.feed(b"Content-Length: 2\r\n\r\n{}Content-Length: 101\r\n")
    assert frames == [Message(b"{}"), TooLarge(101)]
    assert framer.closed
    assert framer.buffered == 0
    assert framer.feed(b"\r\n" + b"x" * 101) == []


def test_lsp_absurd_content_length_is_too_large() -> None:
    framer = Framer(100)
    assert framer.feed(b"Content-Length: " + b"9" * 5000 + b"\r\n") == [TooLarge(10**18)]


def test_lsp_limit_is_inclusive() -> None:
    framer = Framer(4)
    assert framer.feed(b"Content-Length: 4\r\n\r\n1234") == [Message(b"1234")]


@pytest.mark.parametrize(("header", "message"), [
    (b"Content-Length: abc\r\n", "invalid Content-Length: 'abc'"),
    (b"Content-Length: -5\r\n", "negative Content-Length: '-5'"),
    (b"Content-Length: 1.5\r\n", "invalid Content-Length: '1.5'"),
    (b"Content-Length:\r\n", "invalid Content-Length: ''"),
    (b"Content-Length: 2\r\nBogus header\r\n", "header line without a colon: 'Bogus header'"),
    (b"Content-Length: 2\r\nContent-Length: 3\r\n", "conflicting Content-Length headers"),
])
def test_lsp_malformed_header_is_reported_then_resynchronised(header: bytes,
                                                              message: str) -> None:
    framer = Framer(1024)
    stream = (b"Content-Length: 2\r\n\r\n[]" + header + b"\r\n{}"
              + b"Content-Length: 3\r\n\r\n[1]")
    expected = [Message(b"[]"), FramingError(message), Message(b"[1]")]
    assert framer.feed(stream) == expected
    assert feed_all(Framer(1024), bytewise(stream)) == expected
    assert not framer.closed


def test_lsp_missing_content_length_is_reported() -> None:
    framer = Framer(1024)
    stream = (b"Content-Length: 2\r\n\r\n[]Content-Type: x\r\n\r\n{}"
              b"Content-Length: 3\r\n\r\n[1]")
    # The sniff already chose LSP; the second section lacks its length.
    assert framer.feed(stream) == [
        Message(b"[]"), FramingError("header section without Content-Length"), Message(b"[1]")]


@pytest.mark.parametrize("short", [0, 1, 5, 20])
@pytest.mark.parametrize("first", [b"Content-Length: %d\r\n",
                                   b"Content-Type: application/json\r\nContent-Length: %d\r\n"])
def test_lsp_too_short_content_length_does_not_swallow_the_next_message(short: int,
                                                                        first: bytes) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"daemon.info","params":{"pad":"xxxxxxxxxx"}}'
    good = b'{"jsonrpc":"2.0","id":2,"method":"daemon.info"}'
    stream = (b"Content-Length: %d\r\n\r\n%b" % (len(body) - short - 1, body)
              + first % len(good) + b"\r\n" + good
              + b"Content-Length: 3\r\n\r\n[1]")
    whole = Framer(1024).feed(stream)
    assert [f for f in whole if isinstance(f, Message)][1:] == [Message(good), Message(b"[1]")]
    assert sum(isinstance(f, FramingError) for f in whole) == 1
    assert feed_all(Framer(1024), bytewise(stream)) == whole


def test_lsp_header_names_must_be_tokens() -> None:
    framer = Framer(1024)
    stream = b'Content-Length: 2\r\n\r\n{}"x"}: 1\r\n\r\nContent-Length: 2\r\n\r\n[]'
    assert framer.feed(stream) == [Message(b"{}"), FramingError("malformed header name: '\"x\"}'"),
                                   Message(b"[]")]


def test_lsp_keeps_reporting_each_bad_section() -> None:
    framer = Framer(1024)
    stream = (b"Content-Length: x\r\n\r\n" b"Content-Length: -1\r\n\r\n"
              b"Content-Length: 2\r\n\r\n{}")
    assert framer.feed(stream) == [FramingError("invalid Content-Length: 'x'"),
                                   FramingError("negative Content-Length: '-1'"),
                                   Message(b"{}")]


def test_lsp_header_section_over_8_kib() -> None:
    framer = Framer(1 << 20)
    padding = b"X-Pad: " + b"p" * MAX_HEADER_SECTION + b"\r\n"
    frames = framer.feed(b"Content-Length: 2\r\n" + padding + b"\r\n{}"
                         + b"Content-Length: 3\r\n\r\n[1]")
    assert frames == [FramingError(f"header section longer than {MAX_HEADER_SECTION} bytes"),
                      Message(b"[1]")]


def test_lsp_endless_header_line_is_bounded() -> None:
    framer = Framer(1 << 20)
    frames = feed_all(framer, [b"Content-Length: 2", *([b"0" * 4096] * 10)])
    assert frames == [FramingError(f"header section longer than {MAX_HEADER_SECTION} bytes")]
    assert framer.buffered < len(b"content-length:")
    assert framer.feed(b"\r\n\r\nContent-Length: 2\r\n\r\n{}") == [Message(b"{}")]


def test_lsp_garbage_while_resynchronising_is_dropped() -> None:
    framer = Framer(1 << 20)
    assert framer.feed(b"Content-Length: x\r\n") == [FramingError("invalid Content-Length: 'x'")]
    for _ in range(20):
        assert framer.feed(b"garbage " * 8192) == []
        assert framer.buffered < len(b"content-length:")
    # The resync point may itself be split across feeds.
    assert framer.feed(b"...Content-Len") == []
    assert framer.feed(b"gth: 2\r\n\r\n{}") == [Message(b"{}")]


# --- encode ------------------------------------------------------------------------------


def test_encode_in_each_mode() -> None:
    unknown = Framer(10)
    assert unknown.encode(b'{"a":1}') == b'{"a":1}\n'
    ndjson = Framer(10)
    ndjson.feed(b"[")
    assert ndjson.mode == "ndjson"
    assert ndjson.encode(b"[]") == b"[]\n"
    assert lsp_encoder().encode(b'{"a":1}') == b'Content-Length: 7\r\n\r\n{"a":1}'
    assert lsp_encoder().encode(b"") == b"Content-Length: 0\r\n\r\n"


def test_bad_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_message"):
        Framer(0)


# --- properties --------------------------------------------------------------------------


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


LIMIT = 64


@given(st.data(), st.binary(max_size=400), st.sampled_from([b"", b"Content-Length: "]))
@settings(max_examples=300, deadline=None)
def test_any_bytes_any_split_never_raise(data: st.DataObject, raw: bytes,
                                         prefix: bytes) -> None:
    stream = prefix + raw
    framer = Framer(LIMIT)
    chunks = data.draw(chunked(stream))
    seen_too_large = False
    for chunk in chunks:
        frames = framer.feed(chunk)
        if seen_too_large:
            assert frames == []
        for index, frame in enumerate(frames):
            assert isinstance(frame, Message | TooLarge | FramingError)
            if isinstance(frame, Message):
                assert len(frame.body) <= LIMIT
            if isinstance(frame, TooLarge):
                assert frame.size_hint > LIMIT
                assert index == len(frames) - 1
                seen_too_large = True
        assert framer.buffered <= LIMIT + MAX_HEADER_SECTION + len(chunk) + 2
    assert framer.closed == seen_too_large


ndjson_payload = st.binary(min_size=1, max_size=50).map(lambda b: b.replace(b"\n", b""))


@given(st.data(), st.lists(ndjson_payload, max_size=8))
@settings(max_examples=300, deadline=None)
def test_ndjson_round_trip(data: st.DataObject, payloads: list[bytes]) -> None:
    payloads = [p for p in payloads if p and not p.endswith(b"\r") and not p.isspace()]
    if payloads:
        first = payloads[0]
        # Leading whitespace of a connection is dropped, and these headers pick LSP.
        assume(first[:1] not in b" \t\r\n")
        assume(not first.lower().startswith((b"content-length:", b"content-type:")))
    encoder = Framer(1)  # mode unknown: NDJSON
    stream = b"".join(encoder.encode(p) for p in payloads)
    framer = Framer(50)
    frames = feed_all(framer, data.draw(chunked(stream)))
    assert frames == [Message(p) for p in payloads]
    assert framer.buffered == 0


@given(st.data(), st.lists(st.binary(max_size=50), max_size=8))
@settings(max_examples=300, deadline=None)
def test_lsp_round_trip(data: st.DataObject, payloads: list[bytes]) -> None:
    encoder = lsp_encoder()
    stream = b"".join(encoder.encode(p) for p in payloads)
    framer = Framer(50)
    frames = feed_all(framer, data.draw(chunked(stream)))
    assert frames == [Message(p) for p in payloads]
    assert framer.buffered == 0
    if payloads:
        assert mode_of(framer) == "lsp"


def test_bytearray_input_is_not_modified() -> None:
    framer = Framer(1024)
    assert framer.feed(b"[]\n") == [Message(b"[]")]
    assert framer.buffered == 0
    chunk = bytearray(b'[0]\n{"a":1}\n[2')
    assert framer.feed(chunk) == [Message(b"[0]"), Message(b'{"a":1}')]
    assert chunk == bytearray(b'[0]\n{"a":1}\n[2')
    assert framer.feed(memoryview(b"]\n")) == [Message(b"[2]")]
    fresh = Framer(1024)
    chunk = bytearray(b"[1]\n[2")
    assert fresh.feed(chunk) == [Message(b"[1]")]
    assert chunk == bytearray(b"[1]\n[2")
    assert fresh.feed(bytearray(b"]\n")) == [Message(b"[2]")]


@pytest.mark.parametrize("first", [b'{"a": 1}\n', b"Content-Length: 2\r\n\r\n{}"])
def test_frame_parts_match_encode(first: bytes) -> None:
    framer = Framer(1 << 20)
    framer.feed(first)
    payload = b'{"jsonrpc": "2.0"}'
    head, tail = framer.frame_parts(len(payload))
    assert head + payload + tail == framer.encode(payload)
