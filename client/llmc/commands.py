"""The llmc commands: each takes the parsed arguments, talks to llmd and returns an exit status.

Invariants:
- Arguments are checked and the prompt is read before connecting, so a usage error never
  depends on whether the daemon runs.
- Every call goes through :func:`_call`: Ctrl-C while it waits sends ``$/cancelRequest`` for the
  request in flight before the interrupt propagates (closing the connection then cancels a
  non-detached run in any case).
- Human output by default; ``--json`` / ``--raw`` print JSON documents and nothing else on
  stdout.
"""

from __future__ import annotations

import json
import os
import sys

from llmc import exitcodes
from llmc.connection import Connection, ProtocolError, socket_path
from llmc.output import error, format_value, is_tty, key_values, table, terminal_width, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from llmc.connection import NotificationHandler

# Seconds to wait for answers that llmd gives from memory; runs and waits have no client limit
# because the daemon enforces their deadlines.
QUICK_CALL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
# A job's final states that mean it did not succeed, with the status they map to when the
# record carries no error code.
_FAILED_STATES = {"failed": exitcodes.FAILED, "timed_out": exitcodes.TIMED_OUT,
                  "cancelled": exitcodes.FAILED, "interrupted": exitcodes.FAILED}


class UsageError(Exception):
    """The arguments cannot work; ``str()`` says why and how to fix it."""


def _connect(args: argparse.Namespace) -> Connection:
    return Connection.connect(socket_path(getattr(args, "socket", None)), CONNECT_TIMEOUT)


def _call(conn: Connection, method: str, params: dict[str, Any] | None = None,
          on_notification: NotificationHandler | None = None,
          timeout: float | None = QUICK_CALL_TIMEOUT) -> Any:
    try:
        return conn.call(method, params, on_notification=on_notification, timeout=timeout)
    except KeyboardInterrupt:
        conn.cancel_pending()
        raise


def _dump(value: object) -> None:
    write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _object(value: object, method: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"llmd answered {method} with {type(value).__name__}, not an object")
    return value


# -- run ---------------------------------------------------------------------------------------

def read_prompt(argument: str | None) -> str:
    """Return the prompt: the argument, or standard input for None or ``-``.

    Args:
        argument: The PROMPT argument.

    Returns:
        The prompt text.

    Raises:
        UsageError: No prompt on a terminal, or standard input is not UTF-8.
    """
    if argument is not None and argument != "-":
        return argument
    stdin = sys.stdin
    if stdin is None:
        raise UsageError("no prompt given and there is no standard input")
    # An explicit '-' on a terminal means the user wants to type the prompt (ended by Ctrl-D).
    if argument is None and is_tty(stdin):
        raise UsageError("no prompt given: pass it as an argument (llmc run NAME 'PROMPT') or "
                         "on standard input (llmc run NAME < prompt.txt)")
    buffer = getattr(stdin, "buffer", None)
    data: bytes = buffer.read() if buffer is not None else stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the prompt on standard input is not valid UTF-8 (byte "
                         f"{data[exc.start]:#04x} at offset {exc.start})") from None


def _working_directory(given: str | None) -> str:
    if given is None:
        try:
            return os.getcwd()
        except FileNotFoundError:
            raise UsageError("the current directory no longer exists; pass --cwd DIR") from None
    path = os.path.abspath(given)
    if not os.path.isdir(path):
        raise UsageError(f"--cwd {given}: not a directory")
    return path


def run_params(args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    """Build the ``llm.run`` parameters from ``llmc run``'s arguments.

    Args:
        args: The parsed arguments.
        prompt: The prompt text.

    Returns:
        The params object; options that were not given are left out.

    Raises:
        UsageError: Options that contradict each other, or a bad ``--cwd``.
    """
    if args.detach and args.stream:
        raise UsageError("--detach and --stream do not go together: a detached run answers "
                         "at once (follow it with: llmc job ID --wait)")
    params: dict[str, Any] = {"blueprint": args.name, "prompt": prompt,
                              "cwd": _working_directory(args.cwd)}
    if args.stream:
        params["stream"] = True
    if args.json:
        params["json"] = True
    if args.timeout is not None:
        params["timeout"] = args.timeout
    if args.model is not None:
        params["model"] = args.model
    if args.session is not None:
        params["session"] = args.session
    if args.detach:
        params["detach"] = True
    return params


class Streamer:
    """Handles a run's notifications: prints output as it arrives.

    Args:
        divert: Send the stdout stream to stderr, keeping stdout for a JSON document.
    """

    def __init__(self, divert: bool = False) -> None:
        self.divert = divert
        self.stdout_parts: list[str] = []
        self.job: str | None = None

    def __call__(self, method: str, params: object) -> None:
        """Handle one notification (the ``on_notification`` callback)."""
        if not isinstance(params, dict):
            return
        if method == "llm.output":
            text = params.get("text")
            if not isinstance(text, str):
                return
            if params.get("stream") == "stderr":
                write(text, sys.stderr)
                return
            self.stdout_parts.append(text)
            write(text, sys.stderr if self.divert else sys.stdout)
        elif method == "llm.state":
            job = params.get("job")
            if isinstance(job, str):
                self.job = job
            delay = params.get("retry_in_s")
            if params.get("state") == "retrying" and isinstance(delay, int | float):
                error(f"attempt {format_value(params.get('attempt'))} failed; "
                      f"retrying in {delay:g} s")

    @property
    def streamed(self) -> str:
        """The stdout text printed so far."""
        return "".join(self.stdout_parts)


def print_answer(text: str, streamed: str | None = None) -> None:
    """Print a run's text exactly, minus what streaming has already printed.

    A newline is added only for a terminal, so that piped output stays byte-exact.

    Args:
        text: The result's ``text``.
        streamed: The stdout text already printed, or None when nothing was streamed.
    """
    rest = text
    if streamed:
        # The streamed parts add up to the text; if they did not, printing the text again
        # would show the answer twice, so only a missing tail is printed.
        rest = text[len(streamed):] if text.startswith(streamed) else ""
    if rest:
        write(rest)
    if text and not text.endswith("\n") and is_tty(sys.stdout):
        write("\n")


def cmd_run(args: argparse.Namespace) -> int:
    """``llmc run NAME [PROMPT]``."""
    params = run_params(args, read_prompt(args.prompt))
    machine = args.json or args.raw
    streamer = Streamer(divert=machine) if args.stream else None
    with _connect(args) as conn:
        result = _object(_call(conn, "llm.run", params, on_notification=streamer,
                               timeout=None), "llm.run")
    if args.detach:
        if args.raw:
            _dump(result)
        else:
            write(f"{format_value(result.get('job'))}\n")
        return exitcodes.OK
    if args.raw:
        _dump(result)
    elif args.json:
        value = result.get("json")
        if value is not None:
            _dump(value)
    else:
        print_answer(str(result.get("text") or ""),
                     streamer.streamed if streamer is not None else None)
    if result.get("truncated") is True:
        error("note: the output was truncated by llmd (its output limit was reached)")
    if args.json and result.get("json") is None:
        reason = result.get("json_error") or "no JSON value found"
        error(f"no JSON in the answer: {reason}")
        return exitcodes.NO_JSON
    return exitcodes.OK


# -- the other commands ------------------------------------------------------------------------

def _seconds(value: object) -> str:
    return f"{format_value(value)}s" if isinstance(value, int | float) else format_value(value)


def cmd_blueprints(args: argparse.Namespace) -> int:
    """``llmc blueprints``: name, parser, timeout, concurrency and description."""
    with _connect(args) as conn:
        result = _object(_call(conn, "blueprints.list"), "blueprints.list")
    if args.json:
        _dump(result)
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
    with _connect(args) as conn:
        result = _object(_call(conn, "daemon.info"), "daemon.info")
    if args.json:
        _dump(result)
    else:
        write("".join(line + "\n" for line in key_values(result)))
    return exitcodes.OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """``llmc jobs``: recent jobs, newest first."""
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    with _connect(args) as conn:
        result = _object(_call(conn, "jobs.list", params), "jobs.list")
    if args.json:
        _dump(result)
        return exitcodes.OK
    rows = [[format_value(j.get("job")), format_value(j.get("blueprint")),
             format_value(j.get("state")), format_value(j.get("attempts")),
             format_value(j.get("created_at"))]
            for j in result.get("jobs") or [] if isinstance(j, dict)]
    if not rows:
        write("no jobs\n")
        return exitcodes.OK
    write(table(["JOB", "BLUEPRINT", "STATE", "ATTEMPTS", "CREATED"], rows, terminal_width()))
    return exitcodes.OK


def job_status(record: dict[str, Any]) -> int:
    """The exit status that a job record stands for (OK while it has not finished)."""
    state = record.get("state")
    if not isinstance(state, str) or state not in _FAILED_STATES:
        return exitcodes.OK
    err = record.get("error")
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        return exitcodes.exit_code_for(err["code"])
    return _FAILED_STATES[state]


def cmd_job(args: argparse.Namespace) -> int:
    """``llmc job ID``: one job's record; the status follows the job's outcome."""
    params: dict[str, Any] = {"job": args.job}
    call_timeout: float | None = QUICK_CALL_TIMEOUT
    if args.wait:
        params["wait"] = True
        call_timeout = None
        if args.timeout is not None:
            params["timeout"] = args.timeout
            # Room for the daemon to notice its own timeout and answer.
            call_timeout = args.timeout + QUICK_CALL_TIMEOUT
    with _connect(args) as conn:
        record = _object(_call(conn, "jobs.get", params, timeout=call_timeout), "jobs.get")
    result = record.get("result")
    if args.json:
        _dump(record)
    elif args.text:
        if isinstance(result, dict):
            print_answer(str(result.get("text") or ""))
    else:
        shown = {key: value for key, value in record.items() if key not in ("result", "error")}
        lines = key_values(shown)
        err = record.get("error")
        if isinstance(err, dict):
            lines.append(f"error: {format_value(err.get('message'))} "
                         f"({format_value(err.get('code'))})")
        write("".join(line + "\n" for line in lines))
        if isinstance(result, dict) and result.get("text"):
            write("\n")
            print_answer(str(result["text"]))
    return job_status(record)


def cmd_cancel(args: argparse.Namespace) -> int:
    """``llmc cancel ID``."""
    with _connect(args) as conn:
        result = _object(_call(conn, "llm.cancel", {"job": args.job}), "llm.cancel")
    if args.json:
        _dump(result)
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
    with _connect(args) as conn:
        result = _object(_call(conn, method, params, timeout=timeout), method)
    if args.json:
        _dump(result)
        return exitcodes.OK
    health = result.get("blueprints")
    rows: list[list[str]] = []
    if isinstance(health, dict):
        for name, entry in health.items():
            if not isinstance(entry, dict):
                continue
            detail = format_value(entry.get("detail")) if entry.get("detail") else ""
            if entry.get("cooldown_until"):
                detail = f"until {format_value(entry['cooldown_until'])} {detail}".strip()
            rows.append([name, format_value(entry.get("state")),
                         _seconds(entry.get("latency_s")), format_value(entry.get("version")),
                         detail])
    if not rows:
        write("no blueprints\n")
        return exitcodes.OK
    write(table(["NAME", "STATE", "LATENCY", "VERSION", "DETAIL"], rows, terminal_width()))
    return exitcodes.OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "blueprints": cmd_blueprints,
    "info": cmd_info,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "cancel": cmd_cancel,
    "status": cmd_status,
}
