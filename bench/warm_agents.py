"""Warm gemini and codex: a one-shot CLI alone vs the same prompt through llmd, served by the
blueprint's agent (a session or thread per run on one long-lived process).

    LLMD_REAL_CLIS=$(scripts/install-real-clis) python bench/warm_agents.py [-n 7]

The real CLIs answer from tests/mockllm.py (which answers at once) through the bundled
blueprints, so what is measured is each CLI's start-up and llmd's way around it. Each
round runs the one-shot CLI (``gemini --output-format stream-json --model M``, ``codex exec
--json --skip-git-repo-check -``, the prompt on stdin), then ``llm.run`` through llmd in a
fresh project directory, alternating so that drift in the machine's load hits both alike.
Told: time to the first streamed text and to the answer (p50), the share of a one-shot
that llmd warm takes, and the resident memory of the idle agent's process group.

Targets: gemini warm <= 15 % of the one-shot, codex warm <= 35 %.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from warm import PROMPT, timed_run, wait_idle

from tests.harness import Client, launch
from tests.mockllm import MockLLM
from tests.test_real_clis import GEMINI_MODEL, REAL_CLIS, World

TARGET = {"gemini": 0.15, "codex": 0.35}
ONE_SHOT = {"gemini": ["--output-format", "stream-json", "--model", GEMINI_MODEL],
            "codex": ["exec", "--json", "--skip-git-repo-check", "-"]}
PARAMS: dict[str, dict[str, Any]] = {"gemini": {"model": GEMINI_MODEL}, "codex": {}}


def one_shot(name: str, env: dict[str, str], cwd: Path) -> float:
    """Seconds from spawn to exit of one one-shot run."""
    started = time.perf_counter()
    done = subprocess.run([str(Path(REAL_CLIS) / name), *ONE_SHOT[name]], input=PROMPT.encode(),
                          env=env, cwd=cwd, capture_output=True, timeout=120, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"one-shot {name} failed: {done.stderr[-500:]!r}")
    return took


def through_llmd(client: Client, name: str, cwd: Path) -> tuple[float, float, bool]:
    """:func:`bench.warm.timed_run` of blueprint ``name`` in ``cwd``."""
    return timed_run(client, {"blueprint": name, "cwd": str(cwd), **PARAMS[name]})


def bench(name: str, rounds: int, workdir: Path) -> None:
    root = workdir / name
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    with MockLLM() as mock:
        world = World(root, bindir, root / "project", mock)
        world.project.mkdir()
        world.write_homes(mock.url)
        env = {**{k: v for k, v in os.environ.items()
                  if not k.startswith(("GEMINI_", "GOOGLE_", "CODEX_", "OPENAI_"))},
               **world.env(name, mock.url)}
        # This one's agent is switched on (the bundled codex's is opt-in).
        header = f'["blueprints"."{name}"."warm"]\n"enabled" = '
        registry = world.registry(mock.url)
        assert header in registry
        registry = registry.replace(header + "false", header + "true")
        daemon = launch(root, registry)
        try:
            client = Client(daemon.socket)
            through_llmd(client, name, world.project)  # one-shot; starts the agent
            idle = wait_idle(client, 120.0)
            time.sleep(3)  # settled, as between an editor's questions
            idle = client.call("daemon.info")["warm"]
            cold: list[float] = []
            warm: list[tuple[float, float]] = []
            served = 0
            for n in range(rounds):
                cwd = root / f"p{n}"
                cwd.mkdir()
                cold.append(one_shot(name, env, cwd))
                wait_idle(client, 120.0)
                first, answered, was_warm = through_llmd(client, name, cwd)
                warm.append((first, answered))
                served += was_warm
        finally:
            daemon.stop(timeout=60)
    c_done = statistics.median(cold)
    w_first = statistics.median(w[0] for w in warm)
    w_done = statistics.median(w[1] for w in warm)
    share = w_done / c_done
    print(f"{name}, p50 of {rounds} alternating rounds (mock answers at once):")
    print(f"  one-shot {name}:      answer {c_done * 1e3:7.0f} ms "
          f"(min {min(cold) * 1e3:.0f}, max {max(cold) * 1e3:.0f})")
    print(f"  through llmd, warm:  first text {w_first * 1e3:7.0f} ms, answer "
          f"{w_done * 1e3:7.0f} ms  ({served}/{rounds} served warm, each in a new cwd)")
    print(f"  warm answer = {100 * share:.1f} % of the one-shot [<= {TARGET[name]:.0%}: "
          f"{'ok' if share <= TARGET[name] else 'MISSED'}]")
    print(f"  idle agent's process group: {idle['rss_mb']:.0f} MB resident", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=7)
    args = parser.parse_args()
    if not REAL_CLIS:
        raise SystemExit("set LLMD_REAL_CLIS (see scripts/install-real-clis)")
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    try:
        for name in ("codex", "gemini"):
            bench(name, args.n, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
