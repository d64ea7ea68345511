"""``jobs.watch``'s latency: from a job's state change in llmd to its ``jobs.event`` read
by a watcher on another connection.

    python bench/watch.py [--quick]

Figure (target in brackets): p50 and p90 over the state changes of N runs of a
``/bin/echo`` blueprint (queued, running, succeeded each), as the watcher's wall clock at
reading minus the event's ``at`` (llmd's wall clock at the change, to the millisecond; the
same clock, one machine)   [<= 5 ms p50]. Also: the same with 20 watchers at once (each
event goes to all of them), and the daemon's RSS growth over the runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.harness import Client, launch, rss_kb  # noqa: E402

REGISTRY = """
[blueprints.echo]
command = ["/bin/echo", "{prompt}"]
"""


def latencies(sock: str, runs: int, watchers: int) -> list[float]:
    """Seconds from each change to its event, as the first watcher read them."""
    clients = [Client(sock) for _ in range(watchers)]
    for client in clients:
        client.call("jobs.watch", {})
    runner = Client(sock)
    seen: list[float] = []
    expected = runs * 3

    def read(client: Client, keep: bool) -> None:
        got = 0
        while got < expected:
            message = client.recv()
            if message.get("method") != "jobs.event":
                continue
            got += 1
            if keep:
                at = datetime.fromisoformat(message["params"]["at"].replace("Z", "+00:00"))
                seen.append(time.time() - at.timestamp())

    threads = [threading.Thread(target=read, args=(client, n == 0))
               for n, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    for _ in range(runs):
        runner.call("llm.run", {"blueprint": "echo", "prompt": "hello"})
    for thread in threads:
        thread.join()
    for client in [*clients, runner]:
        client.close()
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args()
    runs = 100 if args.quick else 500
    workdir = Path(tempfile.mkdtemp(prefix="llmd-watch-bench-"))
    daemon = launch(workdir, REGISTRY)
    try:
        sock = str(daemon.socket)
        latencies(sock, 20, 1)  # warm up
        before = rss_kb(daemon.proc.pid)
        one = latencies(sock, runs, 1)
        many = latencies(sock, runs, 20)
        grown = rss_kb(daemon.proc.pid) - before
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for label, values in (("1 watcher", one), ("20 watchers", many)):
        ordered = sorted(values)
        print(f"jobs.event latency, {label}, {len(values)} state changes: p50 "
              f"{statistics.median(values) * 1e3:.2f} ms, p90 "
              f"{ordered[int(0.9 * len(ordered))] * 1e3:.2f} ms [target: <= 5 ms p50] "
              "(at is in milliseconds)")
    print(f"daemon RSS growth over {2 * runs} runs watched: {grown / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
