"""llmd's speed figures, each printed as a ratio against a baseline measured in the same run.

    python bench/run.py [--quick]

Figures (targets in brackets):
- daemon overhead: p50 of 300 sequential ``llm.run`` calls of ``/bin/echo`` on one
  connection, minus p50 of spawning the same argv directly   [<= 1 ms added]
- client cold start: ``llmc run`` end to end against ``python -c pass``   [<= 4x]
- 200 concurrent one-second jobs: wall time, daemon RSS, fds after   [<= 1.5 s, <= 80 MB,
  fds back to baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REGISTRY = """
[store]
enabled = {store}
[daemon]
max_jobs = 256
max_queue = 1024
[blueprints.echo]
command = ["/bin/echo", "{{prompt}}"]
[blueprints.sleep1]
command = ["/bin/sleep", "1"]
prompt = "stdin"
max_concurrency = 256
"""


class Client:
    """A minimal NDJSON client (the daemon's cost is measured, not the client's)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 0

    def send(self, method: str, params: Any) -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        return self.next_id

    def recv(self) -> Any:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, method: str, params: Any) -> Any:
        self.send(method, params)
        reply = self.recv()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def p50(values: list[float]) -> float:
    return statistics.median(values)


def start_daemon(workdir: Path, store: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / f"llmd-{store}.toml"
    config.write_text(REGISTRY.format(store=str(store).lower()))
    sock = str(workdir / f"llmd-{store}.sock")
    proc = subprocess.Popen([sys.executable, "-m", "llmd", "serve", "--socket", sock,
                             "--config", str(config), "--log-level", "warning"],
                            env={**os.environ, "XDG_STATE_HOME": str(workdir / "state")})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            Client(sock).sock.close()
            return proc, sock
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("llmd did not start")


def bench_overhead(sock: str, n: int) -> dict[str, float]:
    argv = ["/bin/echo", "hello"]
    direct = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        direct.append(time.perf_counter() - t)
    client = Client(sock)
    for _ in range(20):
        client.call("llm.run", {"blueprint": "echo", "prompt": "hello"})
    via = []
    for _ in range(n):
        t = time.perf_counter()
        client.call("llm.run", {"blueprint": "echo", "prompt": "hello"})
        via.append(time.perf_counter() - t)
    return {"direct_p50_ms": p50(direct) * 1e3, "daemon_p50_ms": p50(via) * 1e3,
            "added_ms": (p50(via) - p50(direct)) * 1e3}


def bench_client(sock: str, n: int) -> dict[str, float]:
    # As installed for a user: bytecode cached (a session may turn caching off).
    env = {**os.environ, "LLMD_SOCKET": sock}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    llmc = shutil.which("llmc", path=str(Path(sys.executable).parent)) or "llmc"
    bare, cold = [], []
    subprocess.run([llmc, "run", "echo", "warm-up"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([llmc, "run", "echo", "hello"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        cold.append(time.perf_counter() - t)
    return {"python_pass_p50_ms": p50(bare) * 1e3, "llmc_run_p50_ms": p50(cold) * 1e3,
            "ratio": p50(cold) / p50(bare)}


def bench_concurrent(sock: str, pid: int, jobs: int) -> dict[str, float]:
    client = Client(sock)
    client.call("daemon.info", None)
    fds_before = fd_count(pid)
    rss_before = rss_mb(pid)
    t = time.perf_counter()
    for _ in range(jobs):
        client.send("llm.run", {"blueprint": "sleep1", "prompt": ""})
    peak = 0.0
    replies = []
    for _ in range(jobs):
        replies.append(client.recv())
        peak = max(peak, rss_mb(pid))
    wall = time.perf_counter() - t
    failed = [r for r in replies if "error" in r]
    time.sleep(0.2)
    return {"jobs": jobs, "failed": len(failed), "wall_s": wall, "rss_before_mb": rss_before,
            "rss_peak_mb": max(peak, rss_mb(pid)), "fds_before": fds_before,
            "fds_after": fd_count(pid)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    n = 60 if args.quick else 300
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    proc, sock = start_daemon(workdir, store=False)
    try:
        core = bench_overhead(sock, n)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    proc, sock = start_daemon(workdir)
    try:
        over = bench_overhead(sock, n)
        cli = bench_client(sock, 10 if args.quick else 30)
        conc = bench_concurrent(sock, proc.pid, 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"core overhead (job store off), /bin/echo, p50 of {n}: direct "
          f"{core['direct_p50_ms']:.3f} ms, via llmd {core['daemon_p50_ms']:.3f} ms, added "
          f"{core['added_ms']:.3f} ms [target: <= 1 ms added]")
    print(f"with the job store (default), p50 of {n}: direct {over['direct_p50_ms']:.3f} ms, "
          f"via llmd {over['daemon_p50_ms']:.3f} ms, added {over['added_ms']:.3f} ms "
          f"(ratio {over['daemon_p50_ms'] / over['direct_p50_ms']:.2f}x) [target: <= 1 ms added]")
    print(f"llmc run cold: {cli['llmc_run_p50_ms']:.1f} ms vs python -c pass "
          f"{cli['python_pass_p50_ms']:.1f} ms: {cli['ratio']:.2f}x [target: <= 4x]")
    print(f"200 concurrent 1 s jobs: {conc['wall_s']:.3f} s wall ({conc['wall_s']:.2f}x the "
          f"1 s job) [<= 1.5 s], failed {conc['failed']}, RSS {conc['rss_before_mb']:.1f} -> "
          f"peak {conc['rss_peak_mb']:.1f} MB [<= 80 MB], fds {conc['fds_before']} -> "
          f"{conc['fds_after']} [back to baseline]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
