"""llmd's speed figures, each printed as a ratio against a baseline measured in the same run.

    python bench/run.py [--quick]

Figures (targets in brackets):
- daemon overhead: p50 of 300 sequential ``llm.run`` calls of ``/bin/echo`` on one
  connection, minus p50 of spawning the same argv directly   [<= 1 ms added]
- client cold start: ``llmc run`` end to end against ``python -c pass``   [<= 4x]; and
  ``llmc top --once`` (a snapshot: four calls), which must not make ``run`` slower
- 200 concurrent one-second jobs: wall time, daemon RSS, fds after   [<= 1.5 s, <= 80 MB,
  fds back to baseline]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness import Client, Launched, fd_count, launch, rss_kb

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


def p50(values: list[float]) -> float:
    return statistics.median(values)


def start_daemon(workdir: Path, store: bool = True) -> Launched:
    return launch(workdir, REGISTRY.format(store=str(store).lower()),
                  sock=workdir / f"llmd-{store}.sock")


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
    bare, cold, top = [], [], []
    subprocess.run([llmc, "run", "echo", "warm-up"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([llmc, "top", "--once"], env=env, check=True, stdout=subprocess.DEVNULL)
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([llmc, "run", "echo", "hello"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([llmc, "top", "--once"], env=env, check=True, stdout=subprocess.DEVNULL)
        top.append(time.perf_counter() - t)
    return {"python_pass_p50_ms": p50(bare) * 1e3, "llmc_run_p50_ms": p50(cold) * 1e3,
            "ratio": p50(cold) / p50(bare), "llmc_top_once_p50_ms": p50(top) * 1e3,
            "run_imports_top": float(_run_imports_top(env))}


def _run_imports_top(env: dict[str, str]) -> bool:
    """Whether ``llmc run`` loads top's modules (curses, llmc.top): it must not."""
    code = ("import sys; from llmc import cli; cli.main(['run', 'echo', 'x']); "
            "print('\\nloaded:', *sorted(m for m in sys.modules if m in "
            "('curses', '_curses', 'llmc.top', 'llmc.completion')))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True)
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("loaded:")]
    return line != "loaded:"


def bench_concurrent(sock: str, pid: int, jobs: int) -> dict[str, float]:
    client = Client(sock)
    client.call("daemon.info", None)
    fds_before = fd_count(pid)
    rss_before = rss_kb(pid) / 1024
    t = time.perf_counter()
    for _ in range(jobs):
        client.send("llm.run", {"blueprint": "sleep1", "prompt": ""})
    peak = 0.0
    replies = []
    for _ in range(jobs):
        replies.append(client.recv())
        peak = max(peak, rss_kb(pid) / 1024)
    wall = time.perf_counter() - t
    failed = [r for r in replies if "error" in r]
    # The jobs' pipes and pidfds are closed just after their answers: wait for that.
    deadline = time.monotonic() + 5
    while fd_count(pid) > fds_before and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"jobs": jobs, "failed": len(failed), "wall_s": wall, "rss_before_mb": rss_before,
            "rss_peak_mb": max(peak, rss_kb(pid) / 1024), "fds_before": fds_before,
            "fds_after": fd_count(pid)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    n = 60 if args.quick else 300
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    daemon = start_daemon(workdir, store=False)
    try:
        core = bench_overhead(str(daemon.socket), n)
    finally:
        daemon.stop()
    daemon = start_daemon(workdir)
    try:
        sock = str(daemon.socket)
        over = bench_overhead(sock, n)
        cli = bench_client(sock, 10 if args.quick else 30)
        conc = bench_concurrent(sock, daemon.pid, 200)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"core overhead (job store off), /bin/echo, p50 of {n}: direct "
          f"{core['direct_p50_ms']:.3f} ms, via llmd {core['daemon_p50_ms']:.3f} ms, added "
          f"{core['added_ms']:.3f} ms [target: <= 1 ms added]")
    print(f"with the job store (default), p50 of {n}: direct {over['direct_p50_ms']:.3f} ms, "
          f"via llmd {over['daemon_p50_ms']:.3f} ms, added {over['added_ms']:.3f} ms "
          f"(ratio {over['daemon_p50_ms'] / over['direct_p50_ms']:.2f}x) [target: <= 1 ms added]")
    print(f"llmc run cold: {cli['llmc_run_p50_ms']:.1f} ms vs python -c pass "
          f"{cli['python_pass_p50_ms']:.1f} ms: {cli['ratio']:.2f}x [target: <= 4x]; "
          f"it loads top's modules: {'yes' if cli['run_imports_top'] else 'no'} [no]")
    print(f"llmc top --once: {cli['llmc_top_once_p50_ms']:.1f} ms (p50)")
    print(f"200 concurrent 1 s jobs: {conc['wall_s']:.3f} s wall ({conc['wall_s']:.2f}x the "
          f"1 s job) [<= 1.5 s], failed {conc['failed']}, RSS {conc['rss_before_mb']:.1f} -> "
          f"peak {conc['rss_peak_mb']:.1f} MB [<= 80 MB], fds {conc['fds_before']} -> "
          f"{conc['fds_after']} [back to baseline]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
