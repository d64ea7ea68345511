"""``llmc job ID --follow`` and ``llmc watch``: following jobs started anywhere.

Invariants:
- ``--follow`` prints a job's output exactly as ``jobs.output`` gives it, each character
  once, and ends with the job's exit status (:func:`llmc.commands.job_status`); it follows
  a job any client started, detached or not, and survives a lost connection and a restart of
  llmd (it connects again; a job the restart cut short reads ``interrupted``, which it says,
  status 10). Whether llmd restarted is told by ``daemon.info`` (another pid, or a shorter
  uptime), not by the lost connection alone: the same llmd still gives the same output.
- Between pages it waits in ``jobs.get`` with ``wait`` and a short timeout, so the end of a
  job is seen at once and a quiet job costs one small request per ``FOLLOW_POLL_S``.
- ``llmc watch`` prints one line per ``jobs.event`` (``--json``: the event, one JSON object
  per line) and flushes each, so a pipe sees events as they happen. ``--notify`` raises a
  desktop notification through ``notify-send`` (an argv, never a shell) when a job ends;
  without it on the PATH it says so once and goes on printing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from llmc import exitcodes
from llmc.calling import QUICK_CALL_TIMEOUT, as_object, call, connect
from llmc.connection import ConnectionLost, DaemonUnavailable
from llmc.output import error, format_value, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from llmc.connection import Connection

# A quiet job is asked for more output this often; its end is seen at once (jobs.get wait).
FOLLOW_POLL_S = 0.25
# How long --follow tries to reach a restarting llmd before it gives up.
RECONNECT_S = 60.0
RECONNECT_POLL_S = 0.1
FINAL_STATES = exitcodes.FINAL_STATES
NOTIFY_TIMEOUT_S = 10.0


def cmd_follow(args: argparse.Namespace) -> int:
    """``llmc job ID --follow``: the job's output as it comes, then its exit status."""
    from llmc.commands import job_status  # noqa: PLC0415 - commands imports this module

    offset = 0
    conn: Connection | None = connect(args)
    # The llmd whose output has been printed; after a restart the offsets are no longer its.
    first: tuple[object, object] | None = None
    reconnected = restarted = False
    try:
        while True:
            if conn is None:
                conn = _reconnect(args)
                reconnected = True
            try:
                if first is None:
                    first = _identity(conn)
                elif reconnected and not restarted:
                    restarted = _restarted(first, _identity(conn))
                reconnected = False
                page = as_object(call(conn, "jobs.output", {"job": args.job}
                                      if offset == 0 else {"job": args.job, "offset": offset}),
                                 "jobs.output")
                total = page.get("total_chars")
                if isinstance(total, int) and total < offset:
                    # A retry started the output again.
                    error(f"job {args.job} started a new attempt; its output starts again")
                    offset = 0
                    continue
                text = page.get("text")
                if isinstance(text, str) and text and not (restarted and page.get("done")):
                    write(text)
                    sys.stdout.flush()
                next_offset = page.get("next_offset")
                if isinstance(next_offset, int):
                    offset = max(offset, next_offset)
                if page.get("done") is True or (restarted and page.get("state") in FINAL_STATES):
                    record = as_object(call(conn, "jobs.get", {"job": args.job}), "jobs.get")
                    return _ended(args.job, record, job_status(record))
                if isinstance(text, str) and text:
                    continue  # more may be there already
                call(conn, "jobs.get", {"job": args.job, "wait": True,
                                        "timeout": FOLLOW_POLL_S},
                     timeout=FOLLOW_POLL_S + QUICK_CALL_TIMEOUT)
            except ConnectionLost:
                conn.close()
                conn = None
                error("lost llmd; connecting again to go on following job " + args.job)
    finally:
        if conn is not None:
            conn.close()


def _identity(conn: Connection) -> tuple[object, object]:
    # The daemon's pid and uptime: a pid can come back (pid 1 in a container), an uptime
    # only grows.
    info = as_object(call(conn, "daemon.info"), "daemon.info")
    return info.get("pid"), info.get("uptime_s")


def _restarted(before: tuple[object, object], now: tuple[object, object]) -> bool:
    (pid, uptime), (pid_now, uptime_now) = before, now
    if not isinstance(pid, int) or pid != pid_now:
        return True
    return not (isinstance(uptime, int | float) and isinstance(uptime_now, int | float)
                and uptime_now >= uptime)


def _reconnect(args: argparse.Namespace) -> Connection:
    deadline = time.monotonic() + RECONNECT_S
    while True:
        try:
            return connect(args)
        except DaemonUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(RECONNECT_POLL_S)


def _ended(job: str, record: dict[str, Any], status: int) -> int:
    state = record.get("state")
    if state == "succeeded":
        return status
    err = record.get("error")
    message = err.get("message") if isinstance(err, dict) else None
    if state == "interrupted":
        error(f"job {job} was interrupted: llmd stopped while it ran"
              + (f" ({message})" if isinstance(message, str) else ""))
    else:
        error(f"job {job} ended {format_value(state).replace('_', ' ')}"
              + (f": {message}" if isinstance(message, str) else ""))
    return status


def cmd_watch(args: argparse.Namespace) -> int:
    """``llmc watch``: job events as lines until interrupted or llmd goes away."""
    notifier = _notifier() if args.notify else None
    params: dict[str, Any] = {}
    if args.state:
        params["states"] = list(args.state)
    if args.blueprint:
        params["blueprint"] = args.blueprint

    def on_event(method: str, event: Any) -> None:
        if method != "jobs.event" or not isinstance(event, dict):
            return
        if args.json:
            write(json.dumps(event, ensure_ascii=False) + "\n")
        else:
            write(event_line(event) + "\n")
        sys.stdout.flush()
        if notifier is not None and event.get("state") in FINAL_STATES:
            notifier(event)

    with connect(args) as conn:
        as_object(call(conn, "jobs.watch", params), "jobs.watch")
        try:
            while True:
                conn.listen(on_event, what="job events")
        except ConnectionLost:
            error("llmd closed the connection (did it stop?)")
            return exitcodes.UNREACHABLE
    return exitcodes.OK


def event_line(event: dict[str, Any]) -> str:
    """One ``jobs.event`` as a line for people: time, job, blueprint, state and details."""
    from llmc.commands import local_time  # noqa: PLC0415 - commands imports this module

    state = str(event.get("state") or "?")
    parts = [local_time(event.get("at")), str(event.get("job") or "?"),
             str(event.get("blueprint") or "?"), state.replace("_", " ")]
    attempt = event.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        parts.append(f"(attempt {attempt})")
    delay = event.get("retry_in_s")
    if isinstance(delay, int | float):
        parts.append(f"retry in {delay:g} s")
    code = event.get("code")
    if isinstance(code, int):
        parts.append(f"error {code}")
    return "  ".join(parts)


def _notifier() -> Any:
    program = shutil.which("notify-send")
    if program is None:
        error("--notify: notify-send was not found on the PATH (it comes with libnotify, "
              "e.g. the libnotify-bin package); printing events only")
        return None

    def notify(event: dict[str, Any]) -> None:
        state = str(event.get("state") or "").replace("_", " ")
        urgency = "normal" if event.get("state") == "succeeded" else "critical"
        argv = [program, "--app-name=llmd", f"--urgency={urgency}",
                f"llmd job {event.get('job')} {state}",
                f"blueprint {event.get('blueprint')}"]
        try:
            subprocess.run(argv, check=False, timeout=NOTIFY_TIMEOUT_S,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            error(f"--notify: notify-send failed: {exc}")

    return notify
