"""``llmc top`` against the real daemon: a snapshot with ``--once``, and the live view in a
pseudo-terminal (a frame shows the running job, a resize redraws, ``c`` cancels, ``q`` quits).

Modules: llmc.top, llmd.jobs.job (the record's ``cwd`` and ``output_chars``).
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
import trio
from llmc.top import Snapshot, render

from tests.conftest import DaemonHandle, llmc, registry_toml
from tests.test_client_tty import Reader

pytestmark = pytest.mark.usefixtures("fake_bin")

CLEAR = b"\x1b[H\x1b[2J"


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]},
        "quick": {"command": ["@fakecli", "text", "quick answer"], "prompt": "stdin"},
    })


async def running_job(d: DaemonHandle, flag: Path) -> str:
    """Start a detached job that prints "before" and waits for ``flag``; return its id once
    that output has reached the daemon."""
    started = await llmc(d, "run", "--detach", "hand", str(flag))
    assert started.returncode == 0, started.stderr
    job = started.stdout.decode().strip()
    client = await d.connect()
    with trio.fail_after(30):
        while True:
            record = (await client.call("jobs.get", {"job": job}))["result"]
            if record["state"] == "running" and record["output_chars"] == len("before\n"):
                break
            await trio.sleep(0.02)
    await client.aclose()
    return job


async def wait_after(reader: Reader, start: int, needle: bytes) -> None:
    """Return once ``needle`` has been read at or after offset ``start``."""
    while needle not in reader.data[start:]:
        assert not reader.ended, f"ended without {needle!r}: {bytes(reader.data)!r}"
        await reader._grew.wait()


def set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


async def test_once_prints_a_snapshot_with_the_running_job(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "go"
    job = await running_job(d, flag)
    proc = await llmc(d, "top", "--once", env={"COLUMNS": "120"})
    assert (proc.returncode, proc.stderr) == (0, b"")
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("llmd ")
    assert "1 running, 0 queued" in lines[0]
    [row] = [line for line in lines if line.startswith(job)]
    cells = row.split()
    assert cells[:3] == [job, "hand", "running"]
    assert cells[4] == "7"  # "before\n" so far
    assert cells[-1] == str(d.workdir)
    assert any(line.split()[:2] == ["BLUEPRINT", "HEALTH"] for line in lines)
    assert any(line.split()[:1] == ["quick"] for line in lines)
    assert max(len(line) for line in lines) <= 120
    flag.touch()


def test_render_shows_warm_processes_and_today_when_llmd_has_them() -> None:
    snap = Snapshot(
        jobs=[], health={"claude": {"state": "cooling_down",
                                    "cooldown_until": "2030-01-01T00:00:00Z"}},
        info={"version": "1", "pid": 7, "uptime_s": 65, "jobs": {"running": 0},
              "warm": [{"blueprint": "claude", "pid": 42}],
              "today": {"runs": 12, "cost_usd": 0.4213}},
        taken=0.0)
    lines, chosen = render(snap, 80, selected=0)
    assert chosen is None
    assert "today: 12 runs, $0.42" in lines
    assert "warm: claude (pid 42)" in lines
    assert "no running or queued jobs" in lines
    # As llmd counts them in daemon.info.
    counted = Snapshot([], {}, {"warm": {"processes": 2, "idle": 1, "busy": 1,
                                         "rss_mb": 300}}, 0.0)
    assert "warm: 2 processes (1 idle, 1 busy, 300 MB)" in render(counted, 80)[0]
    [health] = [line for line in lines if line.startswith("claude")]
    assert health.split()[1:3] == ["cooling_down", "until"]
    # Without them (an llmd that has neither), no such lines.
    bare = Snapshot([], {}, {"version": "1"}, 0.0)
    assert not [line for line in render(bare, 80)[0] if line.startswith(("warm", "today"))]


async def test_live_view_shows_the_job_redraws_on_resize_cancels_and_quits(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    job = await running_job(d, short_tmp / "never")
    master, slave = pty.openpty()
    set_size(slave, 24, 100)
    env = {**d.env, "LLMD_SOCKET": str(d.socket), "TERM": "xterm"}
    for name in ("NOTIFY_SOCKET", "COLUMNS", "LINES"):
        env.pop(name, None)
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmc", "top"], stdin=slave, stdout=slave,
            stderr=subprocess.PIPE, env=env, cwd=str(d.workdir))
    finally:
        os.close(slave)
    screen = Reader(master)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(screen.run)
            # A frame: the running job, with the OUTPUT column that a wide terminal has room for.
            await screen.wait_for(job.encode())
            await screen.wait_for(b"running")
            assert b"OUTPUT" in screen.data
            # Narrower: the frame is drawn again, without the columns that no longer fit.
            mark = len(screen.data)
            set_size(master, 24, 40)
            proc.send_signal(signal.SIGWINCH)
            await wait_after(screen, mark, CLEAR)
            redrawn = screen.data.index(CLEAR, mark)
            await wait_after(screen, redrawn, b"HEALTH")
            frame = bytes(screen.data[redrawn:])
            assert b"BLUEPRINT" in frame
            assert b"OUTPUT" not in frame
            # c cancels the selected (only) job.
            os.write(master, b"c")
            client = await d.connect()
            record = (await client.call("jobs.get", {"job": job, "wait": True,
                                                     "timeout": 30}))["result"]
            assert record["state"] == "cancelled"
            await screen.wait_for(f"cancelled {job}".encode())
            os.write(master, b"q")
            status = await proc.wait()
            nursery.cancel_scope.cancel()
    assert status == 0


async def test_f_follows_the_selected_job_and_comes_back(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    flag = short_tmp / "flag"
    job = await running_job(d, flag)
    master, slave = pty.openpty()
    set_size(slave, 24, 100)
    env = {**d.env, "LLMD_SOCKET": str(d.socket), "TERM": "xterm"}
    for name in ("NOTIFY_SOCKET", "COLUMNS", "LINES"):
        env.pop(name, None)
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmc", "top"], stdin=slave, stdout=slave,
            stderr=subprocess.PIPE, env=env, cwd=str(d.workdir))
    finally:
        os.close(slave)
    screen = Reader(master)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(screen.run)
            await screen.wait_for(job.encode())
            mark = len(screen.data)
            # f runs `llmc job ID --follow`: the output so far, then the rest as it comes.
            os.write(master, b"f")
            await wait_after(screen, mark, b"before")
            flag.touch()
            await wait_after(screen, mark, b"after")
            await wait_after(screen, mark, b"press Enter")
            mark = len(screen.data)
            os.write(master, b"\n")
            await wait_after(screen, mark, b"HEALTH")
            os.write(master, b"q")
            status = await proc.wait()
            nursery.cancel_scope.cancel()
    assert status == 0


async def test_run_does_not_load_top_or_completion(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    code = ("import sys; from llmc import cli; status = cli.main(['run', 'quick', 'x']); "
            "print('\\nloaded:', status, *sorted(m for m in sys.modules if m in "
            "('curses', '_curses', 'llmc.top', 'llmc.completion')))")
    env = {**d.env, "LLMD_SOCKET": str(d.socket)}
    env.pop("NOTIFY_SOCKET", None)
    with trio.fail_after(60):
        proc = await trio.run_process([sys.executable, "-c", code], capture_stdout=True,
                                      capture_stderr=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == "loaded: 0"
