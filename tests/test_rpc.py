"""Tests for the JSON-RPC codec and dispatcher (llmd.protocol.jsonrpc, llmd.server.dispatch):
the JSON-RPC 2.0 specification's examples, cancellation, robustness."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from llmd import errors
from llmd.protocol.jsonrpc import (
    SPLICE_MIN,
    encode_notification,
    error_reply,
    reply_bytes,
    result_reply,
)
from llmd.server.dispatch import CallContext, Dispatcher, Method, Session, request_key

# --- the specification's methods ---------------------------------------------------------


class SubtractParams(msgspec.Struct):
    minuend: int
    subtrahend: int


class SumParams(msgspec.Struct):
    a: int = 0
    b: int = 0
    c: int = 0


class UpdateParams(msgspec.Struct):
    a: int
    b: int
    c: int
    d: int
    e: int


class HelloParams(msgspec.Struct):
    value: int


class StrictParams(msgspec.Struct, forbid_unknown_fields=True):
    prompt: str
    count: int = 1
    tags: list[str] = []


notified: list[tuple[str, Any]] = []


async def subtract(params: SubtractParams, ctx: CallContext) -> int:
    return params.minuend - params.subtrahend


async def sum_(params: SumParams, ctx: CallContext) -> int:
    return params.a + params.b + params.c


async def update(params: UpdateParams, ctx: CallContext) -> None:
    notified.append(("update", msgspec.structs.astuple(params)))


async def notify_hello(params: HelloParams, ctx: CallContext) -> None:
    notified.append(("notify_hello", params.value))


async def get_data(params: None, ctx: CallContext) -> list[Any]:
    return ["hello", 5]


async def echo(params: StrictParams, ctx: CallContext) -> dict[str, Any]:
    return {"prompt": params.prompt, "count": params.count, "tags": params.tags,
            "id": ctx.request_id}


SPEC_METHODS = [
    Method("subtract", subtract, SubtractParams),
    Method("sum", sum_, SumParams),
    Method("update", update, UpdateParams),
    Method("notify_hello", notify_hello, HelloParams),
    Method("get_data", get_data),
    Method("echo", echo, StrictParams),
]


@pytest.fixture
def dispatcher() -> Dispatcher:
    notified.clear()
    return Dispatcher(SPEC_METHODS)


async def call(dispatcher: Dispatcher, message: str | bytes,
               session: Session | None = None) -> Any:
    data = message.encode() if isinstance(message, str) else message
    with trio.fail_after(5):
        reply = await dispatcher.handle(data, session or Session())
    return None if reply is None else json.loads(reply)


def error(code: int, id_: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code}, "id": id_}


def normalised(reply: Any) -> Any:
    """Drop the free-text part of errors (the spec fixes only the code)."""
    if isinstance(reply, list):
        return sorted((normalised(item) for item in reply), key=json.dumps)
    if "error" in reply:
        assert isinstance(reply["error"]["message"], str)
        reply = {**reply, "error": {"code": reply["error"]["code"]}}
    return reply


# --- section 7 of the specification --------------------------------------------------------


async def test_positional_params(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, '{"jsonrpc": "2.0", "method": "subtract", '
                      '"params": [42, 23], "id": 1}') == {"jsonrpc": "2.0", "result": 19, "id": 1}
    assert await call(dispatcher, '{"jsonrpc": "2.0", "method": "subtract", '
                      '"params": [23, 42], "id": 2}') == {"jsonrpc": "2.0", "result": -19, "id": 2}


async def test_named_params(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, '{"jsonrpc": "2.0", "method": "subtract", "params": '
                      '{"subtrahend": 23, "minuend": 42}, "id": 3}') == {
        "jsonrpc": "2.0", "result": 19, "id": 3}
    assert await call(dispatcher, '{"jsonrpc": "2.0", "method": "subtract", "params": '
                      '{"minuend": 42, "subtrahend": 23}, "id": 4}') == {
        "jsonrpc": "2.0", "result": 19, "id": 4}


async def test_notifications(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, '{"jsonrpc": "2.0", "method": "update", '
                      '"params": [1,2,3,4,5]}') is None
    assert await call(dispatcher, '{"jsonrpc": "2.0", "method": "foobar"}') is None
    assert notified == [("update", (1, 2, 3, 4, 5))]


async def test_non_existent_method(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert reply == {"jsonrpc": "2.0",
                     "error": {"code": -32601, "message": "method not found: `foobar`"},
                     "id": "1"}


async def test_invalid_json(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher,
                       '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert normalised(reply) == error(-32700, None)
    assert reply["error"]["message"].startswith("parse error: ")


async def test_invalid_request_object(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert reply == {"jsonrpc": "2.0", "error": {
        "code": -32600,
        "message": "invalid request: Expected `str`, got `int` - at `$.method`"}, "id": None}


async def test_batch_invalid_json(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, """[
      {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
      {"jsonrpc": "2.0", "method"
    ]""")
    assert normalised(reply) == error(-32700, None)


async def test_empty_array(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, "[]") == {
        "jsonrpc": "2.0", "error": {"code": -32600, "message": "invalid request: empty batch"},
        "id": None}


async def test_invalid_batch_not_empty(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, "[1]") == [{"jsonrpc": "2.0", "error": {
        "code": -32600, "message": "invalid request: expected a request object, got `int`"},
        "id": None}]


async def test_invalid_batch(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, "[1,2,3]")
    assert normalised(reply) == [error(-32600, None)] * 3


async def test_mixed_batch(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]""")
    assert normalised(reply) == normalised([
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ])
    assert notified == [("notify_hello", 7)]


async def test_all_notification_batch(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]""") is None
    assert notified == [("notify_hello", 7)]


# --- request shape and ids -------------------------------------------------------------------


@pytest.mark.parametrize(("message", "id_"), [
    ('{"jsonrpc":"1.0","method":"get_data","id":1}', 1),
    ('{"method":"get_data","id":"a"}', "a"),
    ('{"jsonrpc":2.0,"method":"get_data","id":1}', 1),
    ('{"jsonrpc":"2.0","id":3}', 3),
    ('{"jsonrpc":"2.0","method":null,"id":3}', 3),
    ('{"jsonrpc":"2.0","method":"get_data","params":"x","id":4}', 4),
    ('{"jsonrpc":"2.0","method":"subtract","params":7}', None),
    ('{"jsonrpc":"2.0","method":"nope","params":true,"id":5}', 5),
    ('{"jsonrpc":"2.0","method":"get_data","id":[1]}', None),
    ('{"jsonrpc":"2.0","method":"get_data","id":{"a":1}}', None),
    ('{"jsonrpc":"2.0","method":"get_data","id":true}', None),
    ('{"jsonrpc":"2.0","method":"get_data","id":1e400}', None),
    ('{"jsonrpc":"2.0","method":"get_data","id":-1e400}', None),
    ("42", None), ('"x"', None), ("null", None), ("true", None), ("1e400", None),
])
async def test_invalid_requests(dispatcher: Dispatcher, message: str, id_: Any) -> None:
    assert normalised(await call(dispatcher, message)) == error(-32600, id_)


@pytest.mark.parametrize(("raw_id", "echoed"), [
    (b'"1"', b'"1"'), (b"1", b"1"), (b"1.0", b"1.0"), (b"-7", b"-7"), (b"null", b"null"),
    (b"123456789012345678901234567890", b"123456789012345678901234567890"),
    (b"-123456789012345678901234567890", b"-123456789012345678901234567890"),
    (b'"\\u00e9t\\u00e9"', '"été"'.encode()), (b"2.5e3", b"2500.0"),
])
async def test_ids_are_echoed_faithfully(dispatcher: Dispatcher, raw_id: bytes,
                                         echoed: bytes) -> None:
    message = b'{"jsonrpc":"2.0","method":"get_data","id":' + raw_id + b"}"
    with trio.fail_after(5):
        reply = await dispatcher.handle(message, Session())
    assert reply == b'{"jsonrpc":"2.0","result":["hello",5],"id":' + echoed + b"}"


async def test_extra_members_are_tolerated_and_duplicate_keys_take_the_last(
        dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"get_data","x":[1e400],'
                                   '"id":1,"id":2}')
    assert reply == {"jsonrpc": "2.0", "result": ["hello", 5], "id": 2}


@pytest.mark.parametrize("message", [
    b"", b"   ", b"\xff", b'{"a":"\xff"}', b'{"jsonrpc":"2.0","method":"get_data","x":"\xc3"}',
    b'"\xed\xa0\x80"', b'{"a":"\\ud800"}', b'{"a":"\\udc00x"}', b"NaN", b"Infinity",
    b'{"jsonrpc":"2.0","method":"sum","params":[NaN],"id":1}', b"-Infinity", b"[1,]",
    b"{} {}", b"\xef\xbb\xbf{}", b'{"jsonrpc":[Infinity]}', b'{"method":1,"x":NaN}',
    b'{"jsonrpc":"2.0","method":1,"id":1} x', b"42 x", b'"x" "y"', b"[1] x",
    b'{"jsonrpc":"2.0","method":"get_data","id":[1,}',
    b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"jsonrpc":"2.0","method":"sum","params":' + b"[" * 5000 + b"]" * 5000 + b',"id":1}',
])
async def test_parse_errors(dispatcher: Dispatcher, message: bytes) -> None:
    assert normalised(await call(dispatcher, message)) == error(-32700, None)


async def test_deep_nesting_says_why(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, b"[" * 100_000)
    assert reply["error"] == {"code": -32700, "message": "parse error: nesting too deep"}


async def test_batch_limit() -> None:
    dispatcher = Dispatcher(SPEC_METHODS, max_batch=2)
    request = '{"jsonrpc":"2.0","method":"get_data","id":1}'
    assert len(await call(dispatcher, f"[{request},{request}]")) == 2
    assert normalised(await call(dispatcher, f"[{request},{request},{request}]")) == error(
        -32600, None)


async def test_null_id_is_a_request_not_a_notification(dispatcher: Dispatcher) -> None:
    assert await call(dispatcher, '{"jsonrpc":"2.0","method":"get_data","id":null}') == {
        "jsonrpc": "2.0", "result": ["hello", 5], "id": None}


async def test_invalid_request_without_id_is_still_answered(dispatcher: Dispatcher) -> None:
    assert normalised(await call(dispatcher, '{"jsonrpc":"2.0","method":5}')) == error(
        -32600, None)


# --- params ----------------------------------------------------------------------------------


async def test_wrong_param_type_gives_path(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"echo","params":{"prompt":1},'
                                   '"id":"r"}')
    assert reply == {"jsonrpc": "2.0", "error": {
        "code": -32602, "message": "invalid params: Expected `str`, got `int` - at `$.prompt`",
        "data": {"path": "$.prompt"}}, "id": "r"}


async def test_nested_param_path(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"echo","params":'
                                   '{"prompt":"p","tags":["a",2]},"id":1}')
    assert reply["error"] == {
        "code": -32602, "message": "invalid params: Expected `str`, got `int` - at `$.tags[1]`",
        "data": {"path": "$.tags[1]"}}


async def test_no_string_to_int_coercion(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"subtract","params":'
                                   '{"minuend":"42","subtrahend":1},"id":1}')
    assert reply["error"]["data"] == {"path": "$.minuend"}
    assert reply["error"]["code"] == -32602


async def test_positional_param_errors_point_at_the_position(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"echo","params":["p","2"],'
                                   '"id":1}')
    assert reply["error"] == {
        "code": -32602, "message": "invalid params: Expected `int`, got `str` - at `$[1]`",
        "data": {"path": "$[1]"}}


async def test_too_many_positional_params(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"subtract","params":[1,2,3],'
                                   '"id":1}')
    assert reply["error"] == {
        "code": -32602,
        "message": "invalid params: `subtract` takes at most 2 params by position, got 3",
        "data": {"path": "$[2]"}}


@pytest.mark.parametrize("params", ["", ',"params":{}', ',"params":[]', ',"params":[1]'])
async def test_missing_required_field(dispatcher: Dispatcher, params: str) -> None:
    reply = await call(dispatcher, f'{{"jsonrpc":"2.0","method":"subtract"{params},"id":1}}')
    assert reply["error"]["code"] == -32602
    assert reply["error"]["message"].startswith("invalid params: Object missing required field")


async def test_unknown_field_when_the_struct_forbids_it(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"echo","params":'
                                   '{"prompt":"p","colour":1},"id":1}')
    assert reply["error"] == {
        "code": -32602, "message": "invalid params: Object contains unknown field `colour`",
        "data": {"path": "$.colour"}}


async def test_huge_numbers_in_params(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"subtract","params":'
                                   '{"minuend":1e400,"subtrahend":1},"id":1}')
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"] == {"path": "$.minuend"}
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"subtract","params":'
                                   '[123456789012345678901234567890, 1],"id":2}')
    assert reply == {"jsonrpc": "2.0", "result": 123456789012345678901234567889, "id": 2}


@pytest.mark.parametrize("params", ["", ',"params":{}', ',"params":[]', ',"params":{ }'])
async def test_no_params_method_accepts_empty(dispatcher: Dispatcher, params: str) -> None:
    assert (await call(dispatcher, f'{{"jsonrpc":"2.0","method":"get_data"{params},"id":1}}')
            )["result"] == ["hello", 5]


@pytest.mark.parametrize("params", ['{"a":1}', "[1]", "[null]"])
async def test_no_params_method_refuses_others(dispatcher: Dispatcher, params: str) -> None:
    reply = await call(dispatcher,
                       f'{{"jsonrpc":"2.0","method":"get_data","params":{params},"id":1}}')
    assert reply["error"] == {"code": -32602,
                              "message": "invalid params: `get_data` takes no params",
                              "data": {"path": "$"}}


@pytest.mark.parametrize("method", ["get_data", "sum", "echo"])
async def test_null_params_are_no_params(dispatcher: Dispatcher, method: str) -> None:
    reply = await call(dispatcher,
                       f'{{"jsonrpc":"2.0","method":"{method}","params":null,"id":1}}')
    if method == "echo":  # `prompt` is required: absent, not a wrong shape
        assert reply["error"]["code"] == -32602
        assert reply["error"]["data"] == {"path": "$.prompt"}
    else:
        assert "result" in reply


async def test_null_params_of_an_unknown_method_is_method_not_found(
        dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"nope","params":null,"id":1}')
    assert reply["error"]["code"] == -32601


@pytest.mark.parametrize("params", [
    '{"prompt":"p","count":null,"tags":null}', '["p",null,null]', '["p",null]',
    '{"prompt":"p","count":null}'])
async def test_null_members_take_the_default(dispatcher: Dispatcher, params: str) -> None:
    reply = await call(dispatcher,
                       f'{{"jsonrpc":"2.0","method":"echo","params":{params},"id":1}}')
    assert reply["result"] == {"prompt": "p", "count": 1, "tags": [], "id": 1}


@pytest.mark.parametrize(("params", "path"), [
    ('{"prompt":null}', "$.prompt"), ('{"prompt":"p","count":null,"tags":"x"}', "$.tags"),
    ('[null]', "$[0]"), ('["p",null,7]', "$[2]")])
async def test_null_members_do_not_hide_other_errors(dispatcher: Dispatcher, params: str,
                                                      path: str) -> None:
    reply = await call(dispatcher,
                       f'{{"jsonrpc":"2.0","method":"echo","params":{params},"id":1}}')
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"] == {"path": path}


async def test_null_stays_a_value_where_the_field_takes_it() -> None:
    class Maybe(msgspec.Struct, forbid_unknown_fields=True):
        value: int | None = 5

    async def show(params: Maybe, ctx: CallContext) -> Any:
        return params.value

    dispatcher = Dispatcher([Method("show", show, Maybe)])
    for params in ('{"value":null}', "[null]"):
        reply = await call(dispatcher, f'{{"jsonrpc":"2.0","method":"show","params":{params},'
                                       '"id":1}')
        assert reply["result"] is None


async def test_context_carries_the_request_id(dispatcher: Dispatcher) -> None:
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"echo","params":["p"],"id":"x"}')
    assert reply["result"] == {"prompt": "p", "count": 1, "tags": [], "id": "x"}


# --- handler failures ------------------------------------------------------------------------


async def test_llmd_error_is_answered_with_its_code_and_data() -> None:
    async def fails(params: None, ctx: CallContext) -> None:
        raise errors.NoSuchJob("no job 'j1'", {"job": "j1"})

    reply = await call(Dispatcher([Method("jobs.get", fails)]),
                       '{"jsonrpc":"2.0","method":"jobs.get","id":9}')
    assert reply == {"jsonrpc": "2.0", "error": {
        "code": -32007, "message": "no job 'j1'", "data": {"job": "j1"}}, "id": 9}


async def test_unexpected_exception_is_internal_error_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    async def crashes(params: None, ctx: CallContext) -> None:
        raise RuntimeError("secret detail /home/user/token")

    caplog.set_level(logging.ERROR, logger="llmd.rpc")
    dispatcher = Dispatcher([Method("crash", crashes)])
    with trio.fail_after(5):
        raw = await dispatcher.handle(b'{"jsonrpc":"2.0","method":"crash","id":1}', Session())
    assert raw == b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"internal error"},"id":1}'
    [record] = [r for r in caplog.records if r.name == "llmd.rpc"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert "crash" in record.getMessage()


async def test_failing_notification_is_logged_not_answered(
        caplog: pytest.LogCaptureFixture) -> None:
    async def crashes(params: None, ctx: CallContext) -> None:
        raise ValueError("boom")

    caplog.set_level(logging.ERROR, logger="llmd.rpc")
    reply = await call(Dispatcher([Method("crash", crashes)]),
                       '{"jsonrpc":"2.0","method":"crash"}')
    assert reply is None
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ValueError]


async def test_unencodable_result_is_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    async def odd(params: None, ctx: CallContext) -> object:
        return object()

    caplog.set_level(logging.ERROR, logger="llmd.rpc")
    reply = await call(Dispatcher([Method("odd", odd)]), '{"jsonrpc":"2.0","method":"odd","id":1}')
    assert normalised(reply) == error(-32603, 1)
    assert len(caplog.records) == 1


async def test_outer_cancellation_propagates() -> None:
    async def waits(params: None, ctx: CallContext) -> None:
        await trio.sleep_forever()

    dispatcher = Dispatcher([Method("wait", waits)])
    session = Session()
    replies: list[bytes | None] = []
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                async def run() -> None:
                    replies.append(await dispatcher.handle(
                        b'{"jsonrpc":"2.0","method":"wait","id":1}', session))

                nursery.start_soon(run)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
    assert scope.cancelled_caught
    assert replies == []
    assert session.inflight == {}


# --- cancellation and concurrency --------------------------------------------------------------


class Blocker:
    """A method that blocks until cancelled, recording how it ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    async def __call__(self, params: None, ctx: CallContext) -> str:
        try:
            await trio.sleep_forever()
        finally:
            self.ended.append(str(ctx.request_id))
        return "unreachable"  # pragma: no cover


async def start(nursery: trio.Nursery, dispatcher: Dispatcher, session: Session,
                message: bytes, replies: list[Any]) -> None:
    async def run() -> None:
        reply = await dispatcher.handle(message, session)
        replies.append(None if reply is None else json.loads(reply))

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()


def cancel(id_json: str) -> bytes:
    return b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":' + id_json.encode() + b"}}"


@pytest.fixture
async def blocking() -> AsyncIterator[tuple[Dispatcher, Blocker]]:
    blocker = Blocker()
    yield Dispatcher([Method("block", blocker)]), blocker


async def test_cancel_request(blocking: tuple[Dispatcher, Blocker]) -> None:
    dispatcher, blocker = blocking
    session = Session()
    replies: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"block","id":7}', replies)
            assert set(session.inflight) == {request_key(7)}
            assert await dispatcher.handle(cancel("7"), session) is None
    assert replies == [{"jsonrpc": "2.0", "error": {"code": -32800,
                                                    "message": "request cancelled"}, "id": 7}]
    assert blocker.ended == ["7"]
    assert session.inflight == {}


async def test_a_cancellation_from_elsewhere_is_server_cancelled() -> None:
    cancelled_elsewhere = trio.Event()

    async def run(params: None, ctx: CallContext) -> None:
        await cancelled_elsewhere.wait()
        raise errors.Cancelled("cancelled by llm.cancel", {"job": "j1"})

    dispatcher = Dispatcher([Method("llm.run", run)])
    session = Session()
    replies: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"llm.run","id":3}', replies)
            cancelled_elsewhere.set()
    assert replies == [{"jsonrpc": "2.0", "error": {
        "code": -32802, "message": "cancelled by llm.cancel", "data": {"job": "j1"}}, "id": 3}]


async def test_own_cancel_stays_minus_32800_whatever_the_handler_raises() -> None:
    async def run(params: None, ctx: CallContext) -> None:
        try:
            await trio.sleep_forever()
        finally:
            # A handler that turns its own cancellation into an error still answers -32800.
            raise errors.Cancelled("cancelled", {"job": "j2"})

    dispatcher = Dispatcher([Method("llm.run", run)])
    session = Session()
    replies: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"llm.run","id":4}', replies)
            await dispatcher.handle(cancel("4"), session)
    assert [r["error"]["code"] for r in replies] == [-32800]


async def test_cancel_matches_id_type(blocking: tuple[Dispatcher, Blocker]) -> None:
    dispatcher, _ = blocking
    session = Session()
    replies: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"block","id":1}', replies)
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"block","id":"1"}', replies)
            assert len(session.inflight) == 2
            for other in ("1.0", "2", "null", '"01"'):
                assert await dispatcher.handle(cancel(other), session) is None
            await trio.testing.wait_all_tasks_blocked()
            assert replies == []
            await dispatcher.handle(cancel('"1"'), session)
            await trio.testing.wait_all_tasks_blocked()
            assert replies == [error(-32800, "1") | {"error": {
                "code": -32800, "message": "request cancelled"}}]
            await dispatcher.handle(cancel("1"), session)
    assert [r["id"] for r in replies] == ["1", 1]
    assert session.inflight == {}


async def test_cancel_request_sent_as_a_request_is_answered(
        blocking: tuple[Dispatcher, Blocker]) -> None:
    dispatcher, _ = blocking
    reply = await call(dispatcher, '{"jsonrpc":"2.0","method":"$/cancelRequest",'
                                   '"params":{"id":99},"id":100}')
    assert reply == {"jsonrpc": "2.0", "result": None, "id": 100}
    bad = await call(dispatcher, '{"jsonrpc":"2.0","method":"$/cancelRequest",'
                                 '"params":{"id":[1]},"id":101}')
    assert bad["error"]["code"] == -32602
    assert await call(dispatcher, '{"jsonrpc":"2.0","method":"$/cancelRequest",'
                                  '"params":{}}') is None


async def test_duplicate_inflight_id_replaces_the_registration(
        blocking: tuple[Dispatcher, Blocker]) -> None:
    dispatcher, blocker = blocking
    session = Session()
    replies: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"block","id":5}', replies)
            first = session.inflight[request_key(5)]
            await start(nursery, dispatcher, session,
                        b'{"jsonrpc":"2.0","method":"block","id":5}', replies)
            second = session.inflight[request_key(5)]
            assert second is not first
            await dispatcher.handle(cancel("5"), session)
            await trio.testing.wait_all_tasks_blocked()
            assert len(replies) == 1
            assert second.cancel_called and not first.cancel_called
            # The finished duplicate left nothing behind, and did not drop the other.
            assert session.inflight == {}
            first.cancel()
    assert normalised(replies) == [error(-32800, 5)] * 2
    assert blocker.ended == ["5", "5"]


async def test_batch_elements_run_concurrently() -> None:
    first, second = trio.Event(), trio.Event()

    async def ping(params: None, ctx: CallContext) -> str:
        first.set()
        await second.wait()
        return "ping"

    async def pong(params: None, ctx: CallContext) -> str:
        second.set()
        await first.wait()
        return "pong"

    dispatcher = Dispatcher([Method("ping", ping), Method("pong", pong)])
    reply = await call(dispatcher, '[{"jsonrpc":"2.0","method":"ping","id":1},'
                                   '{"jsonrpc":"2.0","method":"pong","id":2}]')
    assert sorted(reply, key=lambda r: r["id"]) == [
        {"jsonrpc": "2.0", "result": "ping", "id": 1},
        {"jsonrpc": "2.0", "result": "pong", "id": 2}]


async def test_batch_element_can_be_cancelled(blocking: tuple[Dispatcher, Blocker]) -> None:
    dispatcher, _ = blocking
    session = Session()
    replies: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start(nursery, dispatcher, session,
                        b'[{"jsonrpc":"2.0","method":"block","id":"a"},'
                        b'{"jsonrpc":"2.0","method":"block","id":"b"}]', replies)
            await dispatcher.handle(cancel('"a"'), session)
            await dispatcher.handle(cancel('"b"'), session)
    assert normalised(replies[0]) == [error(-32800, "a"), error(-32800, "b")]


# --- construction and helpers ------------------------------------------------------------------


def test_duplicate_method_names_are_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Dispatcher([Method("get_data", get_data), Method("get_data", get_data)])
    with pytest.raises(ValueError, match="defined twice"):
        Dispatcher([Method("$/cancelRequest", get_data)])


def test_params_must_be_a_struct() -> None:
    with pytest.raises(ValueError, match=r"msgspec\.Struct"):
        Dispatcher([Method("x", get_data, dict)])  # type: ignore[arg-type]


def test_helpers_encode_exactly() -> None:
    assert encode_notification("llm.output", {"seq": 0, "text": "hi"}) == (
        b'{"jsonrpc":"2.0","method":"llm.output","params":{"seq":0,"text":"hi"}}')
    assert error_reply(errors.Busy("queue full", {"retry_after_s": 1.5}), "q") == (
        b'{"jsonrpc":"2.0","error":{"code":-32006,"message":"queue full",'
        b'"data":{"retry_after_s":1.5}},"id":"q"}')
    assert error_reply(errors.InvalidRequest("too large"), None) == (
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"too large"},"id":null}')
    assert result_reply({"a": [1]}, 2.5) == b'{"jsonrpc":"2.0","result":{"a":[1]},"id":2.5}'


def test_error_reply_with_unencodable_data_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="llmd.rpc")
    assert error_reply(errors.CliFailed("failed", {"x": object()}), 1) == (
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"internal error"},"id":1}')
    assert len(caplog.records) == 1


def test_request_keys_keep_json_types_apart() -> None:
    keys = {request_key(1), request_key(1.0), request_key("1"), request_key(None)}
    assert len(keys) == 4
    assert request_key(1) == request_key(1)


# --- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)

request_like = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | json_values,
    "method": st.sampled_from([m.name for m in SPEC_METHODS] + ["$/cancelRequest", "nope"])
    | json_values,
    "params": json_values,
    "id": st.integers() | st.text(max_size=5) | st.none() | json_values,
})

messages = json_values | request_like | st.lists(request_like | json_values, max_size=6)


def check_reply(obj: Any) -> None:
    assert isinstance(obj, dict)
    keys = list(obj)
    assert keys in (["jsonrpc", "result", "id"], ["jsonrpc", "error", "id"]), keys
    assert obj["jsonrpc"] == "2.0"
    assert obj["id"] is None or isinstance(obj["id"], str | int | float)
    assert not isinstance(obj["id"], bool)
    if "error" in obj:
        assert isinstance(obj["error"]["code"], int)
        assert isinstance(obj["error"]["message"], str)
        assert set(obj["error"]) <= {"code", "message", "data"}


def check_any_reply(reply: bytes | None) -> None:
    if reply is None:
        return
    parsed = json.loads(reply)
    if isinstance(parsed, list):
        assert parsed
        for item in parsed:
            check_reply(item)
    else:
        check_reply(parsed)


@given(messages, st.booleans())
@settings(max_examples=400, deadline=None)
async def test_any_json_message_gets_a_valid_reply(message: Any, ascii_only: bool) -> None:
    text = json.dumps(message, ensure_ascii=ascii_only)
    # Lone surrogates become invalid UTF-8 here, which must be a parse error too.
    data = text.encode("utf-8", "surrogatepass")
    with trio.fail_after(5):
        reply = await Dispatcher(SPEC_METHODS).handle(data, Session())
    check_any_reply(reply)


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
async def test_any_bytes_get_a_valid_reply(data: bytes) -> None:
    with trio.fail_after(5):
        reply = await Dispatcher(SPEC_METHODS).handle(data, Session())
    check_any_reply(reply)
    assert reply is not None or data.strip()[:1] in (b"{", b"[")


# --- large results are spliced, not copied ---------------------------------


class _Answer(msgspec.Struct):
    job: str
    text: str
    output: str
    stderr: str
    extra: Any = None


async def test_large_strings_are_encoded_once_and_sent_as_parts() -> None:
    big = 'an "answer"\n\u00e9\u2603' * (SPLICE_MIN // 8)
    tail = "e" * SPLICE_MIN

    async def answer(params: None, ctx: CallContext) -> _Answer:
        return _Answer(job="j1", text=big, output=big, stderr=tail, extra={"text": 0})

    dispatcher = Dispatcher([Method("answer", answer)])
    message = b'{"jsonrpc":"2.0","method":"answer","id":3}'
    with trio.fail_after(10):
        parts = await dispatcher.handle_parts(message, Session())
        whole = await dispatcher.handle(message, Session())
    assert isinstance(parts, tuple)
    # text and output are one string: encoded once, sent twice; stderr apart.
    assert parts[1] is parts[3]
    assert len(parts) == 7
    assert reply_bytes(parts) == whole
    decoded = json.loads(whole)
    assert decoded == {"jsonrpc": "2.0", "id": 3, "result": {
        "job": "j1", "text": big, "output": big, "stderr": tail, "extra": {"text": 0}}}
    # Below the size, one buffer as always.
    small = result_reply(_Answer(job="j", text="x", output="x", stderr=""), 1)
    assert isinstance(small, bytes)


async def test_a_batch_holds_spliced_replies_whole() -> None:
    big = "x" * SPLICE_MIN

    async def answer(params: None, ctx: CallContext) -> _Answer:
        return _Answer(job="j", text=big, output=big, stderr="")

    dispatcher = Dispatcher([Method("answer", answer)])
    with trio.fail_after(10):
        reply = await dispatcher.handle_parts(
            b'[{"jsonrpc":"2.0","method":"answer","id":1},'
            b'{"jsonrpc":"2.0","method":"answer","id":2}]', Session())
    assert isinstance(reply, bytes)
    assert [r["result"]["output"] == big for r in json.loads(reply)] == [True, True]


async def test_a_large_string_json_cannot_carry_is_an_internal_error_not_a_cut_reply(
        ) -> None:
    bad = "x" * SPLICE_MIN + "\ud800"

    async def answer(params: None, ctx: CallContext) -> _Answer:
        return _Answer(job="j", text=bad, output=bad, stderr="")

    with trio.fail_after(10):
        reply = await Dispatcher([Method("answer", answer)]).handle_parts(
            b'{"jsonrpc":"2.0","method":"answer","id":4}', Session())
    assert isinstance(reply, bytes)
    assert json.loads(reply) == {"jsonrpc": "2.0", "id": 4,
                                 "error": {"code": -32603, "message": "internal error"}}
