"""``llmc mcp``: a Model Context Protocol server on stdio that hands every tool call to llmd.

All MCP clients (Claude Code, Cursor, Zed, VS Code...) thereby share the one daemon: its
supervisor, queue, health view and job store. This module is the protocol side; the tools
are listed in :mod:`llmc.mcp.schemas`, carried out in :mod:`llmc.mcp.calls` and
:mod:`llmc.mcp.longwork`, and answered with the results of :mod:`llmc.mcp.tools`; tasks are
:mod:`llmc.mcp.tasks`.

Invariants:
- Stdout carries protocol messages only: one JSON-RPC message (or batch array) per line,
  each written whole under one lock. The few log lines go to stderr; no traceback is ever
  printed.
- The main thread only reads stdin and dispatches. Whatever talks to llmd runs in a thread
  of its own, on a daemon connection of its own, so a long run never delays another request,
  a ping or a cancellation. Threads and connections that are done wait for the next request
  (a few of each): waking a thread costs far less than starting one.
- Every request is answered exactly once, except one the client has cancelled (the
  specification asks for no answer then); a request's progress notifications all go out
  before its answer.
- What goes wrong in a CLI or in llmd (llmd not running included) is a tool result with
  ``isError: true``; protocol errors are kept for malformed messages, unknown methods and
  unknown tools.
- Protocol versions: the ``initialize`` handshake of 2024-11-05 to 2025-11-25 (the client's
  version when it is one of these, else 2025-11-25), and the stateless 2026-07-28
  (``server/discover`` and a ``_meta`` envelope on every request). Fields that a version does
  not define are left out of what a client of that version gets. Tasks likewise: the
  utility (``task`` on ``tools/call``, ``tasks/get|result|list|cancel``) under 2025-11-25
  alone, the ``io.modelcontextprotocol/tasks`` extension under 2026-07-28 alone, for a
  request that declares it.
- Standard library only: this runs at every launch of every MCP client, and trio alone would
  cost about 100 ms of start-up.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from llmc import __version__, exitcodes
from llmc.connection import socket_path
from llmc.mcp import schemas, tasks, tools
from llmc.mcp.calls import Abandoned, Call, Daemon, Runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable
    from typing import Any, BinaryIO

    Message = dict[str, Any] | list[dict[str, Any]]
    Sink = Callable[[dict[str, Any] | None], None]

# Every revision this server speaks, oldest first; the handshake ones end with 2025-11-25.
KNOWN_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
HANDSHAKE_VERSIONS = KNOWN_VERSIONS[:4]
MODERN_VERSIONS = KNOWN_VERSIONS[4:]
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
SERVER_INFO = {"name": "llmd", "version": __version__}
UNSUPPORTED_VERSION = -32022

# Clients give up on a call after 60 to 120 s without progress; 5 s keeps well inside that.
DEFAULT_PROGRESS_S = 5.0
# tools/list must not hang on a daemon that does not answer: past this the tools go out with
# a generic blueprint description.
LIST_TIMEOUT = 5.0
# Threads kept waiting for the next request once theirs is answered: starting a thread
# costs more than waking one.
MAX_PARKED_THREADS = 4
# At the end of stdin: how often to look whether the client still reads the answers due.
DRAIN_POLL_S = 0.1
# 2026-07-28 cache hints: the registry can be reloaded, the capabilities cannot change.
TOOLS_TTL_MS = 60_000
DISCOVER_TTL_MS = 3_600_000


def at_least(version: str, minimum: str) -> bool:
    """Whether ``version`` is a known revision no older than ``minimum``."""
    if version not in KNOWN_VERSIONS:
        return False
    return KNOWN_VERSIONS.index(version) >= KNOWN_VERSIONS.index(minimum)


def _error(request_id: object, code: int, message: str,
           data: object = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _valid_id(value: object) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def encode(message: Message) -> bytes:
    """One protocol line: compact UTF-8 JSON and a newline."""
    try:
        return (json.dumps(message, ensure_ascii=False, separators=(",", ":"))
                .encode("utf-8") + b"\n")
    except UnicodeEncodeError:
        # A lone surrogate (from a client's \\ud800 escape, echoed back in a message) has no
        # UTF-8 form; escaped, the line is still valid JSON.
        return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


class _Once:
    """A sink that passes on only its first reply, so each request is answered once."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self.done = False

    def __call__(self, reply: dict[str, Any] | None) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
        self._sink(reply)


class _Slot:
    """Where a parked worker thread waits for its next task."""

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self._task: Callable[[], None] | None = None

    def hand(self, task: Callable[[], None]) -> None:
        """Give the waiting thread a task."""
        self._task = task
        self._ready.release()

    def take(self) -> Callable[[], None]:
        """Wait for a task."""
        self._ready.acquire()
        task, self._task = self._task, None
        assert task is not None  # hand() sets it before the release
        return task


class _Batch:
    """Collects the replies to a batch's elements and sends them as one array."""

    def __init__(self, send: Callable[[Message], None], size: int) -> None:
        self._send = send
        self._left = size
        self._replies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, reply: dict[str, Any] | None) -> None:
        with self._lock:
            if reply is not None:
                self._replies.append(reply)
            self._left -= 1
            done = self._left == 0
        # A batch of nothing but notifications gets no reply at all.
        if done and self._replies:
            self._send(self._replies)


class Server:
    """The MCP server: reads requests, answers them, follows runs.

    Args:
        path: llmd's socket path.
        max_chars: The answer size per tool result.
        progress_s: Seconds between progress notifications while a call waits.
        cwd: The default working directory of runs (None when it no longer exists).
        out: Where protocol messages go (the binary stdout).
        max_wait: The longest inline wait of a call (None: 50 s, or 300 s for a call with a
            progress token).
    """

    def __init__(self, path: str, max_chars: int, progress_s: float, cwd: str | None,
                 out: BinaryIO, *, max_wait: float | None = None) -> None:
        self.max_chars = max_chars
        self.runner = Runner(Daemon(path, self.log), max_chars, progress_s, cwd, self.progress,
                             max_wait=max_wait)
        self._out = out
        self._out_broken = False
        self._write_lock = threading.Lock()
        self._calls: dict[object, Call] = {}
        self._calls_lock = threading.Lock()
        self._in_flight = 0
        self._busy = threading.Condition()
        self._parked: list[_Slot] = []
        self._workers_lock = threading.Lock()
        # Set by initialize; 2026-07-28 requests name their own version instead.
        self._version: str | None = None

    # -- the stdio side ------------------------------------------------------------------------

    def serve(self, lines: Iterable[bytes]) -> int:
        """Answer messages until the input ends (the client closed stdin).

        Returns:
            The exit status: 0.
        """
        for line in lines:
            if not line.strip():
                continue
            try:
                self.receive(line)
            except Exception as exc:  # noqa: BLE001 - one bad message must not end the session
                self.log(f"internal error: {type(exc).__name__}: {exc}")
        self._drain()
        # Runs still in flight end with this process: llmd cancels a disconnected client's
        # runs and kills their process groups. Jobs from `start` go on.
        return exitcodes.OK

    def _drain(self) -> None:
        # The client has said all it will; it may still read the answers (a script piping
        # requests in does), so they are awaited for as long as someone reads stdout.
        reader_gone = _reader_gone_check(self._out)
        with self._busy:
            while self._in_flight and not self._out_broken and not reader_gone():
                self._busy.wait(DRAIN_POLL_S)

    def receive(self, line: bytes) -> None:
        """Handle one line from the client."""
        try:
            message = json.loads(line)
        except ValueError as exc:  # UnicodeDecodeError included
            self.send(_error(None, -32700, f"Parse error: {exc}"))
            return
        if isinstance(message, list):
            if not message:
                self.send(_error(None, -32600, "Invalid Request: an empty batch"))
                return
            batch = _Batch(self.send, len(message))
            for element in message:
                self._dispatch(element, _Once(batch))
            return
        self._dispatch(message, _Once(self.send))

    def send(self, message: Message | None) -> None:
        """Write one message to stdout (None: nothing)."""
        if message is None:
            return
        data = encode(message)
        with self._write_lock:
            if self._out_broken:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                # The client has gone; its stdin's end will end the loop.
                self._out_broken = True
                _silence(self._out)

    @staticmethod
    def log(message: str) -> None:
        """One line on stderr, which MCP clients keep as the server's log."""
        try:
            sys.stderr.write(f"llmc mcp: {message}\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            return

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, message: object, sink: _Once) -> None:
        # Calls ``sink`` exactly once, now or from a worker thread (None: no reply).
        if not isinstance(message, dict):
            sink(_error(None, -32600, "Invalid Request: expected a JSON object"))
            return
        method = message.get("method")
        if not isinstance(method, str):
            if "method" not in message and ("result" in message or "error" in message):
                sink(None)  # a reply, but this server never asks the client anything
                return
            given = message.get("id")
            sink(_error(given if _valid_id(given) else None, -32600,
                        "Invalid Request: no method"))
            return
        params = message.get("params")
        if "id" not in message:
            if isinstance(params, dict):
                self._notification(method, params)
            sink(None)
            return
        request_id = message["id"]
        if not _valid_id(request_id):
            sink(_error(None, -32600, "Invalid Request: the id must be a string or a number"))
            return
        if params is None:
            params = {}
        if not isinstance(params, dict):
            sink(_error(request_id, -32602, "Invalid params: expected an object"))
            return
        version = self._version_of(method, params, request_id, sink)
        if version is not None:
            self._request(method, params, request_id, version, sink)

    def _version_of(self, method: str, params: dict[str, Any], request_id: object,
                    sink: _Once) -> str | None:
        meta = params.get("_meta")
        if method == "initialize" or not isinstance(meta, dict) or VERSION_KEY not in meta:
            return self._version or LATEST_HANDSHAKE
        requested = meta[VERSION_KEY]
        if not isinstance(requested, str):
            sink(_error(request_id, -32602, f"Invalid params: _meta {VERSION_KEY} must be a "
                                            "string"))
            return None
        if requested not in MODERN_VERSIONS:
            sink(_error(request_id, UNSUPPORTED_VERSION, "Unsupported protocol version",
                        {"supported": list(MODERN_VERSIONS), "requested": requested}))
            return None
        return requested

    def _request(self, method: str, params: dict[str, Any], request_id: object,
                 version: str, sink: _Once) -> None:
        if method == "initialize":
            sink(self._response(request_id, self._initialize(params), version))
        elif method == "ping":
            sink(self._response(request_id, {}, version))
        elif method == "server/discover":
            # A 2026-07-28 method: its result has that revision's shape, envelope or not.
            sink(self._response(request_id, {
                "supportedVersions": list(MODERN_VERSIONS),
                "capabilities": {"tools": {}, "extensions": {tasks.EXTENSION: {}}},
                "instructions": schemas.INSTRUCTIONS,
                "ttlMs": DISCOVER_TTL_MS, "cacheScope": "public"}, MODERN_VERSIONS[-1]))
        elif method == "tools/list":
            self._spawn(lambda: self._list_tools(request_id, version, sink), request_id, sink)
        elif method == "tools/call":
            self._call_tool(params, request_id, version, sink)
        elif method.startswith("tasks/") and self._task_method(method, version):
            self._task_request(method, params, request_id, version, sink)
        else:
            sink(_error(request_id, -32601, f"Method not found: {method}"))

    def _response(self, request_id: object, result: dict[str, Any],
                  version: str) -> dict[str, Any]:
        if version in MODERN_VERSIONS:
            result.setdefault("resultType", "complete")
            result["_meta"] = {SERVER_INFO_KEY: SERVER_INFO}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        # The client's version when it is one we speak; else our newest, and the client
        # decides whether it can speak that (2026-07-28 has no handshake to answer with).
        version = requested if isinstance(requested, str) and \
            requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        self._version = version
        capabilities: dict[str, Any] = {"tools": {"listChanged": False}}
        if version == tasks.UTILITY_VERSION:
            capabilities["tasks"] = {"list": {}, "cancel": {},
                                     "requests": {"tools": {"call": {}}}}
        return {"protocolVersion": version, "capabilities": capabilities,
                "serverInfo": dict(SERVER_INFO), "instructions": schemas.INSTRUCTIONS}

    def _notification(self, method: str, params: dict[str, Any]) -> None:
        if method != "notifications/cancelled":
            return  # notifications/initialized and the rest need nothing
        request_id = params.get("requestId")
        if not _valid_id(request_id):
            return
        with self._calls_lock:
            call = self._calls.get(request_id)
        if call is None:
            return  # finished already, or never a tools/call: nothing to stop
        job = call.cancel()
        if job is not None:
            # In a thread: the reader must stay free for the next message.
            threading.Thread(target=self.runner.daemon.cancel_job, args=(job,),
                             daemon=True).start()

    def _spawn(self, target: Callable[[], None], request_id: object, sink: _Once) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the client waiting
                self.log(f"internal error: {type(exc).__name__}: {exc}")
            finally:
                if not sink.done:
                    sink(_error(request_id, -32603, "Internal error in llmc mcp"))
                with self._busy:
                    self._in_flight -= 1
                    self._busy.notify_all()

        with self._busy:
            self._in_flight += 1
        with self._workers_lock:
            # A parked thread takes the work if there is one; else a new thread does. Either
            # way each request in flight has a thread of its own.
            if self._parked:
                self._parked.pop().hand(guarded)
                return
        threading.Thread(target=self._work, args=(guarded,), daemon=True).start()

    def _work(self, task: Callable[[], None]) -> None:
        slot = _Slot()
        while True:
            task()
            with self._workers_lock:
                if len(self._parked) >= MAX_PARKED_THREADS:
                    return
                self._parked.append(slot)
            task = slot.take()

    # -- tools/list and tools/call -------------------------------------------------------------

    def _list_tools(self, request_id: object, version: str, sink: _Once) -> None:
        definitions = schemas.shape_tools(
            schemas.tool_definitions(self.runner.blueprints(LIST_TIMEOUT), self.max_chars),
            structured=at_least(version, "2025-06-18"), titles=at_least(version, "2025-06-18"),
            annotations=at_least(version, "2025-03-26"),
            tasks=version == tasks.UTILITY_VERSION)
        result: dict[str, Any] = {"tools": definitions}
        if version in MODERN_VERSIONS:
            result.update(ttlMs=TOOLS_TTL_MS, cacheScope="private")
        sink(self._response(request_id, result, version))

    def _call_tool(self, params: dict[str, Any], request_id: object, version: str,
                   sink: _Once) -> None:
        name = params.get("name")
        if not isinstance(name, str) or name not in self.runner.tools:
            sink(_error(request_id, -32602, f"Unknown tool: {name}; the tools are "
                                            f"{', '.join(self.runner.tools)}"))
            return
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if not _valid_id(token):
            token = None
        call = Call(request_id, token, version)
        task = self._as_task(name, params, version, request_id)
        if isinstance(task, dict):
            sink(task)
            return
        with self._calls_lock:
            if request_id in self._calls:
                sink(_error(request_id, -32600, f"Invalid Request: id {request_id} is in use "
                                                "by a call in flight"))
                return
            self._calls[request_id] = call
        arguments = params.get("arguments")
        if task:
            self._spawn(lambda: self._serve_task(call, arguments, sink), request_id, sink)
            return
        self._spawn(lambda: self._serve_tool(call, name, arguments, sink), request_id, sink)

    def _serve_tool(self, call: Call, name: str, arguments: object, sink: _Once) -> None:
        result: dict[str, Any] | None = None
        try:
            result = self.runner.outcome(call, name, {} if arguments is None else arguments)
        finally:
            with self._calls_lock:
                if self._calls.get(call.id) is call:
                    del self._calls[call.id]
            if call.cancelled:
                sink(None)
            elif result is not None:
                if not at_least(call.version, "2025-06-18"):
                    result.pop("structuredContent", None)
                sink(self._response(call.id, result, call.version))

    # -- tasks --------------------------------------------------------------------------------

    @staticmethod
    def _as_task(name: str, params: dict[str, Any], version: str, request_id: object
                 ) -> bool | dict[str, Any]:
        # Whether a tools/call becomes a task; an error reply when it may not.
        if version == tasks.UTILITY_VERSION:
            if not isinstance(params.get("task"), dict):
                return False
            if name not in schemas.TASK_TOOLS:
                return _error(request_id, -32601,
                              f"Tool `{name}` does not support task-augmented calls "
                              "(its taskSupport is forbidden)")
            return True
        # The extension: the server decides; a long `run` is always worth a task.
        return version == tasks.EXTENSION_VERSION and name in schemas.TASK_TOOLS and \
            tasks.declares_extension(params)

    def _serve_task(self, call: Call, arguments: object, sink: _Once) -> None:
        reply: dict[str, Any] | None = None
        try:
            created = tasks.create(self.runner, call, arguments, call.version)
            reply = self._response(call.id, created, call.version)
        except tasks.TaskError as exc:
            reply = _error(call.id, exc.code, exc.message, exc.data)
        except Abandoned:
            reply = None
        finally:
            with self._calls_lock:
                if self._calls.get(call.id) is call:
                    del self._calls[call.id]
            sink(None if call.cancelled else reply)

    @staticmethod
    def _task_method(method: str, version: str) -> bool:
        # Each revision's own methods: the utility's under 2025-11-25, the extension's
        # under 2026-07-28; none under the others.
        if version == tasks.UTILITY_VERSION:
            return method in ("tasks/get", "tasks/result", "tasks/list", "tasks/cancel")
        if version == tasks.EXTENSION_VERSION:
            return method in ("tasks/get", "tasks/update", "tasks/cancel")
        return False

    def _task_request(self, method: str, params: dict[str, Any], request_id: object,
                      version: str, sink: _Once) -> None:
        call = Call(request_id, None, version)
        if method == "tasks/result":
            # It waits for the end: a notifications/cancelled must reach it.
            with self._calls_lock:
                if request_id in self._calls:
                    sink(_error(request_id, -32600, f"Invalid Request: id {request_id} is "
                                                    "in use by a call in flight"))
                    return
                self._calls[request_id] = call

        def serve() -> None:
            reply: dict[str, Any] | None = None
            try:
                if version == tasks.EXTENSION_VERSION:
                    tasks.require_extension(params)
                if method == "tasks/get":
                    result = tasks.get(self.runner, params, version)
                elif method == "tasks/result":
                    result = tasks.result(self.runner, call, params)
                elif method == "tasks/list":
                    result = tasks.listed(self.runner)
                elif method == "tasks/cancel":
                    result = tasks.cancel(self.runner, params, version)
                else:
                    result = tasks.update(self.runner, params)
                reply = self._response(request_id, result, version)
            except tasks.TaskError as exc:
                reply = _error(request_id, exc.code, exc.message, exc.data)
            except Abandoned:
                reply = None
            finally:
                with self._calls_lock:
                    if self._calls.get(request_id) is call:
                        del self._calls[request_id]
                sink(None if call.cancelled else reply)

        self._spawn(serve, request_id, sink)

    # -- progress -----------------------------------------------------------------------------

    def progress(self, call: Call, message: str) -> None:
        """Tell the client that ``call`` is alive, if it asked (gave a progress token)."""
        if call.token is None or call.cancelled:
            return
        # Seconds since the call began: meaningful without a total, and always increasing.
        value = max(round(time.monotonic() - call.started, 3), round(call.progress + 0.001, 3))
        call.progress = value
        params: dict[str, Any] = {"progressToken": call.token, "progress": value}
        if at_least(call.version, "2025-03-26"):
            params["message"] = message
        self.send({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})


def _reader_gone_check(out: BinaryIO) -> Callable[[], bool]:
    """A test of whether nobody reads ``out`` any more (a pipe or socket closed at its end)."""
    try:
        descriptor = out.fileno()
    except (OSError, ValueError, AttributeError):
        return lambda: False
    import select  # noqa: PLC0415 - needed only at the end of a session

    poller = select.poll()
    # With no events asked for, poll still reports POLLERR (a pipe's reader has closed it)
    # and POLLHUP (a socket's peer has).
    poller.register(descriptor, 0)
    return lambda: bool(poller.poll(0))


def _silence(out: BinaryIO) -> None:
    # What the failed write left in the buffer would fail again, noisily, when the
    # interpreter flushes it at exit; /dev/null takes it quietly.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        return


def _setting(given: float | None, variable: str, default: float, minimum: float,
             whole: bool) -> float:
    if given is not None:
        return given
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = minimum - 1
    if not minimum <= value < float("inf"):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"${variable}={text!r}: expected {kind} of at least {minimum:g}")
    return value


def main(args: argparse.Namespace) -> int:
    """``llmc mcp``: serve MCP on stdin/stdout until stdin ends.

    Args:
        args: The parsed arguments (``socket``, ``max_chars``, ``progress_interval``).

    Returns:
        The exit status.
    """
    try:
        max_chars = int(_setting(args.max_chars, "LLMC_MCP_MAX_CHARS",
                                 tools.DEFAULT_MAX_CHARS, tools.MIN_MAX_CHARS,
                                 whole=True))
        progress_s = _setting(args.progress_interval, "LLMC_MCP_PROGRESS_S",
                              DEFAULT_PROGRESS_S, 0.01, whole=False)
        max_wait = _setting(getattr(args, "max_wait", None), "LLMC_MCP_MAX_WAIT", -1.0, 0.01,
                            whole=False)
    except ValueError as exc:
        Server.log(str(exc))
        return exitcodes.USAGE
    if max_chars < tools.MIN_MAX_CHARS:
        Server.log(f"--max-chars must be at least {tools.MIN_MAX_CHARS}")
        return exitcodes.USAGE
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    stdin = sys.stdin.buffer
    if stdin.isatty():
        Server.log("this speaks the Model Context Protocol on stdin and stdout, for an MCP "
                   "client to start (for Claude Code: claude mcp add llmd -- llmc mcp); "
                   "Ctrl-D ends it")
    server = Server(socket_path(getattr(args, "socket", None)), max_chars, progress_s, cwd,
                    sys.stdout.buffer, max_wait=None if max_wait < 0 else max_wait)
    return server.serve(stdin)
