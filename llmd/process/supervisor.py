"""Run one attempt of a CLI as its own process group, and always clean it up.

Invariants:
- Every child starts in a new session, so its pid is the pgid of everything it spawns
  (unless a descendant deliberately starts yet another session).
- The group leader is waited for through a pidfd *without* reaping it, so while the
  group is signalled the zombie leader keeps the pgid from being reused.
- When the leader exits, whatever is left of its group is killed at once: a
  grandchild holding the pipes can never keep an attempt alive.
- On cancellation (timeout, cancel, disconnect, shutdown) the group gets SIGTERM,
  then SIGKILL after the blueprint's grace; the cleanup is shielded and bounded.
- Output is read in chunks and decoded incrementally. All of it goes to ``on_output``;
  stdout is *kept* only up to a cap (then ``truncated``), stderr keeps its tail. A slow
  consumer of ``on_output`` slows the reader, and so the child: memory stays bounded.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import trio

from llmd.process import groups
from llmd.process.argv import Invocation

log = logging.getLogger("llmd.supervisor")

# Reads start small (a large read buffer costs every short run an allocation); a stream
# that fills them moves up to 1 MiB reads from a pipe made as large: fewer wake-ups.
FIRST_READ = 65536
READ_CHUNK = 1 << 20
PIPE_SIZE = 1 << 20
STDERR_TAIL_CHARS = 16384
# Kept stdout is joined into blocks this large as it comes: as large as the blocks malloc
# maps apart (llmd.cli.tune_malloc), which go back to the system when freed.
SEGMENT_CHARS = 4 << 20
# After the group is killed, how long pipes may stay open before the holder is deemed
# to have escaped the group (a daemonised grandchild in a session of its own).
DRAIN_AFTER_KILL = 0.5

Stream = Literal["stdout", "stderr"]
OutputSink = Callable[[Stream, str], Awaitable[None]]


class StderrTail:
    """The last :data:`STDERR_TAIL_CHARS` characters a process wrote to stderr, decoded
    across reads, and how many it wrote in all: one turn of a long-lived process takes
    what came after its :attr:`written` mark (:meth:`since`)."""

    def __init__(self) -> None:
        self.text = ""
        self.written = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes | bytearray) -> str:
        """Take one read (``b""``: the stream ended); the text it decoded to."""
        text = self._decoder.decode(chunk, final=not chunk)
        self.written += len(text)
        self.text = (self.text + text)[-STDERR_TAIL_CHARS:]
        return text

    def since(self, mark: int) -> str:
        """What was written after ``mark`` (an earlier :attr:`written`), as far as kept."""
        count = self.written - mark
        return self.text[-count:] if count > 0 else ""


class Attempt:
    """One supervised child process (and its group).

    Attributes are readable after :meth:`run` returns *or raises*, so a timed-out or
    cancelled run can still report partial output.

    Args:
        invocation: argv and stdin.
        env: The child's whole environment.
        cwd: Working directory (already validated).
        max_output_bytes: How much stdout to keep.
        kill_grace: Seconds between SIGTERM and SIGKILL.
        on_output: Awaited with each decoded chunk of stdout and stderr.
        on_spawn: Called with the pid once the child exists.
    """

    def __init__(self, invocation: Invocation, *, env: Mapping[str, str], cwd: str | None,
                 max_output_bytes: int, kill_grace: float,
                 on_output: OutputSink | None = None,
                 on_spawn: Callable[[int], None] | None = None) -> None:
        self.invocation = invocation
        self.env = dict(env)
        self.cwd = cwd
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self.on_output = on_output
        self.on_spawn = on_spawn
        self.pid: int | None = None
        self.exit_code: int | None = None
        # Stdout kept, as the text streamed: no byte of it is decoded twice. Chunks are
        # joined into segments of SEGMENT_CHARS as they come, so the many chunk strings
        # live briefly and the long-lived blocks are large ones malloc maps apart.
        self._room = max_output_bytes
        self._pieces: list[str] = []
        self._piece_chars = 0
        self._segments: list[str] = []
        self._stdout_text: str | None = None
        self._stdout_ended = False
        self.truncated = False
        self.kept_chars = 0
        """Characters of stdout kept so far (a prefix of what was streamed)."""
        self.stderr_tail = ""
        self._stderr = StderrTail()
        self.started = 0.0
        self.duration = 0.0

    @property
    def stdout(self) -> str:
        """All stdout kept so far (a character cut by the cap or still arriving left out).

        Once stdout has ended it is joined once, and only the text is kept from then on:
        ``text`` and ``output`` of a plain-text result are one string.
        """
        if self._stdout_text is not None:
            return self._stdout_text
        text = "".join([*self._segments, *self._pieces])
        if self._stdout_ended:
            self._stdout_text = text
            self._segments, self._pieces = [], []
        return text

    async def run(self) -> int:
        """Run the child to completion and return its exit code (negative: signal).

        Raises:
            OSError: The program could not be started.
            trio.Cancelled: Propagated after the whole group is dead.
        """
        stdin = subprocess.PIPE if self.invocation.stdin is not None else subprocess.DEVNULL
        self.started = time.monotonic()
        proc = await trio.lowlevel.open_process(
            self.invocation.argv, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, start_new_session=True)
        self.pid = proc.pid
        pidfd = groups.open_pidfd(proc.pid)
        if self.on_spawn is not None:
            self.on_spawn(proc.pid)
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None and proc.stderr is not None
                out_done, err_done = trio.Event(), trio.Event()
                nursery.start_soon(self._pump, proc.stdout, "stdout", out_done)
                nursery.start_soon(self._pump, proc.stderr, "stderr", err_done)
                if proc.stdin is not None and self.invocation.stdin is not None:
                    nursery.start_soon(self._feed, proc.stdin, self.invocation.stdin)
                await groups.leader_exited(proc, pidfd)
                # Whatever the leader left behind would otherwise hold our pipes open.
                groups.signal_group(proc.pid, signal.SIGKILL)
                with trio.move_on_after(DRAIN_AFTER_KILL):
                    await out_done.wait()
                    await err_done.wait()
                if not (out_done.is_set() and err_done.is_set()):
                    log.warning("pid %d: a process outside its group still holds its output "
                                "pipes; it escaped the process group", proc.pid)
                    nursery.cancel_scope.cancel()
        except BaseException:
            with trio.CancelScope(shield=True):
                await groups.end_group(proc, pidfd, self.kill_grace)
            raise
        finally:
            with trio.CancelScope(shield=True):
                self.exit_code = await proc.wait()
                await groups.close_streams(proc)
            if pidfd >= 0:
                os.close(pidfd)
            self.duration = time.monotonic() - self.started
        return self.exit_code if self.exit_code is not None else -1

    async def _feed(self, stream: trio.abc.SendStream, data: bytes) -> None:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the child exited or closed stdin without reading it all: its choice
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

    async def _pump(self, stream: trio.abc.ReceiveStream, name: Stream,
                    done: trio.Event) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        size = FIRST_READ
        try:
            while True:
                try:
                    chunk = await stream.receive_some(size)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if len(chunk) == size < READ_CHUNK:
                    size = READ_CHUNK
                    _grow_pipe(stream)
                final = not chunk
                if name == "stdout":
                    text = self._decode_stdout(decoder, chunk, final)
                    self._stdout_ended = final
                else:
                    text = self._stderr.feed(chunk)
                    self.stderr_tail = self._stderr.text
                if text and self.on_output is not None:
                    await self.on_output(name, text)
                if final:
                    return
        finally:
            done.set()

    def _decode_stdout(self, decoder: codecs.IncrementalDecoder, chunk: bytes | bytearray,
                       final: bool) -> str:
        """Decode a chunk of stdout to stream it, keeping what fits under the byte cap."""
        if self.truncated:
            return decoder.decode(chunk, final=final)
        if len(chunk) > self._room:
            # Decode the part that fits on a copy of the decoder's state, so the whole
            # chunk still streams while the kept output ends exactly at the cap.
            state = decoder.getstate()
            self._keep(decoder.decode(chunk[:self._room]))
            decoder.setstate(state)
            self._room = 0
            self.truncated = True
            return decoder.decode(chunk, final=final)
        self._room -= len(chunk)
        text = decoder.decode(chunk, final=final)
        self._keep(text)
        return text

    def _keep(self, text: str) -> None:
        if not text:
            return
        self._pieces.append(text)
        self._piece_chars += len(text)
        self.kept_chars += len(text)
        if self._piece_chars >= SEGMENT_CHARS:
            self._segments.append("".join(self._pieces))
            self._pieces, self._piece_chars = [], 0


def _grow_pipe(stream: trio.abc.ReceiveStream) -> None:
    if isinstance(stream, trio.lowlevel.FdStream) and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):  # capped by fs.pipe-max-size
            fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def describe_exit(code: int | None) -> str:
    """An exit status in words: ``exit status 3``, ``killed by signal 9``."""
    if code is None:
        return "no exit status"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"
