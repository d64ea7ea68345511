"""What every llmc command shares: connecting, calling, and printing JSON and answers.

Invariants:
- Every call goes through :func:`call`: Ctrl-C while it waits sends ``$/cancelRequest`` for the
  request in flight before the interrupt propagates (closing the connection then cancels a
  non-detached run in any case).
- Answers are printed byte-exact (:func:`print_answer`); JSON documents go to stdout alone.
"""

from __future__ import annotations

import json
import sys

from llmc.connection import Connection, ProtocolError, socket_path
from llmc.output import is_tty, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from llmc.connection import NotificationHandler, TickHandler

# Seconds to wait for answers that llmd gives from memory; runs and waits have no client limit
# because the daemon enforces their deadlines.
QUICK_CALL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0


class UsageError(Exception):
    """The arguments cannot work; ``str()`` says why and how to fix it."""


def connect(args: argparse.Namespace) -> Connection:
    """Connect to the daemon that ``--socket`` / ``$LLMD_SOCKET`` names."""
    return Connection.connect(socket_path(getattr(args, "socket", None)), CONNECT_TIMEOUT)


def call(conn: Connection, method: str, params: dict[str, Any] | None = None, *,
         on_notification: NotificationHandler | None = None,
         timeout: float | None = QUICK_CALL_TIMEOUT,
         on_tick: TickHandler | None = None) -> Any:
    """:meth:`Connection.call` that cancels the request when Ctrl-C interrupts it."""
    try:
        return conn.call(method, params, on_notification=on_notification, timeout=timeout,
                         on_tick=on_tick)
    except KeyboardInterrupt:
        conn.cancel_pending()
        raise


def dump(value: object) -> None:
    """Print ``value`` as an indented JSON document on stdout."""
    write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def as_object(value: object, method: str) -> dict[str, Any]:
    """``value`` when it is a JSON object.

    Raises:
        ProtocolError: It is not; llmd answers every method llmc uses with an object.
    """
    if not isinstance(value, dict):
        raise ProtocolError(f"llmd answered {method} with {type(value).__name__}, not an object")
    return value


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
