"""The connections: accept only our own uid, frame bytes, run requests, send replies.

Invariants:
- A peer with another uid is closed before a byte is read.
- Requests on a connection run concurrently, at most ``MAX_INFLIGHT`` at once; past
  that the connection is not read until one finishes (back-pressure, not buffering).
- A message over the size limit is answered -32600 and only that connection closes.
- When the client goes away, everything it started without ``detach`` is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket as stdsocket
import struct
from typing import Any

import trio

from llmd.errors import InvalidRequest, ParseError
from llmd.protocol.framing import Framer, FramingError, Message, TooLarge
from llmd.protocol.jsonrpc import Reply, encode_notification, error_reply
from llmd.server.dispatch import Dispatcher, Session

log = logging.getLogger("llmd.server")

MAX_INFLIGHT = 256
LARGE_MESSAGE = 1 << 20
SEND_BUFFER = 1 << 20
READ_SIZE = 65536
HALF_CLOSE_POLL = 0.2


class Connection(Session):
    """Per-connection state, shared by the requests running on it."""

    def __init__(self, stream: trio.SocketStream, framer: Framer) -> None:
        super().__init__()
        self.stream = stream
        self.framer = framer
        self.send_lock = trio.Lock()
        self.closed = False

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification; a vanished peer is not an error here."""
        await self.send(encode_notification(method, params))

    @property
    def is_open(self) -> bool:
        """Whether the peer can still be sent to."""
        return not self.closed

    def abort(self) -> None:
        """Close the socket now: a send blocked on a peer that does not read ends, and so
        does the read loop, which cancels the connection's requests."""
        self.closed = True
        self.stream.socket.close()

    async def send(self, payload: Reply) -> None:
        """Send one framed message (one buffer or its parts); a vanished peer is not an
        error here."""
        if self.closed:
            return
        async with self.send_lock:
            try:
                if isinstance(payload, bytes) and len(payload) < LARGE_MESSAGE:
                    await self.stream.send_all(self.framer.encode(payload))
                    return
                # Frame around a large payload (or its parts) instead of copying it. Unless
                # the framing needs the size first, a large string is sent a slice at a
                # time as it is encoded.
                parts = (payload,) if isinstance(payload, bytes) else payload
                size = sum(len(part) for part in parts) if self.framer.sized else 0
                head, tail = self.framer.frame_parts(size)
                for part in (head, *parts, tail):
                    for piece in (part,) if isinstance(part, bytes) else part.pieces():
                        if piece:
                            await self.stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True


def _peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED,
                            struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _peer_hung_up(sock: trio.socket.SocketType) -> bool:
    """True once the peer has closed completely (not merely shut down its writing)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return any(ev & select.POLLHUP for _fd, ev in poller.poll(0))


class Server:
    """Serves one listening socket with a dispatcher.

    Args:
        dispatcher: Turns a message into its reply.
        max_message: The framing size limit in bytes.
    """

    def __init__(self, dispatcher: Dispatcher, max_message: int) -> None:
        self.dispatcher = dispatcher
        self.max_message = max_message
        self.uid = os.getuid()
        self.connections: set[Connection] = set()
        self._counter = 0
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return when no message is being processed on any connection."""
        await self._idle.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection until it closes."""
        self._counter += 1
        number = self._counter
        try:
            uid = _peer_uid(stream.socket)
        except OSError as exc:
            log.warning("connection %d: cannot read peer credentials (%s); closed", number, exc)
            await stream.aclose()
            return
        if uid != self.uid:
            log.warning("connection %d: refused a peer with uid %d", number, uid)
            await stream.aclose()
            return
        with contextlib.suppress(OSError):
            # Room for a large chunk of streamed output per send: fewer round trips.
            stream.socket.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, SEND_BUFFER)
        conn = Connection(stream, Framer(self.max_message))
        self.connections.add(conn)
        try:
            await self._serve(conn)
        except Exception:
            # A bug in serving one connection must not take the daemon down with it.
            log.exception("connection %d: internal error; connection closed", number)
        finally:
            self.connections.discard(conn)
            conn.closed = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

    async def _serve(self, conn: Connection) -> None:
        slots = trio.Semaphore(MAX_INFLIGHT)
        too_large = False
        async with trio.open_nursery() as nursery:

            async def process(body: bytes) -> None:
                self.active += 1
                self._idle = trio.Event() if self._idle.is_set() else self._idle
                try:
                    reply = await self.dispatcher.handle_parts(body, conn)
                    if reply is not None:
                        await conn.send(reply)
                finally:
                    slots.release()
                    self.active -= 1
                    if self.active == 0:
                        self._idle.set()

            while True:
                try:
                    data = await conn.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                for frame in conn.framer.feed(data):
                    if isinstance(frame, Message):
                        await slots.acquire()
                        nursery.start_soon(process, frame.body)
                    elif isinstance(frame, FramingError):
                        await conn.send(error_reply(ParseError(f"parse error: {frame.message}"),
                                                    None))
                    elif isinstance(frame, TooLarge):
                        await conn.send(error_reply(InvalidRequest(
                            f"message too large (limit {self.max_message} bytes); "
                            "closing the connection",
                            {"max_message_bytes": self.max_message}), None))
                        too_large = True
                if too_large:
                    break
            # Requests received in full before EOF (or before an oversized message) are
            # still answered, unless the peer has gone.
            if nursery.child_tasks:
                await self._await_half_closed(conn, nursery)
            nursery.cancel_scope.cancel()

    async def _await_half_closed(self, conn: Connection, nursery: trio.Nursery) -> None:
        """After EOF: a client that only shut down its sending side still gets its replies.

        A peer that closed completely has gone, and its requests are cancelled at once.
        """
        while nursery.child_tasks and not conn.closed:
            if _peer_hung_up(conn.stream.socket):
                return
            await trio.sleep(HALF_CLOSE_POLL)
