"""JSON-RPC 2.0 dispatch under trio: the bytes of one message in, the bytes of its reply out.

Invariants:
- ``Dispatcher.handle`` answers every input, whatever its bytes, with ``None`` or one
  serialised reply (an object, or an array for a batch); only ``trio.Cancelled`` from an
  enclosing scope (and other ``BaseException``s such as ``KeyboardInterrupt``) escape it.
  What a message's bytes must be is :mod:`llmd.protocol.jsonrpc`'s to say.
- Notifications (no ``id`` member) never get a reply, not even an error; their handlers
  still run, and their failures go to the log.
- A failing handler reaches the wire as its ``LlmdError.to_wire()``, or as a bare -32603
  without any exception text; the exception itself goes to the ``llmd.rpc`` log.
- Every request with an id runs in its own ``trio.CancelScope``, registered in
  ``Session.inflight`` under ``request_key(id)`` while it runs. ``$/cancelRequest``
  cancels it, and it is then answered -32800. A handler that fails with a cancellation
  its own request did not ask for (``llm.cancel`` from any client, a daemon stop) is
  answered -32802, LSP's ServerCancelled, with the same ``data``: a client that takes
  -32800 for the echo of its own cancel still sees the answer. If a second request reuses
  an id already in flight on the session, it replaces the first in ``inflight`` (both
  still run and are answered; only the later one can be cancelled by id).
- The requests of a batch run concurrently; its reply holds theirs in the batch's order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec
import trio

from llmd import errors
from llmd.errors import LlmdError
from llmd.protocol import jsonrpc
from llmd.protocol.jsonrpc import Params, Reply, Request, RequestId, reply_bytes

__all__ = [
    "CANCEL_REQUEST",
    "CallContext",
    "Dispatcher",
    "Method",
    "MethodHandler",
    "RequestKey",
    "Session",
    "request_key",
]

RequestKey: TypeAlias = tuple[type, RequestId]

CANCEL_REQUEST = "$/cancelRequest"
DEFAULT_MAX_BATCH = 10_000


class Session:
    """The state of one connection, shared by the requests that arrive on it.

    Attributes:
        inflight: The cancel scope of each running request, by ``request_key(id)``.
    """

    def __init__(self) -> None:
        self.inflight: dict[RequestKey, trio.CancelScope] = {}

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification to the peer (a session without a peer drops it).

        Args:
            method: The notification's method, such as ``llm.output``.
            params: Its params, msgspec-encodable.
        """

    @property
    def is_open(self) -> bool:
        """Whether the peer can still be sent to."""
        return True

    def abort(self) -> None:
        """Close the connection at once, unanswered requests and all (a session without
        a peer has nothing to close)."""


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about the call besides its params."""

    request_id: RequestId
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


class _CancelParams(msgspec.Struct):
    id: int | float | str | None


@dataclass(frozen=True)
class _Entry:
    method: Method
    params: Params


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
            self._entries[method.name] = _Entry(method, Params.of(method.name, method.params))

    @property
    def method_names(self) -> list[str]:
        """The names of the methods served, ``$/cancelRequest`` included."""
        return list(self._entries)

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
        message = jsonrpc.decode_message(data)
        if isinstance(message, bytes):
            return message
        if isinstance(message, list):
            return await self._batch(message, session)
        return await self._request(message, session)

    async def _batch(self, items: list[msgspec.Raw], session: Session) -> bytes | None:
        if not items:
            return jsonrpc.invalid("empty batch")
        if len(items) > self.max_batch:
            return jsonrpc.invalid(
                f"batch of {len(items)} requests; the limit is {self.max_batch}")
        replies: list[Reply | None] = [None] * len(items)

        async def run(index: int, request: Request) -> None:
            replies[index] = await self._request(request, session)

        async with trio.open_nursery() as nursery:
            for index, item in enumerate(items):
                request = jsonrpc.decode_element(item)
                if isinstance(request, bytes):
                    replies[index] = request
                else:
                    nursery.start_soon(run, index, request)
        parts = [reply_bytes(reply) for reply in replies if reply is not None]
        return b"[" + b",".join(parts) + b"]" if parts else None

    async def _request(self, request: Request, session: Session) -> Reply | None:
        head = jsonrpc.check_request(request)
        if isinstance(head, bytes):
            return head
        name, rid, is_notification, raw_params = head
        entry = self._entries.get(name)
        if entry is None:
            return jsonrpc.unknown_method(raw_params, name, rid, is_notification)
        try:
            params = entry.params.decode(raw_params)
        except errors.InvalidRequest as exc:
            # Not a request object at all, so not a notification either: answered.
            return jsonrpc.error_bytes(exc.to_wire(), rid)
        except LlmdError as exc:
            if is_notification:
                self.log.debug("notification %s ignored: %s", name, exc.message)
                return None
            return jsonrpc.error_bytes(exc.to_wire(), rid)
        ctx = CallContext(rid, session)
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
                return jsonrpc.error_bytes(wire, rid)
            except Exception:
                self.log.exception("method %s failed (request id %r)", method.name, rid)
                return jsonrpc.error_bytes(jsonrpc.INTERNAL, rid)
            finally:
                # A later request with the same id may have replaced this registration.
                if inflight.get(key) is scope:
                    del inflight[key]
            try:
                return jsonrpc.result_reply(result, rid)
            except jsonrpc.ENCODE_FAILURES:
                self.log.exception("result of %s could not be encoded (request id %r)",
                                   method.name, rid)
                return jsonrpc.error_bytes(jsonrpc.INTERNAL, rid)
        # Reached only when this request's own scope caught the cancellation.
        return jsonrpc.error_bytes(jsonrpc.CANCELLED, rid)
