"""``llmc run``: send a prompt, follow the run, print the answer.

Invariants:
- Arguments are checked and the prompt is read before connecting, so a usage error never
  depends on whether the daemon runs.
- Stdout carries the answer and nothing else: the status line, notes and the CLI's own stderr
  go to stderr (the CLI's own, on a terminal, only with ``-v``). Text already written to
  stdout is never rewritten; when a retry voids it, a note on stderr says so.
- The run is streamed (``stream: true``) whenever its notifications are of use: to print the
  answer live, or to keep a status line on a terminal stderr. Live printing is the default
  only when stdout is a terminal and the answer is not wanted as JSON.
- Ctrl-C cancels the run before llmc exits 130; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import math
import os
import sys
import time

from llmc import exitcodes
from llmc.calling import UsageError, as_object, connect, dump, print_answer
from llmc.connection import ClientError
from llmc.output import error, format_value, is_tty, write
from llmc.statusline import StatusLine, quit_on_next_interrupt

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any, TextIO

    from llmc.connection import Connection

# How long, after Ctrl-C, to wait for llmd to cancel the run and for the job to end; closing
# the connection cancels the run anyway, so this only lets llmc exit knowing that it is done.
CANCEL_TIMEOUT = 5.0
# llmd's default kill_grace, for when it cannot be asked; and how long asking may take.
DEFAULT_KILL_GRACE = 5.0
GRACE_QUERY_TIMEOUT = 2.0


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


def run_params(args: argparse.Namespace, prompt: str, notify: bool = False) -> dict[str, Any]:
    """Build the ``llm.run`` parameters from ``llmc run``'s arguments.

    Args:
        args: The parsed arguments (``args.stream`` True only when streaming was asked for).
        prompt: The prompt text.
        notify: Ask for notifications even without ``args.stream`` (for the status line).

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
    if args.stream or (notify and not args.detach):
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
    if (args.base is not None or args.edit) and not args.isolate:
        raise UsageError("--edit and --base go with --isolate: an agent may edit files "
                         "unattended only in a git worktree of its own")
    if args.isolate:
        params["isolate"] = "worktree"
    if args.base is not None:
        params["base"] = args.base
    if args.edit:
        params["edit"] = True
    return params


class Streamer:
    """Follows a run's notifications: prints output live and keeps the status line.

    Args:
        blueprint: The blueprint's name, for the status line.
        live: Print the output as it arrives (else the notifications only feed the status).
        divert: Send the stdout stream to stderr, keeping stdout for a JSON document.
        status: The status line, or None when stderr is no terminal.
        show_stderr: Print the CLI's own stderr as it arrives (on a terminal, only with
            ``-v``: a failure's error quotes its tail anyway).
    """

    def __init__(self, blueprint: str = "", live: bool = True, divert: bool = False,
                 status: StatusLine | None = None, show_stderr: bool = True) -> None:
        self.blueprint = blueprint
        self.show_stderr = show_stderr
        self.live = live
        self.divert = divert
        self.status = status
        self.stdout_parts: list[str] = []
        self.job: str | None = None
        self.state: str | None = None
        self.attempt = 0
        self.since = time.monotonic()
        self.retry_in = 0.0

    def __call__(self, method: str, params: object) -> None:
        """Handle one notification (the ``on_notification`` callback)."""
        if not isinstance(params, dict):
            return
        if method == "llm.output":
            text = params.get("text")
            if not isinstance(text, str) or not self.live:
                return
            if params.get("stream") == "stderr":
                if self.show_stderr:
                    self._print(text, sys.stderr)
                return
            self.stdout_parts.append(text)
            self._print(text, sys.stderr if self.divert else sys.stdout)
        elif method == "llm.state":
            self._state(params)

    def tick(self) -> None:
        """Redraw the status line (the ``on_tick`` callback)."""
        if self.status is not None:
            self.status.show(self.describe())

    def describe(self, now: float | None = None) -> str:
        """The status line's text for the run's current state."""
        elapsed = (time.monotonic() if now is None else now) - self.since
        name = f"{self.blueprint} " if self.blueprint else ""
        if self.state is None:
            return f"{name}waiting for llmd"
        if self.state == "queued":
            return f"{name}queued" + (f" for {int(elapsed)} s" if elapsed >= 1 else "")
        if self.state == "running":
            again = f" (attempt {self.attempt})" if self.attempt > 1 else ""
            return f"{name}running for {int(elapsed)} s{again}"
        if self.state == "retrying":
            left = math.ceil(self.retry_in - elapsed)
            when = f"in {left} s" if left > 0 else "now"
            return f"{name}retrying {when} (attempt {self.attempt + 1})"
        return f"{name}{self.state}"

    @property
    def streamed(self) -> str:
        """The stdout text printed since the answer last started."""
        return "".join(self.stdout_parts)

    def _state(self, params: dict[str, Any]) -> None:
        job = params.get("job")
        if isinstance(job, str):
            self.job = job
        state = params.get("state")
        if not isinstance(state, str):
            return
        # Read before a note may clear it: a status on screen follows the state at once; one
        # not shown yet waits for its tick, so that a quick run does not flash by.
        shown = self.status is not None and self.status.visible
        attempt = params.get("attempt")
        self.state = state
        self.attempt = attempt if isinstance(attempt, int) else self.attempt
        self.since = time.monotonic()
        delay = params.get("retry_in_s")
        self.retry_in = float(delay) if isinstance(delay, int | float) else 0.0
        if state == "retrying":
            self._retrying(params.get("restart_output") is True)
        if shown:
            self.tick()

    def _retrying(self, restart: bool) -> None:
        if restart and self.live:
            # Printed text cannot be taken back; the reader learns that it is void.
            self._note("retrying; the answer starts again")
        elif self.live and self.status is None:
            self._note(f"attempt {format_value(self.attempt)} failed; retrying in "
                       f"{self.retry_in:g} s")
        if restart:
            self.stdout_parts.clear()

    def _print(self, text: str, stream: TextIO) -> None:
        status = self.status
        to_stdout = stream is sys.stdout
        if status is not None and (not to_stdout or status.shares_stdout):
            status.clear()
        write(text, stream)
        if status is not None:
            status.wrote(text, to_stdout=to_stdout)

    def _note(self, message: str) -> None:
        if self.status is not None:
            self.status.note(message)
        else:
            error(message)


def cancel_run(conn: Connection, job: str | None,
               grace: Callable[[], float] | None = None) -> None:
    """Cancel an interrupted run, and wait a little for it to end.

    With the job id (from the first ``llm.state``) this sends ``llm.cancel`` and then waits
    with ``jobs.get`` until the job has ended: unlike ``$/cancelRequest``, that is answered,
    so llmc exits once the CLI's processes are gone and the job is recorded cancelled, rather
    than leaving both to race with its disconnect. Before the id is known (always, for a run
    that is neither streamed nor shown on a status line), ``$/cancelRequest`` is sent and the
    run's own answer (-32800, given once its processes are gone) is waited for, for at most
    ``grace()`` + 1 s: the daemon's SIGTERM-to-SIGKILL grace, and a second for the rest.
    Either way, closing the connection cancels the run too, and a second Ctrl-C stops the
    waiting.
    """
    if job is None:
        if conn.cancel_pending() and grace is not None:
            conn.wait_pending(grace() + 1.0)
        return
    deadline = time.monotonic() + CANCEL_TIMEOUT
    try:
        reply = conn.call("llm.cancel", {"job": job}, timeout=CANCEL_TIMEOUT)
        left = deadline - time.monotonic()
        if isinstance(reply, dict) and reply.get("cancelled") is True and left > 0:
            conn.call("jobs.get", {"job": job, "wait": True, "timeout": left},
                      timeout=left + 1.0)
    except ClientError:
        return


def kill_grace(args: argparse.Namespace) -> float:
    """The longest ``kill_grace_s`` of the run's blueprint and its fallbacks, as llmd says.

    Asked on a connection of its own, since the run's has a request in flight; when llmd
    cannot say, the default grace.
    """
    try:
        with connect(args) as other:
            reply = other.call("blueprints.list", timeout=GRACE_QUERY_TIMEOUT)
    except ClientError:
        return DEFAULT_KILL_GRACE
    entries = reply.get("blueprints") if isinstance(reply, dict) else None
    by_name = {entry.get("name"): entry for entry in entries or [] if isinstance(entry, dict)}
    entry = by_name.get(args.name) or {}
    names = [args.name, *(entry.get("fallbacks") or [])]
    graces = [grace for name in names
              if isinstance(grace := (by_name.get(name) or {}).get("kill_grace_s"), int | float)
              and not isinstance(grace, bool)]
    return float(max(graces)) if graces else DEFAULT_KILL_GRACE


def _wants_live(args: argparse.Namespace) -> bool:
    if args.stream is not None:
        return bool(args.stream)
    # The default: live on a terminal, where waiting in silence is worst; not for JSON, whose
    # document is all stdout is for.
    return not args.detach and not args.json and not args.raw and is_tty(sys.stdout)


def cmd_run(args: argparse.Namespace) -> int:
    """``llmc run NAME [PROMPT]``."""
    prompt = read_prompt(args.prompt)
    status = None if args.detach else StatusLine.for_stderr()
    live = _wants_live(args)
    params = run_params(args, prompt, notify=live or status is not None)
    machine = args.json or args.raw
    # On a terminal the CLI's chatter hides the answer; -v shows it, a pipe keeps it.
    show_stderr = bool(getattr(args, "verbose", False)) or not is_tty(sys.stderr)
    streamer = Streamer(args.name, live=live, divert=machine, status=status,
                        show_stderr=show_stderr)
    with connect(args) as conn:
        try:
            reply = conn.call("llm.run", params, on_notification=streamer, timeout=None,
                              on_tick=streamer.tick if status is not None else None)
        except KeyboardInterrupt:
            quit_on_next_interrupt()
            if status is not None:
                status.end_line()
                if streamer.job is not None:
                    status.show(f"cancelling job {streamer.job} (Ctrl-C again: quit now)")
            cancel_run(conn, streamer.job, lambda: kill_grace(args))
            if status is not None:
                status.clear()
            raise
        except BaseException:
            if status is not None:
                # An error line follows; it must not land on a line that streaming left open.
                status.end_line()
            raise
        if status is not None:
            status.clear()
    result = as_object(reply, "llm.run")
    if args.detach:
        if args.raw:
            dump(result)
        else:
            write(f"{format_value(result.get('job'))}\n")
        return exitcodes.OK
    if args.raw:
        dump(result)
    elif args.json:
        value = result.get("json")
        if value is not None:
            dump(value)
    else:
        print_answer(str(result.get("text") or ""),
                     streamer.streamed if streamer.live else None)
    if result.get("truncated") is True:
        error("note: the output was truncated by llmd (its output limit was reached)")
    if args.json and result.get("json") is None:
        reason = result.get("json_error") or "no JSON value found"
        error(f"no JSON in the answer: {reason}")
        return exitcodes.NO_JSON
    return exitcodes.OK
