"""Writing llmc's output: exact text, one-line errors, tables and ``key: value`` lines.

Invariants:
- Text goes out as UTF-8 bytes when the stream has a binary buffer, so an answer is printed
  exactly whatever the locale's encoding; characters that cannot be encoded are replaced rather
  than turned into a traceback.
- Every error line starts with ``llmc: `` and is one line.
- Every byte handed to :func:`write` is written, or it raises: short writes are completed
  (a pipe or a disk may take part of a write and refuse the rest), a failure is
  ``BrokenPipeError`` for a reader that went away and :class:`OutputError` for anything else.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, BinaryIO, TextIO

PREFIX = "llmc: "


class OutputError(Exception):
    """Writing to stdout or stderr failed (a full disk, an I/O error); ``str()`` says so."""


def write(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` to ``stream`` (stdout by default) and flush it.

    Args:
        text: The text, written as is.
        stream: The destination; its binary ``buffer`` is used when it has one.

    Raises:
        BrokenPipeError: The reader went away.
        OutputError: Not every byte could be written.
    """
    target = sys.stdout if stream is None else stream
    name = "standard error" if target is sys.stderr else "standard output"
    try:
        buffer = getattr(target, "buffer", None)
        if buffer is None:
            target.write(text)
            target.flush()
            return
        # Text already written through the text layer must come out first.
        target.flush()
        buffer.flush()
        _write_all(buffer, text.encode("utf-8", "replace"))
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write to {name}: {exc.strerror or exc}") from None


def _write_all(buffer: BinaryIO, data: bytes) -> None:
    # Straight to the descriptor where there is one: a buffered writer reports a short
    # write as a count that is easy to miss, and keeps what it could not write for a flush
    # that may never be checked.
    try:
        fd = buffer.fileno()
    except (OSError, ValueError, AttributeError):
        fd = -1
    view = memoryview(data)
    while view:
        if fd < 0:
            written = buffer.write(view)
        else:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                # Someone left the descriptor non-blocking: wait until it takes more.
                import select  # noqa: PLC0415 - rare; kept off the start-up path

                select.select([], [fd], [])
                continue
        view = view[written or 0:]
    if fd < 0:
        buffer.flush()


def one_line(text: str) -> str:
    """Collapse every run of whitespace (newlines included) into one space."""
    return " ".join(text.split())


def error(message: str) -> None:
    """Print ``llmc: MESSAGE`` as one line on stderr."""
    write(PREFIX + one_line(message) + "\n", sys.stderr)


def indented(text: str, prefix: str = "  ", max_lines: int = 40) -> str:
    """Indent the last ``max_lines`` non-blank-trailing lines of ``text``.

    Args:
        text: Multi-line text such as a CLI's stderr tail.
        prefix: What each line starts with.
        max_lines: How many lines to keep, counted from the end.

    Returns:
        The indented lines, each ending in a newline ("" for blank text).
    """
    lines = text.rstrip().splitlines()[-max_lines:]
    return "".join(f"{prefix}{line.rstrip()}\n" for line in lines)


def is_tty(stream: TextIO | None) -> bool:
    """Whether ``stream`` is an open terminal."""
    if stream is None:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The width to fit tables into, or None when output is not a terminal.

    ``$COLUMNS`` wins when set, as with other tools; a pipe gets whole lines so that ``grep``
    sees everything.
    """
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    target = sys.stdout if stream is None else stream
    if not is_tty(target):
        return None
    try:
        return os.get_terminal_size(target.fileno()).columns
    except (OSError, ValueError):
        return None


def display_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: East Asian wide and full-width characters
    (CJK, most emoji) take two, combining marks, variation selectors and other zero-width
    characters none."""
    if text.isascii():
        return len(text)
    import unicodedata  # noqa: PLC0415 - only non-ASCII cells need it

    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def cut(text: str, width: int) -> str:
    """The longest start of ``text`` that takes at most ``width`` columns."""
    if display_width(text) <= width:
        return text
    used = 0
    for end, char in enumerate(text):
        used += display_width(char)
        if used > width:
            return text[:end]
    return text


def truncate(text: str, width: int) -> str:
    """Shorten ``text`` to ``width`` columns, marking the cut with ``...``."""
    if display_width(text) <= width:
        return text
    if width <= 3:
        return cut(text, max(width, 0))
    return cut(text, width - 3) + "..."


def format_value(value: object) -> str:
    """Render one JSON value for human output."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        return ", ".join(format_value(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={format_value(item)}" for key, item in value.items())
    return one_line(str(value))


def key_values(mapping: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Flatten a JSON object into ``key: value`` lines, nested keys joined with dots.

    Args:
        mapping: The object.
        prefix: Prepended to every key (used for nesting).

    Returns:
        One line per leaf value, without newlines.
    """
    lines: list[str] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            lines.extend(key_values(value, prefix=f"{name}."))
        else:
            lines.append(f"{name}: {format_value(value)}")
    return lines


# The narrowest a flexible column gets before droppable columns are left out instead.
MIN_FLEX_WIDTH = 8


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int | None,
          flex: int = -1, droppable: Sequence[int] = ()) -> str:
    """Lay out rows in aligned columns that fit ``width`` (in terminal columns).

    To fit, the columns in ``droppable`` are left out (in that order) while the table could
    not fit even with the ``flex`` column narrowed to :data:`MIN_FLEX_WIDTH`; then the flex
    column is narrowed, its cells cut with ``...``; lines still too wide are cut at ``width``.

    Args:
        headers: Column titles.
        rows: Cells, already rendered as text.
        width: The line width to fit, or None for no limit.
        flex: The column that gives way; the last one by default.
        droppable: Columns (not ``flex``) that may be left out, least wanted first.

    Returns:
        The table, each line ending in a newline.
    """
    all_rows = [list(headers)] + [[one_line(cell) for cell in row] for row in rows]
    count = len(headers)
    flex %= count
    widths = [max(display_width(row[i]) for row in all_rows) for i in range(count)]
    keep = list(range(count))
    if width is not None:
        def needed() -> int:
            return sum(widths[i] for i in keep) + 2 * (len(keep) - 1)

        floor = min(widths[flex], MIN_FLEX_WIDTH)
        for column in droppable:
            if needed() - (widths[flex] - floor) <= width:
                break
            keep.remove(column % count)
        widths[flex] = max(widths[flex] - max(needed() - width, 0), 0)
    out: list[str] = []
    for row in all_rows:
        cells = [(truncate(row[i], widths[i]) if i == flex else row[i], widths[i])
                 for i in keep]
        # Padded to columns, not characters: CJK and emoji take two.
        line = "  ".join(cell + " " * (size - display_width(cell)) for cell, size in cells)
        line = line.rstrip()
        out.append((line if width is None else cut(line, width).rstrip()) + "\n")
    return "".join(out)
