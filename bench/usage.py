"""Usage ledger figures: how fast ``usage.summary`` answers over a year of records.

    python bench/usage.py [--jobs 100000]

- 100,000 finished jobs spread over 365 days (4 blueprints, 3 models, 10 project
  directories), written straight into the store's file, then served by a real daemon.
- ``usage.summary`` over the whole year, p50 of 20 calls through the socket, for the
  total and grouped by blueprint, model, day and cwd  [<= 50 ms each]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmd.jobs.records import RunResult
from llmd.jobs.storedb import Database, Identity, JobRow
from llmd.timestamps import rfc3339
from tests.harness import Client, Launched, launch

REGISTRY = """
[store]
path = "{path}"
max_jobs = 1000000
max_age_days = 400
[blueprints.echo]
command = ["/bin/echo", "{{prompt}}"]
"""
BLUEPRINTS = ("claude", "codex", "gemini", "llm")
MODELS = (None, "opus", "gpt-5")


def fill(path: Path, jobs: int) -> None:
    """``jobs`` finished records over the last year, written in batches of 1,000."""
    db = Database(path, 1 << 20, 10.0, Identity(os.getpid(), None, None))
    db.open()
    start = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=365)
    step = 365 * 86400 / jobs
    try:
        batch: list[JobRow] = []
        for n in range(jobs):
            at = rfc3339(start + _dt.timedelta(seconds=n * step))
            blueprint = BLUEPRINTS[n % len(BLUEPRINTS)]
            job = f"{n:017x}"
            result = RunResult(job=job, blueprint=blueprint, state="succeeded", text="a",
                               output="a", stderr="", exit_code=0, attempts=1,
                               duration_s=5.0, usage={"input_tokens": 1000 + n % 97,
                                                      "output_tokens": 200 + n % 13},
                               cost_usd=0.01 if blueprint == "claude" else None)
            batch.append(JobRow(job=job, blueprint=blueprint, state="succeeded",
                                created_at=at, started_at=at, finished_at=at, attempts=1,
                                request={"blueprint": blueprint, "prompt": "p",
                                         "cwd": f"/home/u/project{n % 10}"},
                                result=result, model=MODELS[n % len(MODELS)]))
            if len(batch) == 1000:
                db.write(batch)
                batch = []
        if batch:
            db.write(batch)
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    store = workdir / "jobs.db"
    daemon: Launched | None = None
    figures: dict[str, float] = {}
    try:
        t = time.perf_counter()
        fill(store, args.jobs)
        filled = time.perf_counter() - t
        daemon = launch(workdir, REGISTRY.format(path=store), base_env={"PATH": "/usr/bin:/bin"})
        client = Client(str(daemon.socket))
        for by in ([], ["blueprint"], ["model"], ["day"], ["cwd"]):
            times = []
            for _ in range(20):
                t = time.perf_counter()
                result = client.call("usage.summary", {"by": by})
                times.append(time.perf_counter() - t)
            assert result["total"]["runs"] == args.jobs, result["total"]
            figures["+".join(by) or "total"] = statistics.median(times)
    finally:
        if daemon is not None:
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.stop(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.jobs} jobs over a year written in {filled:.1f} s")
    for name, p50 in figures.items():
        print(f"usage.summary by {name}: p50 {p50 * 1e3:.1f} ms [<= 50 ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
