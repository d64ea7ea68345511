"""llmc: the command-line client of llmd.

Usage (``llmc --help`` and ``llmc COMMAND --help`` say more)::

    llmc run NAME [PROMPT]        run blueprint NAME; the prompt is read from stdin when omitted
    llmc blueprints | info | jobs | job ID [--follow] | cancel ID | status | watch
    llmc mcp                      serve llmd's tools to an MCP client on stdin/stdout
    llmc top [--once]             a live view of jobs, health and cooldowns
    llmc completion bash|zsh|fish print a shell completion script

Exit status:

====  ==============================================================================
 0    success
 1    the CLI failed (-32005), another llmd error, or output could not be written
 2    usage error: bad arguments, invalid params (-32602), unsupported method (-32601)
 3    llmd is not reachable, or it dropped the connection
 4    timed out (-32003), or job --wait --timeout ran out before the job ended
 5    rate limited (-32004), or a budget is exhausted (-32009)
 6    busy: llmd's queue is full (-32006)
 7    unknown blueprint (-32001) or its executable is missing (-32002)
 8    invalid configuration (-32008)
 9    run --json: the answer held no JSON value
10    the run or job was cancelled (-32800, -32802) or cut short by a daemon stop
130   this llmc was interrupted (Ctrl-C); a run in flight is cancelled first
====  ==============================================================================

Invariants:
- Start-up is on every command's critical path: this module imports only ``argparse`` (besides
  ``os``/``sys`` and the import-free ``llmc.exitcodes``/``llmc.output``); the socket and JSON
  code is loaded after the arguments are parsed, so ``--help`` and usage errors never pay for
  it. Only the subparser of the command being run is built, and help is sized without
  ``shutil``.
- Failures print one ``llmc: ...`` line on stderr and return a status from the table; no
  traceback reaches the user. After a first Ctrl-C, a second one ends the process at once
  (``llmc.statusline.quit_on_next_interrupt``), so it cannot interrupt the cleanup either.
"""

from __future__ import annotations

import argparse
import os
import sys

from llmc import __version__, exitcodes
from llmc.output import OutputError, error, indented, write

# typing costs milliseconds at start-up and is needed only by the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from llmc import connection

JOB_STATES = exitcodes.JOB_STATES
TIMEOUT_HELP = ("seconds (a positive number) or a category name such as quick, normal, long, "
                "extended")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``llmc:`` line, like every other error."""

    def error(self, message: str) -> NoReturn:
        error(f"{message} (see: {self.prog} --help)")
        raise SystemExit(exitcodes.USAGE)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text laid out as written, sized without ``shutil``.

    argparse measures the terminal with ``shutil.get_terminal_size`` whenever it makes a
    formatter, which every ``add_argument`` does; importing ``shutil`` (and the compression
    modules it pulls in) cost more than the rest of building the parser.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _help_width())


def _help_width() -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns) - 2
    stream = sys.__stdout__
    try:
        return os.get_terminal_size(stream.fileno()).columns - 2 if stream else 78
    except (ValueError, OSError):
        return 78


def parse_timeout(text: str) -> float | str:
    """Parse ``--timeout``: seconds, or the name of a timeout category.

    Args:
        text: The option's value.

    Returns:
        The seconds (an int when whole) or the category name.

    Raises:
        argparse.ArgumentTypeError: Neither a positive finite number nor a plausible name.
    """
    try:
        seconds = float(text)
    except ValueError:
        name = text.strip()
        if name and name[0].isalpha() and all(c.isalnum() or c in "-_" for c in name):
            return name
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected {TIMEOUT_HELP}")\
            from None
    if not _positive_finite(seconds):
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected {TIMEOUT_HELP}")
    return int(seconds) if seconds.is_integer() else seconds


def _positive_finite(number: float) -> bool:
    # False for NaN as well, since every comparison with NaN is false.
    return 0 < number < float("inf")


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not _positive_finite(seconds):
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: expected a positive number")
    return seconds


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a positive integer")
    return int(text)


def _add_run(run: argparse.ArgumentParser) -> None:
    run.add_argument("name", metavar="NAME", help="the blueprint (see: llmc blueprints)")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", default=None,
                     help="the prompt; '-' or omitted: read standard input")
    run.add_argument("--json", action="store_true",
                     help="extract the JSON value from the answer and print it (status 9 when "
                          "there is none)")
    run.add_argument("--raw", action="store_true",
                     help="print the whole result object as JSON")
    run.add_argument("--timeout", metavar="SECONDS|CATEGORY", type=parse_timeout,
                     help=f"the run's deadline: {TIMEOUT_HELP}")
    run.add_argument("--cwd", metavar="DIR",
                     help="working directory of the CLI (default: the current directory)")
    run.add_argument("--model", metavar="M", help="the model to ask the CLI for")
    run.add_argument("--session", metavar="ID", help="resume this CLI session")
    run.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                     help="print the answer as it arrives (to stderr with --json/--raw); "
                          "default: when stdout is a terminal and neither --json nor --raw "
                          "is given")
    run.add_argument("--detach", action="store_true",
                     help="start the run as a background job and print its id at once")
    run.add_argument("--isolate", action="store_true",
                     help="work in a git worktree of its own; see: llmc diff|apply|discard")
    run.add_argument("--base", metavar="head|working-tree|REF",
                     help="with --isolate: where the worktree starts (default: head)")
    run.add_argument("--edit", action="store_true",
                     help="with --isolate: let the agent edit files without asking")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="show the CLI's own stderr on a terminal too (it is hidden there "
                          "unless the run fails)")


def _add_jobs(jobs: argparse.ArgumentParser) -> None:
    jobs.add_argument("--state", choices=JOB_STATES, metavar="STATE",
                      help=f"only jobs in this state: {', '.join(JOB_STATES)}")
    jobs.add_argument("--blueprint", metavar="NAME", help="only jobs this blueprint ran")
    jobs.add_argument("--limit", type=_positive_int, default=50, help="at most this many (50)")
    jobs.add_argument("--unapplied", action="store_true",
                      help="only jobs whose worktree holds changes not applied nor discarded")


def _add_job(job: argparse.ArgumentParser) -> None:
    job.add_argument("job", metavar="ID")
    job.add_argument("--wait", action="store_true", help="wait until the job has ended")
    job.add_argument("--timeout", metavar="SECONDS", type=_positive_seconds,
                     help="with --wait: give up after this long (status 4)")
    job.add_argument("--text", action="store_true", help="print only the answer's text")
    job.add_argument("--follow", action="store_true",
                     help="print the job's output as it comes, then exit with its status")


def _add_watch(watch: argparse.ArgumentParser) -> None:
    watch.add_argument("--state", action="append", choices=JOB_STATES, metavar="STATE",
                       help="only changes to this state (repeatable): "
                            f"{', '.join(JOB_STATES)}")
    watch.add_argument("--blueprint", metavar="NAME", help="only jobs of this blueprint")
    watch.add_argument("--notify", action="store_true",
                       help="also raise a desktop notification (notify-send) when a job ends")


def _add_cancel(cancel: argparse.ArgumentParser) -> None:
    cancel.add_argument("job", metavar="ID")


def _add_diff(diff: argparse.ArgumentParser) -> None:
    diff.add_argument("job", metavar="ID")
    diff.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour the diff (auto: on a terminal)")


def _add_status(status: argparse.ArgumentParser) -> None:
    status.add_argument("blueprint", metavar="NAME", nargs="?", help="only this blueprint")
    status.add_argument("--check", action="store_true", help="probe now instead of the cache")


def _add_mcp(mcp: argparse.ArgumentParser) -> None:
    mcp.add_argument("--max-chars", metavar="N", type=_positive_int, default=None,
                     help="cut answers longer than N characters (at least 200); the rest is "
                          "read in pages with the result tool (default: $LLMC_MCP_MAX_CHARS, "
                          "else 20000)")
    mcp.add_argument("--progress-interval", metavar="SECONDS", type=_positive_seconds,
                     default=None,
                     help="seconds between progress notifications while a call waits "
                          "(default: $LLMC_MCP_PROGRESS_S, else 5)")
    mcp.add_argument("--max-wait", metavar="SECONDS", type=_positive_seconds, default=None,
                     help="the longest a call waits before it answers with the job id of a "
                          "run still going (default: $LLMC_MCP_MAX_WAIT, else 50, or 300 for "
                          "a call that asked for progress)")


def _add_usage(usage: argparse.ArgumentParser) -> None:
    when = usage.add_mutually_exclusive_group()
    when.add_argument("--today", action="store_true", help="runs that ended today")
    when.add_argument("--week", action="store_true", help="this week (from Monday)")
    when.add_argument("--month", action="store_true", help="this calendar month")
    when.add_argument("--since", metavar="DATE",
                      help="from DATE (YYYY-MM-DD, local) or an RFC 3339 time")
    usage.add_argument("--by", choices=("blueprint", "model", "day", "cwd"),
                       help="one row per blueprint, model, day or cwd")


def _add_top(top: argparse.ArgumentParser) -> None:
    top.add_argument("--once", action="store_true",
                     help="print one snapshot as plain text and exit (also when stdout is "
                          "not a terminal)")


def _add_completion(completion: argparse.ArgumentParser) -> None:
    completion.add_argument("shell", metavar="SHELL", choices=("bash", "zsh", "fish"),
                            help="bash, zsh or fish")


def _add_nothing(parser: argparse.ArgumentParser) -> None:
    del parser


# name: (one-line help, description or "", adds the command's own arguments)
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": ("run a blueprint on a prompt and print the answer",
            "Run blueprint NAME on PROMPT and print the answer's text.\n"
            "Without PROMPT, or with '-', the prompt is read from standard input (UTF-8).\n"
            "A prompt that starts with '-' goes after '--': llmc run NAME -- '--prompt'.\n"
            "On a terminal the answer is printed as it arrives, and a terminal stderr shows\n"
            "the run's state on one line. Ctrl-C cancels the run (status 130); a second\n"
            "Ctrl-C quits at once.",
            _add_run),
    "blueprints": ("list the configured blueprints", "", _add_nothing),
    "info": ("show the daemon's facts", "", _add_nothing),
    "jobs": ("list recent jobs, newest first", "", _add_jobs),
    "job": ("show one job",
            "Show one job's record and, once it has succeeded, its answer; --follow\n"
            "prints its output as it comes (also after a restart of llmd) instead.\n"
            "The exit status follows the job's outcome: 0 succeeded (or not ended yet), the\n"
            "error's status when it failed (as for run), 4 timed out, 10 cancelled or\n"
            "interrupted by a daemon stop.", _add_job),
    "watch": ("print job events as they happen",
              "Print a line for every state change of every job (started by any client)\n"
              "until interrupted; --json prints each event as one JSON object per line.\n"
              "--notify also raises a desktop notification when a job ends.", _add_watch),
    "cancel": ("cancel a job",
               "Cancel a job: prints 'cancelled ID', or that it had already finished (also\n"
               "status 0). An unknown ID is status 1.", _add_cancel),
    "diff": ("show what an isolated job changed, as a diff against its base",
             "Show the unified diff of job ID's worktree against its base (binary files\n"
             "named). On a terminal it is coloured, and paged through $PAGER when long.",
             _add_diff),
    "apply": ("apply an isolated job's changes to the checkout",
              "Merge job ID's changes into the checkout it was started from (three-way\n"
              "against its base), then remove its worktree. A conflict applies nothing and\n"
              "names the files (status 1).", _add_cancel),
    "discard": ("throw an isolated job's worktree away", "", _add_cancel),
    "status": ("show the blueprints' health (from llmd's cache)", "", _add_status),
    "usage": ("show what runs cost, from llmd's usage ledger",
              "Sum the runs that ended (all of them, or --today, --week, --month, --since):\n"
              "runs, outcomes, tokens, cost and time, per --by group, and the budgets' use.\n"
              "On a terminal a bar column shows each group's cost (its runs when no cost\n"
              "is known).", _add_usage),
    "stats": ("show each blueprint's runs, failures and durations (last hour and day)", "",
              _add_nothing),
    "metrics": ("print llmd's metrics in the Prometheus text format", "", _add_nothing),
    "mcp": ("serve llmd's tools to an MCP client on stdin/stdout",
            "Speak the Model Context Protocol on stdin/stdout, for an MCP client (Claude\n"
            "Code, Cursor, Zed, VS Code...) to start: its tools run, start, wait, result,\n"
            "peek, jobs, cancel and status hand every call to llmd. For Claude Code:\n"
            "  claude mcp add llmd -- llmc mcp\n"
            "Logs go to stderr; it ends when stdin does.", _add_mcp),
    "top": ("watch llmd at work: jobs, health, cooldowns, warm processes",
            "A live view, refreshed every second: running and queued jobs (id, blueprint,\n"
            "state, elapsed, output so far, warm, cwd), each blueprint's health and\n"
            "cooldown, warm processes and today's runs and cost where llmd keeps them.\n"
            "Keys: q quit, c cancel the selected job, f follow it, arrows or j/k select.\n"
            "--once (or a stdout that is no terminal) prints one snapshot.", _add_top),
    "completion": ("print a shell completion script (bash, zsh, fish)",
                   "Print a completion script for SHELL: commands, options, and blueprint\n"
                   "names and job ids asked of llmd as you type. Add one line to your shell's\n"
                   "start-up file:\n"
                   "  bash (~/.bashrc):   eval \"$(llmc completion bash)\"\n"
                   "  zsh (~/.zshrc):     eval \"$(llmc completion zsh)\"\n"
                   "  fish (config.fish): llmc completion fish | source", _add_completion),
}

# What `llmc` alone prints: the commands people use most.
SHORT_USAGE = """\
usage: llmc COMMAND [ARGS...]

  llmc run NAME "PROMPT"   run a blueprint on a prompt and print the answer
  llmc status              which blueprints are ready, cooling down or missing
  llmc jobs                recent jobs (llmc job ID shows one)
  llmc top                 watch llmd at work, live
  llmc blueprints          the blueprints you can run

Every command: llmc --help; one command's options: llmc COMMAND --help.
Shell completion: llmc completion bash|zsh|fish.
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build llmc's argument parser (one subparser per command).

    Args:
        only: Build just this command's subparser. Each subparser costs about half a
            millisecond to build, which a run should not pay for the six it does not use.

    Returns:
        The parser.
    """
    epilog = exitcodes.epilog()
    raw = _Formatter
    # Without abbreviations, the scan in command_in() knows every top-level option.
    parser = _Parser(
        prog="llmc", formatter_class=raw, epilog=epilog, allow_abbrev=False,
        description="Client of llmd, the daemon that runs LLM command-line tools for you.")
    parser.add_argument("--version", action="version", version=f"llmc {__version__}")
    parser.add_argument(
        "--socket", metavar="PATH", default=None,
        help="llmd's socket (default: $LLMD_SOCKET, else $XDG_RUNTIME_DIR/llmd/llmd.sock, "
             "else /tmp/llmd-$UID/llmd.sock)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, description, add_arguments) in COMMANDS.items():
        if only is not None and name != only:
            continue
        sub = subparsers.add_parser(name, help=summary, description=description or summary,
                                    formatter_class=raw, epilog=epilog)
        add_arguments(sub)
        # SUPPRESS: when not given after the command, the one before it (or None) stays.
        sub.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                         help="llmd's socket (overrides $LLMD_SOCKET)")
        if name not in ("run", "mcp", "completion", "top"):
            sub.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def command_in(argv: list[str]) -> str | None:
    """The command that ``argv`` names, when that is certain before parsing.

    Returns:
        The command, or None when ``argv`` asks for top-level help, has an unknown option
        before the command, or names no known command (the full parser then explains).
    """
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--socket":
            skip = True
        elif arg.startswith("--socket="):
            continue
        elif arg.startswith("-"):
            return None
        else:
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run llmc.

    Args:
        argv: The arguments without the program name; None means ``sys.argv[1:]``.

    Returns:
        The exit status (see the module's table).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # First, so that a second Ctrl-C during the rest cannot end in a traceback.
        from llmc.statusline import quit_on_next_interrupt  # noqa: PLC0415

        quit_on_next_interrupt()
        error("interrupted")
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return exitcodes.FAILED
    except OutputError as exc:
        # Part of the output is missing: the status says so, and a line says why (unless it
        # is stderr that cannot be written).
        import contextlib  # noqa: PLC0415 - only on this path

        with contextlib.suppress(OutputError, OSError):
            error(str(exc))
        _silence_stdout()
        return exitcodes.FAILED


def _main(argv: list[str] | None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["__complete"]:
        # What a completion script asks for as you type; never in --help.
        from llmc.completion import complete_names  # noqa: PLC0415

        return complete_names(arguments[1] if len(arguments) > 1 else "", None)
    parser = build_parser(only=command_in(arguments))
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:
        return _status_of(exc)
    if args.command is None:
        # A usage error like any other (status 2), but one a newcomer meets first.
        write(SHORT_USAGE, sys.stderr)
        return exitcodes.USAGE

    if args.command == "completion":
        from llmc.completion import cmd_completion  # noqa: PLC0415

        return cmd_completion(args)

    if args.command == "mcp":
        # Without the human-output commands: an MCP client waits for this one to start.
        from llmc.mcp import server  # noqa: PLC0415

        return server.main(args)

    # Loaded only now: --help and usage errors have returned above without socket or json.
    from llmc import commands  # noqa: PLC0415
    from llmc.connection import ClientError  # noqa: PLC0415

    try:
        return commands.HANDLERS[args.command](args)
    except commands.UsageError as exc:
        error(str(exc))
        return exitcodes.USAGE
    except UnicodeEncodeError:
        error("an argument is not valid UTF-8 text")
        return exitcodes.USAGE
    except ClientError as exc:
        return report(exc, raw=bool(getattr(args, "raw", False)))


def report(exc: Exception, raw: bool = False) -> int:
    """Print a client error the llmc way and return its exit status.

    Args:
        exc: A :class:`llmc.connection.ClientError`.
        raw: Also print the error object as JSON on stdout (``run --raw``).

    Returns:
        The exit status from the module's table.
    """
    from llmc import connection  # noqa: PLC0415

    if isinstance(exc, connection.RpcError):
        return _report_rpc(exc, raw)
    error(str(exc))
    if isinstance(exc, connection.MessageTooLarge):
        return exitcodes.USAGE
    if isinstance(exc, connection.DaemonUnavailable | connection.ConnectionLost):
        return exitcodes.UNREACHABLE
    if isinstance(exc, connection.CallTimeout):
        return exitcodes.TIMED_OUT
    return exitcodes.FAILED


def _report_rpc(exc: connection.RpcError, raw: bool) -> int:
    import json  # noqa: PLC0415

    if exc.code == -32601:
        error(f"this llmd does not support {exc.method} yet")
        return exitcodes.USAGE
    message = exc.message
    retry_after = exc.data.get("retry_after_s")
    if exc.code == -32004 and isinstance(retry_after, int | float):
        message = f"{message} (retry after {retry_after:g} s)"
    error(message)
    tail = exc.data.get("stderr")
    if exc.code == -32005 and isinstance(tail, str) and tail.strip():
        write(indented(tail), sys.stderr)
    if raw:
        document = {"code": exc.code, "message": exc.message, "data": exc.data}
        write(json.dumps({"error": document}, indent=2, ensure_ascii=False) + "\n")
    return exitcodes.exit_code_for(exc.code)


def _status_of(exc: SystemExit) -> int:
    if exc.code is None:
        return exitcodes.OK
    if isinstance(exc.code, int):
        return exc.code
    return exitcodes.USAGE


def _silence_stdout() -> None:
    # The reader went away (llmc ... | head). Point stdout at /dev/null so the interpreter's
    # final flush does not fail a second time with a traceback.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return


if __name__ == "__main__":
    sys.exit(main())
