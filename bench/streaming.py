"""Streaming figures, as ratios against baselines measured in the same run.

    python bench/streaming.py

- throughput: a CLI writes 128 MiB of 64 KiB lines; a client receives it as ``llm.output``
  notifications (timed to the last of them, before the final reply), against Python
  reading the same program from a raw pipe  [>= 50%], with the daemon's RSS growth beyond
  what it must hold: a stream stops where the kept output does, so the blueprint keeps the
  whole 128 MiB, and the reply encodes it once more  [<= 64 MB besides]
- first-output latency: the child writes a line (with its CLOCK_MONOTONIC time), the
  client receives it  [p50 <= 2 ms]
"""

from __future__ import annotations

import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness import launch, peak_rss_kb, reset_peak_rss, rss_kb

TOTAL = 128 * 1024 * 1024
ROUNDS = 7
BUFFER = 512 << 20  # the final reply holds the text and the output: 2 x TOTAL

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
# The whole stream is kept and streamed: a stream stops where the kept output does.
max_output_bytes = {TOTAL}
[blueprints.tick]
command = ["{sys.executable}", "-S", "{ticker}", "200"]
prompt = "stdin"
"""


class StreamClient:
    """Reads NDJSON with msgspec in place: the client's own cost stays small.

    Bytes are received straight into one anonymous mapping (its pages are touched only as
    messages fill them, so a 32 MiB final reply costs no copying or zero-filling), a
    message is decoded from a view of it, and no byte is searched for a newline twice.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = mmap.mmap(-1, BUFFER)
        self.decoder = msgspec.json.Decoder()

    def run(self, blueprint: str, on_output: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                   "params": {"blueprint": blueprint, "prompt": "", "stream": True}}
        self.sock.sendall(msgspec.json.encode(request) + b"\n")
        buf = self.buf
        start = scan = end = 0
        with memoryview(buf) as view:
            while True:
                nl = buf.find(b"\n", scan, end)
                if nl < 0:
                    scan = end
                    if end == BUFFER:
                        if not start:
                            raise ValueError(f"a message over {BUFFER} bytes")
                        buf.move(0, start, end - start)  # the partial message to the front
                        end -= start
                        scan -= start
                        start = 0
                    got = self.sock.recv_into(view[end:])
                    if not got:
                        raise ConnectionError("closed")
                    end += got
                    continue
                message = self.decoder.decode(view[start:nl])
                start = scan = nl + 1
                if start == end:
                    start = scan = end = 0
                if message.get("method") == "llm.output":
                    on_output(message["params"])
                elif message.get("id") == 1:
                    return message


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
    # BENCH_PY_ARGS="-m cProfile -o FILE" profiles the daemon.
    daemon = launch(workdir, registry(workdir),
                    python_args=os.environ.get("BENCH_PY_ARGS", "").split())
    sock = str(daemon.socket)
    try:
        # Rounds alternate the raw pipe and llmd, so both see the same machine load.
        ratios: list[tuple[float, float, float]] = []
        growth: list[tuple[int, int]] = []  # (RSS before a run, its peak)
        for _ in range(ROUNDS):
            baseline = raw_pipe(workdir)
            received = [0]
            last = [0.0]

            def count(params: dict[str, Any], received: list[int] = received,
                      last: list[float] = last) -> None:
                received[0] += len(params["text"])
                last[0] = time.perf_counter()

            before = rss_kb(daemon.pid)
            reset_peak_rss(daemon.pid)
            t = time.perf_counter()
            reply = StreamClient(sock).run("flood", count)
            elapsed = last[0] - t
            growth.append((before, peak_rss_kb(daemon.pid)))
            assert "result" in reply, reply
            assert received[0] == TOTAL, received[0]
            ratios.append((TOTAL / elapsed / baseline, TOTAL / elapsed, baseline))
        # Each side's median, so one slow moment of either does not decide the ratio.
        through = statistics.median(r[1] for r in ratios)
        baseline = statistics.median(r[2] for r in ratios)
        ratio = through / baseline
        rss0, peak = max(growth, key=lambda g: g[1] - g[0])
        latencies: list[float] = []

        def latency(params: dict[str, Any]) -> None:
            now = time.monotonic_ns()
            for line in params["text"].splitlines():
                latencies.append((now - int(line)) / 1e6)

        StreamClient(sock).run("tick", latency)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"streaming 128 MiB in 64 KiB lines, medians of {ROUNDS} rounds alternating with a "
          f"raw pipe: {through / 1e6:.0f} MB/s through llmd vs {baseline / 1e6:.0f} MB/s raw pipe: "
          f"{ratio:.0%} [>= 50%] (rounds: {', '.join(f'{r[0]:.0%}' for r in ratios)}); "
          f"daemon RSS during a run, worst round: {rss0 / 1024:.1f} -> peak {peak / 1024:.1f} MB "
          f"(kernel's VmHWM), growth {(peak - rss0) / 1024:.1f} MB, of which "
          f"{2 * TOTAL >> 20} MB the kept output and its encoded reply; besides: "
          f"{(peak - rss0) / 1024 - (2 * TOTAL >> 20):.1f} MB [<= 64 MB]")
    print(f"first-output latency over {len(latencies)} lines: p50 "
          f"{statistics.median(latencies):.3f} ms, p90 "
          f"{sorted(latencies)[int(len(latencies) * 0.9)]:.3f} ms [p50 <= 2 ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
