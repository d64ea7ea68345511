"""systemd integration against the real daemon: socket activation through
``systemd-socket-activate``, the watchdog and the status line over a notify socket.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket as stdsocket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, RawClient, registry_toml

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate is not installed (.ci/run installs the systemd package)")

pytestmark = pytest.mark.usefixtures("fake_bin")


def blueprints(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "env": {"command": ["@fakecli", "env"], "prompt": "stdin"},
        "slow": {"command": ["@fakecli", "sleep", "60"], "prompt": "stdin"}})


@needs_socket_activate
async def test_socket_activation_end_to_end(short_tmp: Path, fake_bin: Path) -> None:
    assert SOCKET_ACTIVATE is not None
    config = short_tmp / "llmd.toml"
    config.write_text(blueprints(fake_bin))
    rundir = short_tmp / "run"
    rundir.mkdir(mode=0o700)
    sock_path = rundir / "llmd.sock"
    notify_path = short_tmp / "notify"
    notify = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    # systemd-socket-activate passes its child nothing but -E variables and LISTEN_*.
    child_env = {"NOTIFY_SOCKET": str(notify_path), "HOME": str(short_tmp),
                 "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "XDG_STATE_HOME": str(short_tmp / "state"), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [SOCKET_ACTIVATE, "-l", str(sock_path), "--fdname=llmd.sock"]
    for key, value in child_env.items():
        argv += ["-E", f"{key}={value}"]
    argv += [sys.executable, "-m", "llmd", "serve", "--config", str(config),
             "--log-level", "debug"]
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            cwd=str(short_tmp))
    log = bytearray()
    listening = trio.Event()

    async def drain() -> None:
        assert proc.stderr is not None
        async for chunk in proc.stderr:
            log.extend(chunk)
            if b"Listening on" in log:
                listening.set()

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await listening.wait()
                # systemd-socket-activate's socket, before any llmd exists.
                assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
                inode = os.lstat(sock_path).st_ino
                # The first connection starts the daemon (execed in place: same pid).
                client = await RawClient.connect(sock_path)
                info = (await client.call("daemon.info"))["result"]
                assert info["pid"] == proc.pid
                assert info["socket"] == str(sock_path)
                while True:
                    note = (await notify.recv(65536)).decode().splitlines()
                    if "READY=1" in note:
                        assert f"MAINPID={proc.pid}" in note
                        break
                # The activation variables reach no child.
                reply = await client.call("llm.run", {"blueprint": "env", "prompt": "x"}, id=2)
                seen = json.loads(reply["result"]["text"])
                assert not [k for k in seen if k.startswith(("LISTEN_", "WATCHDOG_"))
                            or k == "NOTIFY_SOCKET"]
                # The activated daemon holds the path's lock: a second llmd on the same
                # path stops instead of replacing the socket.
                second = await trio.run_process(
                    [sys.executable, "-m", "llmd", "serve", "--socket", str(sock_path),
                     "--config", str(config)],
                    env={**os.environ, **child_env, "NOTIFY_SOCKET": ""},
                    capture_stdout=True, capture_stderr=True, check=False)
                assert second.returncode == 1, second.stderr
                assert b"already serving" in second.stderr
                assert str(proc.pid).encode() in second.stderr
                await client.aclose()
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
        # Served without binding, and left in place on the way out: the file is systemd's.
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
        assert os.lstat(sock_path).st_ino == inode
        text = log.decode(errors="replace")
        assert f"socket-activated: serving {sock_path}" in text
        assert "replacing a stale socket" not in text
        assert "stopped" in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


async def test_serve_leaves_a_socket_that_something_listens_on(short_tmp: Path,
                                                               fake_bin: Path) -> None:
    # What systemd's llmd.socket looks like while llmd.service is not running: a
    # listening socket at the path and no llmd holding the lock.
    config = short_tmp / "llmd.toml"
    config.write_text(blueprints(fake_bin))
    path = short_tmp / "llmd.sock"
    with stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as holder:
        holder.bind(str(path))
        holder.listen()
        inode = os.lstat(path).st_ino
        with trio.fail_after(30):
            proc = await trio.run_process(
                [sys.executable, "-m", "llmd", "serve", "--socket", str(path),
                 "--config", str(config)],
                env={**os.environ, "NOTIFY_SOCKET": ""}, capture_stdout=True,
                capture_stderr=True, check=False)
        assert proc.returncode == 1
        assert b"accepts connections" in proc.stderr
        assert os.lstat(path).st_ino == inode


# --- needs the daemon.py wiring ------------------------------------------------


async def test_the_daemon_pings_the_watchdog(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin), env={"WATCHDOG_USEC": "200000"})
    times: list[float] = []
    with trio.fail_after(20):
        while len(times) < 6:
            if await d.next_notify() == "WATCHDOG=1":
                times.append(trio.current_time())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Every 100 ms; generous bounds, as a loaded machine delays wake-ups.
    assert 0.05 <= sum(gaps) / len(gaps) <= 0.5, gaps
    assert min(gaps) >= 0.05, gaps


async def test_a_watchdog_for_another_pid_is_not_pinged(daemon_factory: Any,
                                                        fake_bin: Path) -> None:
    # 10 ms pings if it were ours: a reload round trip would see several.
    d: DaemonHandle = await daemon_factory(
        blueprints(fake_bin), env={"WATCHDOG_USEC": "20000", "WATCHDOG_PID": "1"})
    client = await d.connect()
    with trio.fail_after(20):
        for _ in range(3):
            await client.call("daemon.info")
        d.proc.send_signal(signal.SIGHUP)
        notes = []
        while True:
            note = await d.next_notify()
            notes.append(note)
            if "READY=1" in note.splitlines():
                break
    assert not [n for n in d.notes + notes if "WATCHDOG=1" in n.splitlines()]


async def test_status_counts_running_jobs(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()

    async def status_matching(pattern: str) -> str:
        while True:
            for field in (await d.next_notify()).splitlines():
                if field.startswith("STATUS=") and re.search(pattern, field):
                    return field

    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "slow", "prompt": "x",
                                              "detach": True})
        job = reply["result"]["job"]
        await status_matching(r"\b1 running\b")
        await client.call("llm.cancel", {"job": job}, id=2)
        await status_matching(r"\b0 running\b")
