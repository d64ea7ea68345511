"""Job store figures: what keeping records costs a run, and how fast jobs.list answers.

    python bench/store.py [--jobs 10000]

- ``llm.run`` of ``/bin/echo``, p50 over 500 calls alternating between the two daemons,
  with 10,000 finished jobs in the store,
  against the same daemon configuration with the store switched off  [<= 0.5 ms more]
- ``jobs.list`` (limit 50) p50 with those 10,000 jobs  [<= 20 ms]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness import Client, Launched, launch

REGISTRY = """
[store]
enabled = {enabled}
[blueprints.echo]
command = ["/bin/echo", "{{prompt}}"]
"""


def start(workdir: Path, enabled: bool) -> Launched:
    config = workdir / f"llmd-{enabled}.toml"
    config.write_text(REGISTRY.format(enabled=str(enabled).lower()))
    return launch(workdir, config=config, sock=workdir / f"s-{enabled}.sock",
                  base_env={"PATH": "/usr/bin:/bin"})


def p50_runs(socks: list[str], n: int) -> list[float]:
    """p50 of ``llm.run`` on each daemon, calls alternating between them.

    Alternating puts both under the same machine load at the same moments, so the
    difference between them is the store's cost, not the noise of two periods.
    """
    clients = [Client(sock) for sock in socks]
    times: list[list[float]] = [[] for _ in socks]
    for _ in range(n):
        for client, kept in zip(clients, times, strict=True):
            t = time.perf_counter()
            client.call("llm.run", {"blueprint": "echo", "prompt": "hello"})
            kept.append(time.perf_counter() - t)
    return [statistics.median(kept) for kept in times]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    daemons: list[Launched] = []
    try:
        daemons.append(start(workdir, True))
        daemons.append(start(workdir, False))
        sock_on, sock_off = (str(daemon.socket) for daemon in daemons)
        client = Client(sock_on)
        for i in range(0, args.jobs, 100):  # filled through the daemon, 100 at a time
            for _ in range(100):
                client.send("llm.run", {"blueprint": "echo", "prompt": str(i)})
            for _ in range(100):
                client.recv()
        on, off = p50_runs([sock_on, sock_off], 500)
        lists = []
        for _ in range(100):
            t = time.perf_counter()
            jobs = client.call("jobs.list", {"limit": 50})["jobs"]
            lists.append(time.perf_counter() - t)
        assert len(jobs) == 50
        stored = client.call("daemon.info", None)["store"]
    finally:
        for daemon in daemons:
            daemon.proc.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.stop(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"llm.run p50 with {args.jobs + 500} jobs stored: {on * 1e3:.3f} ms; store off: "
          f"{off * 1e3:.3f} ms; the store costs {(on - off) * 1e3:.3f} ms [<= 0.5 ms] "
          f"(store: {stored['path'].rsplit('/', 1)[-1]}, available {stored['available']})")
    print(f"jobs.list limit 50: p50 {statistics.median(lists) * 1e3:.3f} ms [<= 20 ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
