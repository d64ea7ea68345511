"""Sans-I/O message framing: bytes from a connection in, whole messages out.

A connection speaks one of two framings, chosen once by its first non-whitespace bytes:

- ``lsp``: those bytes start with ``Content-Length:`` or ``Content-Type:`` (header names
  in any case; the headers may come in any order). Each message is a header section
  (``Name: value`` lines ended by ``\\r\\n``; a bare ``\\n`` is accepted too) closed by an
  empty line, then exactly ``Content-Length`` body bytes.
- ``ndjson``: anything else. One message per ``\\n``-terminated line; a trailing ``\\r``
  is stripped and blank (all-whitespace) lines are skipped.

Invariants:
- ``feed`` never raises on any input and never holds more than about
  ``max_message + 8 KiB + len(last chunk)`` bytes (see ``buffered``).
- Frames come out in input order. A ``TooLarge`` frame is always the last one: the framer
  is then closed, and every later ``feed`` returns ``[]`` and discards its bytes.
- A ``FramingError`` (LSP only) does not close the framer: it skips ahead to the next
  ``Content-Length:`` it can find, starting just after the start of the bad line, and parses
  from there; each malformed header section found on the way is reported once. A header
  line with ``Content-Length:`` anywhere but at its start, or whose name is not an RFC 9110
  token, is malformed: that is what the tail of a body cut short by a too-small
  ``Content-Length`` looks like, and the well-formed header glued to it is then found
  again rather than swallowed.
- Each byte is scanned a bounded number of times: the scan position is remembered
  between feeds, so trickled input costs no more than input in one piece.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "MAX_HEADER_SECTION",
    "Frame",
    "Framer",
    "FramingError",
    "Message",
    "Mode",
    "TooLarge",
]

MAX_HEADER_SECTION = 8192

Mode: TypeAlias = Literal["unknown", "ndjson", "lsp"]

_LSP_SNIFF = b"content-length:"
# The header names the LSP base protocol defines; either may open a header section.
_LSP_HEADERS = (_LSP_SNIFF, b"content-type:")
# A header name is a token (RFC 9110, section 5.6.2).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESYNC = re.compile(rb"(?i)content-length:")
# Content-Length values past this many digits are absurd; int() on them would be slow.
_MAX_LENGTH_DIGITS = 18
_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class Message:
    """One complete message body (without its framing)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A message over the limit; the framer is closed after it.

    ``size_hint`` is the announced ``Content-Length`` (LSP) or the number of bytes of the
    line seen so far (NDJSON): a lower bound on the real size.
    """

    size_hint: int


@dataclass(frozen=True, slots=True)
class FramingError:
    """A malformed LSP header section; the connection can carry on."""

    message: str


Frame: TypeAlias = Message | TooLarge | FramingError


class Framer:
    """Splits one connection's byte stream into messages.

    Args:
        max_message: The largest message body accepted, in bytes.
    """

    def __init__(self, max_message: int) -> None:
        if max_message < 1:
            raise ValueError(f"max_message must be positive, got {max_message}")
        self.max_message = max_message
        self._mode: Mode = "unknown"
        self._buf = bytearray()
        self._closed = False
        # Where the next search for a line end (or resync point) starts, in ``_buf``.
        self._scan = 0
        # LSP: where the header line being read starts, in ``_buf``.
        self._line = 0
        # LSP state: a body of this many bytes is awaited (-1: reading headers).
        self._body_len = -1
        self._content_length = -1
        self._headers_seen = False
        self._resyncing = False

    @property
    def mode(self) -> Mode:
        """The connection's framing: ``"unknown"`` until its first bytes decide it."""
        return self._mode

    @property
    def buffered(self) -> int:
        """How many received bytes are held, waiting to complete a message."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True after a ``TooLarge``: the connection should be closed."""
        return self._closed

    def encode(self, payload: bytes) -> bytes:
        """Frame an outgoing message in this connection's mode.

        Args:
            payload: One serialised JSON message; for NDJSON it must not contain ``\\n``
                (compact JSON never does).

        Returns:
            The bytes to send: NDJSON (also while the mode is unknown) appends ``\\n``;
            LSP prepends a ``Content-Length`` header.
        """
        if self._mode == "lsp":
            return b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
        return payload + b"\n"

    @property
    def sized(self) -> bool:
        """Whether a frame states its size up front (LSP); NDJSON's does not."""
        return self._mode == "lsp"

    def frame_parts(self, size: int) -> tuple[bytes, bytes]:
        """What goes before and after a payload of ``size`` bytes, for senders that
        would rather not copy a large payload into :meth:`encode`'s result."""
        if self._mode == "lsp":
            return b"Content-Length: %d\r\n\r\n" % size, b""
        return b"", b"\n"

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes received and return the frames they complete.

        Args:
            data: Any bytes, in any chunking.

        Returns:
            The frames completed, in order; ``[]`` when none is (or when closed).
        """
        if self._closed or not data:
            return []
        if self._mode == "ndjson":
            return self._feed_ndjson(data)
        self._buf += data
        if self._mode == "unknown":
            mode = self._sniff()
            if mode == "unknown":
                return []
            if mode == "ndjson":
                return self._feed_ndjson(b"")
        return self._feed_lsp()

    # --- sniffing --------------------------------------------------------------------

    def _sniff(self) -> Mode:
        """Decide the mode once enough bytes are in (``"unknown"`` until then)."""
        # Leading whitespace means nothing in either framing, and keeping it would let
        # a peer grow the buffer without ever deciding.
        buf = self._buf = self._buf.lstrip(_WHITESPACE)
        head = bytes(buf[: len(_LSP_SNIFF)]).lower()
        if any(head.startswith(name) for name in _LSP_HEADERS):
            self._mode = "lsp"
        elif any(len(head) < len(name) and name.startswith(head) for name in _LSP_HEADERS):
            return "unknown"
        else:
            self._mode = "ndjson"
        return self._mode

    # --- NDJSON ----------------------------------------------------------------------

    def _feed_ndjson(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        # With nothing pending (the usual case) the lines are cut from ``data`` itself,
        # and only an incomplete last line is copied into the buffer.
        buf: bytes | bytearray
        if self._buf or not isinstance(data, bytes):
            self._buf += data
            buf = self._buf
        else:
            buf = data
        limit = self.max_message
        frames: list[Frame] = []
        start = 0
        scan = self._scan
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            if end - start > limit:
                return self._too_large(frames, end - start)
            if end > start:
                body = buf[start:end] if isinstance(buf, bytes) else _copy(buf, start, end)
                # Checking the first byte keeps isspace() off the common path.
                if body[0] not in _WHITESPACE or not body.isspace():
                    frames.append(Message(body))
            start = scan = nl + 1
        pending = len(buf) - start
        # A pending line one over the limit may still be a full-size line plus its "\r".
        if pending > limit and not (pending == limit + 1 and buf[-1] == 0x0D):
            return self._too_large(frames, pending)
        if isinstance(buf, bytes):
            if pending:
                self._buf += buf[start:]
        else:
            del buf[:start]
        self._scan = len(self._buf)
        return frames

    def _too_large(self, frames: list[Frame], size: int) -> list[Frame]:
        frames.append(TooLarge(size))
        self._closed = True
        self._buf = bytearray()
        self._scan = 0
        return frames

    # --- LSP -------------------------------------------------------------------------

    def _feed_lsp(self) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buf
        pos = 0  # start of the unconsumed bytes
        while True:
            if self._resyncing:
                found = _RESYNC.search(buf, self._scan)
                if found is None:
                    # Keep only what could be the start of a split "content-length:".
                    keep = max(pos, len(buf) - (len(_LSP_SNIFF) - 1))
                    pos = self._scan = self._line = keep
                    break
                self._resyncing = False
                pos = self._scan = self._line = found.start()
                self._reset_headers()
            if self._body_len >= 0:
                if len(buf) - pos < self._body_len:
                    break
                end = pos + self._body_len
                frames.append(Message(_copy(buf, pos, end)))
                pos = self._scan = self._line = end
                self._reset_headers()
                continue
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                if len(buf) - pos > MAX_HEADER_SECTION:
                    frames.append(FramingError(
                        f"header section longer than {MAX_HEADER_SECTION} bytes"))
                    # Step past this section's first byte so resync cannot find it again.
                    self._enter_resync(pos + 1)
                    continue
                self._scan = len(buf)
                break
            line_start = self._line
            self._scan = self._line = nl + 1
            if nl + 1 - pos > MAX_HEADER_SECTION:
                frames.append(FramingError(
                    f"header section longer than {MAX_HEADER_SECTION} bytes"))
                self._enter_resync(pos + 1)
                continue
            outcome = self._header_line(buf[line_start:nl])
            if isinstance(outcome, TooLarge):
                frames.append(outcome)
                self._closed = True
                self._buf = bytearray()
                self._scan = 0
                return frames
            if isinstance(outcome, FramingError):
                frames.append(outcome)
                # From inside the bad line: a header glued to the tail of a body cut short
                # starts there.
                self._enter_resync(line_start + 1)
                continue
            if not self._headers_seen or self._body_len >= 0:
                # The headers are done with (blank lines between messages are dropped).
                pos = self._scan
        del buf[:pos]
        self._scan -= pos
        self._line -= pos
        return frames

    def _reset_headers(self) -> None:
        self._body_len = -1
        self._content_length = -1
        self._headers_seen = False

    def _enter_resync(self, scan_from: int) -> None:
        self._resyncing = True
        self._scan = self._line = scan_from
        self._reset_headers()

    def _header_line(self, line: bytearray) -> TooLarge | FramingError | None:
        """Take one header line; at the empty line, arm the body read."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not self._headers_seen:
                return None
            if self._content_length < 0:
                return FramingError("header section without Content-Length")
            self._body_len = self._content_length
            return None
        self._headers_seen = True
        if _RESYNC.search(line, 1):
            # The tail of a body cut short, with the next message's header glued to it.
            return FramingError(f"malformed header line: {_show(line)}")
        colon = line.find(b":")
        if colon < 0:
            return FramingError(f"header line without a colon: {_show(line)}")
        name = bytes(line[:colon]).rstrip(b" \t")
        if not _TOKEN.fullmatch(name):
            return FramingError(f"malformed header name: {_show(name)}")
        if name.lower() != b"content-length":
            return None  # Content-Type and the like carry nothing for us.
        value = bytes(line[colon + 1 :]).strip()
        if not value.isdigit():
            if value.startswith(b"-") and value[1:].isdigit():
                return FramingError(f"negative Content-Length: {_show(value)}")
            return FramingError(f"invalid Content-Length: {_show(value)}")
        digits = value.lstrip(b"0")
        length = int(digits or b"0") if len(digits) <= _MAX_LENGTH_DIGITS else 10**18
        if length > self.max_message:
            return TooLarge(length)
        if 0 <= self._content_length != length:
            return FramingError("conflicting Content-Length headers")
        self._content_length = length
        return None


def _copy(buf: bytearray, start: int, end: int) -> bytes:
    """``bytes(buf[start:end])``, with one copy instead of two when that is worth it."""
    if end - start < 4096:
        return bytes(buf[start:end])
    with memoryview(buf) as view, view[start:end] as part:
        return part.tobytes()


def _show(raw: bytes | bytearray) -> str:
    """A short printable rendering of header bytes for an error message."""
    text = bytes(raw[:60]).decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(raw) > 60 else ""))
