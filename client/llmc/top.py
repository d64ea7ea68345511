"""``llmc top``: the daemon at work, live (or once, as plain text, with ``--once``).

A frame shows the daemon's line (version, uptime, job counts), the running, retrying and
queued jobs (id, blueprint, state, elapsed, output so far, warm, cwd), every blueprint's
health and cooldown, and what ``daemon.info`` adds when this llmd has it: warm processes
(``warm``) and today's runs and cost (``today``). Keys: ``q`` quits, ``c`` cancels the
selected job, ``f`` follows it (``llmc job ID --follow``), the arrows (or ``j``/``k``)
select.

It is drawn with the standard library's ``curses``: llmc depends on nothing outside it, and
what ``top`` needs (a timed key read, a resize, reverse video) is what curses does well.

Invariants:
- Imported only by ``llmc top``: no other command pays for ``curses`` or this module.
- One connection, one snapshot a second (``REFRESH_S``); a key never waits for a snapshot
  and a snapshot never waits for a key. A resize redraws the frame at once to the new size.
- Frames are computed as plain lines (:func:`render`), the same for ``--once`` and the
  live view, and each line fits the terminal's width.
"""

from __future__ import annotations

import contextlib
import sys
import time

from llmc import exitcodes
from llmc.calling import QUICK_CALL_TIMEOUT, connect
from llmc.commands import format_duration, job_duration, warm_summary
from llmc.connection import RpcError
from llmc.output import cut, format_value, table, terminal_width, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import curses
    from typing import Any

    from llmc.connection import Connection

REFRESH_S = 1.0
LIVE_STATES = exitcodes.LIVE_STATES
LIST_LIMIT = 500
KEYS = "q quit  c cancel  f follow  \u2191\u2193 select"


class Snapshot:
    """What llmd said at one moment: live jobs, health and ``daemon.info``."""

    def __init__(self, jobs: list[dict[str, Any]], health: dict[str, Any],
                 info: dict[str, Any], taken: float) -> None:
        self.jobs = jobs
        self.health = health
        self.info = info
        self.taken = taken


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def take(conn: Connection) -> Snapshot:
    """Ask llmd for a snapshot (a few quick calls on one connection)."""
    jobs: list[dict[str, Any]] = []
    for state in LIVE_STATES:
        reply = _object(conn.call("jobs.list", {"state": state, "limit": LIST_LIMIT},
                                  timeout=QUICK_CALL_TIMEOUT))
        jobs.extend(j for j in reply.get("jobs") or [] if isinstance(j, dict))
    # Oldest first: the longest-running job stays at the top.
    jobs.sort(key=lambda j: str(j.get("created_at") or ""))
    health = _object(_object(conn.call("health.status", timeout=QUICK_CALL_TIMEOUT))
                     .get("blueprints"))
    info = _object(conn.call("daemon.info", timeout=QUICK_CALL_TIMEOUT))
    try:  # today's totals, from the usage ledger (an older llmd has none)
        ledger = _object(conn.call("usage.summary", {"since": time.strftime("%Y-%m-%d")},
                                   timeout=QUICK_CALL_TIMEOUT))
        info = {**info, "today": _object(ledger.get("total"))}
    except RpcError:
        pass
    return Snapshot(jobs, health, info, time.time())


def _elapsed(job: dict[str, Any], now: float) -> str:
    if job.get("state") == "queued":
        # Waiting since it was made.
        seconds = job_duration({"started_at": job.get("created_at"), "state": "queued"}, now)
    else:
        seconds = job_duration(job, now)
    return format_duration(seconds) if seconds is not None else "-"


def _warm_of(job: dict[str, Any]) -> str:
    # A daemon with warm processes says so per job; one without leaves the column empty.
    warm = job.get("warm")
    return "yes" if warm is True else "no" if warm is False else "-"


def _header(snap: Snapshot) -> str:
    info = snap.info
    counts = _object(info.get("jobs"))
    parts = [f"llmd {format_value(info.get('version'))}", f"pid {format_value(info.get('pid'))}"]
    uptime = info.get("uptime_s")
    if isinstance(uptime, int | float):
        parts.append(f"up {format_duration(float(uptime))}")
    parts.append(f"{counts.get('running', 0)} running, {counts.get('queued', 0)} queued, "
                 f"{counts.get('finished', 0)} finished")
    parts.append(time.strftime("%H:%M:%S", time.localtime(snap.taken)))
    return "  ".join(parts)


def _today(info: dict[str, Any]) -> str | None:
    # The usage ledger's figures since local midnight (``usage.summary``'s total).
    today = info.get("today")
    if not isinstance(today, dict):
        return None
    parts = []
    if isinstance(today.get("runs"), int):
        parts.append(f"{today['runs']} runs")
    cost = today.get("cost_usd")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        parts.append(f"${cost:.2f}")
    return "today: " + ", ".join(parts) if parts else None


def _warm(info: dict[str, Any]) -> list[str]:
    # Warm processes, when this llmd keeps them (daemon.info "warm"): their counts, or
    # one cell each where they are listed.
    warm = info.get("warm")
    if isinstance(warm, dict):
        summary = warm_summary(warm)
        return [summary] if summary else []
    if not isinstance(warm, list):
        return []
    cells = []
    for entry in warm:
        if isinstance(entry, dict):
            name = entry.get("blueprint") or entry.get("name") or "?"
            extra = [f"{k} {format_value(v)}" for k, v in entry.items()
                     if k not in ("blueprint", "name") and isinstance(v, str | int | float)]
            cells.append(f"{name} ({', '.join(extra)})" if extra else str(name))
        else:
            cells.append(format_value(entry))
    return cells


def render(snap: Snapshot, width: int | None, selected: int | None = None,
           note: str = "") -> tuple[list[str], int | None]:
    """Lay a snapshot out as lines that fit ``width``.

    Args:
        snap: The snapshot.
        width: The terminal's width, or None for no limit.
        selected: The index (in ``snap.jobs``) of the selected job, if any.
        note: A line to show above the keys (what the last key did).

    Returns:
        The lines, and which of them is the selected job's (None: none).
    """
    lines = [_header(snap)]
    today = _today(snap.info)
    if today:
        lines.append(today)
    warm = _warm(snap.info)
    if warm:
        lines.append("warm: " + "; ".join(warm))
    lines.append("")
    selected_line: int | None = None
    if snap.jobs:
        rows = [[format_value(j.get("job")), format_value(j.get("blueprint")),
                 format_value(j.get("state")), _elapsed(j, snap.taken),
                 format_value(j.get("output_chars")) if j.get("output_chars") is not None
                 else "-", _warm_of(j), format_value(j.get("cwd") or "-")] for j in snap.jobs]
        # CWD gives way first, then WARM and OUTPUT are left out.
        text = table(["JOB", "BLUEPRINT", "STATE", "ELAPSED", "OUTPUT", "WARM", "CWD"], rows,
                     width, flex=-1, droppable=(5, 4))
        first = len(lines) + 1
        lines.extend(text.splitlines())
        if selected is not None and 0 <= selected < len(snap.jobs):
            selected_line = first + selected
    else:
        lines.append("no running or queued jobs")
    lines.append("")
    if snap.health:
        rows = []
        for name, value in snap.health.items():
            entry = _object(value)
            until = entry.get("cooldown_until")
            rows.append([name, format_value(entry.get("state")),
                         f"until {format_value(until)}" if until else "",
                         format_value(entry.get("version")) if entry.get("version") else ""])
        lines.extend(table(["BLUEPRINT", "HEALTH", "COOLDOWN", "VERSION"], rows, width,
                           flex=2).splitlines())
    if note:
        lines.extend(["", note])
    if width is not None:
        lines = [cut(line, width) for line in lines]
    return lines, selected_line


def cmd_top(args: argparse.Namespace) -> int:
    """``llmc top [--once]``."""
    if args.once or not sys.stdout.isatty() or not sys.stdin.isatty():
        with connect(args) as conn:
            snap = take(conn)
        lines, _ = render(snap, terminal_width())
        write("\n".join(lines) + "\n")
        return exitcodes.OK
    import curses  # noqa: PLC0415 - only the live view draws

    # Ctrl-C ends top like q does.
    with connect(args) as conn, contextlib.suppress(KeyboardInterrupt):
        curses.wrapper(_live, conn, args)
    return exitcodes.OK


class _View:
    """The live view's state between frames."""

    def __init__(self, conn: Connection, args: argparse.Namespace) -> None:
        self.conn = conn
        self.args = args
        self.snap = take(conn)
        self.fetched = time.monotonic()
        self.selected = 0
        self.note = ""

    def refresh_if_due(self) -> None:
        if time.monotonic() - self.fetched >= REFRESH_S:
            self.snap = take(self.conn)
            self.fetched = time.monotonic()

    def job(self) -> str | None:
        jobs = self.snap.jobs
        if not jobs:
            return None
        self.selected = min(max(self.selected, 0), len(jobs) - 1)
        job = jobs[self.selected].get("job")
        return job if isinstance(job, str) else None

    def cancel(self) -> None:
        job = self.job()
        if job is None:
            self.note = "no job to cancel"
            return
        reply = _object(self.conn.call("llm.cancel", {"job": job}, timeout=QUICK_CALL_TIMEOUT))
        self.note = f"cancelled {job}" if reply.get("cancelled") else f"{job} had finished"
        self.fetched = 0.0  # show it at once


def _live(screen: curses.window, conn: Connection, args: argparse.Namespace) -> None:
    import curses  # noqa: PLC0415

    with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
        curses.curs_set(0)
    screen.timeout(int(REFRESH_S * 1000 / 4))
    view = _View(conn, args)
    while True:
        _draw(screen, view)
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            screen.clear()  # everything again, laid out for the new size
            continue
        if key in (curses.KEY_UP, ord("k")):
            view.selected -= 1
        elif key in (curses.KEY_DOWN, ord("j")):
            view.selected += 1
        elif key == ord("c"):
            view.cancel()
        elif key == ord("f"):
            _follow(screen, view)
        view.refresh_if_due()


def _draw(screen: curses.window, view: _View) -> None:
    import curses  # noqa: PLC0415

    height, width = screen.getmaxyx()
    view.job()  # keeps the selection within the jobs
    lines, chosen = render(view.snap, max(width - 1, 1), view.selected, view.note)
    screen.erase()
    body = lines[:max(height - 1, 0)]
    for row, line in enumerate(body):
        attr = curses.A_REVERSE if row == chosen else (curses.A_BOLD if row == 0 else 0)
        # The last cell of the screen cannot be written without scrolling.
        with contextlib.suppress(curses.error):
            screen.addstr(row, 0, line, attr)
    with contextlib.suppress(curses.error):
        screen.addstr(height - 1, 0, cut(KEYS, max(width - 1, 1)), curses.A_DIM)
    screen.refresh()


def _follow(screen: curses.window, view: _View) -> None:
    """Leave the view for ``llmc job ID --follow`` until it ends, then come back."""
    import curses  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    job = view.job()
    if job is None:
        view.note = "no job to follow"
        return
    argv = [sys.executable, "-m", "llmc", "job", job, "--follow"]
    socket = getattr(view.args, "socket", None)
    if socket:
        argv[3:3] = ["--socket", socket]
    curses.def_prog_mode()
    curses.endwin()
    try:
        subprocess.run(argv, check=False)
        sys.stdout.write("\n[press Enter to go back to llmc top]")
        sys.stdout.flush()
        sys.stdin.readline()
    except KeyboardInterrupt:
        pass  # Ctrl-C stops following, not top
    finally:
        curses.reset_prog_mode()
        screen.clear()
    view.fetched = 0.0
