"""The one harness of the tests and the benches: a real llmd started and awaited by
``READY=1``, fake CLIs, raw clients, ``/proc`` readings and bounded waits.

Invariants:
- A daemon is ready when its ``READY=1`` datagram arrives on the notify socket the harness
  binds for it: nothing sleeps, and nothing polls the socket file, to learn it. One that
  exits or stays silent past the bound fails the start with its log.
- Every wait is bounded: the trio helpers run under the caller's ``trio.fail_after``; the
  blocking ones (for benches and session-wide fixtures) take a timeout.
- The blocking half (:func:`launch`, :class:`Client`, the ``/proc`` readings) runs without
  trio, so a bench measures llmd and not the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket as stdsocket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from llmd.drivers.warmagent import Agent, AgentKey, AgentOptions, AgentPool, Dialect
from llmd.protocol.framing import Frame, Framer

HERE = Path(__file__).parent
FAKECLI = HERE / "fakecli.py"
FIXTURES = HERE / "fixtures" / "real-clis"
READY = "READY=1"

# --- registries and fake CLIs ---------------------------------------------------------------


def install_fakecli(bindir: Path) -> Path:
    """Put ``fakecli`` in ``bindir`` as an executable with its own shebang; its path."""
    bindir.mkdir(parents=True, exist_ok=True)
    target = bindir / "fakecli"
    target.write_text(f"#!{sys.executable} -S\n" + FAKECLI.read_text())
    target.chmod(0o755)
    return target


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


# --- /proc ------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def status_kb(pid: int, name: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(f"{name} not in /proc/{pid}/status")


def rss_kb(pid: int) -> int:
    """The resident set of ``pid`` now, in KiB."""
    return status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    """The largest resident set ``pid`` has had (since :func:`reset_peak_rss`), in KiB."""
    return status_kb(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Start the kernel's peak-RSS record (VmHWM) afresh from the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rfind(b")") + 2:].split()
    # utime and stime are fields 14 and 15; the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def bytes_written(pid: int) -> int:
    """What ``pid`` has written so far, in bytes (pipes included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    """How many file descriptors ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int, holding: str | None = None) -> list[int]:
    """The direct children of ``pid`` (only those whose command line holds ``holding``)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(x) for x in f.read().split()]
    if holding is None:
        return found
    return [child for child in found if holding.encode() in _cmdline(child)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill_quietly(pids: Iterable[int]) -> None:
    """SIGKILL processes that a test made and may have left behind."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- starting llmd ------------------------------------------------------------------------------


def daemon_argv(sock: Path, config: Path, *, log_level: str | None = "debug",
                args: Sequence[str] = (), python_args: Sequence[str] = ()) -> list[str]:
    """The command line of ``llmd serve`` on ``sock`` with ``config`` (``log_level`` None:
    the registry's)."""
    level = ["--log-level", log_level] if log_level is not None else []
    return [sys.executable, *python_args, "-m", "llmd", "serve", "--socket", str(sock),
            "--config", str(config), *level, *args]


def daemon_env(workdir: Path, notify: Path, extra: Mapping[str, str] | None = None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A daemon's environment: ``base`` (ours by default) with a private state directory
    and notify socket, without the variables that would point it elsewhere."""
    env = {**(os.environ if base is None else base), "NOTIFY_SOCKET": str(notify),
           "XDG_STATE_HOME": str(workdir / "state")}
    for name in ("LLMD_SOCKET", "LLMD_CONFIG"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def says_ready(datagram: bytes | str) -> bool:
    """Whether an sd_notify datagram holds ``READY=1``."""
    text = datagram.decode(errors="replace") if isinstance(datagram, bytes) else datagram
    return READY in text.splitlines()


@dataclass
class Launched:
    """A daemon started with :func:`launch` (blocking), ready to serve."""

    proc: subprocess.Popen[bytes]
    socket: Path
    config: Path
    workdir: Path
    env: dict[str, str]
    log_path: Path | None
    notes: list[str] = field(default_factory=list)
    _notify: stdsocket.socket | None = None

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return self.proc.pid

    def log(self) -> str:
        """What the daemon logged so far (when it logs to a file)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it hangs; its exit status."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            return self.proc.wait()
        finally:
            if self._notify is not None:
                self._notify.close()


def _drain(sock: stdsocket.socket, notes: list[str]) -> None:
    """Keep reading a daemon's notifications (``STATUS=``...) so that none is refused."""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            notes.append(data.decode(errors="replace"))


def launch(workdir: Path, toml: str | None = None, *, config: Path | None = None,
           sock: Path | None = None, env: Mapping[str, str] | None = None,
           base_env: Mapping[str, str] | None = None, log_level: str | None = "warning",
           args: Sequence[str] = (), python_args: Sequence[str] = (),
           log_path: Path | None = None, timeout: float = 30.0) -> Launched:
    """Start ``llmd serve`` in the background and return once it has said ``READY=1``.

    Args:
        workdir: A short private directory (Unix socket paths are limited to 108 bytes).
        toml: The registry, written to ``workdir/llmd.toml``; or give ``config``.
        config: An existing registry file.
        sock: The socket path (default ``workdir/llmd.sock``).
        env: Variables added to the daemon's environment.
        base_env: The environment to start from (default: this process's).
        log_level: ``--log-level`` (None: the registry's ``log_level``).
        args: More ``llmd serve`` arguments.
        python_args: Interpreter options (``-m cProfile -o FILE``).
        log_path: Where its stdout and stderr go (default: inherited).
        timeout: How long it may take to become ready.

    Raises:
        RuntimeError: It exited, or did not become ready in time (it is killed).
    """
    if config is None:
        config = workdir / "llmd.toml"
        config.write_text(toml or "")
    sock = workdir / "llmd.sock" if sock is None else sock
    notify_path = workdir / f"notify-{sock.name}"
    notify = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    full_env = daemon_env(workdir, notify_path, env, base_env)
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(daemon_argv(sock, config, log_level=log_level, args=args,
                                            python_args=python_args),
                                env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, cwd=str(workdir))
    finally:
        if out is not None:
            out.close()
    started = Launched(proc, sock, config, workdir, full_env, log_path, _notify=notify)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            started.stop()
            raise RuntimeError(f"llmd did not become ready (exit status {proc.returncode})"
                               f"\n{started.log()}")
        try:
            data = notify.recv(65536)
        except TimeoutError:
            continue
        started.notes.append(data.decode(errors="replace"))
        if says_ready(data):
            break
    notify.settimeout(None)
    threading.Thread(target=_drain, args=(notify, started.notes), daemon=True).start()
    return started


class Client:
    """A minimal blocking NDJSON client (a bench measures the daemon, not its client)."""

    def __init__(self, path: str | Path) -> None:
        self.sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        self.next_id = 0

    def send(self, method: str, params: Any) -> int:
        """Send a request; its id."""
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        return self.next_id

    def recv(self) -> Any:
        """The next message."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, method: str, params: Any = None) -> Any:
        """A request's result (RuntimeError for an error reply)."""
        self.send(method, params)
        reply = self.recv()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


# --- the trio half: a daemon per test ---------------------------------------------------------


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

    async def run(self, blueprint: str, prompt: str = "x", id: Any = 1,
                  **params: Any) -> Any:
        """An ``llm.run`` of ``blueprint``: its reply (notifications before it skipped)."""
        return await self.call("llm.run", {"blueprint": blueprint, "prompt": prompt, **params},
                               id=id)

    async def aclose(self) -> None:
        """Close."""
        await self.stream.aclose()


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

    async def aclose(self) -> None:
        """Close its clients; SIGTERM it (SIGKILL if it hangs) and reap it."""
        for client in self.clients:
            await client.aclose()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        self.notify.close()


async def start_daemon(workdir: Path, toml: str, *, env: dict[str, str] | None = None,
                       args: list[str] | None = None) -> DaemonHandle:
    """Start ``llmd serve`` (logging at debug to ``workdir/daemon.log``) and wait for
    ``READY=1``."""
    config = workdir / "llmd.toml"
    config.write_text(toml)
    sock = workdir / "run" / "llmd.sock"
    notify_path = workdir / "notify.sock"
    notify = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    full_env = daemon_env(workdir, notify_path, {"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    log_path = workdir / "daemon.log"
    with open(log_path, "ab") as log_file:
        proc = await trio.lowlevel.open_process(
            daemon_argv(sock, config, args=args or ()), env=full_env,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=str(workdir))
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
                if says_ready(message):
                    break
            nursery.cancel_scope.cancel()
    return handle


class DaemonFactory(Protocol):
    """The ``daemon_factory`` fixture: starts a daemon in a fresh directory of the test's."""

    async def __call__(self, toml: str, *, env: dict[str, str] | None = None,
                       args: list[str] | None = None) -> DaemonHandle:
        """Start a daemon on ``toml``; it is stopped when the test ends."""


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


async def wait_until(condition: Callable[[], bool], poll: float = 0.01) -> None:
    """Poll ``condition`` until it holds (the caller bounds it with ``fail_after``)."""
    while not condition():
        await trio.sleep(poll)


async def until_stalled(pids: Callable[[], Iterable[int]], rounds: int = 5,
                        poll: float = 0.05) -> int:
    """Wait until the processes ``pids()`` names write nothing for ``rounds`` polls in a
    row (blocked on a full pipe, say); what they wrote in all. The caller bounds it."""
    last, still = -1, 0
    while still < rounds:
        await trio.sleep(poll)
        now = sum(bytes_written(pid) for pid in pids())
        still = still + 1 if now == last else 0
        last = now
    return last


async def assert_all_die(pids: list[int]) -> None:
    """SIGKILL is delivered asynchronously: allow the kernel a moment to finish them."""
    with trio.fail_after(2):
        await wait_until(lambda: not any(alive(p) for p in pids))


# --- the pure layers' tests ---------------------------------------------------------------------


def recorded_exit(name: str) -> int | None:
    """A recorded real-CLI run's exit status: ``NAME.rc``, else what ``.time`` or ``.err``
    says."""
    rc = FIXTURES / f"{name}.rc"
    if rc.exists():
        return int(rc.read_text().strip())
    for suffix in (".time", ".err"):
        path = FIXTURES / f"{name}{suffix}"
        if path.exists():
            match = re.search(r"non-zero status (\d+)", path.read_text())
            if match:
                return int(match.group(1))
    return None


def feed_all(framer: Framer, chunks: Iterable[bytes]) -> list[Frame]:
    """Every frame ``framer`` makes of ``chunks`` fed in turn."""
    frames: list[Frame] = []
    for chunk in chunks:
        frames.extend(framer.feed(chunk))
    return frames


# --- agents without a daemon ----------------------------------------------------------------------


class AgentHost:
    """Agents served by a real :class:`~llmd.drivers.warmagent.AgentPool` in the caller's
    nursery, one per (dialect, argv, environment, options); :meth:`close` ends them all.

    Args:
        nursery: Where the pool runs.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.pool = AgentPool()
        self._scope = trio.CancelScope()

    async def get(self, dialect: Dialect, argv: Sequence[str], env: Mapping[str, str],
                  **options: Any) -> Agent:
        """The live, initialized agent of this key, started when there is none.

        Raises:
            WarmUnavailable: It could not be started or did not initialize.
        """
        if not self.pool.running:
            await self.nursery.start(self._serve)
        key = AgentKey("test", dialect, tuple(argv), tuple(sorted(env.items())))
        agent = await self.pool.get(key, AgentOptions(**options))
        assert agent is not None, "the pool has room for every agent"
        return agent

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
        with self._scope:
            await self.pool.run(task_status=task_status)

    def close(self) -> None:
        """Kill every agent and stop the pool."""
        self._scope.cancel()


# --- another user's listener ------------------------------------------------------------------

FOREIGN_UID = 65534
AS_FOREIGN = ["setpriv", f"--reuid={FOREIGN_UID}", f"--regid={FOREIGN_UID}", "--clear-groups"]
# Acting as another uid (a listener of someone else, or a client that is not root) needs both.
ACTS_AS_ANOTHER_UID = os.getuid() == 0 and shutil.which("setpriv") is not None
ROOT_AND_SETPRIV = pytest.mark.skipif(not ACTS_AS_ANOTHER_UID,
                                      reason="needs root and setpriv to act as another uid")


def foreign_place(parent: Path) -> Path:
    """A directory of :data:`FOREIGN_UID` in ``parent`` (opened to it), for its listener."""
    os.chmod(parent, 0o755)
    place = parent / "foreign"
    place.mkdir(mode=0o755)
    os.chown(place, FOREIGN_UID, FOREIGN_UID)
    return place


def client_env(**extra: str) -> dict[str, str]:
    """This process's environment without what names a socket (a client finds its own),
    with ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMD_SOCKET", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET")}
    env.update(extra)
    return env

# A listener that impersonates llmd: it answers every line with a forged run result and
# reports on stdout what it was sent.
FORGER = r"""
import json, os, socket, sys
path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(2)
    got = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
            if b"\n" in chunk:
                forged = {"jsonrpc": "2.0", "id": 1, "result": {"text": "forged", "job": "x"}}
                conn.sendall(json.dumps(forged).encode() + b"\n")
    except OSError:
        pass
    print(json.dumps({"got": got.decode(errors="replace")}), flush=True)
    conn.close()
"""


def open_listener(path: Path) -> stdsocket.socket:
    """A listening Unix socket of this process's uid at ``path`` that any user may connect to
    (what a daemon started with sudo would leave)."""
    listener = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o777)
    listener.listen(8)
    return listener


@dataclass
class Forger:
    """A :data:`FORGER` running as :data:`FOREIGN_UID`; ``told`` is what it has printed."""

    proc: trio.Process
    told: bytes = b""

    @classmethod
    async def start(cls, path: Path) -> Forger:
        """Start one listening on ``path`` (its directory must be open to the other uid)."""
        proc = await trio.lowlevel.open_process(
            [*AS_FOREIGN, sys.executable, "-S", "-c", FORGER, str(path)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        forger = cls(proc)
        assert proc.stdout is not None
        try:
            while b"ready\n" not in forger.told:
                chunk = await proc.stdout.receive_some(100)
                assert chunk, "the forger ended before it listened"
                forger.told += chunk
        except BaseException:
            await forger.stop()
            raise
        return forger

    async def stop(self) -> bytes:
        """Kill it and return everything it printed: ``ready``, then a line per connection."""
        self.proc.kill()
        await self.proc.wait()
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.receive_some(65536):
            self.told += chunk
        await self.proc.stdout.aclose()
        return self.told
