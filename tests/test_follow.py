"""``llmc job ID --follow`` and ``llmc watch`` (llmc.follow): the real client against the
real daemon, across a crash and restart of llmd too."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, registry_toml
from tests.harness import start_daemon

pytestmark = pytest.mark.usefixtures("fake_bin")


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]},
        "say": {"command": ["@fakecli", "text", "{prompt}"]},
        "fail": {"command": ["@fakecli", "fail", "4"], "prompt": "stdin"},
    })


async def open_llmc(d: DaemonHandle, *args: str, env: dict[str, str] | None = None
                    ) -> trio.Process:
    full = {**d.env, "LLMD_SOCKET": str(d.socket), **(env or {})}
    full.pop("NOTIFY_SOCKET", None)
    return await trio.lowlevel.open_process([sys.executable, "-m", "llmc", *args],
                                            stdin=-3, stdout=-1, stderr=-1, env=full,
                                            cwd=str(d.workdir))


async def read_until(proc: trio.Process, seen: bytearray, wanted: bytes) -> None:
    assert proc.stdout is not None
    while wanted not in seen:
        chunk = await proc.stdout.receive_some(65536)
        if not chunk:
            _, err = await finish(proc, seen)
            raise AssertionError(f"llmc ended before printing {wanted!r}: {bytes(seen)!r}, "
                                 f"{err!r}")
        seen += chunk


async def finish(proc: trio.Process, seen: bytearray) -> tuple[int, bytes]:
    """Read the rest of stdout and stderr; the exit status and stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    async with trio.open_nursery() as nursery:
        async def out() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.receive_some(65536):
                seen.extend(chunk)

        async def errs() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.receive_some(65536):
                err.extend(chunk)

        nursery.start_soon(out)
        nursery.start_soon(errs)
    return await proc.wait(), bytes(err)


async def test_follow_prints_the_output_as_it_comes(daemon_factory: Any, fake_bin: Path,
                                                    tmp_path: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    gate = tmp_path / "gate"
    with trio.fail_after(60):
        started = await client.call("llm.run", {"blueprint": "hand", "prompt": str(gate),
                                                "detach": True})
        proc = await open_llmc(d, "job", started["result"]["job"], "--follow")
        seen = bytearray()
        # The first line is printed while the job still runs.
        await read_until(proc, seen, b"before\n")
        assert proc.returncode is None
        gate.touch()
        status, _ = await finish(proc, seen)
    assert (status, bytes(seen)) == (0, b"before\nafter\n")


async def test_follow_a_failed_job_ends_with_its_status(daemon_factory: Any,
                                                        fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(60):
        failed = await client.call("llm.run", {"blueprint": "fail", "prompt": ""})
        proc = await open_llmc(d, "job", failed["error"]["data"]["job"], "--follow")
        status, err = await finish(proc, bytearray())
    assert status == 1 and b"ended failed" in err


async def test_follow_across_a_daemon_restart(daemon_factory: Any, fake_bin: Path,
                                              short_tmp: Path, tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(short_tmp / "state")}
    toml = registry(fake_bin)
    d: DaemonHandle = await daemon_factory(toml, env=env)
    client = await d.connect()
    gate = tmp_path / "gate"
    with trio.fail_after(60):
        started = await client.call("llm.run", {"blueprint": "hand", "prompt": str(gate),
                                                "detach": True})
        proc = await open_llmc(d, "job", started["result"]["job"], "--follow")
        seen = bytearray()
        await read_until(proc, seen, b"before\n")
        # A crash: the job's record says running; the next daemon finds it interrupted.
        d.proc.kill()
        await d.proc.wait()
        d.notify.close()
        (d.workdir / "notify.sock").unlink()
        d2 = await start_daemon(d.workdir, toml, env=env)
        try:
            status, err = await finish(proc, seen)
        finally:
            await d2.aclose()
    assert status == 10, err
    assert bytes(seen) == b"before\n"
    assert b"connecting again" in err and b"was interrupted" in err


async def relay(path: Path, target: Path, task_status: trio.TaskStatus[
                    list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
    """Pass connections made to ``path`` on to the socket ``target``, byte for byte, until
    cancelled; then every connection it passed on is closed."""
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(path))
    sock.listen()

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        async for chunk in src:
            await dst.send_all(chunk)

    async def handle(stream: trio.SocketStream) -> None:
        upstream = await trio.open_unix_socket(str(target))
        async with stream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pump, stream, upstream)
            nursery.start_soon(pump, upstream, stream)

    try:
        await trio.serve_listeners(handle, [trio.SocketListener(sock)],
                                   task_status=task_status)
    finally:
        path.unlink()


async def test_follow_across_a_lost_connection_prints_the_end(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, tmp_path: Path) -> None:
    # The same llmd after the connection comes back: the output printed so far is still its
    # output, so the end of a job that finished meanwhile is printed too.
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    gate = tmp_path / "gate"
    front = short_tmp / "front.sock"
    with trio.fail_after(60):
        started = await client.call("llm.run", {"blueprint": "hand", "prompt": str(gate),
                                                "detach": True})
        job = started["result"]["job"]
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()

            async def serve(scope: trio.CancelScope, *, task_status: trio.TaskStatus[
                                list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                with scope:
                    await relay(front, d.socket, task_status=task_status)

            await nursery.start(serve, first)
            proc = await open_llmc(d, "job", job, "--follow", env={"LLMD_SOCKET": str(front)})
            seen = bytearray()
            await read_until(proc, seen, b"before\n")
            first.cancel()  # the connection is lost, llmd goes on
            while front.exists():
                await trio.sleep(0.01)
            gate.touch()
            ended = await client.call("jobs.get", {"job": job, "wait": True})
            assert ended["result"]["state"] == "succeeded"
            await nursery.start(serve, trio.CancelScope())
            status, err = await finish(proc, seen)
            nursery.cancel_scope.cancel()
    assert status == 0, err
    assert bytes(seen) == b"before\nafter\n"
    assert b"connecting again" in err


async def test_watch_prints_events_as_json_lines(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(60):
        proc = await open_llmc(d, "watch", "--json")
        # Watching has begun once the daemon counts the connection.
        while (await client.call("daemon.info"))["result"]["connections"] < 2:
            await trio.sleep(0.02)
        reply = await client.call("llm.run", {"blueprint": "say", "prompt": "x"}, id=2)
        seen = bytearray()
        await read_until(proc, seen, b'"succeeded"')
        proc.terminate()
        await finish(proc, seen)
    events = [json.loads(line) for line in bytes(seen).splitlines() if line.strip()]
    mine = [e for e in events if e["job"] == reply["result"]["job"]]
    assert [e["state"] for e in mine] == ["queued", "running", "succeeded"]


@pytest.mark.parametrize("installed", [True, False])
async def test_watch_notify(daemon_factory: Any, fake_bin: Path, tmp_path: Path,
                            installed: bool) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    told = tmp_path / "told"
    if installed:
        script = bin_dir / "notify-send"
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {told}\n")
        script.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}"
    with trio.fail_after(60):
        proc = await open_llmc(d, "watch", "--notify", "--state", "succeeded",
                               env={"PATH": path})
        while (await client.call("daemon.info"))["result"]["connections"] < 2:
            await trio.sleep(0.02)
        reply = await client.call("llm.run", {"blueprint": "say", "prompt": "x"}, id=2)
        job = reply["result"]["job"]
        seen = bytearray()
        await read_until(proc, seen, b"succeeded")
        if installed:
            while not told.exists() or job not in told.read_text():
                await trio.sleep(0.02)
        proc.terminate()
        _, err = await finish(proc, seen)
    assert job in seen.decode() and "running" not in seen.decode()
    if installed:
        assert f"llmd job {job} succeeded" in told.read_text()
    else:
        assert b"notify-send was not found" in err
