"""A one-line status on the terminal that stderr goes to, and the second Ctrl-C.

The line is drawn as carriage return, erase-line (``ESC [2K``) and the text, without a newline,
so the next draw or :meth:`StatusLine.clear` replaces it; nothing of it ever reaches stdout.

Invariants:
- The line is drawn only while the terminal's cursor is at the start of a line: when stdout is
  the same terminal and streamed text has left a line unfinished, erasing the line would erase
  that text too, so the status waits until a newline comes.
- Whoever writes to the status's terminal calls :meth:`StatusLine.clear` first and reports the
  text with :meth:`StatusLine.wrote`, which keeps the cursor tracking right.
- The line never grows wider than the terminal: a wrapped line could not be erased with one
  erase-line.
- Loaded only by the commands that wait (``run``, ``job --wait``) and after a Ctrl-C.
"""

from __future__ import annotations

import os
import sys

from llmc import exitcodes
from llmc.output import PREFIX, cut, is_tty, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import TextIO

# Carriage return and erase-line: the cursor goes back to column 0 of an empty line.
CLEAR = "\r\x1b[2K"
# Width used when the terminal does not say (a fresh pseudo-terminal reports 0 columns).
FALLBACK_WIDTH = 80

# The status line on screen, for the second-Ctrl-C handler, which must erase it before exiting.
_visible: StatusLine | None = None


def _same_terminal(a: TextIO, b: TextIO) -> bool:
    try:
        first, second = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    # st_rdev names the terminal device, also when it was opened twice (/dev/tty and its pts).
    return first.st_rdev != 0 and first.st_rdev == second.st_rdev


class StatusLine:
    """A transient status line on a terminal.

    Args:
        stream: The terminal stream (stderr).
        shares_stdout: Whether stdout is the same terminal, so stdout text moves its cursor.
    """

    def __init__(self, stream: TextIO, shares_stdout: bool = False) -> None:
        self.stream = stream
        self.shares_stdout = shares_stdout
        self.visible = False
        self.at_line_start = True

    @classmethod
    def for_stderr(cls) -> StatusLine | None:
        """The status line for stderr, or None when stderr is no terminal that can show one.

        A ``dumb`` terminal cannot erase a line, so it gets none either.
        """
        stderr = sys.stderr
        if not is_tty(stderr) or os.environ.get("TERM") == "dumb":
            return None
        return cls(stderr, shares_stdout=_same_terminal(sys.stdout, stderr))

    def show(self, text: str) -> None:
        """Draw ``text`` (one line, prefixed ``llmc: ``) in place of the current status.

        Nothing is drawn while the cursor is in the middle of a line (see the invariants).
        """
        if not self.at_line_start:
            return
        line = " ".join((PREFIX + text).split())
        # One column spare: writing the last column makes some terminals wrap at once.
        # Cut by columns, not characters: a wide character takes two.
        line = cut(line, max(self._width() - 1, 0))
        write(CLEAR + line, self.stream)
        self._set_visible(True)

    def clear(self) -> None:
        """Erase the status line, if one is shown; the cursor is at column 0 afterwards."""
        if self.visible:
            write(CLEAR, self.stream)
            self._set_visible(False)

    def wrote(self, text: str, to_stdout: bool = False) -> None:
        """Report text written to stdout or stderr, which moves the terminal's cursor.

        Args:
            text: What was written (after :meth:`clear`).
            to_stdout: Written to stdout (it counts only when that is the same terminal).
        """
        if text and (self.shares_stdout or not to_stdout):
            self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        """Clear the status, and end a line that stdout or stderr left unfinished.

        Called before a note on stderr, so the note starts on a line of its own.
        """
        self.clear()
        if not self.at_line_start:
            write("\n", self.stream)
            self.at_line_start = True

    def note(self, message: str) -> None:
        """Print ``llmc: MESSAGE`` as a line of its own; the status returns at the next draw."""
        self.end_line()
        write(PREFIX + " ".join(message.split()) + "\n", self.stream)

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns if columns > 0 else FALLBACK_WIDTH

    def _set_visible(self, visible: bool) -> None:
        global _visible  # noqa: PLW0603 - one terminal, one status line; see _visible
        self.visible = visible
        _visible = self if visible else None


def quit_on_next_interrupt() -> None:
    """Make the next Ctrl-C end the process at once, with status 130.

    Called when the first Ctrl-C is being handled (cancelling a run can take a moment).
    ``os._exit`` is used because the handler can run anywhere, even inside the first
    interrupt's cleanup: raising there could reach the user as a traceback. Output is written
    with ``os.write`` for the same reason (a buffered stream may be mid-write). Only the main
    thread can set a handler; elsewhere this does nothing.
    """
    import contextlib  # noqa: PLC0415 - only needed once the user has pressed Ctrl-C
    import signal  # noqa: PLC0415

    def exit_now(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        message = (CLEAR if _visible is not None else "") + PREFIX + "interrupted\n"
        with contextlib.suppress(OSError):
            os.write(2, message.encode())
        os._exit(exitcodes.INTERRUPTED)

    try:
        signal.signal(signal.SIGINT, exit_now)
    except ValueError:
        return
