"""The socket edge: bind safely, accept only our own uid, frame bytes, run requests.

Invariants:
- One daemon per socket path: an exclusive ``flock`` on ``PATH.lock`` is taken *before*
  an old socket file is removed, so a live daemon's socket is never unlinked. An old
  socket that still accepts connections is not ours to remove either: systemd's
  ``llmd.socket`` listens there without holding the lock.
- A socket passed by systemd (:meth:`Listener.adopt`) is served as it is: never bound,
  never unlinked. Its daemon takes the lock too when it can, so a second ``llmd serve``
  on the same path stops rather than replace systemd's socket.
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
from llmd.rpc import Dispatcher, Reply, Session, error_reply

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


# --- binding -----------------------------------------------------------------


def _accepts_connections(path: Path) -> bool:
    """Whether something listens on the Unix socket at ``path`` (a non-blocking probe).

    A socket unit starts its service on this connection: that is the daemon the caller
    would otherwise have duplicated.
    """
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM | stdsocket.SOCK_CLOEXEC)
    try:
        probe.setblocking(False)
        probe.connect(os.fspath(path))
    except (BlockingIOError, InterruptedError):
        return True  # A full backlog: it listens, it is merely busy.
    except OSError:
        return False  # ECONNREFUSED (nobody listens), ENOENT, EACCES...
    else:
        return True
    finally:
        probe.close()


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

        After :meth:`adopt`, nothing is bound or removed: the adopted socket is returned.

        Raises:
            AlreadyRunning: Another daemon serves this path, or something listens on it.
            OSError: Binding failed.
        """
        if self.activated and self.sock is not None:
            self._lock_adopted()
            return self.sock
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
            # We hold the lock, so no llmd that binds for itself serves this socket; but
            # systemd's llmd.socket may listen there while its service is not running.
            if _accepts_connections(self.path):
                self.release()
                raise AlreadyRunning(
                    f"{self.path} accepts connections but no llmd holds {self.lock_path.name}"
                    ": systemd's llmd.socket (systemctl --user status llmd.socket) or another "
                    "program listens there; leaving it alone")
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
        """Serve a listening socket passed by systemd instead of binding one.

        Call it before :meth:`bind`, which then returns this socket. Its file is systemd's:
        :meth:`release` closes our descriptor and never unlinks the path.
        """
        self.activated = True
        self.sock = trio.socket.from_stdlib_socket(sock)
        return self.sock

    def _lock_adopted(self) -> None:
        """Hold the path's lock while serving an adopted socket, if that can be done.

        Not fatal when it cannot: the socket was passed to us to serve, and refusing would
        only make systemd start us again and again.
        """
        assert self.sock is not None
        if self._lock_fd >= 0 or self.sock.getsockname() != os.fspath(self.path):
            return  # Already held, or an abstract/other socket: no file beside it to lock.
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("cannot open %s (%s); serving without the single-instance lock",
                        self.lock_path, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            log.warning("another llmd%s holds %s; serving the socket systemd passed anyway",
                        f" (pid {other})" if other else "", self.lock_path)
            return
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

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
