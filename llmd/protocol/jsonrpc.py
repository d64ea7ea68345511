"""JSON-RPC 2.0 messages, sans I/O: a message's bytes decoded and checked, replies encoded.

Invariants:
- :func:`decode_message` turns any bytes into a request, a batch of raw elements, or the
  bytes of the error reply owed for them; it never raises for what a client sent.
- Ids are echoed as decoded: strings stay strings, integers (of any size) stay integers,
  numbers with a fraction or exponent stay floats. An id that is not a string, number or
  null, or a number beyond the range of a double (``1e400``), is answered -32600 with
  id null.
- Text that is not JSON is -32700: invalid UTF-8 anywhere, ``NaN``/``Infinity``, lone
  surrogate escapes, trailing data, and nesting deeper than msgspec's limit (about
  1000 levels; msgspec raises ``RecursionError``). Valid JSON that is not a request
  object (wrong member types, ``params`` not structured, a scalar, an empty batch, a
  batch over ``max_batch``) is -32600, answered even when it has no id. Extra members
  are tolerated; of duplicate keys the last one counts.
- The message is decoded once; ``params`` is kept raw and decoded straight into the
  method's ``msgspec.Struct`` (:class:`Params`), so JSON types are checked strictly (no
  str-to-int). ``"params": null`` is no params, and a member (or position) that is
  ``null`` is absent: it takes the field's default, for every method alike (Emacs'
  jsonrpc.el sends nil as null). Only params that fail to decode are rewritten that way.
  Params by position are matched to the struct's fields in order and checked
  the same way; error paths then name the position (``$[1]``).
- A reply that cannot be encoded becomes a bare -32603 (and a line in the ``llmd.rpc``
  log), never an exception; a struct's large strings are encoded apart and spliced in.
- Nothing here does I/O or knows of trio: the dispatcher (:mod:`llmd.server.dispatch`)
  runs the handlers.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec

from llmd import errors
from llmd.errors import LlmdError

__all__ = [
    "ABSENT",
    "CANCELLED",
    "ENCODE_FAILURES",
    "INTERNAL",
    "SPLICE_MIN",
    "LargeString",
    "Params",
    "Reply",
    "Request",
    "RequestId",
    "check_request",
    "decode_element",
    "decode_message",
    "encode_notification",
    "error_bytes",
    "error_reply",
    "invalid",
    "reply_bytes",
    "result_reply",
    "unknown_method",
]

RequestId: TypeAlias = int | float | str | None

_NAME_SHOWN = 100  # characters of an unknown method name quoted back

log = logging.getLogger("llmd.rpc")


# --- wire shapes -----------------------------------------------------------------------

ABSENT = msgspec.Raw()
"""The raw params of a request that has none."""


class Request(msgspec.Struct):
    """A request as decoded on the hot path; members of a wrong type fail the decode."""

    jsonrpc: str | msgspec.UnsetType = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw = ABSENT
    id: int | float | str | msgspec.UnsetType | None = msgspec.UNSET


class _IdProbe(msgspec.Struct):
    """Just the id of an invalid request, to echo it if it is valid on its own."""

    id: msgspec.Raw = ABSENT


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


_encoder = msgspec.json.Encoder()

Reply: TypeAlias = "bytes | tuple[bytes | LargeString, ...]"
"""A serialised message: one buffer, or parts to be sent in order (see result_reply)."""

SPLICE_MIN = 1 << 20
_SLICE_CHARS = 1 << 20
# Stands for a large string in a reply's skeleton. Random, so that no string of a result
# can contain it by chance or by design (it is never shown).
_SPLICE_MARK = secrets.token_hex(16).encode()
_message_decoder = msgspec.json.Decoder(Request | list[msgspec.Raw])
_element_decoder = msgspec.json.Decoder(Request)
_probe_decoder = msgspec.json.Decoder(_IdProbe)
_syntax_decoder = msgspec.json.Decoder(msgspec.Raw)
_id_decoder = msgspec.json.Decoder(int | float | str | None)
_structured_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw])
_positional_decoder = msgspec.json.Decoder(list[msgspec.Raw])

# Failures of encoding a value: unsupported types, lone surrogates, cycles.
ENCODE_FAILURES = (TypeError, ValueError, RecursionError, msgspec.EncodeError)

# msgspec's own error texts, read for the path and field they name (pyproject.toml bounds
# msgspec's version to the releases these are tested on).
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
    return error_bytes(err.to_wire(), request_id)


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


def error_bytes(error: dict[str, Any], request_id: RequestId) -> bytes:
    """Serialise an error reply from its ``error`` member (a bare -32603 if it cannot be)."""
    try:
        return _encoder.encode(_ErrorReply("2.0", error, request_id))
    except ENCODE_FAILURES:
        log.exception("error reply %r could not be encoded", error.get("code"))
        return _encoder.encode(_ErrorReply("2.0", INTERNAL, request_id))


INTERNAL = errors.InternalError("internal error").to_wire()
"""The ``error`` member of a bare -32603."""
CANCELLED = errors.Cancelled("request cancelled").to_wire()
"""The ``error`` member of a request cancelled by ``$/cancelRequest``."""


def invalid(detail: str, request_id: RequestId = None) -> bytes:
    """The -32600 reply: ``detail`` says what makes the message no request."""
    return error_bytes(errors.InvalidRequest(f"invalid request: {detail}").to_wire(),
                        request_id)


def _parse_error(detail: str) -> bytes:
    return error_bytes(errors.ParseError(f"parse error: {detail}").to_wire(), None)


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


def _is_null(raw: msgspec.Raw) -> bool:
    with memoryview(raw) as view:
        return view.nbytes == 4 and view.tobytes() == b"null"


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


# --- decoding --------------------------------------------------------------------------


def decode_message(data: bytes) -> Request | list[msgspec.Raw] | bytes:
    """Decode one message's body.

    Returns:
        The request, the raw elements of a batch, or the error reply it gets (-32700 for
        text that is not JSON, -32600 for JSON that is no request).
    """
    try:
        if not data.isascii():
            # msgspec does not check UTF-8 inside skipped members; the spec wants
            # the whole text valid.
            data.decode("utf-8")
        try:
            return _message_decoder.decode(data)
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


def decode_element(item: msgspec.Raw) -> Request | bytes:
    """Decode one element of a batch: the request, or its -32600 reply."""
    try:
        return _element_decoder.decode(item)
    except msgspec.ValidationError as exc:
        return _invalid_from(item, exc)


def check_request(request: Request) -> tuple[str, RequestId, bool, msgspec.Raw] | bytes:
    """The method name, id, whether it is a notification and the raw params; or the
    -32600 reply.

    Returns:
        ``(method, id, is_notification, params)`` (the id None for a notification; params
        :data:`ABSENT` when absent or ``null``), or the error reply when ``jsonrpc`` is not
        "2.0" or ``method`` is missing.
    """
    request_id = request.id
    is_notification = request_id is msgspec.UNSET
    rid: RequestId = None if request_id is msgspec.UNSET else request_id
    if request.jsonrpc != "2.0":
        return invalid('`jsonrpc` must be "2.0"', rid)
    name = request.method
    if name is msgspec.UNSET:
        return invalid("`method` is missing", rid)
    params = request.params
    if params is not ABSENT and _is_null(params):
        params = ABSENT
    return name, rid, is_notification, params


def unknown_method(params: msgspec.Raw, name: str, rid: RequestId,
                   is_notification: bool) -> bytes | None:
    """The reply to a request for a method that does not exist (None for a notification)."""
    if params is not ABSENT and _first_byte(params) not in b"{[":
        return invalid("`params` must be an object or an array", rid)
    if is_notification:
        log.debug("notification for unknown method %.100r ignored", name)
        return None
    return error_bytes(errors.MethodNotFound(
        f"method not found: `{name[:_NAME_SHOWN]}`").to_wire(), rid)


@dataclass(frozen=True)
class Params:
    """How one method's params are decoded, by name or by position, into its struct.

    Attributes:
        method: The method's name, for error messages.
        decoder: Decodes the struct; None when the method takes no params.
        names: The struct's fields as JSON-encoded names, for params given by position.
        fields: The struct's fields' wire names.
    """

    method: str
    decoder: msgspec.json.Decoder[msgspec.Struct] | None
    names: tuple[bytes, ...]
    fields: tuple[str, ...]

    @classmethod
    def of(cls, method: str, struct: type[msgspec.Struct] | None) -> Params:
        """The params of ``method``, decoded into ``struct`` (None: it takes none).

        Raises:
            ValueError: ``struct`` is not a msgspec.Struct type.
        """
        if struct is None:
            return cls(method, None, (), ())
        if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
            raise ValueError(f"params of {method!r} must be a msgspec.Struct type")
        fields = tuple(field.encode_name for field in msgspec.structs.fields(struct))
        names = tuple(_encoder.encode(name) for name in fields)
        return cls(method, msgspec.json.Decoder(struct), names, fields)

    def decode(self, raw: msgspec.Raw) -> msgspec.Struct | None:
        """Decode ``params`` (``Request.params``, possibly absent) for the method.

        Raises:
            InvalidRequest: ``params`` is neither an object nor an array.
            InvalidParams: It does not fit the method.
        """
        return _decode_params(self, raw)


def _decode_params(entry: Params, raw: msgspec.Raw) -> msgspec.Struct | None:
    """Decode ``params`` for a method.

    Raises:
        InvalidRequest: ``params`` is neither an object nor an array.
        InvalidParams: It does not fit the method.
    """
    decoder = entry.decoder
    if decoder is None:
        if raw is ABSENT:
            return None
        try:
            given = _structured_decoder.decode(raw)
        except msgspec.ValidationError:
            raise errors.InvalidRequest(
                "invalid request: `params` must be an object or an array") from None
        if given:
            raise errors.InvalidParams(
                f"invalid params: `{entry.method}` takes no params", {"path": "$"})
        return None
    try:
        return decoder.decode(b"{}" if raw is ABSENT else raw)
    except msgspec.ValidationError as exc:
        first = ord("{") if raw is ABSENT else _first_byte(raw)
        if first == ord("["):
            return _decode_positional(entry, decoder, raw)
        if first != ord("{"):
            raise errors.InvalidRequest(
                "invalid request: `params` must be an object or an array") from None
        failure = exc
    # A null member is an absent one; kept off the hot path, as few clients send them.
    members = {} if raw is ABSENT else _structured_decoder.decode(raw)
    assert isinstance(members, dict)
    given = {name: value for name, value in members.items() if not _is_null(value)}
    if len(given) < len(members):
        try:
            return decoder.decode(_encoder.encode(given))
        except msgspec.ValidationError as exc:
            failure = exc
    text, data = _validation_data(failure)
    raise errors.InvalidParams(f"invalid params: {text}", data) from None


def _decode_positional(entry: Params, decoder: msgspec.json.Decoder[msgspec.Struct],
                       raw: msgspec.Raw) -> msgspec.Struct:
    """Map params given by position onto the struct's fields, in their order."""
    items = _positional_decoder.decode(raw)
    if len(items) > len(entry.names):
        raise errors.InvalidParams(
            f"invalid params: `{entry.method}` takes at most {len(entry.names)} "
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


def _by_position(entry: Params, text: str, path: str) -> tuple[str, str]:
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
        if raw_id is not ABSENT:
            request_id = _id_decoder.decode(raw_id)
    except msgspec.ValidationError:
        pass  # Not an object, or an unusable id: the reply's id is null.
    text = str(exc)
    shape = _NOT_OBJECT.match(text)
    if shape:
        wanted = "a request object or a batch array" if shape.group(1) else "a request object"
        text = f"expected {wanted}, got {shape.group(2)}"
    return invalid(text, request_id)
