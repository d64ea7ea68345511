"""Faults around the clients and the LSP framing: a disk that fills up under ``llmc``, LSP
messages with too-short lengths and headers in any order, hostile listeners.

tests/test_client_safety.py holds one regression test per client fault (``/dev/full``, a
reader that goes away, another uid's listener, a prompt over the limit, a full backlog,
Ctrl-C); here they are pushed further on the suite's shared daemon.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.reliability.support import (
    SharedDaemon,
    Soak,
    assert_healthy,
    open_stream,
    read_lsp,
    request,
    tally,
)


def client_env(socket: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "NOTIFY_SOCKET")}
    env["LLMD_SOCKET"] = str(socket)
    return env


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (skipped where it cannot be mounted)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("mode", [[], ["--stream"], ["--raw"]])
async def test_a_disk_that_fills_up_mid_answer_is_reported(daemon: SharedDaemon,
                                                           small_disk: Path,
                                                           mode: list[str]) -> None:
    # 200 kB of answer into 64 KiB of disk: the first writes succeed, one is cut short, the
    # next fails with ENOSPC.
    prompt = "y" * 200_000
    target = small_disk / "answer"
    with open(target, "wb") as out, trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "llmc", "run", *mode, "echo", "-"], stdin=prompt.encode(),
            stdout=out, capture_stderr=True, check=False, env=client_env(daemon.socket))
    tally("faults")
    assert done.returncode == 1, done
    lines = done.stderr.decode().splitlines()
    assert lines == ["llmc: cannot write to standard output: No space left on device"]
    assert target.stat().st_size < len(prompt)
    await assert_healthy(daemon)


def _framed(body: bytes, length: int, content_type_first: bool) -> bytes:
    headers = b"Content-Length: %d\r\n" % length
    if content_type_first:
        headers = b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + headers
    return headers + b"\r\n" + body


async def test_lsp_too_short_lengths_lose_no_well_formed_request(daemon: SharedDaemon,
                                                                 soak: Soak) -> None:
    rng = random.Random(12)
    with trio.fail_after(soak.limit(60)):
        for _ in soak.rounds():
            stream = await open_stream(daemon.socket)
            buf = bytearray()
            wanted: list[int] = []
            data = b""
            for n in range(40):
                # Answered from memory (-32007, no such job), so that the shared daemon's
                # queue limits do not come into it; the colon makes the tails look like
                # headers.
                body = request("jobs.get", {"job": f"p{n}: {{x}}"}, id=n).rstrip(b"\n")
                short = rng.random() < 0.4
                length = rng.randrange(1, len(body)) if short else len(body)
                # The first header decides the framing: keep it well-formed.
                data += _framed(body, length if n else len(body), rng.random() < 0.5)
                if not short or not n:
                    wanted.append(n)
                tally("inputs")
            # The last message must not be cut short: its tail would wait for a header.
            data += _framed(request("daemon.info", id="last").rstrip(b"\n"), len(
                request("daemon.info", id="last").rstrip(b"\n")), False)
            cut = rng.randrange(1, len(data))
            await stream.send_all(data[:cut])
            await stream.send_all(data[cut:])
            answered: set[int] = set()
            last = False
            try:
                # Requests run concurrently: the last may be answered first.
                while not (last and set(wanted) <= answered):
                    reply = await read_lsp(stream, buf)
                    if reply.get("id") == "last":
                        last = True
                    elif isinstance(reply.get("id"), int):
                        assert reply["error"]["code"] == -32007, reply
                        answered.add(reply["id"])
            finally:
                await stream.aclose()
            assert answered == set(wanted)
            tally("connections")
        await assert_healthy(daemon)


async def test_lsp_with_content_type_first_is_served(daemon: SharedDaemon) -> None:
    stream = await open_stream(daemon.socket)
    buf = bytearray()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                       "params": {"blueprint": "echo", "prompt": "typed first"}}).encode()
    with trio.fail_after(30):
        # Byte by byte, so that the sniffing sees every prefix.
        for byte in _framed(body, len(body), True):
            await stream.send_all(bytes([byte]))
        reply = await read_lsp(stream, buf)
    await stream.aclose()
    tally("inputs")
    tally("connections")
    assert reply["result"]["text"] == "typed first"
