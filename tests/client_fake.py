"""A fake llmd for the client tests: a Unix socket server in a thread with a scripted peer.

Every blocking step is bounded: the sockets time out after a few seconds and :meth:`stop`
joins the thread with a timeout, so a broken client fails a test instead of hanging the run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

TIMEOUT = 5.0


class Peer:
    """The server side of one accepted connection."""

    def __init__(self, sock: socket.socket, received: list[Any]) -> None:
        self.sock = sock
        self.received = received
        self.buffer = b""

    def read(self) -> Any:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        self.received.append(message)
        return message

    def send(self, message: Any) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def reply(self, request: dict[str, Any], result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": request["id"], "result": result})

    def fail(self, request: dict[str, Any], code: int, message: str,
             data: dict[str, Any] | None = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.send({"jsonrpc": "2.0", "id": request["id"], "error": error})


Script = Callable[[Peer], None]


class FakeServer:
    """A Unix socket server in a thread that runs ``script`` on one connection."""

    def __init__(self, script: Script) -> None:
        # tmp_path can exceed the 107-byte limit of AF_UNIX paths; /tmp keeps it short.
        self.dir = tempfile.mkdtemp(prefix="llmc-", dir="/tmp")
        self.path = os.path.join(self.dir, "llmd.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.script = script
        self.received: list[Any] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                self.script(Peer(conn, self.received))
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self.thread.join(TIMEOUT)
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not self.thread.is_alive(), "the fake server did not finish"
        assert not self.errors, f"fake server failed: {self.errors!r}"


def answer(result: Any, before: list[Any] | None = None) -> Script:
    def script(peer: Peer) -> None:
        request = peer.read()
        for note in before or []:
            peer.send(note)
        peer.reply(request, result)
    return script


def failing(code: int, message: str, data: dict[str, Any] | None = None) -> Script:
    def script(peer: Peer) -> None:
        peer.fail(peer.read(), code, message, data)
    return script


class Tty(io.StringIO):
    """A text stream that says it is a terminal (without a file descriptor, so 80 wide)."""

    def isatty(self) -> bool:
        return True
