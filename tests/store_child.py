"""A job-store writer in a process of its own, for the multi-process and SIGKILL tests.

Usage: ``store_child.py DB PREFIX COUNT`` writes COUNT jobs (0: until killed), each as
queued and running (write-behind) then succeeded (awaited), and prints each job id once
its final save has returned, so every printed id must survive a SIGKILL.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import msgspec
import trio

from llmd.jobs.records import RunResult
from llmd.jobs.store import JobRow, JobStore
from llmd.timestamps import utc_now


async def main(path: Path, prefix: str, count: int) -> int:
    store = await JobStore.open(path)
    if not store.available:
        print(store.problem, file=sys.stderr)
        return 2
    numbers = itertools.count() if count == 0 else iter(range(count))
    for number in numbers:
        job = f"{prefix}-{number:06d}"
        created = utc_now()
        queued = JobRow(job=job, blueprint="echo", state="queued", created_at=created,
                        request={"blueprint": "echo", "prompt": f"secret prompt {number}"},
                        history=(("queued", created),))
        store.save_soon(queued)
        running = msgspec.structs.replace(queued, state="running", attempts=1,
                                          started_at=created,
                                          history=(*queued.history, ("running", created)))
        store.save_soon(running)
        text = f"answer {number} " * 20
        result = RunResult(job=job, blueprint="echo", state="succeeded", text=text,
                           output=text, stderr="", exit_code=0, attempts=1, duration_s=0.01)
        done = utc_now()
        final = msgspec.structs.replace(running, state="succeeded", finished_at=done,
                                        exit_code=0, result=result,
                                        history=(*running.history, ("succeeded", done)))
        if not await store.save_final(final):
            return 3
        print(job, flush=True)
    await store.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main, Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
