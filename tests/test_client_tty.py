"""The real ``llmc`` against the real daemon, with stdout and stderr on pseudo-terminals.

The terminals are put in raw mode so the bytes read from their masters are exactly what llmc
wrote (no newline translation). Nothing sleeps to synchronise: the handshake CLI prints
"before" and waits for a file, so reading "before" (or the status line saying "running") proves
the child runs; everything else waits for output or for a process to end.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, llmc, registry_toml
from tests.harness import children

pytestmark = pytest.mark.usefixtures("fake_bin")

CLEAR = b"\r\x1b[2K"


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]},
        "quick": {"command": ["@fakecli", "text", "quick answer"], "prompt": "stdin"},
    })


class Reader:
    """Collects everything readable from one file descriptor until it ends."""

    def __init__(self, fd: int) -> None:
        self.stream = trio.lowlevel.FdStream(fd)
        self.data = bytearray()
        self.ended = False
        self._grew = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                try:
                    chunk = await self.stream.receive_some()
                except trio.BrokenResourceError:
                    # EIO: a terminal's master reads so once every slave is closed.
                    break
                if not chunk:
                    break
                self.data += chunk
                self._wake()
        finally:
            self.ended = True
            self._wake()
            await self.stream.aclose()

    def _wake(self) -> None:
        self._grew.set()
        self._grew = trio.Event()

    async def wait_for(self, needle: bytes) -> None:
        """Return once ``needle`` has been read."""
        while needle not in self.data:
            assert not self.ended, f"ended without {needle!r}: {bytes(self.data)!r}"
            await self._grew.wait()

    async def wait_ended(self) -> bytes:
        """Everything, once the writer has gone."""
        while not self.ended:
            await self._grew.wait()
        return bytes(self.data)


def terminal(columns: int) -> tuple[int, int]:
    """A pseudo-terminal in raw mode, ``columns`` wide: (master, slave)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


@dataclass
class Llmc:
    """A running llmc and readers of its stdout and stderr."""

    proc: trio.Process
    out: Reader
    err: Reader

    async def finish(self) -> tuple[int, bytes, bytes]:
        """Wait for the exit status and all output."""
        status = await self.proc.wait()
        return status, await self.out.wait_ended(), await self.err.wait_ended()


async def start_llmc(nursery: trio.Nursery, d: DaemonHandle, *args: str,
                     stdout_tty: bool = True, stderr_tty: bool = True,
                     columns: int = 100) -> Llmc:
    """Start ``llmc ARGS`` with stdout and stderr on terminals (or pipes)."""
    ends: list[tuple[int, int]] = []
    for want_tty in (stdout_tty, stderr_tty):
        if want_tty:
            ends.append(terminal(columns))
        else:
            ends.append(os.pipe())
    env = {**d.env, "LLMD_SOCKET": str(d.socket), "TERM": "xterm"}
    for name in ("NOTIFY_SOCKET", "COLUMNS", "LINES"):
        env.pop(name, None)
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmc", *args], stdin=subprocess.DEVNULL,
            stdout=ends[0][1], stderr=ends[1][1], env=env, cwd=str(d.workdir))
    finally:
        # Only the child holds the writing ends now, so the readers see it leave.
        for _, write_end in ends:
            os.close(write_end)
    out, err = Reader(ends[0][0]), Reader(ends[1][0])
    nursery.start_soon(out.run)
    nursery.start_soon(err.run)
    return Llmc(proc, out, err)


async def test_status_on_the_stderr_terminal_and_live_text_on_stdout(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = await start_llmc(nursery, d, "run", "hand", str(flag))
            # The child waits for the flag: "before" on the terminal means it came live.
            await run.out.wait_for(b"before\n")
            await run.err.wait_for(b"llmc: hand running for ")
            flag.touch()
            status, out, err = await run.finish()
    assert status == 0, err
    assert out == b"before\nafter\n"
    # Every draw replaces the line, and the last thing written erases it.
    assert err.startswith(CLEAR + b"llmc: hand ")
    assert err.endswith(CLEAR)
    assert b"\n" not in err
    assert all(part.startswith(b"llmc: hand ") for part in err.split(CLEAR) if part)


async def test_piped_stdout_gets_exactly_the_answer(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = await start_llmc(nursery, d, "run", "hand", str(flag), stdout_tty=False)
            await run.err.wait_for(b"running for ")
            flag.touch()
            status, out, err = await run.finish()
    assert status == 0, err
    assert out == b"before\nafter\n"
    assert err.endswith(CLEAR)


async def test_no_stream_still_shows_the_status_and_prints_the_answer_once(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = await start_llmc(nursery, d, "run", "--no-stream", "hand", str(flag))
            await run.err.wait_for(b"running for ")
            assert not run.out.data  # not live
            flag.touch()
            status, out, err = await run.finish()
    assert (status, out) == (0, b"before\nafter\n"), err


async def test_ctrl_c_cancels_the_job_and_exits_130(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = await start_llmc(nursery, d, "run", "hand", str(short_tmp / "never"))
            await run.out.wait_for(b"before\n")
            [child] = children(d.proc.pid)
            run.proc.send_signal(signal.SIGINT)
            status, out, err = await run.finish()
        assert status == 130, err
        assert out == b"before\n"
        assert err.endswith(b"llmc: interrupted\n")
        assert b"Traceback" not in err
        # llmc waited for the job to end before exiting: no wait is needed here.
        client = await d.connect()
        [entry] = (await client.call("jobs.list", {}))["result"]["jobs"]
        assert entry["state"] == "cancelled"
        # A job ends only once its child's process group is dead and reaped.
        assert not Path(f"/proc/{child}").exists()
        proc = await llmc(d, "job", entry["job"], "--json")
        assert json.loads(proc.stdout)["state"] == "cancelled"
        assert proc.returncode == 10  # the job was cancelled: not 130, llmc was not interrupted


async def test_jobs_table_fits_the_terminal(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    started = await llmc(d, "run", "--detach", "quick", "x")
    job = started.stdout.decode().strip()
    waited = await llmc(d, "job", job, "--wait", "--timeout", "10")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.decode().endswith("\n\nquick answer")
    for columns in (120, 60):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                run = await start_llmc(nursery, d, "jobs", "--state", "succeeded",
                                       columns=columns)
                status, out, err = await run.finish()
        assert (status, err) == (0, b"")
        lines = out.decode().splitlines()
        assert len(lines) == 2
        assert max(len(line) for line in lines) <= columns
        header, row = lines[0].split(), lines[1].split()
        assert row[:3] == [job, "quick", "succeeded"]
        if columns == 120:
            assert header == ["JOB", "BLUEPRINT", "STATE", "CREATED", "DURATION", "ATTEMPTS"]
            assert row[-1] == "1"
        else:
            # Too narrow for all: the attempts column is left out first.
            assert header[:3] == ["JOB", "BLUEPRINT", "STATE"]
            assert "ATTEMPTS" not in header


async def test_cancel_of_an_unknown_job(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    proc = await llmc(d, "cancel", "nope")
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert proc.stderr == b"llmc: no job 'nope'\n"
