"""Figures per blueprint (llmd.stats, llmd.metrics): the last hour and day, the Prometheus
text, the text file written atomically, and llmc usage / stats / metrics against the real
daemon (usage on a terminal and on a pipe)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.paths import write_atomically
from llmd.stats import RunStats, Sample, counter_metrics, percentile, render
from tests.harness import DaemonFactory, llmc, registry_toml, wait_until
from tests.test_client_tty import start_llmc

FIXTURES = Path(__file__).parent / "fixtures" / "real-clis"


def sample(at: float, blueprint: str = "a", outcome: str = "succeeded", duration: float = 1.0,
           first: float | None = 0.5, retries: int = 0,
           requested: str | None = None) -> Sample:
    return Sample(at=at, blueprint=blueprint, outcome=outcome, duration_s=duration,
                  first_output_s=first, retries=retries, requested=requested)


def test_the_last_hour_and_day() -> None:
    now = [0.0]
    stats = RunStats(lambda: now[0])
    for n in range(10):  # ten runs a day ago and a bit, one of them failed
        stats.add(sample(n, duration=100.0, outcome="timeout" if n == 0 else "succeeded"))
    now[0] = 82800.0  # 23 hours later: all still within the day
    for n, duration in enumerate([1.0, 2.0, 3.0, 4.0, 10.0]):
        stats.add(sample(now[0] - n, duration=duration, first=duration / 2,
                         outcome="rate_limit" if n == 4 else "succeeded", retries=1))
    stats.add(sample(now[0], blueprint="b", requested="a"))
    figures = stats.snapshot()["blueprints"]
    hour, day = figures["a"]["hour"], figures["a"]["day"]
    assert hour["runs"] == 5 and day["runs"] == 15
    assert hour["failures"] == {"rate_limit": 1, "timeout": 0, "cli_failure": 0,
                                "cancelled": 0, "other": 0}
    assert hour["failure_rate"] == 0.2 and day["failure_rate"] == round(2 / 15, 4)
    assert (hour["duration_p50_s"], hour["duration_p90_s"]) == (3.0, 10.0)
    assert (hour["first_output_p50_s"], hour["first_output_p90_s"]) == (1.5, 5.0)
    assert hour["retries"] == 5 and hour["fallbacks"] == 1 and hour["warm_share"] is None
    assert figures["b"]["hour"]["fallbacks"] == 0 and figures["b"]["hour"]["runs"] == 1
    now[0] = 86400.0 + 10  # the first ten are older than a day now
    assert stats.snapshot()["blueprints"]["a"]["day"]["runs"] == 5
    assert percentile([], 0.5) is None


def test_the_text_exposition() -> None:
    stats = RunStats(lambda: 0.0)
    stats.add(sample(0, blueprint='we"ird\\name\n', outcome="timeout", duration=2.5),
              input_tokens=10, output_tokens=6, cost_usd=0.0002)
    text = render(counter_metrics(stats))
    lines = text.splitlines()
    assert '# TYPE llmd_runs_total counter' in lines
    assert 'llmd_runs_total{blueprint="we\\"ird\\\\name\\n",outcome="timeout"} 1' in lines
    assert 'llmd_cost_usd_total{blueprint="we\\"ird\\\\name\\n"} 0.0002' in lines
    assert 'llmd_run_duration_seconds_sum{blueprint="we\\"ird\\\\name\\n"} 2.5' in lines
    assert '# TYPE llmd_run_duration_seconds summary' in lines
    assert 'llmd_run_duration_seconds_count{blueprint="we\\"ird\\\\name\\n"} 1' in lines
    for line in lines:
        if line.startswith("# TYPE"):
            name, kind = line.split()[2:]
            assert name.startswith("llmd_")
            assert name.endswith("_total") == (kind == "counter"), line
    assert text.endswith("\n")


def test_the_text_file_is_never_half_written(tmp_path: Path) -> None:
    path = tmp_path / "llmd.prom"
    versions = ["".join(f"llmd_x{{n=\"{n}\"}} {v}\n" for n in range(20000)) for v in (1, 2)]
    write_atomically(path, versions[0], 0o644)
    seen: set[int] = set()
    bad: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            text = path.read_text()
            if text in versions:
                seen.add(versions.index(text))
            else:
                bad.append(len(text))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(60):
            write_atomically(path, versions[n % 2], 0o644)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not bad, f"{len(bad)} reads saw a partial file"
    assert seen
    assert [p.name for p in tmp_path.iterdir()] == ["llmd.prom"]  # no temporary file left
    assert (path.stat().st_mode & 0o777) == 0o644


def test_an_atomic_write_keeps_the_mode_asked_and_leaves_nothing_when_it_fails(
        tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        write_atomically(tmp_path / "default", b"bytes")
        write_atomically(tmp_path / "open", "text \u00e9", 0o644)
    finally:
        os.umask(umask)
    assert (tmp_path / "default").read_bytes() == b"bytes"
    assert (tmp_path / "default").stat().st_mode & 0o777 == 0o640  # as a new file gets
    assert (tmp_path / "open").read_text(encoding="utf-8") == "text \u00e9"
    assert (tmp_path / "open").stat().st_mode & 0o777 == 0o644  # past the umask
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("x")
    with pytest.raises(OSError):
        write_atomically(tmp_path / "dir", "cannot replace a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default", "dir", "open"]


def registry(fake_bin: Path, textfile: Path) -> str:
    return registry_toml(fake_bin, {
        "claude": {"command": ["@fakecli", "stdin"], "prompt": "stdin",
                   "parser": "claude-stream-json"},
        "plain": {"command": ["@fakecli", "text", "hi"], "prompt": "stdin"},
        "broken": {"command": ["@fakecli", "fail", "3"], "prompt": "stdin"},
    }, extra=f"""
        [blueprints.claude.budget]
        daily_usd = 1.0
        [metrics]
        textfile = "{textfile}"
        interval = 0.2
        """)


async def test_figures_through_the_daemon_and_llmc(daemon_factory: DaemonFactory,
                                                   fake_bin: Path, tmp_path: Path) -> None:
    textfile = tmp_path / "llmd.prom"
    d = await daemon_factory(registry(fake_bin, textfile))
    stream = (FIXTURES / "claude_stream.out").read_bytes()
    with trio.fail_after(60):
        for _ in range(2):
            assert (await llmc(d, "run", "claude", "-", stdin=stream)).returncode == 0
        assert (await llmc(d, "run", "plain", "x")).returncode == 0
        assert (await llmc(d, "run", "broken", "x")).returncode != 0
        stats = await llmc(d, "stats", "--json")
        shown = await llmc(d, "stats")
        metrics = await llmc(d, "metrics")
        piped = await llmc(d, "usage", "--today", "--by", "blueprint")
        as_json = await llmc(d, "usage", "--by", "blueprint", "--json")
        status = await llmc(d, "status")
        await wait_until(lambda: textfile.exists()
                         and 'outcome="cli_failure"' in textfile.read_text())
        async with trio.open_nursery() as nursery:
            run = await start_llmc(nursery, d, "usage", "--by", "blueprint", columns=120)
            code, on_tty, err = await run.finish()
    figures = json.loads(stats.stdout)["blueprints"]
    assert figures["claude"]["hour"]["runs"] == 2
    assert figures["broken"]["hour"]["failures"]["cli_failure"] == 1
    assert figures["claude"]["hour"]["first_output_p50_s"] is not None
    assert "claude" in shown.stdout.decode() and "cli_failure 1" in shown.stdout.decode()
    text = metrics.stdout.decode()
    assert 'llmd_runs_total{blueprint="claude",outcome="succeeded"} 2' in text
    assert 'llmd_cost_usd_total{blueprint="claude"} 0.0004' in text
    assert 'llmd_budget_used_ratio{blueprint="claude",budget="daily_usd"} 0.0004' in text
    assert "llmd_jobs_running 0" in text
    # On a pipe: plain rows, no bar.
    lines = piped.stdout.decode().splitlines()
    assert lines[0].split() == ["BLUEPRINT", "RUNS", "OK", "FAILED", "TOKENS", "IN", "TOKENS",
                                "OUT", "COST", "TIME"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["claude"][1:7] == ["2", "2", "0", "20", "12", "$0.00"]
    assert rows["broken"][1:4] == ["1", "0", "1"] and rows["broken"][6] == "-"
    assert rows["total"][1] == "4"
    assert "budget claude: $0.00 of $1 today" in piped.stdout.decode()
    assert not re.search("[\u2580-\u259f]", piped.stdout.decode())
    totals = json.loads(as_json.stdout)["total"]
    assert totals["runs"] == 4 and totals["cost_usd"] == 0.0004
    assert "budget claude: $0.00 of $1 today" in status.stdout.decode()
    # On a terminal: a bar column, the full bar for the largest cost.
    assert (code, err) == (0, b"")
    tty_lines = on_tty.decode().splitlines()
    assert tty_lines[0].split()[-1] == "COST"
    claude_row = next(line for line in tty_lines if line.startswith("claude"))
    assert claude_row.rstrip().endswith("\u2588" * 20)
    assert int(os.stat(textfile).st_mode & 0o777) == 0o644


async def test_usage_without_runs(daemon_factory: DaemonFactory, fake_bin: Path,
                                  tmp_path: Path) -> None:
    d = await daemon_factory(registry(fake_bin, tmp_path / "m.prom"))
    with trio.fail_after(30):
        out = await llmc(d, "usage")
        stats = await llmc(d, "stats")
    assert out.returncode == 0
    first: Any = out.stdout.decode().splitlines()[1].split()
    assert first[:3] == ["0", "0", "0"]
    assert stats.stdout.decode() == "no runs in the last day\n"


async def test_a_reload_moves_and_stops_the_metrics_textfile(
        daemon_factory: DaemonFactory, fake_bin: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first.prom", tmp_path / "second.prom"
    d = await daemon_factory(registry(fake_bin, first))
    client = await d.connect()

    async def rewritten(path: Path, times: int) -> None:
        # Each write replaces the file (the new one's inode may be the one freed before).
        seen: set[tuple[int, int]] = set()
        while len(seen) < times:
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                seen.add((st.st_ino, st.st_mtime_ns))
            await trio.sleep(0.02)

    with trio.fail_after(60):
        await rewritten(first, 2)
        d.config.write_text(registry(fake_bin, second))
        assert "result" in await client.call("daemon.reload")
        await rewritten(second, 1)
        first.unlink()
        await rewritten(second, 3)
        assert not first.exists()  # the first writer has stopped
        d.config.write_text(registry(fake_bin, second).replace(f'"{second}"', '""'))
        assert "result" in await client.call("daemon.reload")
        await trio.sleep(0.5)  # a write begun before the reload ends
        second.unlink()
        await trio.sleep(1.0)  # five intervals: a writer left running would write again
    assert not second.exists()
