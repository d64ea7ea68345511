"""``llmc diff``, ``llmc apply`` and ``llmc discard``: the worktree of an isolated job.

Invariants:
- The diff is printed as llmd sends it; colour only on a terminal (or ``--color always``),
  and the pager (``$PAGER``, else ``less -R``) only on a terminal and for a diff taller
  than it, started as an argv, never through a shell.
- ``--json`` prints the method's result and nothing else on stdout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from llmc import exitcodes
from llmc.calling import as_object, call, connect, dump
from llmc.output import error, format_value, is_tty, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

_COLOURS = (("+++", "\x1b[1m"), ("---", "\x1b[1m"), ("diff ", "\x1b[1m"),
            ("@@", "\x1b[36m"), ("+", "\x1b[32m"), ("-", "\x1b[31m"))


def colour(diff: str) -> str:
    """A unified diff with ANSI colours: headers bold, hunks cyan, added green, removed red."""
    lines = []
    for line in diff.splitlines(keepends=True):
        shown = line
        for prefix, code in _COLOURS:
            if line.startswith(prefix):
                body = line.rstrip("\n")
                shown = f"{code}{body}\x1b[0m" + line[len(body):]
                break
        lines.append(shown)
    return "".join(lines)


def _page(text: str) -> bool:
    """Show ``text`` through the pager; False when there is none to start."""
    words = shlex.split(os.environ.get("PAGER") or "less -R")
    if not words or shutil.which(words[0]) is None:
        return False
    env = dict(os.environ)
    env.setdefault("LESS", "FRX")  # quit when it fits, keep colours
    try:
        subprocess.run(words, input=text.encode("utf-8", "surrogateescape"),
                       env=env, check=False)
    except OSError:
        return False
    return True


def cmd_diff(args: argparse.Namespace) -> int:
    """``llmc diff ID``: the job's changes against its base."""
    with connect(args) as conn:
        result = as_object(call(conn, "jobs.diff", {"job": args.job}), "jobs.diff")
    if args.json:
        dump(result)
        return exitcodes.OK
    diff = str(result.get("diff") or "")
    if not diff:
        write(f"job {args.job} changed nothing\n")
        return exitcodes.OK
    tty = is_tty(sys.stdout)
    if args.color == "always" or (args.color == "auto" and tty
                                  and not os.environ.get("NO_COLOR")):
        diff = colour(diff)
    height = shutil.get_terminal_size().lines
    if tty and diff.count("\n") >= height and _page(diff):
        return exitcodes.OK
    write(diff)
    return exitcodes.OK


def cmd_apply(args: argparse.Namespace) -> int:
    """``llmc apply ID``: merge the job's changes into its checkout."""
    with connect(args) as conn:
        result = as_object(call(conn, "jobs.apply", {"job": args.job}), "jobs.apply")
    if args.json:
        dump(result)
        return exitcodes.OK
    files = result.get("files") or []
    write(f"applied {args.job}: {len(files)} file{'s' if len(files) != 1 else ''} changed\n")
    overlapping = result.get("overlapping")
    if isinstance(overlapping, dict):
        for name, other in sorted(overlapping.items()):
            error(f"note: {name} was also changed by job {format_value(other)}, applied "
                  "before; the changes merged cleanly")
    return exitcodes.OK


def cmd_discard(args: argparse.Namespace) -> int:
    """``llmc discard ID``: remove the job's worktree."""
    with connect(args) as conn:
        result = as_object(call(conn, "jobs.discard", {"job": args.job}), "jobs.discard")
    if args.json:
        dump(result)
    else:
        write(f"discarded {args.job}'s worktree\n")
    return exitcodes.OK
