"""Health figures through the real daemon.

    python bench/health.py [--idle SECONDS]

- ``health.status`` p50 while 50 probes hang in flight  [< 1 ms]
- CPU seconds an idle daemon uses over ``--idle`` seconds (default 60) between probes
  [no measurable CPU: no busy loops]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness import Client, children, cpu_seconds, launch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    lines = []
    for i in range(50):
        lines += [f"[blueprints.b{i}]", 'command = ["/bin/cat"]', 'prompt = "stdin"',
                  f"[blueprints.b{i}.health]", 'command = ["/bin/sleep", "30"]',
                  "interval = 300", "timeout = 25"]
    daemon = launch(workdir, "\n".join(lines) + "\n")
    path = str(daemon.socket)
    try:
        checker = socket.socket(socket.AF_UNIX)
        checker.connect(path)
        # Start 50 probes that hang, and do not wait for them.
        checker.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "health.check"}\n')
        deadline = time.monotonic() + 10
        while (probes := len(children(daemon.pid, "sleep\x0030"))) < 50:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        client = Client(path)
        times = []
        for _ in range(500):
            t = time.perf_counter()
            result = client.call("health.status", None)
            times.append(time.perf_counter() - t)
            assert len(result["blueprints"]) == 50
        checker.close()  # the probes carry on in the daemon; nothing waits on them now
        cpu0 = cpu_seconds(daemon.pid)
        time.sleep(args.idle)
        cpu1 = cpu_seconds(daemon.pid)
    finally:
        daemon.stop(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"health.status with {probes} probes in flight: p50 "
          f"{statistics.median(times) * 1e3:.3f} ms, p90 "
          f"{sorted(times)[450] * 1e3:.3f} ms [p50 < 1 ms]")
    print(f"idle daemon CPU over {args.idle:g} s: {cpu1 - cpu0:.2f} s "
          "[no measurable CPU between probes]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
