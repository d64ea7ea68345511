"""The client side of a JSON-RPC conversation with an agent over its stdio, without I/O.

Both long-lived agents llmd drives speak JSON-RPC, one message a line: ``gemini --acp``
(the Agent Client Protocol, strict JSON-RPC 2.0) and ``codex app-server`` (JSON-RPC
whose messages lack the ``"jsonrpc"`` member). :class:`Peer` numbers llmd's requests,
encodes its frames and decodes each line the agent writes into one :data:`Message`;
the protocol modules (:mod:`llmd.drivers.acp`, :mod:`llmd.drivers.codexapp`) give the
methods their meaning; :class:`Client` is the receive step both share (a line decoded
and sorted into an answer, a request or a notification).

Invariants:
- Decoding is strict on types and tolerant of unknown members: a line that is not a
  JSON object, or whose ``id``/``method``/``error`` have the wrong type, raises
  :class:`ProtocolError` (the agent is out of protocol and will be replaced); a member
  added by a later version of the agent is ignored.
- A response is matched to a request llmd sent and has not yet seen answered; a
  response to any other id is out of protocol.
- ``params`` and ``result`` stay raw (:class:`msgspec.Raw`) until the protocol module
  decodes them into its own structs, so a message is decoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import msgspec

_T = TypeVar("_T")
_E = TypeVar("_E")

RequestId: TypeAlias = "int | str"


class ProtocolError(Exception):
    """The agent wrote something its protocol does not allow."""


class _ErrorBody(msgspec.Struct, frozen=True):
    code: int
    message: str
    data: msgspec.Raw = msgspec.Raw(b"null")


class _Wire(msgspec.Struct, frozen=True):
    """Any one message; unknown members are ignored, known ones must have their type."""

    id: int | str | None = None
    method: str | None = None
    params: msgspec.Raw = msgspec.Raw(b"")
    result: msgspec.Raw = msgspec.Raw(b"")
    error: _ErrorBody | None = None


@dataclass(frozen=True)
class Response:
    """The agent's answer to one of llmd's requests.

    Attributes:
        id: The request's id.
        method: The request's method (remembered from when it was sent).
        result: The raw result, or None for an error.
        error: ``(code, message)`` for an error answer.
    """

    id: RequestId
    method: str
    result: msgspec.Raw | None
    error: tuple[int, str] | None


@dataclass(frozen=True)
class Request:
    """A request the agent makes of llmd (it waits for an answer)."""

    id: RequestId
    method: str
    params: msgspec.Raw


@dataclass(frozen=True)
class Notification:
    """A notification from the agent (no answer expected)."""

    method: str
    params: msgspec.Raw


@dataclass(frozen=True)
class Stale:
    """A late answer to a request llmd gave up on (see :meth:`Peer.forget`)."""

    id: RequestId


Message: TypeAlias = Response | Request | Notification | Stale


@dataclass(frozen=True)
class Answered:
    """The agent's answer to one of llmd's requests (see :class:`Response`)."""

    response: Response

_decoder = msgspec.json.Decoder(_Wire)
_encoder = msgspec.json.Encoder()


def decode_params(raw: msgspec.Raw, kind: type[_T], what: str) -> _T:
    """Decode raw params or a raw result into ``kind``.

    Raises:
        ProtocolError: They are missing or do not have the struct's types.
    """
    if not raw:
        raise ProtocolError(f"{what}: missing")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:  # pragma: no cover - raw came from a valid document
        raise ProtocolError(f"{what}: {exc}") from None


def decode_result(response: Response, kind: type[_T]) -> _T:
    """Decode a successful answer's result into ``kind``.

    Raises:
        ProtocolError: It has none, or not the struct's types.
    """
    if response.result is None:
        raise ProtocolError(f"{response.method}: no result")
    return decode_params(response.result, kind, response.method)


class Peer:
    """Frames llmd's messages and decodes the agent's, one line each.

    Args:
        jsonrpc_member: Whether llmd's frames carry ``"jsonrpc": "2.0"`` (the Agent Client
            Protocol requires it; codex's app server neither sends nor needs it).
    """

    def __init__(self, *, jsonrpc_member: bool) -> None:
        self._member = jsonrpc_member
        self._next_id = 0
        self._pending: dict[RequestId, str] = {}

    @property
    def pending(self) -> int:
        """How many of llmd's requests await their answer."""
        return len(self._pending)

    def request(self, method: str, params: Any) -> tuple[int, bytes]:
        """Frame a request; returns its id and the line to write."""
        self._next_id += 1
        rid = self._next_id
        self._pending[rid] = method
        return rid, self._frame({"id": rid, "method": method, "params": params})

    def notify(self, method: str, params: Any = None) -> bytes:
        """Frame a notification."""
        body: dict[str, Any] = {"method": method}
        if params is not None:
            body["params"] = params
        return self._frame(body)

    def respond(self, rid: RequestId, result: Any) -> bytes:
        """Frame the answer to one of the agent's requests."""
        return self._frame({"id": rid, "result": result})

    def respond_error(self, rid: RequestId, code: int, message: str) -> bytes:
        """Frame an error answer to one of the agent's requests."""
        return self._frame({"id": rid, "error": {"code": code, "message": message}})

    def forget(self, rid: RequestId) -> None:
        """Stop expecting the answer to a request (its caller gave up on it)."""
        self._pending.pop(rid, None)

    def decode(self, line: bytes | str) -> Message:
        """Decode one line the agent wrote.

        Raises:
            ProtocolError: It is not one message of the protocol.
        """
        try:
            wire = _decoder.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ProtocolError(f"not a JSON-RPC message: {exc}") from None
        if wire.method is not None:
            if wire.result or wire.error is not None:
                raise ProtocolError("a message is both a call and an answer")
            if wire.id is None:
                return Notification(wire.method, wire.params)
            return Request(wire.id, wire.method, wire.params)
        if wire.id is None:
            raise ProtocolError("a message without method or id")
        method = self._pending.pop(wire.id, None)
        if method is None:
            # An answer to a request that was given up on is harmless; any other is not.
            if isinstance(wire.id, int) and 0 < wire.id <= self._next_id:
                return Stale(wire.id)
            raise ProtocolError(f"an answer to request {wire.id!r}, which llmd never sent")
        if wire.error is not None:
            return Response(wire.id, method, None, (wire.error.code, wire.error.message))
        if not wire.result:
            raise ProtocolError(f"the answer to {method} has neither result nor error")
        return Response(wire.id, method, wire.result, None)

    def _frame(self, body: dict[str, Any]) -> bytes:
        if self._member:
            body = {"jsonrpc": "2.0", **body}
        return _encoder.encode(body) + b"\n"


class Client(Generic[_E]):
    """The client side of one connection: sorts each line the agent writes into events.

    A protocol module subclasses it with how the agent's requests are answered
    (:meth:`_answer`) and what its notifications mean (:meth:`_notification`); ``_E`` is
    the type of the events those give.

    Attributes:
        peer: The connection's framing and request bookkeeping.
    """

    peer: Peer

    def receive(self, line: bytes | str) -> list[_E | Answered]:
        """Take one line the agent wrote.

        Raises:
            ProtocolError: The line is out of protocol.
        """
        message = self.peer.decode(line)
        if isinstance(message, Stale):
            return []
        if isinstance(message, Response):
            return [Answered(message)]
        if isinstance(message, Request):
            return [self._answer(message)]
        return self._notification(message)

    def _answer(self, request: Request) -> _E:
        """The event of answering one of the agent's requests (answered at once)."""
        raise NotImplementedError

    def _notification(self, message: Notification) -> list[_E | Answered]:
        """The events a notification of the agent's gives (none for one not used)."""
        raise NotImplementedError
