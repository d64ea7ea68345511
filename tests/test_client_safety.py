"""llmc and llmc mcp against what can go wrong around them: another user's listener, a
socket directory set up by someone else, output that cannot be written, a prompt over the
daemon's limit, a full listen backlog, and Ctrl-C off a terminal.

Every test drives the real client (a subprocess) against a real daemon or a real listener.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import socket as stdsocket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TextIO, cast

import pytest
import trio
from llmc import output

from tests.conftest import DaemonHandle, alive, llmc, read_pids, registry_toml
from tests.harness import (
    AS_FOREIGN,
    FOREIGN_UID,
    ROOT_AND_SETPRIV,
    Forger,
    client_env,
    foreign_place,
    open_listener,
)

pytestmark = pytest.mark.usefixtures("fake_bin")



def blueprints(fake_bin: Path, daemon: dict[str, Any] | None = None,
               pidfile: Path | None = None) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "flood": {"command": ["@fakecli", "flood", "300000"], "prompt": "stdin"},
        "stubborn": {"command": ["@fakecli", "ignore-term"], "prompt": "stdin",
                     "kill_grace": 3.0, "env": {"FAKE_PIDFILE": str(pidfile or "/dev/null")}},
    }, daemon=daemon)


async def run_client(args: list[str], env: dict[str, str], stdin: bytes = b"",
                     prefix: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [*(prefix or []), sys.executable, "-m", "llmc", *args], stdin=stdin,
            capture_stdout=True, capture_stderr=True, check=False, env=env)


async def mcp_call(env: dict[str, str], cwd: Path, tool: str,
                   arguments: dict[str, Any]) -> dict[str, Any]:
    """One tools/call through a fresh ``llmc mcp``; its result."""
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": tool, "arguments": arguments}},
    ]
    stdin = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    with trio.fail_after(60):
        proc = await trio.run_process(
            [sys.executable, "-m", "llmc", "mcp"], stdin=stdin, capture_stdout=True,
            capture_stderr=True, check=False, env=env, cwd=str(cwd))
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    answer = next(reply for reply in replies if reply.get("id") == 2)
    result: dict[str, Any] = answer["result"]
    return result


def text_of(result: dict[str, Any]) -> str:
    return "\n".join(block["text"] for block in result["content"] if block["type"] == "text")


def one_llmc_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: "), stderr
    assert "Traceback" not in lines[0]
    return lines[0]


# -- another user's socket ---------------------------------------------------------------------

@ROOT_AND_SETPRIV
async def test_a_listener_of_another_uid_gets_no_prompt(short_tmp: Path) -> None:
    path = foreign_place(short_tmp) / "llmd.sock"
    with trio.fail_after(20):
        forger = await Forger.start(path)
    try:
        env = client_env(LLMD_SOCKET=str(path))
        done = await run_client(["run", "echo", "the secret prompt"], env)
        result = await mcp_call(env, short_tmp, "run",
                                {"blueprint": "echo", "prompt": "the secret prompt"})
    finally:
        with trio.fail_after(10):
            told = await forger.stop()
    assert done.returncode == 3, done
    assert done.stdout == b""
    line = one_llmc_line(done.stderr)
    assert str(path) in line and f"uid {FOREIGN_UID}" in line
    assert result["isError"] is True
    assert str(path) in text_of(result) and f"uid {FOREIGN_UID}" in text_of(result)
    assert "secret" not in told.decode()


@ROOT_AND_SETPRIV
async def test_a_root_listener_is_refused_too(short_tmp: Path) -> None:
    # Run as an ordinary user, llmc refuses root's listener: a daemon started with sudo would
    # run that user's agents as root.
    os.chmod(short_tmp, 0o755)
    path = short_tmp / "root.sock"
    listener = open_listener(path)
    try:
        env = client_env(LLMD_SOCKET=str(path), HOME="/nonexistent")
        done = await run_client(["info"], env, prefix=AS_FOREIGN)
    finally:
        listener.close()
    assert done.returncode == 3, done
    line = one_llmc_line(done.stderr)
    assert str(path) in line and "served by uid 0" in line


@ROOT_AND_SETPRIV
@pytest.mark.parametrize("case", ["foreign", "loose"])
async def test_a_default_socket_directory_not_ours_alone_is_refused(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, case: str) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin))
    runtime = short_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    where = runtime / "llmd"
    where.mkdir(mode=0o700)
    if case == "foreign":
        os.chown(where, FOREIGN_UID, FOREIGN_UID)
    else:
        os.chmod(where, 0o777)
    # A working daemon behind it: only the directory is wrong.
    (where / "llmd.sock").symlink_to(d.socket)
    env = client_env(XDG_RUNTIME_DIR=str(runtime))
    done = await run_client(["run", "echo", "hi"], env)
    result = await mcp_call(env, short_tmp, "status", {})
    assert done.returncode == 3, done
    line = one_llmc_line(done.stderr)
    assert str(where) in line
    assert (f"belongs to uid {FOREIGN_UID}" if case == "foreign" else "mode 0777") in line
    assert result["isError"] is True and str(where) in text_of(result)
    # The same socket named explicitly is the user's own choice, and works.
    os.chmod(where, 0o700)
    os.chown(where, os.getuid(), os.getgid())
    ours = await run_client(["run", "echo", "hi"], env)
    assert (ours.returncode, ours.stdout) == (0, b"hi")


# -- output that cannot be written -------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["run", "echo", "hello"], ["run", "flood", "x"],
                                  ["run", "--raw", "flood", "x"],
                                  ["run", "--stream", "flood", "x"], ["info"]])
async def test_a_full_disk_is_an_error_not_a_truncation(daemon_factory: Any, fake_bin: Path,
                                                        args: list[str]) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin))
    full_env = {**d.env, "LLMD_SOCKET": str(d.socket)}
    full_env.pop("NOTIFY_SOCKET", None)
    with open("/dev/full", "wb") as full, trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-m", "llmc", *args], stdin=b"",
                                      stdout=full, capture_stderr=True, check=False,
                                      env=full_env)
    assert done.returncode == 1, done
    line = one_llmc_line(done.stderr)
    assert "cannot write to standard output: No space left on device" in line


@pytest.mark.parametrize("args", [["run", "flood", "x"], ["run", "--raw", "flood", "x"],
                                  ["run", "--stream", "flood", "x"]])
async def test_a_reader_that_goes_away_is_exit_1_quietly(daemon_factory: Any, fake_bin: Path,
                                                         args: list[str]) -> None:
    # As `llmc run flood x | head -c 10`.
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin))
    full_env = {**d.env, "LLMD_SOCKET": str(d.socket)}
    full_env.pop("NOTIFY_SOCKET", None)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "llmc", *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with trio.fail_after(60):
            head = b""
            while len(head) < 10:
                chunk = await proc.stdout.receive_some(10 - len(head))
                assert chunk, "llmc wrote less than 10 bytes"
                head += chunk
            await proc.stdout.aclose()
            stderr = b""
            while chunk := await proc.stderr.receive_some(65536):
                stderr += chunk
            status = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert head == b"x" * 10 if "--raw" not in args else head.startswith(b"{")
    assert (status, stderr) == (1, b"")


# -- a prompt over the daemon's limit ----------------------------------------------------------

async def test_a_prompt_over_the_limit_says_so(daemon_factory: Any, fake_bin: Path,
                                               short_tmp: Path) -> None:
    limit = 4096
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin,
                                                      daemon={"max_message_bytes": limit}))
    client = await d.connect()
    with trio.fail_after(10):
        info = await client.call("daemon.info")
    assert info["result"]["max_message_bytes"] == limit
    # Answered after the send, refused in the middle of it, and refused before it.
    for size in (limit + 100, 60_000, 300_000):
        done = await llmc(d, "run", "echo", stdin=b"p" * size)
        assert done.returncode == 2, (size, done)
        assert done.stdout == b""
        line = one_llmc_line(done.stderr)
        assert "prompt is too large" in line and f"at most {limit} bytes" in line, line
        env = client_env(LLMD_SOCKET=str(d.socket))
        result = await mcp_call(env, short_tmp, "run", {"blueprint": "echo", "prompt": "p" * size})
        assert result["isError"] is True
        assert "prompt is too large" in text_of(result) and str(limit) in text_of(result)
    fits = await llmc(d, "run", "echo", stdin=b"p" * 3000)
    assert (fits.returncode, fits.stdout) == (0, b"p" * 3000)


# -- a full listen backlog ---------------------------------------------------------------------

async def blocked_in_connect(pid: int) -> None:
    """Until a thread of ``pid`` waits in connect() for room in a listen backlog."""

    def waiting() -> bool:
        tasks = Path(f"/proc/{pid}/task")
        found = False
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                found = found or (task / "wchan").read_text() == "unix_wait_for_peer"
        return found

    with trio.fail_after(30):
        while not waiting():
            assert alive(pid), "llmc ended instead of waiting"
            await trio.sleep(0.01)


@pytest.mark.parametrize("bridge", [False, True])
async def test_a_full_backlog_is_waited_for(daemon_factory: Any, fake_bin: Path,
                                            short_tmp: Path, bridge: bool) -> None:
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin))
    env = client_env(LLMD_SOCKET=str(d.socket))
    fillers: list[stdsocket.socket] = []
    d.proc.send_signal(signal.SIGSTOP)
    try:
        while True:
            filler = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(d.socket))
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        if bridge:
            argv = ["mcp"]
            stdin = b"".join(json.dumps(line).encode() + b"\n" for line in [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                 "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                            "clientInfo": {"name": "t", "version": "1"}}},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "run", "arguments": {"blueprint": "echo",
                                                         "prompt": "waited"}}}])
        else:
            argv, stdin = ["run", "echo", "waited"], b""
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmc", *argv], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(short_tmp))
        assert proc.stdin is not None and proc.stdout is not None
        try:
            with trio.fail_after(30):
                await proc.stdin.send_all(stdin)
                await blocked_in_connect(proc.pid)
                for filler in fillers:
                    filler.close()
                d.proc.send_signal(signal.SIGCONT)
                out = b""
                while not (bridge and b'"id":2' in out.replace(b" ", b"")):
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        break
                    out += chunk
                await proc.stdin.aclose()
                status = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        d.proc.send_signal(signal.SIGCONT)
        for filler in fillers:
            filler.close()
    assert status == 0
    if bridge:
        answer = next(json.loads(line) for line in out.splitlines()
                      if json.loads(line).get("id") == 2)
        assert not answer["result"].get("isError")
        assert "waited" in text_of(answer["result"])
    else:
        assert out == b"waited"


# -- Ctrl-C off a terminal ---------------------------------------------------------------------

async def test_ctrl_c_off_a_terminal_waits_for_the_cancel(daemon_factory: Any, fake_bin: Path,
                                                          short_tmp: Path) -> None:
    pidfile = short_tmp / "stubborn.pids"
    d: DaemonHandle = await daemon_factory(blueprints(fake_bin, pidfile=pidfile))
    env = client_env(LLMD_SOCKET=str(d.socket))
    # Pipes everywhere: no status line, no streaming, so llmc never learns the job id.
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "llmc", "run", "stubborn", "x"], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    try:
        with trio.fail_after(30):
            while not read_pids(pidfile):
                await trio.sleep(0.01)
            # The CLI ignores SIGTERM: it ends only with SIGKILL, kill_grace (3 s) later.
            proc.send_signal(signal.SIGINT)
            status = await proc.wait()
            # Checked the moment llmc has exited: the cancel was done by then.
            survivors = [pid for pid in read_pids(pidfile) if alive(pid)]
            stderr = b""
            while chunk := await proc.stderr.receive_some(65536):
                stderr += chunk
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stderr.aclose()
    assert status == 130
    assert stderr == b"llmc: interrupted\n"
    assert survivors == []


# -- the writer's core -------------------------------------------------------------------------

class _Trickle(io.BufferedIOBase):
    """A destination that takes at most three bytes a call, then refuses with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.taken = bytearray()
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(self.taken) >= self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = bytes(data[:min(3, self.room - len(self.taken))])
        self.taken += part
        return len(part)


class _Text:
    """A text stream over ``buffer``, as far as ``output.write`` looks."""

    def __init__(self, buffer: _Trickle) -> None:
        self.buffer = buffer

    def flush(self) -> None:
        pass


def test_short_writes_are_completed_and_a_refusal_is_an_output_error() -> None:
    whole = _Trickle(room=1000)
    output.write("\u00fcber alles\n" * 20, cast("TextIO", _Text(whole)))
    assert whole.taken.decode() == "\u00fcber alles\n" * 20
    full = _Trickle(room=10)
    with pytest.raises(output.OutputError, match="No space left on device"):
        output.write("x" * 100, cast("TextIO", _Text(full)))
    assert len(full.taken) == 10


def test_a_non_blocking_pipe_gets_every_byte() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with open(write_end, "w", encoding="utf-8", closefd=True) as stream:
            output.write("y" * 1_000_000, stream)
    finally:
        reader.join(timeout=30)
        os.close(read_end)
    assert bytes(got) == b"y" * 1_000_000
