"""gemini and codex: a one-shot CLI against one long-lived agent serving a session per run.

    LLMD_REAL_CLIS=$(scripts/install-real-clis) python bench/warm_agents.py [ROUNDS]

Both against tests/mockllm.py (which answers at once), alternating in one run, each
round in a fresh project directory:

- one-shot: ``gemini --output-format stream-json --model M`` / ``codex exec --json
  --skip-git-repo-check -`` with the prompt on stdin, timed from spawn to exit;
- warm: the same prompt through :class:`llmd.drivers.warmagent.AgentAttempt` on one
  ``gemini --acp`` / ``codex app-server`` started before the rounds (a new session or
  thread for the round's cwd, then the turn), timed to the first streamed text and to
  the answer;

plus the resident set of the idle agent's process tree. Targets: gemini warm <= 15 %
of one-shot, codex warm <= 35 % of one-shot.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmd.drivers.warmagent import AgentAttempt, AgentHost, Dialect, TurnSpec
from llmd.process.procs import group_members
from llmd.process.supervisor import Stream
from tests.harness import rss_kb
from tests.mockllm import ANSWER, MockLLM
from tests.test_warm_agents import GEMINI_MODEL, _argv, _env

PROMPT = "Say hello to the bench."
TARGET = {"acp": 0.15, "codex-app": 0.35}
NAME = {"acp": "gemini", "codex-app": "codex"}


def one_shot_argv(dialect: Dialect) -> list[str]:
    if dialect == "acp":
        return ["gemini", "--output-format", "stream-json", "--model", GEMINI_MODEL]
    return ["codex", "exec", "--json", "--skip-git-repo-check", "-"]


def one_shot(dialect: Dialect, env: dict[str, str], cwd: str) -> float:
    started = time.monotonic()
    done = subprocess.run(one_shot_argv(dialect), input=PROMPT.encode(), env=env, cwd=cwd,
                          capture_output=True, timeout=120, check=False)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{NAME[dialect]} one-shot failed: {done.stderr[-500:]!r}")
    return took


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kb(member) for member in group_members(pid)) / 1024


async def bench(dialect: Dialect, rounds: int, root: Path, mock: MockLLM) -> None:
    env = _env(root / NAME[dialect], mock, dialect)
    shot: list[float] = []
    warm: list[float] = []
    first: list[float] = []
    async with trio.open_nursery() as nursery:
        host = AgentHost(nursery)
        started = time.monotonic()
        agent = await host.get(dialect, _argv(dialect), env)
        ready = time.monotonic() - started
        await trio.sleep(8)  # settled, as an idle warm process would be
        assert agent.process.pid is not None
        idle_mb = tree_rss_mb(agent.process.pid)
        for n in range(rounds):
            cwd = root / NAME[dialect] / f"p{n}"
            cwd.mkdir()
            shot.append(await trio.to_thread.run_sync(one_shot, dialect, env, str(cwd)))
            t0 = time.monotonic()
            seen: list[float] = []

            async def on_text(stream: Stream, text: str, seen: list[float] = seen,
                              t0: float = t0) -> None:
                if not seen:
                    seen.append(time.monotonic() - t0)

            outcome = await AgentAttempt(agent, TurnSpec(PROMPT, str(cwd))).run(on_text)
            warm.append(time.monotonic() - t0)
            if outcome.parsed.text != ANSWER:
                raise SystemExit(f"{NAME[dialect]} warm failed: {outcome}")
            first.append(seen[0])
        host.close()
    ratio = statistics.median(warm) / statistics.median(shot)
    print(f"{NAME[dialect]:7} one-shot p50 {statistics.median(shot):.2f} s "
          f"(min {min(shot):.2f}, max {max(shot):.2f}) | warm p50 {statistics.median(warm):.3f} s "
          f"(min {min(warm):.3f}, max {max(warm):.3f}), first text p50 "
          f"{statistics.median(first):.3f} s | ratio {ratio:.1%} "
          f"[<= {TARGET[dialect]:.0%}: {'ok' if ratio <= TARGET[dialect] else 'MISSED'}] | "
          f"start to initialize {ready:.2f} s | idle RSS {idle_mb:.0f} MB", flush=True)


async def main(rounds: int) -> None:
    if not os.environ.get("LLMD_REAL_CLIS"):
        raise SystemExit("set LLMD_REAL_CLIS to the directory scripts/install-real-clis prints")
    with MockLLM() as mock, tempfile.TemporaryDirectory() as tmp:
        for dialect in ("codex-app", "acp"):
            await bench(dialect, rounds, Path(tmp), mock)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 7)
