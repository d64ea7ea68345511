"""The wire against the real daemon: framing, JSON-RPC errors, limits, the socket itself."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, RawClient, registry_toml

pytestmark = pytest.mark.usefixtures("fake_bin")


def simple(fake_bin: Path, daemon: dict[str, Any] | None = None) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin",
                 "description": "copies the prompt"}}, daemon=daemon)


async def run_ok(client: RawClient, id: Any = 99) -> None:
    reply = await client.call("llm.run", {"blueprint": "echo", "prompt": "still here"}, id=id)
    assert reply["result"]["text"] == "still here"


async def test_malformed_input_gets_errors_and_the_connection_stays(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    client = await d.connect()
    cases: list[tuple[bytes, int]] = [
        (b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]', -32700),
        (b"\xff\xfe not utf-8", -32700),
        (b"[" * 100_000, -32700),
        (b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}', -32600),
        (b'{"jsonrpc": "1.0", "method": "daemon.info", "id": 1}', -32600),
        (b"42", -32600),
        (b'{"jsonrpc": "2.0", "method": "no.such", "id": 1}', -32601),
        (b'{"jsonrpc": "2.0", "method": "llm.run", "id": 1, "params": {"blueprint": 1}}',
         -32602),
        (b'{"jsonrpc": "2.0", "method": "llm.run", "id": 1, "params": {"blueprint": "echo"}}',
         -32602),
        (b'{"jsonrpc": "2.0", "method": "llm.run", "id": 1, '
         b'"params": {"blueprint": "echo", "prompt": "x", "env": {"A": "1"}}}', -32602),
        (b'{"jsonrpc": "2.0", "method": "llm.run", "id": 1, '
         b'"params": {"blueprint": "echo", "prompt": "x", "timeout": "forever"}}', -32602),
        (b'{"jsonrpc": "2.0", "method": "llm.run", "id": 1, '
         b'"params": {"blueprint": "echo", "prompt": "x", "timeout": -5}}', -32602),
        (b'{"jsonrpc": "2.0", "method": "daemon.info", "id": 1e400}', -32600),
    ]
    with trio.fail_after(20):
        for raw, code in cases:
            await client.send_raw(raw + b"\n")
            reply = await client.recv()
            assert reply["error"]["code"] == code, (raw[:80], reply)
            assert "Traceback" not in json.dumps(reply)
        await run_ok(client)


async def test_batches_and_notifications(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        await client.send([
            {"jsonrpc": "2.0", "method": "llm.run", "id": "a",
             "params": {"blueprint": "echo", "prompt": "A"}},
            {"jsonrpc": "2.0", "method": "daemon.info"},
            1,
            {"jsonrpc": "2.0", "method": "blueprints.list", "id": "b"},
        ])
        replies = await client.recv()
        assert isinstance(replies, list) and len(replies) == 3
        by_id = {r["id"]: r for r in replies}
        assert by_id["a"]["result"]["text"] == "A"
        assert by_id["b"]["result"]["blueprints"][0]["description"] == "copies the prompt"
        assert by_id[None]["error"]["code"] == -32600
        # An all-notification batch and a notification get nothing back.
        await client.send([{"jsonrpc": "2.0", "method": "daemon.info"}])
        await client.send({"jsonrpc": "2.0", "method": "daemon.info"})
        await client.send([])
        reply = await client.recv()
        assert reply["error"]["code"] == -32600  # the empty batch, and nothing before it


async def test_lsp_framing_for_the_whole_connection(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    stream = await trio.open_unix_socket(str(d.socket))
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "llm.run",
                       "params": {"blueprint": "echo", "prompt": "über\nlines"}}).encode()
    message = b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc\r\n\r\n%s" % (
        len(body), body)
    buf = b""
    with trio.fail_after(20):
        # Byte by byte first, to exercise the sniffing, then two in one write.
        for i in range(len(message)):
            await stream.send_all(message[i:i + 1])
        await stream.send_all(message + message.replace(b'"id": 7', b'"id": 8'))
        replies: list[Any] = []
        while len(replies) < 3:
            buf += await stream.receive_some(65536)
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(head.split(b":")[1])
                if len(rest) < length:
                    break
                replies.append(json.loads(rest[:length]))
                buf = rest[length:]
    assert sorted(r["id"] for r in replies) == [7, 7, 8]
    assert all(r["result"]["text"] == "über\nlines" for r in replies)
    await stream.aclose()


async def test_lsp_states_the_length_of_a_large_reply_sent_in_pieces(
        daemon_factory: Any, fake_bin: Path) -> None:
    # Over a MiB of two-byte characters, as text and as output: sent from one encoding,
    # in slices, behind a Content-Length counted in bytes.
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    stream = await trio.open_unix_socket(str(d.socket))
    prompt = "\u00fcber " * 300_000
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                       "params": {"blueprint": "echo", "prompt": prompt}}).encode()
    buf = b""
    with trio.fail_after(20):
        await stream.send_all(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        while b"\r\n\r\n" not in buf or len(buf.partition(b"\r\n\r\n")[2]) < int(
                buf.partition(b"\r\n\r\n")[0].split(b":")[1]):
            chunk = await stream.receive_some(1 << 20)
            assert chunk, "the daemon closed the connection"
            buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(head.split(b":")[1])
    assert len(rest) == length  # nothing more, nothing less
    result = json.loads(rest)["result"]
    assert result["text"] == result["output"] == prompt
    await stream.aclose()


async def test_oversized_message_closes_only_that_connection(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin, daemon={"max_message_bytes": 65536}))
    bystander = await d.connect()
    client = await d.connect()
    with trio.fail_after(20):
        big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                          "params": {"blueprint": "echo", "prompt": "x" * 100_000}})
        # The daemon may close before it has read everything.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_raw(big.encode() + b"\n")
        reply = await client.recv()
        assert reply["error"]["code"] == -32600
        assert "too large" in reply["error"]["message"]
        assert await client.recv_line() is None
        await run_ok(bystander)
        # Just under the limit is fine.
        fits = "y" * 60_000
        reply = await bystander.call("llm.run", {"blueprint": "echo", "prompt": fits}, id=2)
        assert reply["result"]["text"] == fits


async def test_connect_and_disconnect_many_times(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    with trio.fail_after(60):
        for i in range(300):
            stream = await trio.open_unix_socket(str(d.socket))
            if i % 3 == 1:
                await stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "daemon.in')
            elif i % 3 == 2:
                await stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "daemon.info"}\n')
            await stream.aclose()
        client = await d.connect()
        info = await client.call("daemon.info")
    assert info["result"]["pid"] == d.proc.pid
    assert "internal error" not in d.log()


async def test_a_stalled_half_message_blocks_no_one(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    staller = await d.connect()
    await staller.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": "llm.run", "params": {"bl')
    other = await d.connect()
    with trio.fail_after(10):
        await run_ok(other)


async def test_half_closed_client_still_gets_its_replies(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "slow": {"command": ["@fakecli", "sleep", "0.5"], "prompt": "stdin"}}))
    stream = await trio.open_unix_socket(str(d.socket))
    with trio.fail_after(10):
        await stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "llm.run", '
                              b'"params": {"blueprint": "slow", "prompt": "x"}}\n')
        await stream.send_eof()  # like `nc -N` or socat: done sending, still listening
        data = b""
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed without a reply"
            data += chunk
    assert json.loads(data)["result"]["text"] == "done"
    await stream.aclose()


async def test_socket_and_directory_permissions(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700


async def test_a_second_daemon_on_the_same_socket_refuses(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    with trio.fail_after(20):
        proc = await trio.run_process(
            [sys.executable, "-m", "llmd", "serve", "--socket", str(d.socket),
             "--config", str(d.config)], capture_stdout=True, capture_stderr=True,
            check=False, env=d.env)
    assert proc.returncode == 1
    assert b"already serving" in proc.stderr
    assert str(d.proc.pid).encode() in proc.stderr
    client = await d.connect()
    with trio.fail_after(10):
        await run_ok(client)


async def test_a_stale_socket_is_replaced(daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    assert await d.stop(signal.SIGKILL) == -signal.SIGKILL
    assert d.socket.exists()  # left behind by the killed daemon
    d2: DaemonHandle = await daemon_factory(simple(fake_bin))
    # Same path: start another on the first one's socket.
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llmd", "serve", "--socket", str(d.socket),
             "--config", str(d.config)], env={**d.env, "NOTIFY_SOCKET": ""},
            stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    client = await RawClient.connect(d.socket)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                break
            await run_ok(client)
            await client.aclose()
        finally:
            proc.terminate()
            assert await proc.wait() == 0
    assert d2.proc.returncode is None


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to act as another uid")
async def test_another_uid_is_refused_even_when_modes_allow(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(simple(fake_bin))
    os.chmod(d.socket, 0o777)
    for parent in (d.socket.parent, d.socket.parent.parent, d.socket.parent.parent.parent):
        os.chmod(parent, 0o755)
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5)\n"
        "try:\n"
        "    s.sendall(b'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\"}\\n')\n"
        "    print(repr(s.recv(100)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print(repr(b''))\n")
    with trio.fail_after(20):
        proc = await trio.run_process(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-S", "-c", script, str(d.socket)],
            capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"b''"  # connected, then closed without a byte
    assert "refused a peer with uid 65534" in d.log()
    client = await d.connect()
    with trio.fail_after(10):
        await run_ok(client)
