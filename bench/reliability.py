"""Run the reliability suite and write its figures into the README's "Reliability" section.

Usage: ``scripts/reliability-report [--soak MINUTES] [--no-readme] [PYTEST ARGS...]``

The suite's tests append their counts, one JSON line per test, to the file named by
``$LLMD_RELIABILITY_REPORT`` (see tests/reliability/support.py); this adds them up, checks
the two figures that must hold (no record lost; the shared daemon's RSS grew by at most
20 MiB over the whole suite) and replaces what stands between the README's markers.
Exit status: pytest's own when it failed, else 1 when a figure does not hold, else 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# What the suite found and what now holds, for the README (kept with the tests' classes).
FIXED = (
    "Found by these tests and fixed: a reload that removed a blueprint or timeout category "
    "in use no longer crashes the daemon (a job keeps what it was admitted with, and one "
    "job's defect fails that job alone with -32603); `llmc` and `llmc mcp` refuse a socket "
    "served by another uid or in a directory another user owns or can write; `llmc` never "
    "exits 0 having written part of an answer; the in-memory caps hold whatever else runs; "
    "queued jobs never start after SIGTERM; a detached job's id is sent only once its "
    "record is durable; `cancelled: true` means the job ends cancelled; a prompt over the "
    "message limit is reported as such (exit 2); a vanished cwd is named as the cause; "
    "children get `PWD`; a zombie daemon counts as dead; a job of another daemon sharing "
    "the store is waited for; a burst of runs is admitted up to the free slots plus "
    "`max_queue`.")

BEGIN = "<!-- reliability:begin (written by scripts/reliability-report) -->"
END = "<!-- reliability:end -->"
MAX_GROWTH_KB = 20 * 1024
WIDTH = 92  # the README's prose is wrapped about there
MAX_COUNTS = frozenset({"held", "peak_rss_kb", "busy_latency_ms", "rss_before_kb",
                        "rss_after_kb"})


def run_suite(report: Path, soak: float, extra: list[str]) -> tuple[int, str, float]:
    """Run pytest on the suite; its exit status, its output and its wall time."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rx", "-p", "no:cacheprovider",
           "tests/reliability", *(["--soak", f"{soak:g}"] if soak else []), *extra]
    env = {**os.environ, "LLMD_RELIABILITY_REPORT": str(report)}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def add_up(report: Path) -> dict[str, float]:
    """The suite's counts: sums, and maxima for the counts that are peaks or one-offs."""
    totals: dict[str, float] = {}
    if not report.exists():
        return totals
    for line in report.read_text().splitlines():
        entry: dict[str, Any] = json.loads(line)
        entry.pop("test", None)
        for key, value in entry.items():
            if key in MAX_COUNTS:
                totals[key] = max(totals.get(key, 0), value)
            else:
                totals[key] = totals.get(key, 0) + value
    return totals


def outcome(output: str) -> tuple[dict[str, int], list[str]]:
    """pytest's closing counts, and the reasons of the known bugs (strict xfails)."""
    counts: dict[str, int] = {}
    closing = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    if closing:
        for number, word in re.findall(r"(\d+) (\w+)", closing[-1]):
            counts[word] = int(number)
    reasons: list[str] = []
    for line in output.splitlines():
        found = re.match(r"XFAIL \S+ - (.*)$", line)
        if found and found.group(1) not in reasons:
            reasons.append(found.group(1))
    return counts, reasons


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def section(totals: dict[str, float], counts: dict[str, int], bugs: list[str],
            wall: float, soak: float) -> str:
    """The README section, between its markers."""
    before, after = totals.get("rss_before_kb", 0), totals.get("rss_after_kb", 0)
    rows = [
        ("inputs tried (fuzzed, malformed or hostile)", f"{int(totals.get('inputs', 0)):,}"),
        ("requests answered by real daemons", f"{int(totals.get('requests', 0)):,}"),
        ("connections opened / most held open at once",
         f"{int(totals.get('connections', 0)):,} / {int(totals.get('held', 0)):,}"),
        ("faults injected and survived", f"{int(totals.get('faults', 0)):,}"),
        ("records lost (unanswered, answered twice or wrongly)",
         f"{int(totals.get('records_lost', 0))}"),
        ("slowest -32006 in a burst of 1,000 runs",
         f"{int(totals.get('busy_latency_ms', 0))} ms"),
        ("shared daemon's RSS before / after the whole suite",
         f"{mib(before)} / {mib(after)} ({'+' if after >= before else ''}"
         f"{mib(after - before)}; at most +20 MiB)"),
        ("largest RSS of any daemon in a test (100 MB on one line)",
         mib(totals.get("peak_rss_kb", 0))),
        ("tests passed / known bugs pinned as strict xfail",
         f"{counts.get('passed', 0)} / {counts.get('xfailed', 0)}"),
        ("wall time" + (f" (soak of {soak:g} min)" if soak else ""), f"{wall:.0f} s"),
    ]
    intro = (
        "`tests/reliability/` fuzzes the pure layers with Hypothesis (framing, JSON-RPC "
        "dispatch, registry validation, argv rendering, the output parsers) and throws "
        "protocol abuse, load, faults and hostile clients at real daemons: random bytes, "
        "invalid UTF-8, 100,000-deep nesting, oversized and half messages, clients that "
        "never read, thousands of connects, 50 clients of 20 runs against low queue "
        "limits, 1,000 idle connections, running out of file descriptors, CLIs killed by "
        "signals or escaping their process group, the registry deleted, a reload removing "
        "what running jobs use, SIGTERM with a queue, the daemon killed with SIGKILL (also "
        "right after a detached reply), cancels racing a run's end, a cwd removed under a "
        "queued job, two daemons on one store, a listener or socket directory of another "
        "user, a disk filling up under llmc, a full listen backlog, LSP messages with a "
        "too-short length or headers in another order. It runs in CI with the rest of the "
        "tests; "
        "`scripts/reliability-report` runs it alone and rewrites this section from its "
        "own counts, and `scripts/reliability-report --soak MINUTES` repeats the abuse and "
        "load loops for that long.")
    lines = [
        BEGIN,
        "## Reliability",
        "",
        textwrap.fill(intro, WIDTH, break_on_hyphens=False),
        "",
        f"Last run: {dt.date.today().isoformat()}, {os.cpu_count()} cores.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    if bugs:
        lines += ["", textwrap.fill("Known bugs, each pinned by a test marked "
                                    "`xfail(strict=True)` until its fix lands:", WIDTH), ""]
        lines += [textwrap.fill(reason.removeprefix("bug: "), WIDTH, initial_indent="- ",
                                subsequent_indent="  ", break_on_hyphens=False)
                  for reason in bugs]
    lines += ["", textwrap.fill(FIXED, WIDTH, break_on_hyphens=False)]
    lines.append(END)
    return "\n".join(lines) + "\n"


def rewrite_readme(text: str) -> None:
    """Replace the section between the markers, or append it at the end."""
    readme = README.read_text()
    start, end = readme.find(BEGIN), readme.find(END)
    if start >= 0 and end > start:
        readme = readme[:start] + text + readme[end + len(END):].lstrip("\n")
    else:
        readme = readme.rstrip("\n") + "\n\n" + text
    README.write_text(readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", type=float, default=0.0, metavar="MINUTES",
                        help="repeat the abuse and load loops for MINUTES in all")
    parser.add_argument("--no-readme", action="store_true", help="print the section only")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="llmd-report-") as tmp:
        report = Path(tmp) / "report.jsonl"
        status, output, wall = run_suite(report, args.soak, extra)
        totals = add_up(report)
    counts, bugs = outcome(output)
    text = section(totals, counts, bugs, wall, args.soak)
    print(output.rstrip().splitlines()[-1] if output.strip() else "(no output)")
    print(text)
    if status != 0:
        print(output[-5000:], file=sys.stderr)
        return status
    problems = []
    if totals.get("records_lost", 0):
        problems.append(f"{int(totals['records_lost'])} records lost")
    growth = totals.get("rss_after_kb", 0) - totals.get("rss_before_kb", 0)
    if not totals.get("rss_before_kb") or growth > MAX_GROWTH_KB:
        problems.append(f"the shared daemon's RSS grew by {mib(growth)}")
    if problems:
        print("reliability: " + "; ".join(problems), file=sys.stderr)
        return 1
    if not args.no_readme:
        rewrite_readme(text)
        print(f"wrote the Reliability section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
