"""The socket edge: bind safely, accept only our own uid, frame bytes, run requests.

Invariants:
- One daemon per socket path: an exclusive ``flock`` on ``PATH.lock`` is taken *before*
  an old socket file is removed, so a live daemon's socket is never unlinked.
- The socket is created 0600 (umask at bind) in a private directory.
- A peer with another uid is closed before a byte is read.
- Requests on a connection run concurrently, at most ``MAX_INFLIGHT`` at once; past
  that the connection is not read until one finishes (back-pressure, not buffering).
- A message over the size limit is answered -32600 and only that connection closes.
- When the client goes away, everything it started without ``detach`` is cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import socket as stdsocket
import stat
import struct
from pathlib import Path

import trio

from llmd.errors import InvalidRequest, ParseError
from llmd.framing import Framer, FramingError, Message, TooLarge
from llmd.rpc import Dispatcher, Session, error_reply

log = logging.getLogger("llmd.server")

MAX_INFLIGHT = 256
LARGE_MESSAGE = 1 << 20
SEND_BUFFER = 1 << 20
READ_SIZE = 65536
HALF_CLOSE_POLL = 0.2


class AlreadyRunning(Exception):
    """Another daemon holds the socket's lock."""


class Connection(Session):
    """Per-connection state, shared by the requests running on it."""

    def __init__(self, stream: trio.SocketStream, framer: Framer, number: int) -> None:
        super().__init__()
        self.stream = stream
        self.framer = framer
        self.number = number
        self.send_lock = trio.Lock()
        self.closed = False

    async def send(self, payload: bytes) -> None:
        """Send one framed message; a vanished peer is not an error here."""
        if self.closed:
            return
        async with self.send_lock:
            try:
                if len(payload) < LARGE_MESSAGE:
                    await self.stream.send_all(self.framer.encode(payload))
                else:
                    # Frame around a large payload instead of copying it into the frame.
                    head, tail = self.framer.frame_parts(len(payload))
                    if head:
                        await self.stream.send_all(head)
                    await self.stream.send_all(payload)
                    if tail:
                        await self.stream.send_all(tail)
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
        conn = Connection(stream, Framer(self.max_message), number)
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
                    reply = await self.dispatcher.handle(body, conn)
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
                            "closing the connection"), None))
                        too_large = True
                if too_large:
                    break
            if not too_large and nursery.child_tasks:
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


# --- binding -----------------------------------------------------------------


class Listener:
    """A bound, listening Unix socket with its single-instance lock.

    Args:
        path: The socket path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = Path(f"{path}.lock")
        self._lock_fd = -1
        self.sock: trio.socket.SocketType | None = None
        self._inode: tuple[int, int] | None = None
        self.activated = False

    async def bind(self, backlog: int = 512) -> trio.socket.SocketType:
        """Take the lock, replace a stale socket, bind and listen.

        Raises:
            AlreadyRunning: Another daemon serves this path.
            OSError: Binding failed.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {other})" if other else ""
                raise AlreadyRunning(f"another llmd is already serving {self.path}{who}") from None
            raise
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                self.release()
                raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
            # We hold the lock, so whoever made this socket is gone.
            log.info("replacing a stale socket at %s", self.path)
            os.unlink(self.path)
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(os.fspath(self.path))
        except OSError:
            sock.close()
            self.release()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(backlog)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self.sock = sock
        return sock

    def adopt(self, sock: stdsocket.socket) -> trio.socket.SocketType:
        """Serve a socket passed by systemd; it is never unlinked by us."""
        self.activated = True
        self.sock = trio.socket.from_stdlib_socket(sock)
        return self.sock

    def release(self) -> None:
        """Close the socket, remove its file if it is still ours, drop the lock."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._inode is not None and not self.activated:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
