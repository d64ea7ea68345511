"""Streaming figures, as ratios against baselines measured in the same run.

    python bench/streaming.py

- throughput: a CLI writes 128 MiB of 64 KiB lines; a client receives it as ``llm.output``
  notifications, against Python reading the same program from a raw pipe  [>= 50%],
  with the daemon's RSS growth  [<= 64 MB]
- first-output latency: the child writes a line (with its CLOCK_MONOTONIC time), the
  client receives it  [p50 <= 2 ms]
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

TOTAL = 128 * 1024 * 1024

WRITER = textwrap.dedent("""
    import os, sys
    line = b"x" * 65535 + b"\\n"
    left = int(sys.argv[1])
    while left > 0:
        left -= os.write(1, line[:left])
""")

TICKER = textwrap.dedent("""
    import sys, time
    for _ in range(int(sys.argv[1])):
        sys.stdout.write(f"{time.monotonic_ns()}\\n")
        sys.stdout.flush()
        time.sleep(0.01)
""")


def registry(workdir: Path) -> str:
    writer = workdir / "writer.py"
    writer.write_text(WRITER)
    ticker = workdir / "ticker.py"
    ticker.write_text(TICKER)
    return f"""
[blueprints.flood]
command = ["{sys.executable}", "-S", "{writer}", "{TOTAL}"]
prompt = "stdin"
timeout = 600
[blueprints.tick]
command = ["{sys.executable}", "-S", "{ticker}", "200"]
prompt = "stdin"
"""


class StreamClient:
    """Reads NDJSON with msgspec: the client's own cost stays small and fair."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = bytearray()
        self.decoder = msgspec.json.Decoder()

    def run(self, blueprint: str, on_output: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                   "params": {"blueprint": blueprint, "prompt": "", "stream": True}}
        self.sock.sendall(msgspec.json.encode(request) + b"\n")
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end < 0:
                del self.buf[:start]
                start = 0
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
                continue
            message = self.decoder.decode(memoryview(self.buf)[start:end])
            start = end + 1
            if message.get("method") == "llm.output":
                on_output(message["params"])
            elif message.get("id") == 1:
                return message


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raw_pipe(workdir: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-S", str(workdir / "writer.py"), str(TOTAL)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = 0
    while chunk := os.read(fd, 1 << 20):
        got += len(chunk)
    proc.wait()
    assert got == TOTAL
    return TOTAL / (time.perf_counter() - t)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    config = workdir / "llmd.toml"
    config.write_text(registry(workdir))
    sock = str(workdir / "llmd.sock")
    # BENCH_PY_ARGS="-m cProfile -o FILE" profiles the daemon.
    daemon = subprocess.Popen([sys.executable, *os.environ.get("BENCH_PY_ARGS", "").split(),
                               "-m", "llmd", "serve", "--socket", sock,
                               "--config", str(config), "--log-level", "warning"])
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        baseline = statistics.median(raw_pipe(workdir) for _ in range(3))
        rss0 = rss_kb(daemon.pid)
        peak = [rss0]
        received = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kb(daemon.pid))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()

        def count(params: dict[str, Any]) -> None:
            received[0] += len(params["text"])

        t = time.perf_counter()
        reply = StreamClient(sock).run("flood", count)
        elapsed = time.perf_counter() - t
        stop.set()
        watcher.join()
        assert "result" in reply, reply
        assert received[0] == TOTAL, received[0]
        through = TOTAL / elapsed
        latencies: list[float] = []

        def latency(params: dict[str, Any]) -> None:
            now = time.monotonic_ns()
            for line in params["text"].splitlines():
                latencies.append((now - int(line)) / 1e6)

        StreamClient(sock).run("tick", latency)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"streaming 128 MiB in 64 KiB lines: {through / 1e6:.0f} MB/s through llmd vs "
          f"{baseline / 1e6:.0f} MB/s raw pipe: {through / baseline:.0%} [>= 50%]; daemon RSS "
          f"{rss0 / 1024:.1f} -> peak {peak[0] / 1024:.1f} MB, growth "
          f"{(peak[0] - rss0) / 1024:.1f} MB [<= 64 MB]")
    print(f"first-output latency over {len(latencies)} lines: p50 "
          f"{statistics.median(latencies):.3f} ms, p90 "
          f"{sorted(latencies)[int(len(latencies) * 0.9)]:.3f} ms [p50 <= 2 ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
