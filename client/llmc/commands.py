"""The llmc commands: each takes the parsed arguments, talks to llmd and returns an exit status.

``llmc run`` lives in :mod:`llmc.run`; the helpers that every command shares in
:mod:`llmc.calling`.

Invariants:
- Human output by default; ``--json`` prints the JSON document and nothing else on stdout.
- The exit status of ``llmc job`` follows the job's outcome (:func:`job_status`).
"""

from __future__ import annotations

import os
import sys
import time

from llmc import exitcodes
from llmc.calling import (
    QUICK_CALL_TIMEOUT,
    UsageError,
    as_object,
    call,
    connect,
    dump,
    print_answer,
)
from llmc.output import error, format_value, indented, key_values, table, terminal_width, write
from llmc.run import cmd_run, read_prompt

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from llmc.connection import Connection

__all__ = ["HANDLERS", "UsageError", "job_status", "read_prompt"]

# How long `llmc status` waits for first probes still in flight, and how often it looks.
FIRST_PROBE_WAIT = 3.0
FIRST_PROBE_POLL = 0.1

# The states in which a job has ended, with the status they map to when the record carries no
# error code.
_FINAL_STATES = exitcodes.FINAL_STATUS


# -- the commands ----------------------------------------------------------------------------

def _seconds(value: object) -> str:
    return f"{format_value(value)}s" if isinstance(value, int | float) else format_value(value)


def cmd_blueprints(args: argparse.Namespace) -> int:
    """``llmc blueprints``: name, parser, timeout, concurrency and description."""
    with connect(args) as conn:
        result = as_object(call(conn, "blueprints.list"), "blueprints.list")
    if args.json:
        dump(result)
        return exitcodes.OK
    rows = [[format_value(bp.get("name")), format_value(bp.get("parser")),
             _seconds(bp.get("timeout_s")), format_value(bp.get("max_concurrency")),
             str(bp.get("description") or "")]
            for bp in result.get("blueprints") or [] if isinstance(bp, dict)]
    if not rows:
        write("no blueprints configured\n")
        return exitcodes.OK
    write(table(["NAME", "PARSER", "TIMEOUT", "MAX", "DESCRIPTION"], rows, terminal_width()))
    return exitcodes.OK


def cmd_info(args: argparse.Namespace) -> int:
    """``llmc info``: daemon.info as ``key: value`` lines."""
    with connect(args) as conn:
        result = as_object(call(conn, "daemon.info"), "daemon.info")
    if args.json:
        dump(result)
    else:
        write("".join(line + "\n" for line in key_values(result)))
    return exitcodes.OK


def local_time(stamp: object, now: float | None = None) -> str:
    """An RFC 3339 timestamp in local time, as short as is clear (as given when unparsable).

    ``HH:MM:SS`` today, ``MM-DD HH:MM`` this year, else ``YYYY-MM-DD``, as ``ls -l`` does.

    Args:
        stamp: The timestamp.
        now: The current time as a Unix timestamp (for tests; default: now).
    """
    if not isinstance(stamp, str):
        return format_value(stamp)
    from datetime import datetime  # noqa: PLC0415 - only the commands that show times need it

    try:
        # fromisoformat() learnt the Z suffix only in Python 3.11.
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        return stamp
    moment = moment.astimezone()
    today = datetime.fromtimestamp(time.time() if now is None else now).astimezone()
    if moment.date() == today.date():
        return moment.strftime("%H:%M:%S")
    if moment.year == today.year:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%Y-%m-%d")


def _epoch(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    from datetime import datetime  # noqa: PLC0415

    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def format_duration(seconds: float) -> str:
    """A duration for a table cell: ``0.4s``, ``12s``, ``3m05s``, ``2h07m``."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def job_duration(record: dict[str, Any], now: float | None = None) -> float | None:
    """How long a job ran: the result's ``duration_s``, else from its timestamps.

    A job still running counts up to ``now`` (the current time by default); one that never
    started has no duration.
    """
    result = record.get("result")
    if isinstance(result, dict) and isinstance(result.get("duration_s"), int | float):
        return float(result["duration_s"])
    started = _epoch(record.get("started_at"))
    if started is None:
        return None
    finished = _epoch(record.get("finished_at"))
    if finished is None:
        if record.get("state") in _FINAL_STATES:
            return None
        finished = time.time() if now is None else now
    return max(finished - started, 0.0)


def _job_row(record: dict[str, Any]) -> list[str]:
    duration = job_duration(record)
    tree = record.get("worktree")
    # A mark for changes waiting in a worktree (llmc diff|apply|discard).
    mark = ("*" if isinstance(tree, dict) and tree.get("status") == "unapplied"
            and tree.get("changed_files") else "")
    return [format_value(record.get("job")), format_value(record.get("blueprint")),
            format_value(record.get("state")) + mark, local_time(record.get("created_at")),
            "-" if duration is None else format_duration(duration),
            format_value(record.get("attempts"))]


def cmd_jobs(args: argparse.Namespace) -> int:
    """``llmc jobs``: recent jobs, newest first, as a table that fits the terminal."""
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    if args.blueprint:
        params["blueprint"] = args.blueprint
    if args.unapplied:
        params["unapplied"] = True
    with connect(args) as conn:
        result = as_object(call(conn, "jobs.list", params), "jobs.list")
    if args.json:
        dump(result)
        return exitcodes.OK
    rows = [_job_row(j) for j in result.get("jobs") or [] if isinstance(j, dict)]
    if not rows:
        of = f" of {args.blueprint}" if args.blueprint else ""
        write(f"no {args.state} jobs{of}\n" if args.state else f"no jobs{of}\n")
        return exitcodes.OK
    if any(row[2].endswith("*") for row in rows):
        rows.append(["", "", "* unapplied", "", "", ""])
    # The blueprint column gives way, and on a narrow terminal the attempts, the duration and
    # the time go: ids and states are what one reads the list for.
    write(table(["JOB", "BLUEPRINT", "STATE", "CREATED", "DURATION", "ATTEMPTS"], rows,
                terminal_width(), flex=1, droppable=(5, 4, 3)))
    return exitcodes.OK


def job_status(record: dict[str, Any]) -> int:
    """The exit status that a job record stands for.

    Succeeded is 0; failed follows the error's code like ``llmc run`` (1 when it has none);
    timed out is 4; cancelled or interrupted is 10 (not 130, which says that llmc itself was
    interrupted). A job that has not ended is 0: its record was shown, nothing failed.
    """
    state = record.get("state")
    if not isinstance(state, str) or state not in _FINAL_STATES or state == "succeeded":
        return exitcodes.OK
    err = record.get("error")
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        return exitcodes.exit_code_for(err["code"])
    return _FINAL_STATES[state]


def _wait_for_job(conn: Connection, args: argparse.Namespace,
                  params: dict[str, Any]) -> dict[str, Any]:
    from llmc.statusline import StatusLine  # noqa: PLC0415 - only waits draw a status line

    status = StatusLine.for_stderr()
    started = time.monotonic()

    def tick() -> None:
        if status is not None:
            status.show(f"waiting for job {args.job} ({int(time.monotonic() - started)} s)")

    call_timeout = None
    if args.timeout is not None:
        # Room for the daemon to notice its own timeout and answer.
        call_timeout = args.timeout + QUICK_CALL_TIMEOUT
    try:
        return as_object(call(conn, "jobs.get", params, timeout=call_timeout,
                              on_tick=tick if status is not None else None), "jobs.get")
    finally:
        if status is not None:
            status.clear()


def _show_record(record: dict[str, Any]) -> None:
    shown = {key: value for key, value in record.items() if key not in ("result", "error")}
    lines = key_values(shown)
    duration = job_duration(record)
    if duration is not None:
        lines.append(f"duration: {format_duration(duration)}")
    result = record.get("result")
    if isinstance(result, dict):
        lines.extend(f"{key}: {format_value(result[key])}"
                     for key in ("exit_code", "session", "usage", "cost_usd")
                     if result.get(key) is not None)
    err = record.get("error")
    if isinstance(err, dict):
        lines.append(f"error: {format_value(err.get('message'))} "
                     f"({format_value(err.get('code'))})")
    write("".join(line + "\n" for line in lines))
    data = err.get("data") if isinstance(err, dict) else None
    tail = data.get("stderr") if isinstance(data, dict) else None
    if isinstance(tail, str) and tail.strip():
        # As llmc run shows a failed CLI's stderr: on stderr, indented.
        write(indented(tail), sys.stderr)
    if isinstance(result, dict) and result.get("text"):
        write("\n")
        print_answer(str(result["text"]))
        if result.get("truncated") is True:
            error("note: the output was truncated by llmd (its output limit was reached)")


def cmd_job(args: argparse.Namespace) -> int:
    """``llmc job ID``: one job's record and answer; the status follows the job's outcome."""
    params: dict[str, Any] = {"job": args.job}
    if args.wait:
        params["wait"] = True
        if args.timeout is not None:
            params["timeout"] = args.timeout
    elif args.timeout is not None:
        raise UsageError("--timeout goes with --wait (llmc job ID --wait --timeout SECONDS)")
    if args.follow:
        if args.wait or args.json or args.text:
            raise UsageError("--follow goes alone (it prints the output, then ends with the "
                             "job's status)")
        from llmc.follow import cmd_follow  # noqa: PLC0415

        return cmd_follow(args)
    with connect(args) as conn:
        if args.wait:
            record = _wait_for_job(conn, args, params)
        else:
            record = as_object(call(conn, "jobs.get", params), "jobs.get")
    result = record.get("result")
    if args.json:
        dump(record)
    elif args.text:
        if isinstance(result, dict):
            print_answer(str(result.get("text") or ""))
    else:
        _show_record(record)
    if args.wait and args.timeout is not None and record.get("state") not in _FINAL_STATES:
        error(f"job {args.job} is still {format_value(record.get('state'))} after waiting "
              f"{format_value(args.timeout)} s")
        return exitcodes.TIMED_OUT
    return job_status(record)


def cmd_cancel(args: argparse.Namespace) -> int:
    """``llmc cancel ID``."""
    with connect(args) as conn:
        result = as_object(call(conn, "llm.cancel", {"job": args.job}), "llm.cancel")
    if args.json:
        dump(result)
    elif result.get("cancelled"):
        write(f"cancelled {args.job}\n")
    else:
        write(f"{args.job} had already finished; nothing to cancel\n")
    return exitcodes.OK


def cmd_status(args: argparse.Namespace) -> int:
    """``llmc status``: health from llmd's cache, or probed now with ``--check``."""
    method = "health.check" if args.check else "health.status"
    params = {"blueprint": args.blueprint} if args.blueprint else None
    # A probe runs the CLIs, which can take a while; the cache answers at once.
    timeout = None if args.check else QUICK_CALL_TIMEOUT
    with connect(args) as conn:
        result = as_object(call(conn, method, params, timeout=timeout), method)
        # Just after llmd started, first probes may still be running: wait a little for
        # real states rather than show "unknown".
        deadline = time.monotonic() + FIRST_PROBE_WAIT
        # (Not with --check: each call would run every probe again.)
        while not args.check and _any_unknown(result) and time.monotonic() < deadline:
            time.sleep(FIRST_PROBE_POLL)
            result = as_object(call(conn, method, params, timeout=timeout), method)
        warm = None if args.json else _warm_line(conn)
        from llmc import ledger  # noqa: PLC0415 - loaded by the commands that show costs

        budgets = [] if args.json else ledger.budget_lines(conn, args.blueprint)
    if args.json:
        dump(result)
        return exitcodes.OK
    health = result.get("blueprints")
    rows: list[list[str]] = []
    if isinstance(health, dict):
        for name, entry in health.items():
            if not isinstance(entry, dict):
                continue
            detail = format_value(entry.get("detail")) if entry.get("detail") else ""
            if entry.get("cooldown_until"):
                detail = f"{ledger.cooling_text(entry['cooldown_until'])} {detail}".strip()
            rows.append([name, format_value(entry.get("state")),
                         format_value(entry.get("version")), _ago(entry.get("checked_at")),
                         _seconds(entry.get("latency_s")), detail])
    if not rows:
        write("no blueprints\n")
        return exitcodes.OK
    text = table(["NAME", "STATE", "VERSION", "CHECKED", "LATENCY", "DETAIL"], rows,
                 terminal_width())
    write((_paint_states(text) if _colour_wanted() else text) + "".join(budgets))
    if warm:
        write(warm + "\n")
    return exitcodes.OK


def _any_unknown(result: dict[str, Any]) -> bool:
    health = result.get("blueprints")
    return isinstance(health, dict) and any(
        isinstance(entry, dict) and entry.get("state") == "unknown" for entry in health.values())


def _warm_line(conn: Connection) -> str | None:
    """The warm processes in one line (None: none, or a daemon that does not say)."""
    from llmc.connection import ClientError  # noqa: PLC0415 - status only

    try:
        info = call(conn, "daemon.info")
    except ClientError:
        return None
    summary = warm_summary(info.get("warm") if isinstance(info, dict) else None)
    return None if summary is None else "warm: " + summary


def warm_summary(warm: object) -> str | None:
    """``daemon.info``'s ``warm`` counts as "N processes (I idle, B busy, M MB)" (None: no
    warm process, or no counts)."""
    if not isinstance(warm, dict) or not warm.get("processes"):
        return None
    count = warm["processes"]
    return (f"{format_value(count)} process{'es' if count != 1 else ''} "
            f"({format_value(warm.get('idle'))} idle, {format_value(warm.get('busy'))} busy, "
            f"{format_value(warm.get('rss_mb'))} MB)")


_STATE_COLOURS = {"healthy": "32", "unhealthy": "31", "missing": "31",
                  "cooling_down": "33", "unknown": "2"}


def _colour_wanted() -> bool:
    """Colour for a person at a terminal, unless NO_COLOR says otherwise."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and \
        os.environ.get("TERM") != "dumb"


def _paint_states(text: str) -> str:
    import re  # noqa: PLC0415 - only a coloured status table needs it

    pattern = re.compile(r"(?<=  )(" + "|".join(_STATE_COLOURS) + r")(?= |$)")
    lines = text.splitlines(keepends=True)
    painted = [pattern.sub(lambda m: f"\x1b[{_STATE_COLOURS[m.group(1)]}m{m.group(1)}\x1b[0m",
                           line, count=1) for line in lines[1:]]
    return "".join(lines[:1] + painted)


def _ago(stamp: object) -> str:
    """'12s ago' from an RFC 3339 UTC time; '-' when never."""
    if not isinstance(stamp, str):
        return "-"
    from datetime import datetime, timezone  # noqa: PLC0415 - status only

    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    seconds = int((datetime.now(timezone.utc) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command whose module is imported when it runs, so no other command pays for it
    (``llmc run`` above all)."""

    def command(args: argparse.Namespace) -> int:
        import importlib  # noqa: PLC0415

        handler: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(module), name)
        return handler(args)

    command.__doc__ = f"``llmc``: see :func:`{module}.{name}`."
    return command


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "blueprints": cmd_blueprints,
    "info": cmd_info,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "cancel": cmd_cancel,
    "status": cmd_status,
    "diff": _lazy("llmc.worktree", "cmd_diff"),
    "apply": _lazy("llmc.worktree", "cmd_apply"),
    "discard": _lazy("llmc.worktree", "cmd_discard"),
    "watch": _lazy("llmc.follow", "cmd_watch"),
    "usage": _lazy("llmc.ledger", "cmd_usage"),
    "stats": _lazy("llmc.ledger", "cmd_stats"),
    "metrics": _lazy("llmc.ledger", "cmd_metrics"),
    "top": _lazy("llmc.top", "cmd_top"),
}
