"""``jobs.list`` with many finished jobs in the daemon's memory.

    python bench/jobs_list.py [--jobs 10000] [--limit 20] [--calls 200]

An llmd served in this process (store switched off, so every job listed comes from
memory), its memory filled with N finished jobs of a ``/bin/echo`` blueprint, then
``jobs.list {limit}`` called over its socket; figure: p50 of those calls  [<= 20 ms].
The daemon keeps at most 1,000 finished jobs by default; the bench fills memory directly
to show how the answer scales with what is held.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmd.config import parse_registry
from llmd.daemon import Daemon
from llmd.jobs.job import Job, new_job_id
from llmd.jobs.records import RunParams, RunResult
from tests.harness import RawClient

REGISTRY = """
[store]
enabled = false
[blueprints.echo]
command = ["/bin/echo", "{prompt}"]
"""


def finished(n: int) -> Job:
    """A finished job as a run of the echo blueprint leaves it."""
    job = Job(new_job_id(), RunParams(blueprint="echo", prompt=f"prompt {n}"), math.inf)
    text = f"answer {n}\n"
    job.result = RunResult(job=job.id, blueprint="echo", state="succeeded", text=text,
                           output=text, stderr="", exit_code=0, attempts=1, duration_s=0.002,
                           usage={"input_tokens": 10, "output_tokens": 3})
    job.state, job.attempts = "succeeded", 1
    job.started_at = job.finished_at = job.created_at
    job.in_queue = False
    return job


async def measure(workdir: Path, jobs: int, limit: int, calls: int) -> list[float]:
    os.environ["XDG_STATE_HOME"] = str(workdir / "state")
    os.environ.pop("NOTIFY_SOCKET", None)
    daemon = Daemon(parse_registry(REGISTRY, "bench"), workdir / "llmd.sock")
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        for n in range(jobs):
            job = finished(n)
            daemon.manager.jobs[job.id] = job
        client = await RawClient.connect(daemon.listener.path)
        try:
            for n in range(calls):
                t = time.perf_counter()
                reply = await client.call("jobs.list", {"limit": limit}, id=n)
                times.append(time.perf_counter() - t)
                assert len(reply["result"]["jobs"]) == min(limit, jobs), reply
        finally:
            await client.aclose()
            daemon.request_stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    try:
        times = trio.run(measure, workdir, args.jobs, args.limit, args.calls)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"jobs.list limit {args.limit} with {args.jobs} finished jobs in memory: "
          f"p50 {statistics.median(times) * 1e3:.3f} ms, "
          f"p90 {statistics.quantiles(times, n=10)[-1] * 1e3:.3f} ms [<= 20 ms p50]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
