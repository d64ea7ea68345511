"""Worktree figures: what isolating a run costs before its CLI starts.

    python bench/worktree.py [--files 10000] [--runs 7]

- set-up of a job's worktree (``Worktrees.create``: find the repository, resolve the base,
  ``git worktree add --detach``) in a repository of 10,000 files, base ``head``, p50,
  against ``git worktree add`` run directly on the same repository  [<= 1 s]
- the same with base ``working-tree`` (a snapshot of the checkout with 100 modified and
  100 untracked files)
- measuring the job's changes when it ends (``Worktrees.settle``), p50
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

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmd.jobs.worktree import Worktrees, git_env

IDENTITY = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b"}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**git_env(os.environ), **IDENTITY},
                   check=True, capture_output=True)


def make_repo(repo: Path, files: int) -> None:
    """``files`` small source files in 100 directories, one commit."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i in range(files):
        path = repo / f"d{i % 100:02d}" / f"f{i:05d}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# file {i}\nVALUE = {i}\n" + "x = 1\n" * 20)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")


async def bench(repo: Path, root: Path, runs: int) -> dict[str, list[float]]:
    trees = Worktrees(root)
    times: dict[str, list[float]] = {"direct": [], "head": [], "working-tree": [],
                                     "settle": []}
    for n in range(runs):
        # Alternating, so both see the same load.
        t = time.perf_counter()
        git(repo, "worktree", "add", "--detach", "--quiet", str(root / f"direct{n}"), "HEAD")
        times["direct"].append(time.perf_counter() - t)
        for base in ("head", "working-tree"):
            t = time.perf_counter()
            sidecar = await trees.create(f"{base}{n}", str(repo), base)
            times[base].append(time.perf_counter() - t)
        Path(sidecar.info.path, "d00", "f00000.py").write_text("changed\n")
        t = time.perf_counter()
        await trees.settle(sidecar.job)
        times["settle"].append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    try:
        repo = workdir / "repo"
        make_repo(repo, args.files)
        for i in range(100):
            (repo / "d01" / f"f{i * 100 + 1:05d}.py").write_text("modified\n")
            (repo / f"new{i}.txt").write_text("untracked\n")
        times = trio.run(bench, repo, workdir / "worktrees", args.runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print(f"worktree set-up, {args.files} files, base head (p50): {p50['head']:.3f} s "
          f"(git worktree add alone: {p50['direct']:.3f} s)  [<= 1 s]")
    print(f"worktree set-up, base working-tree (p50): {p50['working-tree']:.3f} s")
    print(f"changes measured at the end (p50): {p50['settle']:.3f} s")
    return 0 if p50["head"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
