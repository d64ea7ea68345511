"""Helpers of the reliability suite: the figures file, a shared daemon, abuse tools.

The /proc readings and the waits are :mod:`tests.harness`'s (also importable from here).

The figures: each test adds counts with :func:`tally`; after each test the suite's
conftest appends them, as one JSON line ``{"test": NODEID, COUNT: N, ...}``, to the file
named by ``$LLMD_RELIABILITY_REPORT`` (nothing is written when it is unset).
``bench/reliability.py`` adds the lines up into the README's "Reliability" section.

Counts (all optional, summed over the suite unless said otherwise):
- ``inputs``: malformed, fuzzed or hostile inputs tried (Hypothesis examples included);
- ``connections``: connections opened to a daemon; ``held``: most held open at once (max);
- ``requests``: requests answered; ``faults``: faults injected that a daemon survived;
- ``records_lost``: requests never answered, answered twice or answered wrongly (must be 0);
- ``rss_before_kb`` / ``rss_after_kb``: the shared daemon's RSS around the whole suite;
- ``peak_rss_kb``: the largest RSS (VmHWM) a daemon reached in a test (max);
- ``busy_latency_ms``: the slowest -32006 answer under load (max).
"""

from __future__ import annotations

import json
import os
import socket as stdsocket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tests.harness import (
    RawClient,
    alive,
    children,
    cpu_seconds,
    fd_count,
    install_fakecli,
    kill_quietly,
    launch,
    peak_rss_kb,
    registry_toml,
    rss_kb,
    wait_until,
)

__all__ = [
    "children",
    "cpu_seconds",
    "fd_count",
    "kill_quietly",
    "peak_rss_kb",
    "rss_kb",
    "wait_until",
]

REPORT_ENV = "LLMD_RELIABILITY_REPORT"
MAX_COUNTS = frozenset({"held", "peak_rss_kb", "busy_latency_ms"})

_tallies: dict[str, float] = {}


def tally(name: str, amount: float = 1) -> None:
    """Add to one of the current test's counts (for ``MAX_COUNTS``: keep the largest)."""
    if name in MAX_COUNTS:
        _tallies[name] = max(_tallies.get(name, 0), amount)
    else:
        _tallies[name] = _tallies.get(name, 0) + amount


def flush_tallies(test: str) -> None:
    """Append the current test's counts to the report file, and start afresh."""
    counts = dict(_tallies)
    _tallies.clear()
    path = os.environ.get(REPORT_ENV)
    if not path or not counts:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"test": test, **counts}, sort_keys=True) + "\n")


# --- talking to a daemon ------------------------------------------------------------------


def request(method: str, params: Any = None, id: Any = 1) -> bytes:
    """One NDJSON request line."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


async def open_stream(path: Path) -> trio.SocketStream:
    """Connect with a blocking ``connect`` (in a thread), which waits while the daemon's
    listen backlog is full; trio's non-blocking one then hands back an unconnected socket
    (ENOTCONN on the first send), which would make a connection storm fail on our side.
    """

    def connect() -> stdsocket.socket:
        sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except BaseException:
            sock.close()
            raise
        return sock

    sock = await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def assert_serves(socket: Path, pid: int, prompt: str = "still serving") -> None:
    """The daemon ``pid`` is alive and a new connection gets a normal run done."""
    assert alive(pid), f"llmd (pid {pid}) is gone"
    client = await RawClient.connect(socket)
    try:
        reply = await client.call("llm.run", {"blueprint": "echo", "prompt": prompt}, id="ok")
        assert reply.get("result", {}).get("text") == prompt, reply
        tally("connections")
        tally("requests")
    finally:
        await client.aclose()


async def read_lsp(stream: trio.SocketStream, buf: bytearray) -> Any:
    """The next LSP-framed message from ``stream`` (``buf`` carries what was read ahead)."""
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            length = int(bytes(buf[:head_end]).split(b":")[1])
            end = head_end + 4 + length
            if len(buf) >= end:
                body = bytes(buf[head_end + 4:end])
                del buf[:end]
                return json.loads(body)
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed"
        buf += chunk


def lsp(payload: bytes) -> bytes:
    """``payload`` in LSP framing."""
    return b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)


# --- the soak budget ----------------------------------------------------------------------


@dataclass
class Soak:
    """How long a test's abuse or load loop goes on.

    Attributes:
        seconds: This test's share of ``--soak MINUTES`` (0: one round, the CI mode).
    """

    seconds: float
    trace: Callable[[int], None] | None = None

    def rounds(self) -> Iterator[int]:
        """Round numbers: one round, or as many as the test's share of the soak allows."""
        deadline = time.monotonic() + self.seconds
        n = 0
        while True:
            if self.trace is not None:
                self.trace(n)
            yield n
            n += 1
            if time.monotonic() >= deadline:
                return

    def limit(self, one_round: float) -> float:
        """A ``fail_after`` bound for the whole loop, given the bound of one round."""
        return one_round + self.seconds + (one_round if self.seconds else 0)


# --- the shared daemon --------------------------------------------------------------------


SHARED_LIMITS = {"max_jobs": 6, "max_queue": 10, "max_message_bytes": 1 << 20,
                 "stop_grace": 5}


def shared_registry(bindir: Path) -> str:
    """The registry of the suite's long-lived daemon: low limits, fake CLIs."""
    return registry_toml(bindir, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin", "max_concurrency": 4},
        "argecho": {"command": ["@fakecli", "argv", "--", "{prompt}"], "max_concurrency": 4},
        # Keeps little of what it writes: the point is back-pressure, not the cap.
        "flood": {"command": ["@fakecli", "flood", "400000000"], "prompt": "stdin",
                  "max_output_bytes": 65536},
        "lines": {"command": ["@fakecli", "lines", "5"], "prompt": "stdin"},
    }, daemon=SHARED_LIMITS)


class SharedDaemon:
    """A real ``llmd serve`` started once for the whole suite (synchronously).

    Args:
        workdir: A short private directory (socket paths are limited to 108 bytes).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bindir = workdir / "bin"
        install_fakecli(self.bindir)
        self.log_path = workdir / "daemon.log"
        self.daemon = launch(workdir, shared_registry(self.bindir),
                             sock=workdir / "run" / "llmd.sock", log_level="info",
                             env={"PYTHONDONTWRITEBYTECODE": "1"}, log_path=self.log_path)
        self.config = self.daemon.config
        self.socket = self.daemon.socket
        self.env = self.daemon.env
        self.proc = self.daemon.proc
        self.pid = self.proc.pid
        self.rss_before_kb = 0
        self.fds_before = 0

    def log(self) -> str:
        """What the daemon logged so far."""
        return self.daemon.log()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it hangs; its exit status."""
        return self.daemon.stop()


async def gather(*fns: Callable[[], Awaitable[None]]) -> None:
    """Run the coroutine functions concurrently and wait for all of them."""
    async with trio.open_nursery() as nursery:
        for fn in fns:
            nursery.start_soon(fn)


async def warm_up(daemon: SharedDaemon) -> None:
    """Exercise every path once, so that first-use allocations do not count as growth."""

    async def client(n: int) -> None:
        c = await RawClient.connect(daemon.socket)
        try:
            for i in range(5):
                blueprint = "echo" if i % 2 else "argecho"
                reply = await c.call("llm.run", {"blueprint": blueprint, "prompt": f"w{n}-{i}",
                                                 "stream": i == 3}, id=i)
                assert "result" in reply, reply
            for raw in (b"\xff\n", b"[" * 5000 + b"\n", b"[]\n", b"42\n",
                        request("no.such"), request("llm.run", {"blueprint": 1})):
                await c.send_raw(raw)
                assert "error" in await c.recv()
        finally:
            await c.aclose()

    await gather(*(lambda n=n: client(n) for n in range(8)))
    stream = await trio.open_unix_socket(str(daemon.socket))
    buf = bytearray()
    await stream.send_all(lsp(request("daemon.info").rstrip(b"\n")))
    assert "result" in await read_lsp(stream, buf)
    await stream.aclose()
    # A taste of each ordeal to come, so that the allocator's high-water marks are
    # reached here rather than counted as growth: many connections at once, a long
    # pipeline, a large blob of garbage.
    crowd = [await open_stream(daemon.socket) for _ in range(500)]
    for stream in crowd:
        await stream.aclose()
    stream = await trio.open_unix_socket(str(daemon.socket))
    try:
        garbage = b"x" + bytes(range(256)) * 1024 + b"\n"
        lines = b"".join(request("daemon.info", id=i) for i in range(5000)) + garbage
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, lines)
            seen = 0
            while seen < 5002:
                chunk = await stream.receive_some(1 << 16)
                assert chunk, "connection closed"
                seen += chunk.count(b"\n")
    finally:
        await stream.aclose()


# RSS the shared daemon may hold above its warmed-up size while a test is still going on
# (the 20 MB bound is over the whole suite, checked when the suite ends).
INTERIM_GROWTH_KB = 64 * 1024


async def assert_healthy(daemon: SharedDaemon) -> None:
    """After an ordeal: alive, serving, no child or descriptor left over, RSS bounded."""
    await assert_serves(daemon.socket, daemon.pid)
    # Closed connections and cancelled runs are cleaned up asynchronously.
    await wait_until(lambda: not children(daemon.pid))
    await wait_until(lambda: fd_count(daemon.pid) <= daemon.fds_before + 2)
    growth = rss_kb(daemon.pid) - daemon.rss_before_kb
    if os.environ.get("LLMD_RSS_TRACE"):
        print(f"\nRSS growth so far: {growth} KiB", file=sys.stderr)
    assert growth < INTERIM_GROWTH_KB, f"llmd holds {growth} KiB more than when warmed up"
    client = await RawClient.connect(daemon.socket)
    try:
        info = (await client.call("daemon.info"))["result"]
    finally:
        await client.aclose()
    assert info["jobs"]["running"] == 0 and info["jobs"]["queued"] == 0, info
