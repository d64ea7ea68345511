"""Warm claude: a one-shot ``claude -p`` alone vs the same prompt through llmd, served warm.

    LLMD_REAL_CLIS="$(scripts/install-real-clis)" python bench/warm.py [-n 10]

The real claude answers from ``tests/mockllm.py`` (which answers at once), so what is
measured is the CLI's own start-up and llmd's way around it. Each round runs the one-shot
CLI, then llmd (whose previous run left a warm process), alternating so that drift in the
machine's load hits both alike. Told: time to the first streamed text and to the answer
(p50), the share of a one-shot that llmd warm takes, the resident memory of an idle warm
process group, and llmd's own RSS before and after.

Target: the answer through llmd warm in <= 30 % of the one-shot.
"""

from __future__ import annotations

import argparse
import json
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
from tests.harness import Client, launch, rss_kb
from tests.mockllm import ANSWER, MockLLM

ONE_SHOT = ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
PROMPT = "Say hello to the benchmark."


def one_shot(claude: str, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Times to the first text delta and to the result of one ``claude -p``."""
    started = time.perf_counter()
    first = answered = 0.0
    with subprocess.Popen([claude, *ONE_SHOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env, cwd=cwd) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(PROMPT.encode())
        proc.stdin.close()
        for line in proc.stdout:
            event = json.loads(line)
            if not first and event.get("type") == "stream_event" and \
                    event.get("event", {}).get("delta", {}).get("type") == "text_delta":
                first = time.perf_counter() - started
            if event.get("type") == "result":
                answered = time.perf_counter() - started
                assert event.get("result") == ANSWER, event
    return first, answered


def timed_run(client: Client, params: dict[str, Any]) -> tuple[float, float, bool]:
    """Times to the first streamed text and to the answer of one streamed ``llm.run`` of
    PROMPT with ``params``; whether a warm process served it."""
    started = time.perf_counter()
    first = 0.0
    request = client.send("llm.run", {**params, "prompt": PROMPT, "stream": True})
    while True:
        message = client.recv()
        if message.get("method") == "llm.output" and not first:
            first = time.perf_counter() - started
        elif message.get("id") == request:
            answered = time.perf_counter() - started
            result: dict[str, Any] = message["result"]
            assert result["text"] == ANSWER, result
            return first, answered, bool(result["warm"])


def through_llmd(client: Client, cwd: str) -> tuple[float, float, bool]:
    """:func:`timed_run` of the claude blueprint in ``cwd``."""
    return timed_run(client, {"blueprint": "claude", "cwd": cwd})


def wait_idle(client: Client, limit: float = 60.0) -> dict[str, Any]:
    """daemon.info's warm once a warm process is idle (bounded by ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        warm: dict[str, Any] = client.call("daemon.info")["warm"]
        if warm["idle"]:
            return warm
        time.sleep(0.05)
    raise SystemExit(f"no warm process became idle within {limit:g} s")


def registry(claude: str, env: dict[str, str]) -> str:
    """The bundled claude blueprint, on the real program and the bench's environment."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "llmd.toml").read_text()
    start = text.index("[blueprints.claude]")
    end = text.index("[blueprints.codex]")
    table = text[start:end].replace('command = ["claude",', f'command = [{json.dumps(claude)},')
    table = table.replace('env = { CLAUDE_CODE_MAX_RETRIES = "2", DISABLE_AUTOUPDATER = "1" }',
                          "env = { " + ", ".join(f"{k} = {json.dumps(v)}"
                                                 for k, v in env.items()) + " }")
    return "[daemon]\nwarm_max = 4\n" + table.replace('fallbacks = ["codex", "gemini"]', "")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10)
    args = parser.parse_args()
    bindir = os.environ.get("LLMD_REAL_CLIS")
    if not bindir:
        raise SystemExit("set LLMD_REAL_CLIS (see scripts/install-real-clis)")
    claude = str(Path(bindir) / "claude")
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    project = workdir / "project"
    (workdir / "home").mkdir()
    project.mkdir()
    with MockLLM() as mock:
        extra = {"HOME": str(workdir / "home"), "ANTHROPIC_BASE_URL": f"{mock.url}/claude",
                 "ANTHROPIC_API_KEY": "dummy", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                 "CLAUDE_CODE_MAX_RETRIES": "2", "DISABLE_AUTOUPDATER": "1"}
        env = {**os.environ, **extra}
        daemon = launch(workdir, registry(claude, extra))
        try:
            client = Client(daemon.socket)
            rss_before = rss_kb(daemon.pid)
            through_llmd(client, str(project))  # leaves the first warm process
            idle = wait_idle(client)
            time.sleep(3)  # let it finish loading, as between an editor's questions
            idle = client.call("daemon.info")["warm"]
            cold: list[tuple[float, float]] = []
            warm: list[tuple[float, float]] = []
            served = 0
            for _ in range(args.n):
                cold.append(one_shot(claude, env, str(project)))
                wait_idle(client)
                first, answered, was_warm = through_llmd(client, str(project))
                warm.append((first, answered))
                served += was_warm
            rss_after = rss_kb(daemon.pid)
        finally:
            daemon.stop(timeout=60)
            shutil.rmtree(workdir, ignore_errors=True)

    def p50(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    c_first, c_done, w_first, w_done = p50(cold, 0), p50(cold, 1), p50(warm, 0), p50(warm, 1)
    print(f"claude, p50 of {args.n} alternating rounds (mock answers at once):")
    print(f"  one-shot claude -p:  first text {c_first * 1e3:7.0f} ms, answer "
          f"{c_done * 1e3:7.0f} ms")
    print(f"  through llmd, warm:  first text {w_first * 1e3:7.0f} ms, answer "
          f"{w_done * 1e3:7.0f} ms  ({served}/{args.n} served warm)")
    print(f"  warm answer = {100 * w_done / c_done:.0f} % of the one-shot [<= 30 %]")
    print(f"  idle warm process group: {idle['rss_mb']:.0f} MB resident")
    print(f"  llmd itself: {rss_before / 1024:.1f} MB before, {rss_after / 1024:.1f} MB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
