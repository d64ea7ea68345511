"""A small synchronous JSON-RPC 2.0 client for llmd's Unix socket.

Invariants:
- Framing is newline-delimited JSON: one message per line, UTF-8, in both directions.
- A call waits in ``recv`` with a socket timeout, never in a busy loop; the same timeout drives
  the caller's ``on_tick`` callback, so a status line needs no thread and no signal.
- Only one request is in flight per :class:`Connection`; replies for other ids (left over from a
  call that timed out) are skipped, notifications are handed to the caller's callback.
- Every failure is one of the :class:`ClientError` subclasses with a message meant for a person;
  no raw ``OSError`` or ``json`` exception escapes :meth:`Connection.call`.
- Stdlib only, and nothing heavier than ``socket`` and ``json``: this module is on the start-up
  path of every ``llmc`` command that talks to the daemon.
- Only a daemon of the user's own uid is spoken to: the listener's uid (``SO_PEERCRED``) is
  checked before a byte is sent, root's included, and the default socket's directory must be
  the user's own and writable by no one else; anything else is :class:`DaemonUnavailable`.
- A connect that meets a full listen backlog waits for room, within the connect timeout.
- A request over the daemon's message limit is :class:`MessageTooLarge`: refused before it
  is sent when it is large enough for the limit to matter (the limit is asked of
  ``daemon.info`` once per connection), else read from the daemon's -32600 answer.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import sys
import time

# typing costs milliseconds at start-up and is needed only by the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any

    NotificationHandler = Callable[[str, Any], None]
    TickHandler = Callable[[], None]

CHUNK_SIZE = 65536
# How often ``on_tick`` is called while a call waits, in seconds: a status line that counts
# seconds needs about one refresh per second.
DEFAULT_TICK = 1.0
# A run result carries the answer text and the raw output, so it can be far larger than any
# request; past this the daemon is misbehaving and buffering more would only exhaust memory.
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024
# The shortest socket timeout used; see _fill.
MIN_WAIT = 0.001
START_HINT = "start it with: llmd serve (or: systemctl --user start llmd.socket)"


# Messages up to this size are sent with SIGINT held (see Connection._send); larger ones are
# checked against the daemon's limit first.
SMALL_MESSAGE = 65536
LIMIT_QUERY_TIMEOUT = 30.0
# After a send broken by the daemon's close: how long, and how much, to read for its reason.
REFUSAL_WAIT = 1.0
MAX_REFUSAL = 65536


def _hold_sigint() -> set[int | signal.Signals] | None:
    """Hold SIGINT in this thread; returns the mask to restore, or None if not possible."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (OSError, ValueError):
        return None


class ClientError(Exception):
    """Base of every failure the client reports; ``str()`` is a message for a person."""


class DaemonUnavailable(ClientError):
    """The daemon cannot be reached at ``path``.

    Attributes:
        path: The socket path that was tried.
        reason: ``"missing"``, ``"refused"``, ``"permission"``, ``"timeout"`` or ``"error"``.
    """

    def __init__(self, path: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class MessageTooLarge(ClientError):
    """A request is larger than the daemon accepts (its ``max_message_bytes``).

    Attributes:
        size: The request's size in bytes (0 when not known).
        limit: The daemon's limit in bytes.
        method: The method of the request.
    """

    def __init__(self, size: int, limit: int, method: str) -> None:
        what = "the prompt is" if method == "llm.run" else f"the {method} request is"
        size_text = f"{size} bytes" if size else "larger"
        super().__init__(f"{what} too large for llmd: the request is {size_text}, llmd "
                         f"accepts at most {limit} bytes (max_message_bytes in its "
                         "configuration)")
        self.size = size
        self.limit = limit
        self.method = method


class ConnectionLost(ClientError):
    """The daemon closed the connection (or it broke) before a call was answered."""


class ProtocolError(ClientError):
    """The daemon sent something that is not a JSON-RPC 2.0 message."""


class CallTimeout(ClientError):
    """No reply arrived within the call's client-side timeout."""


class RpcError(ClientError):
    """The daemon answered a call with a JSON-RPC error object.

    Attributes:
        code: The JSON-RPC error code (API.md lists llmd's own codes).
        message: The daemon's one-line message.
        data: The error's ``data`` object (``{}`` when absent or not an object).
        method: The method of the call that failed.
    """

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None,
                 method: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data if data is not None else {}
        self.method = method

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r}, method={self.method!r})"


def socket_path(explicit: str | None = None) -> str:
    """Resolve the daemon's socket path the way API.md defines it.

    Precedence: ``explicit`` (the ``--socket`` flag), then ``$LLMD_SOCKET``, then
    ``$XDG_RUNTIME_DIR/llmd/llmd.sock``, else ``/tmp/llmd-$UID/llmd.sock``. Empty values count as
    unset, so ``LLMD_SOCKET= llmc ...`` falls back instead of connecting to ``""``.

    Args:
        explicit: A path given on the command line, or None.

    Returns:
        The absolute socket path (not checked for existence).
    """
    # Absolute like the daemon's, so both name the same file in messages.
    chosen = explicit or os.environ.get("LLMD_SOCKET")
    if chosen:
        return os.path.abspath(chosen)
    return default_socket_path()


def default_socket_path() -> str:
    """The socket path used when neither ``--socket`` nor ``$LLMD_SOCKET`` names one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "llmd", "llmd.sock")
    return f"/tmp/llmd-{os.getuid()}/llmd.sock"  # noqa: S108 - the documented fallback


def check_socket_dir(path: str) -> None:
    """Refuse a socket directory that someone else could have set up (the default path's).

    On shared ground such as ``/tmp`` another user can create ``llmd-$UID`` first and listen
    in it; the daemon refuses such a directory, and so does the client.

    Raises:
        DaemonUnavailable: The directory is a symbolic link, another user's, or writable by
            group or others (``reason`` ``"unsafe"``). A missing one passes: connecting then
            says that llmd is not running.
    """
    directory = os.path.dirname(path)
    try:
        st = os.lstat(directory)
    except OSError:
        return
    problem = ""
    if stat.S_ISLNK(st.st_mode):
        problem = f"is a symbolic link (owner uid {st.st_uid})"
    elif st.st_uid != os.getuid():
        problem = f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    elif stat.S_IMODE(st.st_mode) & 0o022:
        problem = (f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o}, owner uid "
                   f"{st.st_uid})")
    if problem:
        raise DaemonUnavailable(
            path, "unsafe", f"refusing to connect to {path}: its directory {directory} "
            f"{problem}; another user could be listening there")


def check_peer(sock: socket.socket, path: str) -> None:
    """Refuse a listener that runs under another uid than ours (root's too).

    Raises:
        DaemonUnavailable: ``reason`` ``"foreign"``, naming the path and the uid found.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the directory checks are all there is
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, option, 12)
    # struct ucred {pid_t pid; uid_t uid; gid_t gid;}, in the machine's byte order.
    uid = int.from_bytes(creds[4:8], sys.byteorder)
    if uid != os.getuid():
        raise DaemonUnavailable(
            path, "foreign", f"refusing to talk to {path}: it is served by uid {uid}, not by "
            f"you (uid {os.getuid()}); llmd runs as the user it serves, so this is someone "
            "else's listener")


def _connect_waiting(sock: socket.socket, path: str, timeout: float | None) -> None:
    """Connect, waiting for room when the listen backlog is full.

    A non-blocking (or timed) connect to a Unix socket whose backlog is full fails at once
    with EAGAIN; a blocking one waits for room for up to ``SO_SNDTIMEO``, which is set to
    ``timeout`` (and back to none once connected).
    """
    sock.setblocking(True)
    if timeout is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
    sock.connect(path)
    if timeout is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0.0))


def _timeval(seconds: float) -> bytes:
    # struct timeval {time_t tv_sec; suseconds_t tv_usec;}: two longs.
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    if seconds > 0 and not whole and not micros:
        micros = 1  # zero means "no timeout"
    size = _LONG_SIZE
    return whole.to_bytes(size, sys.byteorder) + micros.to_bytes(size, sys.byteorder)


# The size of a C long: a pointer's on the platforms llmd runs on (LP64, ILP32).
_LONG_SIZE = 8 if sys.maxsize > 2**32 else 4


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _unavailable(path: str, exc: OSError, timeout: float | None) -> DaemonUnavailable:
    if isinstance(exc, TimeoutError | BlockingIOError):
        within = f" within {timeout:g} s" if timeout is not None else ""
        return DaemonUnavailable(
            path, "timeout", f"llmd at {path} did not accept the connection{within}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return DaemonUnavailable(
            path, "missing", f"llmd is not running (no socket at {path}); {START_HINT}")
    if exc.errno == errno.ECONNREFUSED:
        if not _is_socket(path):
            return DaemonUnavailable(
                path, "error", f"cannot connect to llmd: {path} is not a socket "
                "(check --socket and $LLMD_SOCKET)")
        return DaemonUnavailable(
            path, "refused",
            f"llmd is not running (nothing is listening on {path}); {START_HINT}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DaemonUnavailable(
            path, "permission",
            f"cannot connect to llmd at {path}: permission denied "
            "(llmd serves only its own user; is the socket another user's?)")
    detail = exc.strerror or str(exc)
    return DaemonUnavailable(path, "error", f"cannot connect to llmd at {path}: {detail}")


class Connection:
    """One NDJSON JSON-RPC connection to llmd.

    Use :meth:`connect` to open one; it is a context manager that closes the socket.

    Args:
        sock: A connected stream socket.
        path: The socket path, for messages.
        max_message: The largest message accepted from the daemon, in bytes.
    """

    def __init__(self, sock: socket.socket, path: str = "",
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._sock: socket.socket | None = sock
        self.path = path
        self._max_message = max_message
        self._buffer = bytearray()
        # Where the search for the next newline resumes, so a huge line arriving in many chunks
        # is scanned once rather than once per chunk.
        self._scan_from = 0
        self._next_id = 0
        self._pending: int | None = None
        # A send cut short (by Ctrl-C) leaves half a line on the wire; anything sent after it
        # would be glued to that half, so the connection can only be closed.
        self._send_broken = False
        # The daemon's message limit: None until asked, 0 when it did not say.
        self._limit: int | None = None

    @classmethod
    def connect(cls, path: str, timeout: float | None = 5.0) -> Connection:
        """Open a connection to the daemon.

        Args:
            path: The socket path (see :func:`socket_path`).
            timeout: Seconds to wait for the daemon to accept; None waits without limit.

        Returns:
            The connected :class:`Connection`.

        Raises:
            DaemonUnavailable: No socket, nobody listening, permission denied, no answer, or
                a listener or (default path) directory that is not the user's own.
        """
        if os.path.abspath(path) == os.path.abspath(default_socket_path()):
            check_socket_dir(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _connect_waiting(sock, path, timeout)
            check_peer(sock, path)
        except OSError as exc:
            sock.close()
            raise _unavailable(path, exc, timeout) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock, path)

    @property
    def pending_id(self) -> int | None:
        """The id of the request sent and not yet answered, or None."""
        return self._pending

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._sock is None

    def call(self, method: str, params: dict[str, Any] | list[Any] | None = None, *,
             on_notification: NotificationHandler | None = None,
             timeout: float | None = None, on_tick: TickHandler | None = None,
             tick: float = DEFAULT_TICK) -> Any:
        """Send a request and wait for its reply.

        Args:
            method: The JSON-RPC method.
            params: Its parameters (omitted from the message when None).
            on_notification: Called as ``on_notification(method, params)`` for every
                notification that arrives before the reply (streamed output, state changes).
            timeout: Seconds to wait for the reply; None waits as long as it takes (the daemon
                enforces the run's own deadline).
            on_tick: Called about every ``tick`` seconds while the call waits, between
                messages (never in the middle of handling one); the first call comes ``tick``
                seconds after the request was sent. Its exceptions propagate.
            tick: Seconds between ``on_tick`` calls (positive).

        Returns:
            The reply's ``result``.

        Raises:
            RpcError: The daemon answered with an error.
            ConnectionLost: The connection closed or broke before the reply.
            CallTimeout: ``timeout`` passed without a reply; the request stays pending.
            ProtocolError: The daemon sent something that is not JSON-RPC.
            UnicodeEncodeError: ``params`` hold text that cannot be encoded as UTF-8.
        """
        self._next_id += 1
        request_id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        payload = _encode(message)
        size = len(payload) - 1  # the daemon's limit does not count the newline
        if size > SMALL_MESSAGE:
            self._check_size(size, method)
        # Pending from before the send, so an interrupt right after it still knows what to cancel.
        self._pending = request_id
        try:
            self._send_bytes(payload, method)
        except ClientError:
            self._pending = None
            raise
        deadline = None if timeout is None else time.monotonic() + timeout
        ticker = None if on_tick is None else _Ticker(on_tick, tick)
        while True:
            incoming = self._receive(method, deadline, ticker)
            if not isinstance(incoming, dict):
                # We never send batches, so an array is not an answer to us.
                continue
            if "method" in incoming:
                self._dispatch(incoming, on_notification, method)
                continue
            reply_id = incoming.get("id")
            # An error with a null id is the daemon rejecting the line it could not parse, which
            # can only be the one request we have in flight.
            if reply_id != request_id and not (reply_id is None and "error" in incoming):
                continue
            self._pending = None
            try:
                return self._result(incoming, method)
            except RpcError as exc:
                raise _too_large(exc, size, method) or exc from None

    def listen(self, on_notification: NotificationHandler, *,
               timeout: float | None = None, what: str = "notifications") -> bool:
        """Wait for the next notification and hand it to ``on_notification``, for at most
        ``timeout`` seconds (None: as long as it takes). Replies to no request are skipped.

        Returns:
            Whether a notification came (False: the time ran out).

        Raises:
            ConnectionLost: The connection closed or broke.
            ProtocolError: The daemon sent something that is not JSON-RPC.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                incoming = self._receive(what, deadline, None)
            except CallTimeout:
                return False
            if isinstance(incoming, dict) and "method" in incoming:
                self._dispatch(incoming, on_notification, what)
                return True

    def notify(self, method: str, params: dict[str, Any] | list[Any] | None = None) -> None:
        """Send a notification (no reply is expected).

        Args:
            method: The JSON-RPC method.
            params: Its parameters (omitted when None).

        Raises:
            ConnectionLost: The connection is closed or broken.
        """
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send(message, method)

    def cancel_pending(self) -> bool:
        """Ask the daemon to cancel the request in flight with ``$/cancelRequest``.

        Failures are ignored: after an interrupt the socket may be gone, and closing the
        connection cancels the daemon's work anyway.

        Returns:
            True when a cancel notification was sent.
        """
        if self._pending is None or self._sock is None or self._send_broken:
            return False
        try:
            self.notify("$/cancelRequest", {"id": self._pending})
        except ClientError:
            return False
        return True

    def wait_pending(self, timeout: float) -> bool:
        """Wait for the reply to the request in flight (after cancelling it), and drop it.

        Args:
            timeout: The most seconds to wait.

        Returns:
            True when the reply came (whatever it said); False on a timeout, a broken
            connection, or when nothing was in flight.
        """
        request_id = self._pending
        if request_id is None or self._sock is None:
            return False
        deadline = time.monotonic() + timeout
        try:
            while True:
                incoming = self._receive("a cancelled request", deadline, None)
                if isinstance(incoming, dict) and "method" not in incoming and (
                        incoming.get("id") == request_id):
                    self._pending = None
                    return True
        except ClientError:
            return False

    def close(self) -> None:
        """Close the socket; later calls raise :class:`ConnectionLost`."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _live_socket(self, method: str) -> socket.socket:
        if self._sock is None:
            raise ConnectionLost(f"cannot send {method}: the connection to llmd is closed")
        if self._send_broken:
            raise ConnectionLost(f"cannot send {method}: an earlier send was interrupted")
        return self._sock

    def _check_size(self, size: int, method: str) -> None:
        """Refuse a request over the daemon's limit before sending it (see the invariants)."""
        if self._limit is None:
            self._limit = 0  # unknown, unless daemon.info says
            try:
                info = self.call("daemon.info", timeout=LIMIT_QUERY_TIMEOUT)
            except RpcError:
                info = None  # an older daemon: the -32600 answer will tell
            limit = info.get("max_message_bytes") if isinstance(info, dict) else None
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                self._limit = limit
        if self._limit and size > self._limit:
            raise MessageTooLarge(size, self._limit, method)

    def _send(self, message: dict[str, Any], method: str) -> None:
        self._send_bytes(_encode(message), method)

    def _send_bytes(self, payload: bytes, method: str) -> None:
        sock = self._live_socket(method)
        sock.settimeout(None)
        # A Ctrl-C that lands between a completed send and the flag below would leave the
        # message looking half-sent, and its cancel unsent. A small message fits the socket
        # buffer and cannot block, so SIGINT waits for it; a large one stays interruptible.
        held = _hold_sigint() if len(payload) <= SMALL_MESSAGE else None
        try:
            self._send_broken = True
            try:
                sock.sendall(payload)
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    # The daemon may have said why it closed (a message over its limit).
                    refusal = self._refusal(sock)
                    if refusal is not None:
                        raise _too_large(refusal, len(payload) - 1, method) or refusal from None
                raise ConnectionLost(
                    f"lost the connection to llmd while sending {method}: "
                    f"{exc.strerror or exc}") from None
            self._send_broken = False
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _refusal(self, sock: socket.socket) -> RpcError | None:
        """The error the daemon sent before it closed the connection on us, if any."""
        data = bytes(self._buffer)
        sock.settimeout(REFUSAL_WAIT)
        try:
            while len(data) <= MAX_REFUSAL:
                chunk = sock.recv(CHUNK_SIZE)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass  # ECONNRESET once the queued bytes are read, or nothing came in time
        for line in data.split(b"\n"):
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("id") is None and "error" in reply:
                try:
                    self._result(reply, "")
                except RpcError as exc:
                    return exc
                except ClientError:
                    continue
        return None

    def _receive(self, method: str, deadline: float | None, ticker: _Ticker | None) -> Any:
        while True:
            # Checked per message too: a steady stream of notifications never lets recv time
            # out, and the status line must still advance.
            if ticker is not None:
                ticker.fire_if_due()
            line = self._take_line()
            if line is not None:
                if not line.strip():
                    continue
                try:
                    return json.loads(line)
                except ValueError as exc:
                    raise ProtocolError(
                        f"llmd sent a line that is not JSON while answering {method}: "
                        f"{exc}") from None
            self._fill(method, deadline, ticker)

    def _take_line(self) -> bytes | None:
        end = self._buffer.find(b"\n", self._scan_from)
        if end < 0:
            self._scan_from = len(self._buffer)
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        self._scan_from = 0
        return line

    def _fill(self, method: str, deadline: float | None, ticker: _Ticker | None) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"the connection to llmd closed while waiting for {method}")
        wait: float | None = None
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise CallTimeout(f"llmd did not answer {method} in time")
        if ticker is not None:
            until_tick = ticker.remaining()
            wait = until_tick if wait is None else min(wait, until_tick)
        # A timeout of 0 would make the socket non-blocking (BlockingIOError, not TimeoutError).
        sock.settimeout(None if wait is None else max(wait, MIN_WAIT))
        try:
            chunk = sock.recv(CHUNK_SIZE)
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise CallTimeout(f"llmd did not answer {method} in time") from None
            return  # a tick is due: the caller's loop fires it and waits again
        except OSError as exc:
            raise ConnectionLost(
                f"lost the connection to llmd while waiting for {method}: "
                f"{exc.strerror or exc}") from None
        if not chunk:
            partial = " in the middle of a message" if self._buffer else ""
            raise ConnectionLost(
                f"llmd closed the connection{partial} before answering {method} "
                "(did the daemon stop or restart?)")
        if len(self._buffer) + len(chunk) > self._max_message:
            raise ProtocolError(
                f"llmd sent a message larger than {self._max_message} bytes "
                f"while answering {method}")
        self._buffer += chunk

    def _dispatch(self, incoming: dict[str, Any], on_notification: NotificationHandler | None,
                  method: str) -> None:
        name = incoming.get("method")
        if not isinstance(name, str):
            raise ProtocolError(f"llmd sent a message with a non-string method during {method}")
        if incoming.get("id") is not None:
            # A request from the daemon: this client serves no methods, and JSON-RPC wants an
            # answer so the daemon does not wait for one.
            self._send({"jsonrpc": "2.0", "id": incoming["id"],
                        "error": {"code": -32601, "message": f"llmc serves no method {name}"}},
                       method)
            return
        if on_notification is not None:
            on_notification(name, incoming.get("params"))

    @staticmethod
    def _result(reply: dict[str, Any], method: str) -> Any:
        if "error" in reply:
            error = reply["error"]
            if not isinstance(error, dict):
                raise ProtocolError(f"llmd sent a malformed error object for {method}")
            code = error.get("code")
            message = error.get("message")
            data = error.get("data")
            error_code = code if isinstance(code, int) else -32603
            text = message if isinstance(message, str) else "unknown error"
            raise RpcError(error_code, text, data if isinstance(data, dict) else {}, method)
        if "result" not in reply:
            raise ProtocolError(f"llmd sent a reply with neither result nor error for {method}")
        return reply["result"]


def _encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _too_large(exc: RpcError, size: int, method: str) -> MessageTooLarge | None:
    """The daemon's "message too large" answer as :class:`MessageTooLarge`, else None."""
    limit = exc.data.get("max_message_bytes")
    if exc.code != -32600 or not isinstance(limit, int) or isinstance(limit, bool):
        return None
    return MessageTooLarge(size, limit, method)


class _Ticker:
    """Calls ``callback`` every ``interval`` seconds, when asked whether it is due."""

    def __init__(self, callback: TickHandler, interval: float) -> None:
        self.callback = callback
        self.interval = interval
        self.due = time.monotonic() + interval

    def remaining(self) -> float:
        """Seconds until the next call is due (negative when overdue)."""
        return self.due - time.monotonic()

    def fire_if_due(self) -> None:
        """Call the callback when its time has come."""
        now = time.monotonic()
        if now >= self.due:
            # From now, not from the old due time: a late tick does not cause a burst.
            self.due = now + self.interval
            self.callback()
