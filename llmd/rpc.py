"""JSON-RPC 2.0 dispatch: the bytes of one message in, the bytes of its reply out.

Invariants:
- ``Dispatcher.handle`` answers every input, whatever its bytes, with ``None`` or one
  serialised reply (an object, or an array for a batch); only ``trio.Cancelled`` from an
  enclosing scope (and other ``BaseException``s such as ``KeyboardInterrupt``) escape it.
- Notifications (no ``id`` member) never get a reply, not even an error; their handlers
  still run, and their failures go to the log.
- A failing handler reaches the wire as its ``LlmdError.to_wire()``, or as a bare -32603
  without any exception text; the exception itself goes to the ``llmd.rpc`` log.
- Ids are echoed as decoded: strings stay strings, integers (of any size) stay integers,
  numbers with a fraction or exponent stay floats. An id that is not a string, number or
  null, or a number beyond the range of a double (``1e400``), is answered -32600 with
  id null.
- Every request with an id runs in its own ``trio.CancelScope``, registered in
  ``Session.inflight`` under ``request_key(id)`` while it runs. ``$/cancelRequest``
  cancels it, and it is then answered -32800. A handler that fails with a cancellation
  its own request did not ask for (``llm.cancel`` from any client, a daemon stop) is
  answered -32802, LSP's ServerCancelled, with the same ``data``: a client that takes
  -32800 for the echo of its own cancel still sees the answer. If a second request reuses
  an id already in flight on the session, it replaces the first in ``inflight`` (both
  still run and are answered; only the later one can be cancelled by id).
- Text that is not JSON is -32700: invalid UTF-8 anywhere, ``NaN``/``Infinity``, lone
  surrogate escapes, trailing data, and nesting deeper than msgspec's limit (about
  1000 levels; msgspec raises ``RecursionError``). Valid JSON that is not a request
  object (wrong member types, ``params`` not structured, a scalar, an empty batch, a
  batch over ``max_batch``) is -32600, answered even when it has no id. Extra members
  are tolerated; of duplicate keys the last one counts.
- The message is decoded once; ``params`` is kept raw and decoded straight into the
  method's ``msgspec.Struct``, so JSON types are checked strictly (no str-to-int).
  ``"params": null`` is no params, and a member (or position) that is ``null`` is
  absent: it takes the field's default, for every method alike (Emacs' jsonrpc.el
  sends nil as null). Only params that fail to decode are rewritten that way.
  Params by position are matched to the struct's fields in order and checked the same
  way; error paths then name the position (``$[1]``).
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec
import trio

from llmd import errors
from llmd.errors import LlmdError

__all__ = [
    "CANCEL_REQUEST",
    "CallContext",
    "Dispatcher",
    "Method",
    "MethodHandler",
    "Reply",
    "RequestId",
    "RequestKey",
    "Session",
    "encode_notification",
    "error_reply",
    "reply_bytes",
    "request_key",
    "result_reply",
]

RequestId: TypeAlias = int | float | str | None
RequestKey: TypeAlias = tuple[type, RequestId]

CANCEL_REQUEST = "$/cancelRequest"
DEFAULT_MAX_BATCH = 10_000
_NAME_SHOWN = 100  # characters of an unknown method name quoted back

log = logging.getLogger("llmd.rpc")


class Session:
    """The state of one connection, shared by the requests that arrive on it.

    Attributes:
        inflight: The cancel scope of each running request, by ``request_key(id)``.
        extra: Whatever the server wants to attach to the connection.
    """

    def __init__(self) -> None:
        self.inflight: dict[RequestKey, trio.CancelScope] = {}
        self.extra: dict[str, Any] = {}


@dataclass
class CallContext:
    """What a handler knows about the call besides its params."""

    request_id: RequestId
    is_notification: bool
    session: Session


MethodHandler: TypeAlias = Callable[[Any, CallContext], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    """One method of the table.

    Attributes:
        name: The JSON-RPC method name.
        handler: ``await handler(params, ctx)`` gives the result (msgspec-encodable).
        params: The struct the params are decoded into, by name or by position; None
            when the method takes none (absent, ``{}`` and ``[]`` are then accepted).
    """

    name: str
    handler: MethodHandler
    params: type[msgspec.Struct] | None = None


def request_key(request_id: RequestId) -> RequestKey:
    """The ``Session.inflight`` key of a request id.

    The JSON type is part of the key, so the ids ``1``, ``1.0`` and ``"1"`` name three
    different requests (as their echoes differ too).
    """
    return (type(request_id), request_id)


# --- wire shapes -----------------------------------------------------------------------

_ABSENT = msgspec.Raw()


class _Request(msgspec.Struct):
    """A request as decoded on the hot path; members of a wrong type fail the decode."""

    jsonrpc: str | msgspec.UnsetType = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw = _ABSENT
    id: int | float | str | msgspec.UnsetType | None = msgspec.UNSET


class _IdProbe(msgspec.Struct):
    """Just the id of an invalid request, to echo it if it is valid on its own."""

    id: msgspec.Raw = _ABSENT


class _ResultReply(msgspec.Struct, gc=False):
    jsonrpc: str
    result: Any
    id: RequestId


class _ErrorReply(msgspec.Struct, gc=False):
    jsonrpc: str
    error: dict[str, Any]
    id: RequestId


class _Notification(msgspec.Struct, gc=False):
    jsonrpc: str
    method: str
    params: Any


class _CancelParams(msgspec.Struct):
    id: int | float | str | None


_encoder = msgspec.json.Encoder()

Reply: TypeAlias = "bytes | tuple[bytes | LargeString, ...]"
"""A serialised message: one buffer, or parts to be sent in order (see result_reply)."""

SPLICE_MIN = 1 << 20
_SLICE_CHARS = 1 << 20
# Stands for a large string in a reply's skeleton. Random, so that no string of a result
# can contain it by chance or by design (it is never shown).
_SPLICE_MARK = secrets.token_hex(16).encode()
_message_decoder = msgspec.json.Decoder(_Request | list[msgspec.Raw])
_element_decoder = msgspec.json.Decoder(_Request)
_probe_decoder = msgspec.json.Decoder(_IdProbe)
_syntax_decoder = msgspec.json.Decoder(msgspec.Raw)
_id_decoder = msgspec.json.Decoder(int | float | str | None)
_structured_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw])
_positional_decoder = msgspec.json.Decoder(list[msgspec.Raw])

# Failures of encoding a value: unsupported types, lone surrogates, cycles.
_ENCODE_FAILURES = (TypeError, ValueError, RecursionError, msgspec.EncodeError)

_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")
_NOT_OBJECT = re.compile(r"^Expected `object( \| array)?`, got (`\w+`)$")
_FIELD_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]*)`")


def encode_notification(method: str, params: object) -> bytes:
    """Serialise a server-to-client notification (without framing).

    Args:
        method: The notification's method, such as ``llm.output``.
        params: Its params, msgspec-encodable (an object, by the spec).

    Returns:
        ``{"jsonrpc":"2.0","method":...,"params":...}`` as bytes.
    """
    return _encoder.encode(_Notification("2.0", method, params))


def error_reply(err: LlmdError, request_id: RequestId) -> bytes:
    """Serialise the error response to a request.

    Args:
        err: The error; its ``to_wire()`` becomes the ``error`` member.
        request_id: The request's id, or None when it could not be read.

    Returns:
        The reply as bytes; a bare -32603 if the error's ``data`` cannot be encoded
        (which is logged).
    """
    return _error_bytes(err.to_wire(), request_id)


def result_reply(result: object, request_id: RequestId) -> Reply:
    """Serialise the success response to a request.

    A struct's string fields of ``SPLICE_MIN`` characters or more are encoded apart, once
    per string, and the reply is their parts in order: a run whose ``text`` and
    ``output`` are one 16 MiB string encodes it once and is never copied into one buffer.

    Args:
        result: The result, msgspec-encodable.
        request_id: The request's id.

    Returns:
        The reply as bytes, or as parts to be sent in order.

    Raises:
        TypeError, ValueError, msgspec.EncodeError: ``result`` cannot be encoded.
    """
    large: dict[str, str] = {}
    if isinstance(result, msgspec.Struct):
        for name in _field_names(type(result)):
            value = getattr(result, name)
            if type(value) is str and len(value) >= SPLICE_MIN:
                large[name] = value
    if not large:
        return _encoder.encode(_ResultReply("2.0", result, request_id))
    assert isinstance(result, msgspec.Struct)
    marks = {name: b'"%s%d"' % (_SPLICE_MARK, n) for n, name in enumerate(large)}
    skeleton = _encoder.encode(_ResultReply("2.0", msgspec.structs.replace(
        result, **{name: msgspec.Raw(mark) for name, mark in marks.items()}), request_id))
    strings: dict[int, LargeString] = {}
    parts: list[bytes | LargeString] = []
    start = 0
    for name, mark in sorted(marks.items(), key=lambda item: skeleton.index(item[1])):
        at = skeleton.index(mark, start)
        parts.append(skeleton[start:at])
        value = large[name]
        parts.append(strings.setdefault(id(value), LargeString(value)))
        start = at + len(mark)
    parts.append(skeleton[start:])
    return tuple(parts)


class LargeString:
    """A large string of a reply as JSON, encoded a slice at a time as it is sent.

    A sender that needs no length up front sends each slice of an ASCII string as soon as
    it is encoded, so encoding overlaps the transfer. Slices are kept for a second use of the same
    string (a plain-text run's ``text`` and ``output``): it is never encoded twice.

    Args:
        text: The string.

    Raises:
        UnicodeEncodeError: ``text`` holds a lone surrogate.
    """

    __slots__ = ("_slices", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._slices: list[bytes] = []
        if not text.isascii():
            # Only a non-ASCII string can hold what JSON cannot carry (a lone surrogate):
            # encoded now, the failure is the caller's -32603, not a reply cut short.
            for _ in self.pieces():
                pass

    def __len__(self) -> int:
        return sum(len(piece) for piece in self.pieces())

    def pieces(self) -> Iterator[bytes | memoryview]:
        """The JSON string's bytes, in pieces; encoded on the first pass only."""
        yield b'"'
        for n, start in enumerate(range(0, len(self._text), _SLICE_CHARS)):
            if n == len(self._slices):
                # Escaping is per character: the slices' insides, joined, are the whole's.
                self._slices.append(
                    _encoder.encode(self._text[start:start + _SLICE_CHARS]))
            yield memoryview(self._slices[n])[1:-1]
        yield b'"'


@functools.lru_cache(maxsize=64)
def _field_names(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    # msgspec.structs.fields resolves the type hints on every call: ~0.2 ms.
    return struct.__struct_fields__


def reply_bytes(reply: Reply) -> bytes:
    """A reply as one buffer (for a batch, which must hold its replies whole)."""
    if isinstance(reply, bytes):
        return reply
    return b"".join(piece for part in reply
                    for piece in ((part,) if isinstance(part, bytes) else part.pieces()))


def _error_bytes(error: dict[str, Any], request_id: RequestId) -> bytes:
    try:
        return _encoder.encode(_ErrorReply("2.0", error, request_id))
    except _ENCODE_FAILURES:
        log.exception("error reply %r could not be encoded", error.get("code"))
        return _encoder.encode(_ErrorReply("2.0", _INTERNAL, request_id))


_INTERNAL = errors.InternalError("internal error").to_wire()
_CANCELLED = errors.Cancelled("request cancelled").to_wire()


def _invalid(detail: str, request_id: RequestId = None) -> bytes:
    return _error_bytes(errors.InvalidRequest(f"invalid request: {detail}").to_wire(),
                        request_id)


def _parse_error(detail: str) -> bytes:
    return _error_bytes(errors.ParseError(f"parse error: {detail}").to_wire(), None)


def _is_null(raw: msgspec.Raw) -> bool:
    with memoryview(raw) as view:
        return view.nbytes == 4 and view.tobytes() == b"null"


# A high-surrogate escape not followed by a low one (an escaped backslash before it is text).
_LONE_HIGH = re.compile(rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])")


def _lone_surrogate(data: bytes) -> str | None:
    """What is wrong with text that has a lone high surrogate: msgspec calls it
    truncated, which it is not. Looked at only once decoding has failed."""
    found = _LONE_HIGH.search(data)
    if found is None:
        return None
    escape = found.group().lstrip(b"\\").decode("ascii")
    return (f"lone surrogate escape \\{escape} at byte {found.end() - 6}: a high "
            "surrogate must be followed by a low one (\\udc00-\\udfff)")


def _first_byte(raw: msgspec.Raw) -> int:
    with memoryview(raw) as view:
        return view[0] if view else 0


def _validation_data(exc: msgspec.ValidationError) -> tuple[str, dict[str, Any]]:
    """msgspec's message and the JSON path it points at, for an invalid-params reply."""
    text = str(exc)
    found = _AT_PATH.search(text)
    path = found.group(1) if found else "$"
    field = _FIELD_NAMED.match(text)
    if field:
        name = field.group(1)
        path += f".{name}" if name.isidentifier() else f"[{_encoder.encode(name).decode()}]"
    return text, {"path": path}


# --- dispatch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    method: Method
    decoder: msgspec.json.Decoder[msgspec.Struct] | None
    # The struct's fields as JSON-encoded names, for params given by position.
    names: tuple[bytes, ...]
    fields: tuple[str, ...]


async def _cancel_request(params: _CancelParams, ctx: CallContext) -> None:
    scope = ctx.session.inflight.get(request_key(params.id))
    # Unknown ids (finished, never seen) are ignored, as LSP prescribes.
    if scope is not None:
        scope.cancel()


class Dispatcher:
    """Routes JSON-RPC 2.0 messages to async handlers.

    Args:
        methods: The method table; ``$/cancelRequest`` is built in.
        log: Where handler failures are reported; ``llmd.rpc`` by default.
        max_batch: The most requests one batch may hold; a longer batch is answered
            with a single -32600.

    Raises:
        ValueError: Two methods share a name, or a params type is not a Struct.
    """

    def __init__(self, methods: Iterable[Method], *, log: logging.Logger | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.log = log if log is not None else logging.getLogger("llmd.rpc")
        self.max_batch = max_batch
        self._entries: dict[str, _Entry] = {}
        for method in (Method(CANCEL_REQUEST, _cancel_request, _CancelParams), *methods):
            if method.name in self._entries:
                raise ValueError(f"method {method.name!r} is defined twice")
            self._entries[method.name] = _compile(method)

    async def handle(self, data: bytes, session: Session) -> bytes | None:
        """Answer one message, with the reply in one buffer (see :meth:`handle_parts`)."""
        reply = await self.handle_parts(data, session)
        return None if reply is None else reply_bytes(reply)

    async def handle_parts(self, data: bytes, session: Session) -> Reply | None:
        """Answer one message.

        Args:
            data: The message body, without framing.
            session: The connection it arrived on.

        Returns:
            The serialised reply (one buffer, or parts to send in order), or None when
            nothing is to be sent (a notification, or a batch of notifications only).
        """
        try:
            if not data.isascii():
                # msgspec does not check UTF-8 inside skipped members; the spec wants
                # the whole text valid.
                data.decode("utf-8")
            try:
                message = _message_decoder.decode(data)
            except msgspec.ValidationError as exc:
                # msgspec stops at the first member of a wrong type, so the rest of the
                # text is unchecked: it must be JSON for the answer to be -32600.
                _syntax_decoder.decode(data)
                return _invalid_from(data, exc)
        except msgspec.DecodeError as exc:
            detail = str(exc)
            if detail == "Input data was truncated":  # also msgspec's word for "\ud800"
                detail = _lone_surrogate(data) or detail
            return _parse_error(detail)
        except UnicodeDecodeError as exc:
            return _parse_error(f"invalid UTF-8 at byte {exc.start}")
        except RecursionError:
            return _parse_error("nesting too deep")
        if isinstance(message, list):
            return await self._batch(message, session)
        return await self._request(message, session)

    async def _batch(self, items: list[msgspec.Raw], session: Session) -> bytes | None:
        if not items:
            return _invalid("empty batch")
        if len(items) > self.max_batch:
            return _invalid(f"batch of {len(items)} requests; the limit is {self.max_batch}")
        replies: list[Reply | None] = [None] * len(items)

        async def run(index: int, request: _Request) -> None:
            replies[index] = await self._request(request, session)

        async with trio.open_nursery() as nursery:
            for index, item in enumerate(items):
                try:
                    request = _element_decoder.decode(item)
                except msgspec.ValidationError as exc:
                    replies[index] = _invalid_from(item, exc)
                else:
                    nursery.start_soon(run, index, request)
        parts = [reply_bytes(reply) for reply in replies if reply is not None]
        return b"[" + b",".join(parts) + b"]" if parts else None

    async def _request(self, request: _Request, session: Session) -> Reply | None:
        request_id = request.id
        is_notification = request_id is msgspec.UNSET
        rid: RequestId = None if request_id is msgspec.UNSET else request_id
        if request.jsonrpc != "2.0":
            return _invalid('`jsonrpc` must be "2.0"', rid)
        name = request.method
        if name is msgspec.UNSET:
            return _invalid("`method` is missing", rid)
        raw_params = request.params
        if raw_params is not _ABSENT and _is_null(raw_params):
            raw_params = _ABSENT
        entry = self._entries.get(name)
        if entry is None:
            if raw_params is not _ABSENT and _first_byte(raw_params) not in b"{[":
                return _invalid("`params` must be an object or an array", rid)
            if is_notification:
                self.log.debug("notification for unknown method %.100r ignored", name)
                return None
            return _error_bytes(errors.MethodNotFound(
                f"method not found: `{name[:_NAME_SHOWN]}`").to_wire(), rid)
        try:
            params = _decode_params(entry, raw_params)
        except errors.InvalidRequest as exc:
            # Not a request object at all, so not a notification either: answered.
            return _error_bytes(exc.to_wire(), rid)
        except LlmdError as exc:
            if is_notification:
                self.log.debug("notification %s ignored: %s", name, exc.message)
                return None
            return _error_bytes(exc.to_wire(), rid)
        ctx = CallContext(rid, is_notification, session)
        if is_notification:
            await self._notify(entry.method, params, ctx)
            return None
        return await self._call(entry.method, params, ctx)

    async def _notify(self, method: Method, params: msgspec.Struct | None,
                      ctx: CallContext) -> None:
        try:
            await method.handler(params, ctx)
        except LlmdError as exc:
            # The code, not the message: a run's message may quote what the CLI printed.
            self.log.warning("notification %s failed: error %d", method.name, exc.code)
        except Exception:
            self.log.exception("notification %s failed", method.name)

    async def _call(self, method: Method, params: msgspec.Struct | None,
                    ctx: CallContext) -> Reply:
        rid = ctx.request_id
        key = request_key(rid)
        inflight = ctx.session.inflight
        with trio.CancelScope() as scope:
            inflight[key] = scope
            try:
                result = await method.handler(params, ctx)
            except LlmdError as exc:
                wire = exc.to_wire()
                if exc.code == errors.CANCELLED and not scope.cancel_called:
                    # Not this request's own $/cancelRequest: someone else cancelled it.
                    wire["code"] = errors.SERVER_CANCELLED
                return _error_bytes(wire, rid)
            except Exception:
                self.log.exception("method %s failed (request id %r)", method.name, rid)
                return _error_bytes(_INTERNAL, rid)
            finally:
                # A later request with the same id may have replaced this registration.
                if inflight.get(key) is scope:
                    del inflight[key]
            try:
                return result_reply(result, rid)
            except _ENCODE_FAILURES:
                self.log.exception("result of %s could not be encoded (request id %r)",
                                   method.name, rid)
                return _error_bytes(_INTERNAL, rid)
        # Reached only when this request's own scope caught the cancellation.
        return _error_bytes(_CANCELLED, rid)


def _compile(method: Method) -> _Entry:
    struct = method.params
    if struct is None:
        return _Entry(method, None, (), ())
    if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
        raise ValueError(f"params of {method.name!r} must be a msgspec.Struct type")
    fields = tuple(field.encode_name for field in msgspec.structs.fields(struct))
    names = tuple(_encoder.encode(name) for name in fields)
    return _Entry(method, msgspec.json.Decoder(struct), names, fields)


def _decode_params(entry: _Entry, raw: msgspec.Raw) -> msgspec.Struct | None:
    """Decode ``params`` for a method.

    Raises:
        InvalidRequest: ``params`` is neither an object nor an array.
        InvalidParams: It does not fit the method.
    """
    decoder = entry.decoder
    if decoder is None:
        if raw is _ABSENT:
            return None
        try:
            given = _structured_decoder.decode(raw)
        except msgspec.ValidationError:
            raise errors.InvalidRequest(
                "invalid request: `params` must be an object or an array") from None
        if given:
            raise errors.InvalidParams(
                f"invalid params: `{entry.method.name}` takes no params", {"path": "$"})
        return None
    try:
        return decoder.decode(b"{}" if raw is _ABSENT else raw)
    except msgspec.ValidationError as exc:
        first = ord("{") if raw is _ABSENT else _first_byte(raw)
        if first == ord("["):
            return _decode_positional(entry, decoder, raw)
        if first != ord("{"):
            raise errors.InvalidRequest(
                "invalid request: `params` must be an object or an array") from None
        failure = exc
    # A null member is an absent one; kept off the hot path, as few clients send them.
    members = {} if raw is _ABSENT else _structured_decoder.decode(raw)
    assert isinstance(members, dict)
    given = {name: value for name, value in members.items() if not _is_null(value)}
    if len(given) < len(members):
        try:
            return decoder.decode(_encoder.encode(given))
        except msgspec.ValidationError as exc:
            failure = exc
    text, data = _validation_data(failure)
    raise errors.InvalidParams(f"invalid params: {text}", data) from None


def _decode_positional(entry: _Entry, decoder: msgspec.json.Decoder[msgspec.Struct],
                       raw: msgspec.Raw) -> msgspec.Struct:
    """Map params given by position onto the struct's fields, in their order."""
    items = _positional_decoder.decode(raw)
    if len(items) > len(entry.names):
        raise errors.InvalidParams(
            f"invalid params: `{entry.method.name}` takes at most {len(entry.names)} "
            f"params by position, got {len(items)}", {"path": f"$[{len(entry.names)}]"})
    # Rebuilt as an object, the params get exactly the checks of params given by name.
    pairs = list(zip(entry.names, items, strict=False))
    members = b",".join(name + b":" + bytes(item) for name, item in pairs)
    try:
        return decoder.decode(b"{" + members + b"}")
    except msgspec.ValidationError as exc:
        failure = exc
    if any(_is_null(item) for _, item in pairs):
        # A null in a position leaves that field absent, as a null member does.
        members = b",".join(name + b":" + bytes(item) for name, item in pairs
                            if not _is_null(item))
        try:
            return decoder.decode(b"{" + members + b"}")
        except msgspec.ValidationError as exc:
            failure = exc
    text, data = _validation_data(failure)
    text, data["path"] = _by_position(entry, text, data["path"])
    raise errors.InvalidParams(f"invalid params: {text}", data) from None


def _by_position(entry: _Entry, text: str, path: str) -> tuple[str, str]:
    """Point a path at the position the client used (``$.prompt`` -> ``$[0]``)."""
    for index, field in enumerate(entry.fields):
        prefix = f"$.{field}"
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            moved = f"$[{index}]{path[len(prefix):]}"
            return text.replace(f"`{path}`", f"`{moved}`"), moved
    return text, path


def _invalid_from(data: bytes | msgspec.Raw, exc: msgspec.ValidationError) -> bytes:
    """The -32600 reply to valid JSON that is no request, echoing its id when valid."""
    request_id: RequestId = None
    try:
        raw_id = _probe_decoder.decode(data).id
        if raw_id is not _ABSENT:
            request_id = _id_decoder.decode(raw_id)
    except msgspec.ValidationError:
        pass  # Not an object, or an unusable id: the reply's id is null.
    text = str(exc)
    shape = _NOT_OBJECT.match(text)
    if shape:
        wanted = "a request object or a batch array" if shape.group(1) else "a request object"
        text = f"expected {wanted}, got {shape.group(2)}"
    return _invalid(text, request_id)
