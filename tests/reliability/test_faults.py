"""Faults: CLIs that die, misbehave or escape; the registry vanishing; the daemon killed.

Each test runs its own daemon (``daemon_factory``), so that what it breaks stays broken
only there; two look at the supervisor and the daemon in-process instead. The store's own
faults (disk full, SIGKILL mid-write) belong to tests/test_store*.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import llmd.process.supervisor
from llmd.config import parse_registry
from llmd.daemon import Daemon
from llmd.process.argv import Invocation
from llmd.process.supervisor import Attempt
from tests.conftest import (
    DaemonHandle,
    RawClient,
    alive,
    read_pids,
    registry_toml,
    start_daemon,
)
from tests.reliability.support import (
    assert_serves,
    children,
    cpu_seconds,
    kill_quietly,
    peak_rss_kb,
    request,
    rss_kb,
    tally,
    wait_until,
)


def faulty(fake_bin: Path, pidfile: Path) -> str:
    env = {"FAKE_PIDFILE": str(pidfile)}
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "sigkill": {"command": ["@fakecli", "signal", "KILL"], "prompt": "stdin"},
        "sigsegv": {"command": ["@fakecli", "signal", "SEGV"], "prompt": "stdin"},
        "sigterm": {"command": ["@fakecli", "signal", "TERM"], "prompt": "stdin"},
        "closer": {"command": ["@fakecli", "close-stdout", "1.0"], "prompt": "stdin",
                   "env": env},
        "closer-forever": {"command": ["@fakecli", "close-stdout", "inf"], "prompt": "stdin",
                           "env": env, "kill_grace": 0.5},
        "badutf8": {"command": ["@fakecli", "bad-utf8"], "prompt": "stdin"},
        "oneline": {"command": ["@fakecli", "one-line", str(100 << 20)], "prompt": "stdin"},
        "oneline-claude": {"command": ["@fakecli", "one-line", str(100 << 20)],
                           "prompt": "stdin", "parser": "claude-stream-json"},
        "escape": {"command": ["@fakecli", "escape"], "prompt": "stdin", "env": env},
        "escape-quiet": {"command": ["@fakecli", "escape", "--close-stdio"], "prompt": "stdin",
                         "env": env},
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]},
        "hang": {"command": ["@fakecli", "ignore-term"], "prompt": "stdin", "env": env},
    })


@pytest.mark.parametrize(("blueprint", "number", "name"), [
    ("sigkill", 9, "SIGKILL"), ("sigsegv", 11, "SIGSEGV"), ("sigterm", 15, "SIGTERM")])
async def test_a_cli_killed_by_a_signal_is_32005(daemon_factory: Any, fake_bin: Path,
                                                 short_tmp: Path, blueprint: str,
                                                 number: int, name: str) -> None:
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, short_tmp / "pids"))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.run(blueprint)
        error = reply["error"]
        assert error["code"] == -32005, reply
        assert error["data"]["exit_code"] == -number
        assert error["data"]["output"] == "partial\n"
        await assert_serves(d.socket, d.proc.pid)
    tally("faults")


@pytest.mark.parametrize(("blueprint", "name"), [("sigkill", "SIGKILL"), ("sigsegv", "SIGSEGV")])
async def test_the_signal_is_named(daemon_factory: Any, fake_bin: Path, short_tmp: Path,
                                   blueprint: str, name: str) -> None:
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, short_tmp / "pids"))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.run(blueprint)
    tally("faults")
    assert name in reply["error"]["message"], reply["error"]["message"]


async def streamed_run(client: RawClient, blueprint: str, prompt: str,
                       id: int = 1) -> tuple[str, Any]:
    """Run streamed: the stdout its notifications carried, and the final reply."""
    await client.send({"jsonrpc": "2.0", "id": id, "method": "llm.run",
                       "params": {"blueprint": blueprint, "prompt": prompt, "stream": True}})
    streamed = ""
    while True:
        message = await client.recv()
        if message.get("method") == "llm.output":
            if message["params"]["stream"] == "stdout":
                streamed += message["params"]["text"]
        elif "method" not in message:
            return streamed, message


async def test_a_cli_that_closes_stdout_early_is_waited_for(daemon_factory: Any,
                                                            fake_bin: Path,
                                                            short_tmp: Path) -> None:
    pidfile = short_tmp / "pids"
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, pidfile))
    client = await d.connect()
    with trio.fail_after(20):
        cpu_before = cpu_seconds(d.proc.pid)
        started = trio.current_time()
        streamed, message = await streamed_run(client, "closer", "x")
        elapsed = trio.current_time() - started
        # The run ends when the CLI does, not when its stdout closes; and the daemon
        # waits without spinning on the closed pipe.
        assert message["result"]["text"] == "early\n" == streamed
        assert elapsed >= 1.0
        assert cpu_seconds(d.proc.pid) - cpu_before < 0.5
        # One that closes stdout and never ends is ended by its timeout, group and all.
        reply = await client.run("closer-forever", id=2, timeout=1.0)
        assert reply["error"]["code"] == -32003, reply
        assert reply["error"]["data"]["output"] == "early\n"
        [pid] = read_pids(pidfile)[-1:]
        await wait_until(lambda: not alive(pid))
        await assert_serves(d.socket, d.proc.pid)
    tally("faults", 2)


BAD_UTF8 = (b"ok \xff\xfe|\xc3(|\xc0\xaf|\xed\xa0\x80|euro \xe2\x82\xac|cut \xf0\x9f\x98\x80|"
            b"lone \x80\xbf|end \xe2\x82")


async def test_invalid_utf8_output_is_replaced_not_fatal(daemon_factory: Any, fake_bin: Path,
                                                         short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, short_tmp / "pids"))
    client = await d.connect()
    expected = BAD_UTF8.decode("utf-8", "replace")
    with trio.fail_after(20):
        reply = await client.run("badutf8")
        assert reply["result"]["text"] == expected
        assert reply["result"]["output"] == expected
        # Streamed, the pieces (cut inside characters) decode to the same text.
        streamed, message = await streamed_run(client, "badutf8", "", id=2)
        assert streamed == expected == message["result"]["text"]
        await assert_serves(d.socket, d.proc.pid)
    tally("faults", 2)


async def read_reply(stream: trio.SocketStream) -> Any:
    """One NDJSON reply of any size (notifications skipped), read without quadratic copies."""
    buf = bytearray()
    while True:
        nl = buf.find(b"\n")
        if nl < 0:
            chunk = await stream.receive_some(1 << 20)
            assert chunk, "connection closed"
            buf += chunk
            continue
        message = json.loads(bytes(buf[:nl]))
        del buf[:nl + 1]
        if "method" not in message:
            return message


@pytest.mark.parametrize("blueprint", ["oneline", "oneline-claude"])
async def test_a_hundred_megabytes_on_one_line(daemon_factory: Any, fake_bin: Path,
                                               short_tmp: Path, blueprint: str) -> None:
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, short_tmp / "pids"))
    pid = d.proc.pid
    stream = await trio.open_unix_socket(str(d.socket))
    try:
        with trio.fail_after(60):
            await assert_serves(d.socket, pid, "warm")
            base = rss_kb(pid)
            await stream.send_all(request("llm.run", {"blueprint": blueprint, "prompt": ""}))
            reply = await read_reply(stream)
            result = reply["result"]
            assert result["truncated"] is True
            assert len(result["output"]) == 16 << 20  # the default max_output_bytes
            if blueprint == "oneline":
                assert result["text"] == result["output"]
            peak = peak_rss_kb(pid) - base
            tally("peak_rss_kb", peak_rss_kb(pid))
            await assert_serves(d.socket, pid, "after the flood")
            after = rss_kb(pid) - base
    finally:
        await stream.aclose()
    tally("faults")
    # Nothing of it is kept once answered.
    assert after < 48 * 1024, f"llmd still holds {after} KiB more after 100 MB of output"
    if blueprint == "oneline":
        # 16 MiB kept as the streamed text, one string for text and output, encoded once
        # and sent from there: about twice that, never the 100 MB (nor a 32 MiB reply).
        assert peak < 72 * 1024, f"llmd peaked {peak} KiB over its base for 100 MB"
    else:
        # A structured parser holds no more of an unterminated line than the cap.
        assert peak < 100 * 1024, f"llmd peaked {peak} KiB over its base for 100 MB"


async def test_finished_runs_do_not_keep_their_output_in_memory(daemon_factory: Any,
                                                                fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "big": {"command": ["@fakecli", "flood", str(2 << 20)], "prompt": "stdin"}}))
    pid = d.proc.pid
    stream = await trio.open_unix_socket(str(d.socket))
    try:
        with trio.fail_after(60):
            await stream.send_all(request("llm.run", {"blueprint": "big", "prompt": ""}))
            await read_reply(stream)
            base = rss_kb(pid)
            for i in range(40):
                await stream.send_all(request("llm.run", {"blueprint": "big", "prompt": ""},
                                              id=i))
                assert (await read_reply(stream))["result"]["truncated"] is False
                tally("requests")
    finally:
        await stream.aclose()
    growth = rss_kb(pid) - base
    assert growth < 40 * 1024, f"llmd grew {growth} KiB over 40 runs of 2 MiB output"


@pytest.mark.parametrize("blueprint", ["escape", "escape-quiet"])
async def test_a_daemonised_grandchild_does_not_hold_the_run(daemon_factory: Any,
                                                             fake_bin: Path, short_tmp: Path,
                                                             blueprint: str) -> None:
    pidfile = short_tmp / "pids"
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, pidfile))
    client = await d.connect()
    try:
        with trio.fail_after(10):
            started = trio.current_time()
            reply = await client.run(blueprint)
            elapsed = trio.current_time() - started
            assert reply["result"]["text"] == "parent\n", reply
            assert elapsed < 5
            [escaped] = read_pids(pidfile)
            # It left the process group and the session: out of llmd's reach, and alive.
            assert alive(escaped)
            assert os.getsid(escaped) != os.getsid(d.proc.pid)
            if blueprint == "escape":
                # Holding the pipes, it is noticed and reported.
                assert "escaped the process group" in d.log()
            await assert_serves(d.socket, d.proc.pid)
    finally:
        # Under systemd, KillMode=mixed would catch it; here the test must.
        kill_quietly(read_pids(pidfile))
    tally("faults")


async def test_the_registry_deleted_while_running(daemon_factory: Any, fake_bin: Path,
                                                  short_tmp: Path) -> None:
    flag = short_tmp / "go"
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, short_tmp / "pids"))
    runner = await d.connect()
    client = await d.connect()
    with trio.fail_after(30):
        await runner.send({"jsonrpc": "2.0", "id": "long", "method": "llm.run",
                           "params": {"blueprint": "hand", "prompt": str(flag),
                                      "stream": True}})
        while (await runner.recv()).get("method") != "llm.output":
            pass
        names = [b["name"] for b in (await client.call("blueprints.list"))["result"]
                 ["blueprints"]]
        d.config.unlink()
        reply = await client.call("daemon.reload", id=2)
        assert reply["error"]["code"] == -32008, reply
        assert "cannot read" in reply["error"]["message"]
        # SIGHUP too: logged, nothing else.
        d.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "reload failed" in d.log())
        # A directory where the file was, and garbage: the same.
        d.config.mkdir()
        assert (await client.call("daemon.reload", id=3))["error"]["code"] == -32008
        d.config.rmdir()
        d.config.write_bytes(b"\xff\xfe[blueprints\x00")
        assert (await client.call("daemon.reload", id=4))["error"]["code"] == -32008
        # The old registry stays in force, and the running run goes on to its end.
        after = [b["name"] for b in (await client.call("blueprints.list", id=5))["result"]
                 ["blueprints"]]
        assert after == names
        assert (await client.run("echo", "still", id=6))["result"]["text"] == "still"
        flag.touch()
        while "method" in (reply := await runner.recv()):
            pass
        assert reply["result"]["text"] == "before\nafter\n"
        assert d.proc.returncode is None
        await assert_serves(d.socket, d.proc.pid)
    tally("faults", 4)


@pytest.mark.parametrize("how", ["rpc", "sighup"])
async def test_a_pathological_registry_on_reload(daemon_factory: Any, fake_bin: Path,
                                                 short_tmp: Path, how: str) -> None:
    d: DaemonHandle = await daemon_factory(faulty(fake_bin, short_tmp / "pids"))
    client = await d.connect()
    good = d.config.read_text()
    with trio.fail_after(30):
        assert "result" in await client.call("daemon.info", id=0)  # its loop is running
        d.config.write_text(good + "\nx = " + "[" * 5000 + "]" * 5000 + "\n")
        if how == "rpc":
            reply = await client.call("daemon.reload")
            assert reply["error"]["code"] == -32008, reply
        else:
            d.proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: "reload failed" in d.log() or d.proc.returncode
                             is not None)
            assert d.proc.returncode is None, "SIGHUP killed llmd"
        tally("faults")
        await assert_serves(d.socket, d.proc.pid)


async def test_ready_is_sent_only_once_signals_are_handled(
        short_tmp: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process, so that the moment of READY=1 can be seen exactly: from outside it is a
    # race, which a test could only lose now and then.
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    registry = parse_registry(registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"}}), "test")
    daemon = Daemon(registry, short_tmp / "run" / "llmd.sock")
    at_ready: dict[str, Any] = {}

    def send(*fields: str) -> None:
        if "READY=1" in fields and not at_ready:
            at_ready.update({sig.name: signal.getsignal(sig)
                             for sig in (signal.SIGHUP, signal.SIGTERM)})

    monkeypatch.setattr(daemon.notifier, "send", send)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            daemon.request_stop()
    tally("faults")
    assert at_ready and all(callable(h) for h in at_ready.values()), at_ready


async def test_sigkill_of_the_daemon_mid_runs(daemon_factory: Any, fake_bin: Path,
                                              short_tmp: Path) -> None:
    pidfile = short_tmp / "pids"
    toml = faulty(fake_bin, pidfile)
    d: DaemonHandle = await daemon_factory(toml)
    attached = await d.connect()
    streaming = await d.connect()
    other = await d.connect()
    restarted: DaemonHandle | None = None
    try:
        with trio.fail_after(60):
            await attached.send_raw(request("llm.run", {"blueprint": "hang", "prompt": "a"}))
            await streaming.send_raw(request("llm.run", {"blueprint": "hang", "prompt": "b",
                                                         "stream": True}))
            detached = (await other.call("llm.run", {"blueprint": "hang", "prompt": "c",
                                                     "detach": True}, id="d"))["result"]["job"]
            await wait_until(lambda: len(read_pids(pidfile)) == 3)
            orphans = read_pids(pidfile)
            assert await d.stop(signal.SIGKILL) == -signal.SIGKILL
            # Every client learns at once: the connection ends, nothing hangs.
            for client in (attached, streaming, other):
                while (line := await client.recv_line()) is not None:
                    assert json.loads(line).get("method"), line
            assert d.socket.exists()  # stale, left behind
            # A new daemon on the same socket and state: the stale socket is replaced.
            d.notify.close()
            (d.workdir / "notify.sock").unlink()
            restarted = await start_daemon(d.workdir, toml)
            await assert_serves(restarted.socket, restarted.proc.pid, "after the crash")
            client = await restarted.connect()
            record = (await client.call("jobs.get", {"job": detached}))["result"]
            assert record["state"] == "interrupted", record
            # The runs the dead daemon left are killed when the new one starts.
            await wait_until(lambda: not any(alive(pid) for pid in orphans))
            tally("faults")
            tally("connections", 4)
    finally:
        kill_quietly(read_pids(pidfile))
        if restarted is not None:
            for c in restarted.clients:
                await c.aclose()
            await restarted.stop()
            restarted.notify.close()


# An abandoned child's process object warns when it is collected, whenever that is.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_failed_pidfd_open_leaves_no_unsupervised_child(
        fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_descriptors(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    # The supervisor calls os.pidfd_open; the os module is the same object everywhere.
    assert llmd.process.supervisor.__dict__["os"] is os
    monkeypatch.setattr(os, "pidfd_open", no_descriptors)
    cli = str(fake_bin / "fakecli")

    def ours() -> list[int]:
        return [pid for pid in children(os.getpid())
                if cli.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]

    attempt = Attempt(Invocation([cli, "sleep", "2"], None), env={"PATH": os.defpath},
                      cwd=None, max_output_bytes=1024, kill_grace=0.5)
    try:
        with trio.fail_after(10):
            # Either the attempt copes (and waits for its child) or it fails, but then
            # its child must not be left running on its own.
            with contextlib.suppress(OSError):
                await attempt.run()
        tally("faults")
        assert not [pid for pid in ours() if alive(pid)]
    finally:
        left = ours()
        kill_quietly(left)
        for pid in left:  # reaped here, so that nothing outlives the test as a zombie
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        gc.collect()  # here, not in some later test


def test_fakecli_modes_exist() -> None:
    # The modes this module relies on are the fake CLI's own (a typo would look like a bug).
    out = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "fakecli.py"),
                          "signal", "TERM"], capture_output=True, check=False)
    assert out.returncode == -signal.SIGTERM and out.stdout == b"partial\n"
