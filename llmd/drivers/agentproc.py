"""A long-lived agent process on pipes: one line-delimited JSON-RPC peer, supervised.

:class:`AgentProcess` starts the agent in a process group of its own, writes llmd's
frames to its stdin, splits its stdout into lines for a protocol client and keeps the
tail of its stderr. The protocol drivers (:mod:`llmd.drivers.warmagent`) sit on top.

Invariants:
- The agent and everything it spawns live in one process group that :meth:`kill`
  signals (SIGTERM, ``kill_grace``, SIGKILL); the process is never reused after.
- The agent's stdout is read in chunks and split on newlines, a line held at most
  ``max_line`` characters: a longer one is out of protocol and kills the agent.
- Once its stdout ends, its reader fails or a line is refused, :attr:`dead` is set and
  stays set; every waiter of the process is woken through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import trio

from llmd.process import groups
from llmd.process.supervisor import StderrTail

log = logging.getLogger(__name__)

MAX_LINE = 32 << 20
_READ = 1 << 16

LineSink = Callable[[bytes], None]


class AgentProcess:
    """One agent process on pipes.

    Args:
        argv: The program (found on the PATH) and its arguments.
        env: Its whole environment.
        cwd: Its working directory (the sessions name their own).
        kill_grace: Seconds between SIGTERM and SIGKILL.
        on_line: Called with each line of stdout, without its newline; an exception it
            raises kills the process.
        on_spawn: Told the pid (its process group's id) once it exists.
        on_exit: Told the pid once the group is ended and the process reaped.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None,
                 kill_grace: float, on_line: LineSink,
                 on_spawn: Callable[[int], None] | None = None,
                 on_exit: Callable[[int], None] | None = None,
                 max_line: int = MAX_LINE) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.kill_grace = kill_grace
        self.on_line = on_line
        self.on_spawn = on_spawn
        self.on_exit = on_exit
        self.max_line = max_line
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.stderr = StderrTail()
        self.started = 0.0
        self.why_dead = ""
        self.dead = trio.Event()
        self._proc: trio.Process | None = None
        self._send_lock = trio.Lock()

    @property
    def stderr_tail(self) -> str:
        """The end of what the agent wrote to stderr."""
        return self.stderr.text

    @property
    def alive(self) -> bool:
        """Whether the process runs and speaks its protocol."""
        return self._proc is not None and not self.dead.is_set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the process and serve its pipes until it dies or is killed.

        Raises:
            OSError: The program could not be started.
        """
        self.started = time.monotonic()
        proc = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, start_new_session=True)
        self._proc, self.pid = proc, proc.pid
        pidfd = groups.open_pidfd(proc.pid)
        try:
            if self.on_spawn is not None:
                self.on_spawn(proc.pid)
            task_status.started()
            async with trio.open_nursery() as nursery:
                assert proc.stderr is not None
                nursery.start_soon(self._stderr, proc.stderr)
                await self._stdout()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self._mark_dead(self.why_dead or "its output ended")
                await groups.end_group(proc, pidfd, self.kill_grace)
                with trio.move_on_after(self.kill_grace + 1.0):
                    self.exit_code = await proc.wait()
                await groups.close_streams(proc)
                if pidfd >= 0:
                    os.close(pidfd)
                if self.on_exit is not None:
                    self.on_exit(proc.pid)

    async def send(self, data: bytes) -> None:
        """Write one frame to the agent's stdin.

        Raises:
            trio.BrokenResourceError: The agent is gone (it is marked dead).
        """
        proc = self._proc
        if proc is None or proc.stdin is None or self.dead.is_set():
            raise trio.BrokenResourceError("the agent is not running")
        async with self._send_lock:
            try:
                await proc.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._mark_dead("its stdin closed")
                raise trio.BrokenResourceError("the agent closed its stdin") from exc

    def kill(self, why: str) -> None:
        """Mark the process dead and SIGTERM its group (reaped by :meth:`run`)."""
        self._mark_dead(why)
        if self.exit_code is None:
            groups.signal_group(self.pid, signal.SIGTERM)

    def _mark_dead(self, why: str) -> None:
        if not self.dead.is_set():
            self.why_dead = why
            self.dead.set()

    async def _stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        held = bytearray()
        while not self.dead.is_set():
            try:
                chunk = await proc.stdout.receive_some(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            # Only the new bytes can hold a newline: a long line is searched once.
            start, scan = 0, len(held)
            held += chunk
            while (end := held.find(b"\n", scan)) >= 0:
                line = bytes(held[start:end]).strip()
                start = scan = end + 1
                if line and not self._deliver(line):
                    return
            del held[:start]
            if len(held) > self.max_line:
                self._mark_dead(f"a line of over {self.max_line} bytes")
                return

    def _deliver(self, line: bytes) -> bool:
        try:
            self.on_line(line)
        except Exception as exc:  # noqa: BLE001 - any failure of the protocol client
            # Out of protocol: what it says next cannot be trusted either.
            self._mark_dead(f"out of protocol: {exc}")
            log.warning("pid %s: %s out of protocol: %s", self.pid, self.argv[0], exc)
            return False
        return True

    async def _stderr(self, stream: trio.abc.ReceiveStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while chunk := await stream.receive_some(_READ):
                self.stderr.feed(chunk)
