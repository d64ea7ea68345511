"""Protocol abuse against the real daemon (the suite's shared one).

tests/test_protocol.py already tries one malformed message of each kind, one oversized
NDJSON line, 300 connects, one stalled half message and a non-reading streaming client;
here each is pushed further (random bytes by the megabyte, every wrong type of every
param, LSP-framed size abuse, stallers while the daemon is saturated, clients that never
read anything, thousands of connections with runs cut off), and after each the daemon
must be alive, serve a normal run, hold no child and no descriptor it did not hold before,
and keep its RSS bounded.
"""

from __future__ import annotations

import contextlib
import json
import random
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from llmd.jobs.records import RunParams
from llmd.protocol.framing import Framer, Message
from llmd.server.methods import GetParams, HealthParams, JobParams, ListParams
from tests.conftest import DaemonHandle, RawClient, registry_toml
from tests.harness import until_stalled
from tests.reliability.support import (
    SharedDaemon,
    Soak,
    assert_healthy,
    assert_serves,
    children,
    gather,
    lsp,
    open_stream,
    read_lsp,
    request,
    rss_kb,
    tally,
    wait_until,
)

LIMIT = 1 << 20  # the shared daemon's max_message_bytes


async def answers(client: RawClient, count: int) -> list[Any]:
    """The next ``count`` replies (notifications are skipped)."""
    got: list[Any] = []
    while len(got) < count:
        message = await client.recv()
        if isinstance(message, dict) and "method" in message:
            continue
        got.append(message)
    return got


async def nothing_more(client: RawClient) -> None:
    """No reply is left unread: the next one answers a fresh request."""
    await client.send_raw(request("daemon.info", id="sentinel"))
    [reply] = await answers(client, 1)
    assert reply["id"] == "sentinel", f"an extra reply: {reply}"


def expected_messages(blob: bytes) -> int:
    return sum(isinstance(f, Message) for f in Framer(LIMIT).feed(blob))


@pytest.mark.soak
async def test_random_bytes_get_one_error_per_line(daemon: SharedDaemon, soak: Soak) -> None:
    with trio.fail_after(soak.limit(90)):
        for round_ in soak.rounds():
            rng = random.Random(round_)

            async def garbage(seed: int) -> None:
                r = random.Random(seed)
                raw = r.randbytes(r.randint(1, 256 * 1024))
                # Newlines far more often than chance, so that there are many lines.
                blob = b"x" + raw.replace(bytes([r.randrange(256)]), b"\n") + b"\n"
                expected = expected_messages(blob)
                client = await RawClient.connect(daemon.socket)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client.send_raw, blob)
                        for reply in await answers(client, expected):
                            assert reply["error"]["code"] in (-32700, -32600), reply
                            assert "Traceback" not in json.dumps(reply)
                    await nothing_more(client)
                finally:
                    await client.aclose()
                tally("inputs", expected)
                tally("requests", expected + 1)
                tally("connections")

            await gather(*(partial(garbage, rng.randrange(2**32)) for _ in range(8)))
        await assert_healthy(daemon)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def hostile_lines() -> list[tuple[bytes, set[int]]]:
    """Lines, each with the error codes it may get."""
    run = b'{"jsonrpc":"2.0","id":%d,"method":"llm.run","params":{"blueprint":"echo",'
    cases: list[tuple[bytes, set[int]]] = [
        # Invalid UTF-8 where it hides best: inside strings of a valid-looking request.
        (run % 1 + b'"prompt":"\xff\xfe"}}', {-32700}),
        (run % 2 + b'"prompt":"\xc0\xaf overlong"}}', {-32700}),
        (run % 3 + b'"prompt":"\xed\xa0\x80 surrogate"}}', {-32700}),
        (run % 4 + b'"prompt":"cut \xe2\x82"}}', {-32700}),
        (run % 5 + b'"prompt":"\\ud800 lone escape"}}', {-32700}),
        (b'{"jsonrpc":"2.0","id":6,"method":"daemon.info","\xff":1}', {-32700}),
        # 100,000-deep nesting, at the top, in params, in a batch, unclosed.
        (deep(100_000), {-32700}),
        (run % 7 + b'"prompt":"x","extra":' + deep(100_000) + b"}}", {-32700}),
        (b"[" + b"{" * 100_000, {-32700}),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {-32700}),
        (b"[" + run % 8 + b'"prompt":' + deep(100_000) + b"}}]", {-32700}),
        # Huge numbers.
        (b'{"jsonrpc":"2.0","method":"daemon.info","id":' + b"9" * 100_000 + b"}",
         {-32600, -32700}),
        (b'{"jsonrpc":"2.0","method":"daemon.info","id":1' + b"0" * 400 + b".5e99999}",
         {-32600, -32700}),
        (run % 9 + b'"prompt":"x","timeout":1e99999}}', {-32602, -32700}),
        (run % 10 + b'"prompt":"x","timeout":' + b"9" * 5000 + b"}}", {-32602, -32700}),
        (b'{"jsonrpc":"2.0","id":12,"method":"jobs.get","params":{"job":"x",'
         b'"wait":true,"timeout":-1e308}}', {-32602, -32007}),
        (b'{"jsonrpc":"2.0","id":13,"method":"llm.run","params":["echo","x",false,false,'
         b'-0.0]}', {-32602}),
        (b'{"jsonrpc":"2.0","id":14,"method":"llm.run","params":{"blueprint":"echo",'
         b'"prompt":"x","timeout":5e-324}}', {-32003}),
        # Wrong shapes.
        (b'{"jsonrpc":"2.0","id":15,"method":"llm.run","params":"echo"}', {-32600}),
        (b'{"jsonrpc":"2.0","id":16,"method":["llm.run"]}', {-32600}),
        (b'{"jsonrpc":"2.0","id":{"nested":1},"method":"daemon.info"}', {-32600}),
        (b'[1,2,3]', {-32600}),
        (b'{"jsonrpc":"2.0","id":17,"method":"daemon.info","params":{"x":1}}', {-32602}),
        (b'{"jsonrpc":"2.0","id":18,"method":"$/cancelRequest","params":{"id":[1]}}', {-32602}),
    ]
    return cases


WRONG_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "s" * 1000, [], [1], {}, {"a": 1}]


def wrong_type_requests() -> list[tuple[str, dict[str, Any]]]:
    """Every param of every method set to every kind of JSON value in turn."""
    valid: dict[str, tuple[type[msgspec.Struct], dict[str, Any]]] = {
        "llm.run": (RunParams, {"blueprint": "echo", "prompt": "wrong types"}),
        "llm.cancel": (JobParams, {"job": "nope"}),
        "jobs.get": (GetParams, {"job": "nope"}),
        "jobs.list": (ListParams, {}),
        "health.status": (HealthParams, {}),
    }
    out: list[tuple[str, dict[str, Any]]] = []
    for method, (struct, base) in valid.items():
        for field in msgspec.structs.fields(struct):
            for value in WRONG_VALUES:
                if field.name in ("detach", "stream") and value is True:
                    continue  # valid, and would start runs that outlive the request
                out.append((method, {**base, field.encode_name: value}))
    for method in ("daemon.info", "blueprints.list", "health.status", "daemon.reload"):
        for value in WRONG_VALUES:
            out.append((method, {"unexpected": value}))
    return out


@pytest.mark.soak
async def test_hostile_messages_each_get_their_answer(daemon: SharedDaemon, soak: Soak) -> None:
    cases = hostile_lines()
    typed = wrong_type_requests()
    with trio.fail_after(soak.limit(120)):
        for _ in soak.rounds():
            client = await RawClient.connect(daemon.socket)
            try:
                for line, codes in cases:
                    await client.send_raw(line + b"\n")
                    [answer] = await answers(client, 1)
                    for reply in answer if isinstance(answer, list) else [answer]:
                        assert "error" in reply, (line[:100], reply)
                        assert reply["error"]["code"] in codes, (line[:100], reply)
                        assert "Traceback" not in json.dumps(reply)
                # The wrong types, pipelined: every id answered once, never with -32603.
                for i, (method, params) in enumerate(typed):
                    await client.send_raw(request(method, params, id=i))
                replies = await answers(client, len(typed))
                assert sorted(r["id"] for r in replies) == list(range(len(typed)))
                for reply in replies:
                    if "error" in reply:
                        assert reply["error"]["code"] not in (-32603, -32700), (
                            typed[reply["id"]], reply)
                await nothing_more(client)
            finally:
                await client.aclose()
            tally("inputs", len(cases) + len(typed))
            tally("requests", len(cases) + len(typed) + 1)
            tally("connections")
        await assert_healthy(daemon)


async def closed_after_error(stream: trio.SocketStream, lsp_framed: bool) -> None:
    """The connection gets one -32600 and is then closed."""
    buf = bytearray()
    if lsp_framed:
        reply = await read_lsp(stream, buf)
    else:
        while b"\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, "closed without a reply"
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        reply = json.loads(line)
        buf = bytearray(rest)
    assert reply["error"]["code"] == -32600 and "too large" in reply["error"]["message"]
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            buf += chunk
    assert not buf, f"more after the error: {bytes(buf[:100])!r}"


OVERSIZED: list[tuple[str, bytes, bool]] = [
    ("ndjson line of 2 MiB", b'{"jsonrpc":"2.0","id":1,"method":"x","params":["'
     + b"a" * (2 << 20) + b'"]}\n', False),
    ("ndjson line without end", b"[" + b"1," * (LIMIT // 2 + 10), False),
    ("lsp announced 2 MiB", b"Content-Length: %d\r\n\r\n{" % (2 << 20), True),
    ("lsp announced 10**30", b"Content-Length: 1" + b"0" * 30 + b"\r\n\r\n", True),
    ("lsp one byte over", lsp(b" " * (LIMIT + 1)), True),
    ("lsp announced as the limit plus one, with zeros", b"Content-Length: 000%d\r\n\r\n"
     % (LIMIT + 1), True),
]


@pytest.mark.soak
async def test_oversized_messages_close_only_their_connection(daemon: SharedDaemon,
                                                              soak: Soak) -> None:
    bystander = await RawClient.connect(daemon.socket)
    with trio.fail_after(soak.limit(60)):
        try:
            for _ in soak.rounds():
                for name, data, lsp_framed in OVERSIZED:
                    stream = await trio.open_unix_socket(str(daemon.socket))
                    async with trio.open_nursery() as nursery:

                        async def send(data: bytes = data, stream: Any = stream) -> None:
                            with contextlib.suppress(trio.BrokenResourceError,
                                                     trio.ClosedResourceError):
                                await stream.send_all(data)

                        nursery.start_soon(send)
                        await closed_after_error(stream, lsp_framed)
                    await stream.aclose()
                    reply = await bystander.call("daemon.info", id=name)
                    assert reply["result"]["pid"] == daemon.pid
                    tally("inputs")
                    tally("connections")
            await assert_healthy(daemon)
        finally:
            await bystander.aclose()


_BODY = b'{"jsonrpc": "2.0", "id": "stall", "method": "daemon.info"}'
@pytest.mark.parametrize("framing", ["ndjson", "lsp"])
async def test_requests_before_an_oversized_message_are_still_answered(
        daemon: SharedDaemon, framing: str) -> None:
    good = request("llm.run", {"blueprint": "echo", "prompt": "before the flood"}, id="good")
    if framing == "lsp":
        data = lsp(good.rstrip()) + b"Content-Length: %d\r\n\r\n" % (LIMIT + 1)
    else:
        data = good + b"[" * (LIMIT + 10)
    stream = await trio.open_unix_socket(str(daemon.socket))
    replies: list[Any] = []
    try:
        with trio.fail_after(20):
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
            buf = bytearray()
            while len(replies) < 2:
                if framing == "lsp":
                    replies.append(await read_lsp(stream, buf))
                else:
                    replies.append(json.loads(await _line(stream, buf)))
    finally:
        await stream.aclose()
    tally("inputs")
    tally("connections")
    by_id = {r["id"]: r for r in replies}
    assert by_id[None]["error"]["code"] == -32600
    assert by_id["good"]["result"]["text"] == "before the flood"


STALLS = [
    b'{"jsonrpc": "2.0", "id": "stall", "method": "llm.run", "params": {"bl',
    b"Content-Length: 200\r\nContent-Ty",
    b"Content-Length: %d\r\n\r\n%b" % (len(_BODY), _BODY[:30]),
    b'[{"jsonrpc": "2.0", "id": "stall", "method": "daemon.info"},',
    b"   \r\n  \t",
    b"Content-Len",
]


@pytest.mark.soak
async def test_stalled_half_messages_hold_nothing(daemon: SharedDaemon, soak: Soak) -> None:
    with trio.fail_after(soak.limit(60)):
        for round_ in soak.rounds():
            stallers = []
            for stall in STALLS:
                stream = await trio.open_unix_socket(str(daemon.socket))
                await stream.send_all(stall)
                stallers.append(stream)
            tally("connections", len(STALLS))
            tally("held", len(STALLS))

            # Meanwhile the daemon is kept at capacity by 8 clients of 5 runs each.
            async def runner(n: int, round_: int = round_) -> None:
                client = await RawClient.connect(daemon.socket)
                try:
                    for i in range(5):
                        prompt = f"r{round_}-{n}-{i}"
                        reply = await client.call("llm.run", {"blueprint": "echo",
                                                              "prompt": prompt}, id=i)
                        if "error" in reply:
                            assert reply["error"]["code"] == -32006, reply
                        else:
                            assert reply["result"]["text"] == prompt
                        tally("requests")
                finally:
                    await client.aclose()

            await gather(*(partial(runner, n) for n in range(8)))
            tally("connections", 8)
            # The stalled messages were kept: finishing them now gets them answered.
            done = [b'ueprint": "echo", "prompt": "late"}}\n', b'pe: x\r\n\r\n',
                    _BODY[30:], b'{"jsonrpc": "2.0", "id": 2, '
                    b'"method": "daemon.info"}]\n', b"", b'gth: 2\r\n\r\n{}']
            for stream, rest in zip(stallers, done, strict=True):
                await stream.send_all(rest)
            buf = bytearray()
            reply = json.loads(await _line(stallers[0], buf))
            assert reply["result"]["text"] == "late"
            body = b'{"jsonrpc":"2.0","id":"s2","method":"daemon.info"}'
            await stallers[1].send_all(body + b" " * (200 - len(body)))
            assert (await read_lsp(stallers[1], bytearray()))["id"] == "s2"
            assert (await read_lsp(stallers[2], bytearray()))["id"] == "stall"
            batch = json.loads(await _line(stallers[3], bytearray()))
            assert sorted(str(r["id"]) for r in batch) == ["2", "stall"]
            assert (await read_lsp(stallers[5], bytearray()))["error"]["code"] == -32600
            for stream in stallers:
                await stream.aclose()
            tally("requests", 5)
        await assert_healthy(daemon)


async def _line(stream: trio.SocketStream, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed"
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


@pytest.mark.soak
async def test_clients_that_never_read_cost_bounded_memory(daemon: SharedDaemon,
                                                           soak: Soak) -> None:
    with trio.fail_after(soak.limit(90)):
        for _ in soak.rounds():
            before = rss_kb(daemon.pid)
            deaf: list[trio.SocketStream] = []
            async with trio.open_nursery() as nursery:

                async def spam(data: bytes, stream: trio.SocketStream) -> None:
                    # Blocks for good once the daemon stops reading: that is the point.
                    with contextlib.suppress(trio.BrokenResourceError,
                                             trio.ClosedResourceError):
                        await stream.send_all(data)

                # 1: 40,000 pipelined requests (about 20 MB of replies), never read.
                many = b"".join(request("blueprints.list", id=i) for i in range(40_000))
                # 2: the same in LSP framing.
                many_lsp = b"".join(lsp(request("daemon.info", id=i).rstrip())
                                    for i in range(20_000))
                # 3: streaming runs of a CLI that writes 400 MB, never read.
                floods = b"".join(request("llm.run", {"blueprint": "flood", "prompt": "",
                                                      "stream": True}, id=i)
                                  for i in range(3))
                for data in (many, many_lsp, floods):
                    stream = await trio.open_unix_socket(str(daemon.socket))
                    deaf.append(stream)
                    nursery.start_soon(spam, data, stream)
                tally("connections", 3)
                tally("inputs", 60_003)
                # Wait until the floods run and have stalled on their pipes.
                await wait_until(lambda: len(children(daemon.pid)) == 3)
                stalled = await _until_stalled(daemon)
                assert stalled < 50_000_000 * 3, f"{stalled} bytes written: drained, not held"
                growth = rss_kb(daemon.pid) - before
                assert growth < 48 * 1024, f"llmd grew {growth} KiB for clients that do not read"
                # Everyone else is served meanwhile.
                client = await RawClient.connect(daemon.socket)
                try:
                    reply = await client.call("llm.run", {"blueprint": "echo",
                                                          "prompt": "others"})
                    assert reply["result"]["text"] == "others"
                finally:
                    await client.aclose()
                tally("requests")
                for stream in deaf:
                    await stream.aclose()
                nursery.cancel_scope.cancel()
        await assert_healthy(daemon)


async def _until_stalled(daemon: SharedDaemon) -> int:
    """Poll the flood children until none writes any more; what they wrote in all."""
    return await until_stalled(lambda: children(daemon.pid), rounds=10)


@pytest.mark.soak
async def test_thousands_of_connects_and_disconnects(daemon: SharedDaemon, soak: Soak) -> None:
    with trio.fail_after(soak.limit(120)):
        for round_ in soak.rounds():
            rng = random.Random(round_)

            async def visit(kind: int) -> None:
                stream = await open_stream(daemon.socket)
                try:
                    if kind == 1:
                        await stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "daem')
                    elif kind == 2:
                        await stream.send_all(request("daemon.info"))
                    elif kind == 3:
                        await stream.send_all(b"Content-Length: 99\r\n\r\n{")
                    elif kind == 4:
                        # A run cut off by its client: cancelled, its child killed.
                        await stream.send_all(request("llm.run", {"blueprint": "echo",
                                                                  "prompt": "gone"}))
                    elif kind == 5:
                        await stream.send_all(request("daemon.info"))
                        await stream.receive_some(65536)
                finally:
                    await stream.aclose()

            kinds = [rng.randrange(6) for _ in range(3000)]
            for start in range(0, len(kinds), 100):
                await gather(*(partial(visit, k) for k in kinds[start:start + 100]))
            tally("connections", len(kinds))
            tally("inputs", sum(1 for k in kinds if k))
        await assert_healthy(daemon)


async def test_a_huge_jobs_list_limit_is_refused_cleanly(daemon_factory: Any,
                                                         fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"}}))
    client = await d.connect()
    with trio.fail_after(20):
        await client.call("llm.run", {"blueprint": "echo", "prompt": "one job"})
        reply = await client.call("jobs.list", {"limit": 10**30}, id=2)
        await assert_serves(d.socket, d.proc.pid)
    tally("inputs")
    assert "Traceback" not in d.log()
    assert reply.get("error", {}).get("code") == -32602, reply
