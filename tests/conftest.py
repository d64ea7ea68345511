"""Shared fixtures: fake CLIs as real executables, a real daemon on a private socket.

The daemon is the real ``python -m llmd serve`` in a subprocess; readiness is learnt
from its ``READY=1`` datagram on a notify socket the test binds, never by sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket as stdsocket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

HERE = Path(__file__).parent
FAKECLI = HERE / "fakecli.py"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private directory: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="llmd-t-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_bin(short_tmp: Path) -> Path:
    """A directory holding ``fakecli`` as an executable with its own shebang."""
    bindir = short_tmp / "bin"
    bindir.mkdir()
    target = bindir / "fakecli"
    target.write_text(f"#!{sys.executable} -S\n" + FAKECLI.read_text())
    target.chmod(0o755)
    return bindir


def toml_value(value: Any) -> str:
    """A value in TOML syntax (JSON's strings, numbers and arrays are TOML too)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def registry_toml(fake_bin: Path, blueprints: dict[str, dict[str, Any]],
                  daemon: dict[str, Any] | None = None, extra: str = "") -> str:
    """Write a registry whose blueprints run ``fakecli``.

    ``command`` entries of the form ``"@fakecli"`` become the executable's path.
    """
    lines = []
    if daemon:
        lines.append("[daemon]")
        lines += [f"{k} = {toml_value(v)}" for k, v in daemon.items()]
    for name, given in blueprints.items():
        spec = dict(given)
        retry = spec.pop("retry", None)
        spec["command"] = [str(fake_bin / "fakecli") if c == "@fakecli" else c
                           for c in spec["command"]]
        lines.append(f"[blueprints.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in spec.items()]
        if retry:
            lines.append(f"[blueprints.{name}.retry]")
            lines += [f"{k} = {toml_value(v)}" for k, v in retry.items()]
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)


@dataclass
class DaemonHandle:
    """A running daemon and what a test needs to talk to it."""

    proc: trio.Process
    socket: Path
    config: Path
    workdir: Path
    log_path: Path
    env: dict[str, str]
    notify: trio.socket.SocketType
    notes: list[str] = field(default_factory=list)
    clients: list[RawClient] = field(default_factory=list)

    async def connect(self) -> RawClient:
        """A raw client, closed when the test ends."""
        client = await RawClient.connect(self.socket)
        self.clients.append(client)
        return client

    def log(self) -> str:
        """Everything the daemon logged so far."""
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it to exit."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        with trio.fail_after(30):
            return await self.proc.wait()

    async def next_notify(self) -> str:
        """The next sd_notify datagram the daemon sent."""
        data = await self.notify.recv(65536)
        return data.decode()


async def start_daemon(workdir: Path, toml: str, *, env: dict[str, str] | None = None,
                       args: list[str] | None = None) -> DaemonHandle:
    """Start ``llmd serve`` and wait for ``READY=1``."""
    config = workdir / "llmd.toml"
    config.write_text(toml)
    sock = workdir / "run" / "llmd.sock"
    notify_path = workdir / "notify.sock"
    notify = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    full_env = {**os.environ, "NOTIFY_SOCKET": str(notify_path),
                "XDG_STATE_HOME": str(workdir / "state"), "PYTHONDONTWRITEBYTECODE": "1"}
    full_env.pop("LLMD_SOCKET", None)
    full_env.pop("LLMD_CONFIG", None)
    full_env.update(env or {})
    log_path = workdir / "daemon.log"
    with open(log_path, "ab") as log_file:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmd", "serve", "--socket", str(sock),
             "--config", str(config), "--log-level", "debug", *(args or [])],
            env=full_env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, cwd=str(workdir))
    handle = DaemonHandle(proc, sock, config, workdir, log_path, full_env, notify)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def died() -> None:
                await proc.wait()
                raise RuntimeError(f"llmd exited with {proc.returncode} before it was ready:"
                                   f"\n{handle.log()}")

            nursery.start_soon(died)
            while True:
                message = await handle.next_notify()
                handle.notes.append(message)
                if "READY=1" in message.splitlines():
                    break
            nursery.cancel_scope.cancel()
    return handle


@pytest.fixture
async def daemon_factory(short_tmp: Path) -> AsyncIterator[Any]:
    """Start daemons on demand; all are stopped (SIGKILL if they hang) at the end."""
    started: list[DaemonHandle] = []

    async def factory(toml: str, **kwargs: Any) -> DaemonHandle:
        workdir = short_tmp / f"d{len(started)}"
        workdir.mkdir()
        handle = await start_daemon(workdir, toml, **kwargs)
        started.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in started:
            for client in handle.clients:
                await client.aclose()
            if handle.proc.returncode is None:
                handle.proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await handle.proc.wait()
                if handle.proc.returncode is None:
                    handle.proc.kill()
                    await handle.proc.wait()
            handle.notify.close()


class RawClient:
    """A bare NDJSON (or LSP) client over the socket (or any stream), for protocol tests."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, path: Path) -> RawClient:
        """Open a connection."""
        return cls(await trio.open_unix_socket(str(path)))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        await self.stream.send_all(data)

    async def send(self, message: Any) -> None:
        """Send one NDJSON message."""
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def recv_line(self) -> bytes | None:
        """The next line, or None at EOF."""
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    async def recv(self) -> Any:
        """The next NDJSON message (AssertionError at EOF)."""
        line = await self.recv_line()
        assert line is not None, "connection closed"
        return json.loads(line)

    async def call(self, method: str, params: Any = None, id: Any = 1) -> Any:
        """Send a request and return its reply, collecting notifications before it."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            message["params"] = params
        await self.send(message)
        while True:
            reply = await self.recv()
            if isinstance(reply, dict) and reply.get("id") == id and "method" not in reply:
                return reply

    async def aclose(self) -> None:
        """Close."""
        await self.stream.aclose()


async def llmc(handle: DaemonHandle, *args: str, stdin: bytes | None = None,
               cwd: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``llmc`` client against a daemon."""
    full_env = {**handle.env, "LLMD_SOCKET": str(handle.socket), **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "llmc", *args], stdin=stdin if stdin is not None else b"",
            capture_stdout=True, capture_stderr=True, check=False, env=full_env,
            cwd=cwd or str(handle.workdir))


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an unreaped corpse is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return state[state.rfind(b")") + 2:][:1] != b"Z"


def read_pids(path: Path) -> list[int]:
    """The pids a fake CLI wrote to its pid file."""
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def assert_all_die(pids: list[int]) -> None:
    """SIGKILL is delivered asynchronously: allow the kernel a moment to finish them."""
    with trio.fail_after(2):
        while any(alive(p) for p in pids):
            await trio.sleep(0.01)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children (each leading its own process group) to kill and reap after the test."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
