"""llmc without a daemon: path rules, arguments, exit statuses, and the Connection class
against a fake NDJSON server running in a thread.

Every blocking step is bounded: server sockets time out after a few seconds and threads are
joined with a timeout, so a broken client fails a test instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llmc import __version__, cli, commands, exitcodes, output, run
from llmc import statusline as status
from llmc.connection import (
    CallTimeout,
    Connection,
    ConnectionLost,
    DaemonUnavailable,
    ProtocolError,
    RpcError,
    default_socket_path,
    socket_path,
)

from llmd import paths
from tests.client_fake import TIMEOUT, FakeServer, Peer, Script, Tty, answer, failing

# -- helpers -----------------------------------------------------------------------------------

class Hang(BaseException):
    """A test ran past its limit (a BaseException, so no client code can swallow it)."""


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    # Socket timeouts bound the waits; this also bounds a client stuck in a busy loop.
    def expire(signum: int, frame: object) -> None:
        raise Hang("the test took longer than 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    # A handled Ctrl-C makes the next one end the process (os._exit); not pytest's.
    interrupt = signal.getsignal(signal.SIGINT)
    signal.setitimer(signal.ITIMER_REAL, 20.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        signal.signal(signal.SIGINT, interrupt)


@pytest.fixture
def serve() -> Iterator[Callable[[Script], FakeServer]]:
    servers: list[FakeServer] = []

    def start(script: Script) -> FakeServer:
        server = FakeServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


RESULT = {"job": "j1", "blueprint": "bp", "state": "succeeded", "text": "hello",
          "output": "hello", "stderr": "", "exit_code": 0, "attempts": 1, "duration_s": 0.1,
          "truncated": False, "json": None, "json_error": None, "session": None,
          "usage": None, "cost_usd": None}


# -- socket path --------------------------------------------------------------------------------

def test_socket_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMD_SOCKET", "/env/llmd.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/42")
    assert socket_path("/flag.sock") == "/flag.sock"
    assert socket_path(None) == "/env/llmd.sock"
    monkeypatch.delenv("LLMD_SOCKET")
    assert socket_path(None) == "/run/user/42/llmd/llmd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert socket_path(None) == f"/tmp/llmd-{os.getuid()}/llmd.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("LLMD_SOCKET", "")
    assert socket_path(None) == f"/tmp/llmd-{os.getuid()}/llmd.sock"
    # The default is llmd's whatever $LLMD_SOCKET says.
    assert default_socket_path() == str(paths.default_socket_path())
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/42")
    monkeypatch.setenv("LLMD_SOCKET", "/env/llmd.sock")
    assert default_socket_path() == str(paths.default_socket_path()) \
        == "/run/user/42/llmd/llmd.sock"


def test_relative_socket_path_is_made_absolute(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert socket_path("s.sock") == str(tmp_path / "s.sock")


# -- arguments and usage errors ------------------------------------------------------------------

# `llmc` alone prints a short usage instead (tests/test_completion.py).
@pytest.mark.parametrize("argv", [
    ["run"], ["nosuch"], ["run", "bp", "x", "--timeout", "0"],
    ["run", "bp", "x", "--timeout", "-5"], ["run", "bp", "x", "--timeout", "nan"],
    ["run", "bp", "x", "--timeout", "inf"],
    ["run", "bp", "x", "--timeout", "two words"], ["run", "bp", "x", "--bogus"],
    ["run", "bp", "x", "--cwd", "/no/such/dir"], ["run", "bp", "x", "--detach", "--stream"],
    ["jobs", "--limit", "0"], ["job"], ["job", "j1", "--timeout", "soon"],
    ["job", "j1", "--timeout", "5"], ["jobs", "--state", "bogus"],
])
def test_usage_errors_exit_2_with_one_line(argv: list[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A socket that does not exist: reaching the connect step would give 3, not 2.
    status, out, err = run_main(["--socket", str(tmp_path / "none"), *argv], capsys)
    assert status == exitcodes.USAGE
    assert out == ""
    assert err.startswith("llmc: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("argv", "command"), [
    (["run", "bp"], "run"), (["--socket", "run", "info"], "info"), (["--socket=x", "jobs"], "jobs"),
    (["--help", "run"], None), (["nosuch"], None), ([], None), (["--socket"], None),
])
def test_command_in(argv: list[str], command: str | None) -> None:
    assert cli.command_in(argv) == command


def test_socket_after_the_command_wins(serve: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer({"version": "1"}))
    status, out, _ = run_main(["--socket", str(tmp_path / "none"), "info", "--socket",
                               server.path], capsys)
    assert (status, out) == (0, "version: 1\n")
    server = serve(answer({"version": "2"}))
    status, out, _ = run_main(["--socket", server.path, "info"], capsys)
    assert (status, out) == (0, "version: 2\n")


def test_parse_timeout() -> None:
    assert cli.parse_timeout("30") == 30
    assert isinstance(cli.parse_timeout("30"), int)
    assert cli.parse_timeout("2.5") == 2.5
    assert cli.parse_timeout("quick") == "quick"
    assert cli.parse_timeout("very-long_2") == "very-long_2"


def test_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["--help"], capsys)
    assert status == 0
    assert cli.__doc__ is not None
    for code, meaning in exitcodes.TABLE:
        assert f"{code:>3}  {meaning}" in out
        assert meaning in cli.__doc__
    assert len({code for code, _ in exitcodes.TABLE}) == len(exitcodes.TABLE)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["--version"], capsys)
    assert status == 0
    assert out.strip() == f"llmc {__version__}"


def test_prompt_from_a_terminal_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    status, _, err = run_main(["run", "bp", "--socket", str(tmp_path / "none")], capsys)
    assert status == exitcodes.USAGE
    assert "llmc run NAME 'PROMPT'" in err


def test_prompt_must_be_utf8(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok \xff")))
    status, _, err = run_main(["run", "bp", "-", "--socket", str(tmp_path / "s")], capsys)
    assert status == exitcodes.USAGE
    assert "not valid UTF-8 (byte 0xff at offset 3)" in err


# -- exit statuses -------------------------------------------------------------------------------

EXIT_BY_CODE = [(-32005, 1), (-32603, 1), (-32007, 1), (-32800, 10), (-32802, 10), (-32602, 2),
                (-32601, 2), (-32003, 4), (-32004, 5), (-32006, 6), (-32001, 7), (-32002, 7),
                (-32008, 8)]


@pytest.mark.parametrize(("code", "status"), EXIT_BY_CODE)
def test_exit_status_for_each_error(code: int, status: int, serve: Any,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert exitcodes.exit_code_for(code) == status
    server = serve(failing(code, "it went wrong"))
    got, out, err = run_main(["run", "bp", "hi", "--socket", server.path], capsys)
    assert got == status
    assert out == ""
    first = err.splitlines()[0]
    if code == -32601:
        assert first == "llmc: this llmd does not support llm.run yet"
    else:
        assert first == "llmc: it went wrong"


def test_cli_failure_shows_stderr_tail(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(failing(-32005, "claude exited with status 1",
                           {"stderr": "first line\nError: auth\n", "exit_code": 1}))
    status, _, err = run_main(["run", "bp", "hi", "--socket", server.path], capsys)
    assert status == exitcodes.FAILED
    assert err == "llmc: claude exited with status 1\n  first line\n  Error: auth\n"


def test_rate_limit_shows_retry_after(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(failing(-32004, "rate limited", {"retry_after_s": 30}))
    status, _, err = run_main(["run", "bp", "hi", "--socket", server.path], capsys)
    assert status == exitcodes.RATE_LIMITED
    assert err == "llmc: rate limited (retry after 30 s)\n"


def test_raw_error_is_also_json_on_stdout(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(failing(-32003, "timed out after 5 s", {"job": "j9"}))
    status, out, _ = run_main(["run", "bp", "hi", "--raw", "--socket", server.path], capsys)
    assert status == exitcodes.TIMED_OUT
    assert json.loads(out) == {"error": {"code": -32003, "message": "timed out after 5 s",
                                         "data": {"job": "j9"}}}


def test_missing_socket_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "llmd.sock")
    status, out, err = run_main(["info", "--socket", path], capsys)
    assert status == exitcodes.UNREACHABLE
    assert out == ""
    assert err == (f"llmc: llmd is not running (no socket at {path}); start it with: llmd serve "
                   "(or: systemctl --user start llmd.socket)\n")


def test_unavailable_reasons(tmp_path: Path) -> None:
    short = tempfile.mkdtemp(prefix="llmc-", dir="/tmp")
    try:
        stale = os.path.join(short, "stale.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(stale)  # bound, never listening: what a killed daemon leaves
        with pytest.raises(DaemonUnavailable) as info:
            Connection.connect(stale, timeout=TIMEOUT)
        assert info.value.reason == "refused"
        assert info.value.path == stale
        assert "llmd serve" in str(info.value)
    finally:
        shutil.rmtree(short)
    plain = tmp_path / "file"
    plain.write_text("")
    with pytest.raises(DaemonUnavailable, match="is not a socket"):
        Connection.connect(str(plain))
    with pytest.raises(DaemonUnavailable) as info:
        Connection.connect(str(plain / "below.sock"))
    assert info.value.reason == "missing"


# -- Connection against the fake server ----------------------------------------------------------

def test_call_ids_and_notifications(serve: Any) -> None:
    def script(peer: Peer) -> None:
        first = peer.read()
        peer.send({"jsonrpc": "2.0", "method": "llm.state", "params": {"state": "running"}})
        peer.send({"jsonrpc": "2.0", "method": "llm.output", "params": {"text": "a"}})
        peer.reply(first, {"n": 1})
        second = peer.read()
        peer.reply(second, [1, 2])
        peer.read()  # the notification

    server = serve(script)
    seen: list[tuple[str, Any]] = []
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        result = conn.call("a.b", {"x": 1}, on_notification=lambda m, p: seen.append((m, p)),
                           timeout=TIMEOUT)
        assert result == {"n": 1}
        assert conn.pending_id is None
        assert conn.call("c.d", timeout=TIMEOUT) == [1, 2]
        conn.notify("e.f", {"y": 2})
    server.stop()
    assert seen == [("llm.state", {"state": "running"}), ("llm.output", {"text": "a"})]
    assert server.received == [
        {"jsonrpc": "2.0", "id": 1, "method": "a.b", "params": {"x": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "c.d"},
        {"jsonrpc": "2.0", "method": "e.f", "params": {"y": 2}},
    ]
    assert conn.closed


def test_reply_larger_than_one_mib(serve: Any) -> None:
    text = "é" * 700_000 + "\u2603" * 200_000  # about 2 MiB of UTF-8
    server = serve(answer({"text": text}))
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        assert conn.call("llm.run", {}, timeout=TIMEOUT) == {"text": text}


def test_reply_in_small_pieces_splitting_characters(serve: Any) -> None:
    def script(peer: Peer) -> None:
        request = peer.read()
        line = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "añb☃"},
                          ensure_ascii=False).encode() + b"\n"
        for i in range(0, len(line), 3):
            peer.sock.sendall(line[i:i + 3])

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        assert conn.call("x", timeout=TIMEOUT) == "añb☃"


def test_stale_replies_and_server_requests(serve: Any) -> None:
    def script(peer: Peer) -> None:
        request = peer.read()
        peer.send({"jsonrpc": "2.0", "id": 99, "result": "stale"})
        peer.send({"jsonrpc": "2.0", "id": "srv", "method": "client.ping"})
        assert peer.read()["error"]["code"] == -32601
        peer.sock.sendall(b"\n")
        peer.reply(request, "fresh")

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        assert conn.call("x", timeout=TIMEOUT) == "fresh"


def test_error_reply_raises_rpc_error(serve: Any) -> None:
    server = serve(failing(-32001, "unknown blueprint 'nope'", {"blueprint": "nope"}))
    with Connection.connect(server.path, timeout=TIMEOUT) as conn, \
            pytest.raises(RpcError) as info:
        conn.call("llm.run", {"blueprint": "nope"}, timeout=TIMEOUT)
    assert (info.value.code, info.value.message) == (-32001, "unknown blueprint 'nope'")
    assert info.value.data == {"blueprint": "nope"}
    assert info.value.method == "llm.run"


def test_null_id_error_belongs_to_the_call(serve: Any) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.send({"jsonrpc": "2.0", "id": None,
                   "error": {"code": -32700, "message": "parse error"}})

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn, \
            pytest.raises(RpcError, match="parse error"):
        conn.call("x", timeout=TIMEOUT)


def test_server_closes_mid_reply(serve: Any) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "res')

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn, \
            pytest.raises(ConnectionLost, match="in the middle of a message before answering x"):
        conn.call("x", timeout=TIMEOUT)


def test_cli_reports_a_dropped_connection(serve: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(lambda peer: peer.read() and None)
    status, _, err = run_main(["run", "bp", "hi", "--socket", server.path], capsys)
    assert status == exitcodes.UNREACHABLE
    assert err.startswith("llmc: llmd closed the connection before answering llm.run")
    assert err.count("\n") == 1


def test_garbage_line_is_a_protocol_error(serve: Any) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.sock.sendall(b"this is not json\n")

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn, \
            pytest.raises(ProtocolError, match="not JSON"):
        conn.call("x", timeout=TIMEOUT)


def test_message_limit(serve: Any) -> None:
    server = serve(answer("x" * 4096))
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        conn._max_message = 1024
        with pytest.raises(ProtocolError, match="larger than 1024 bytes"):
            conn.call("x", timeout=TIMEOUT)


def test_call_timeout_then_cancel_pending(serve: Any) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.read()  # the $/cancelRequest

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        with pytest.raises(CallTimeout):
            conn.call("slow", timeout=0.2)
        assert conn.pending_id == 1
        assert conn.cancel_pending()
    server.stop()
    assert server.received[-1] == {"jsonrpc": "2.0", "method": "$/cancelRequest",
                                   "params": {"id": 1}}


def test_closed_connection_refuses_calls() -> None:
    left, right = socket.socketpair()
    right.close()
    conn = Connection(left)
    conn.close()
    with pytest.raises(ConnectionLost, match="closed"):
        conn.call("x")
    assert not conn.cancel_pending()


# -- commands against the fake server ------------------------------------------------------------

def test_run_prints_text_exactly(serve: Any, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer(RESULT))
    status, out, err = run_main(["run", "bp", "hi", "--socket", server.path, "--timeout",
                                 "quick", "--model", "m", "--session", "s", "--cwd",
                                 str(tmp_path)], capsys)
    assert (status, out, err) == (0, "hello", "")
    server.stop()
    assert server.received[0]["params"] == {
        "blueprint": "bp", "prompt": "hi", "cwd": str(tmp_path), "timeout": "quick",
        "model": "m", "session": "s"}


def test_run_reads_stdin_and_defaults_cwd(serve: Any, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("línea 1\n".encode())))
    server = serve(answer({**RESULT, "truncated": True}))
    status, out, err = run_main(["run", "bp", "--socket", server.path], capsys)
    assert (status, out) == (0, "hello")
    assert "truncated" in err
    server.stop()
    params = server.received[0]["params"]
    assert params["prompt"] == "línea 1\n"
    assert params["cwd"] == os.getcwd()


def test_run_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer({**RESULT, "json": {"a": [1, 2]}}))
    status, out, _ = run_main(["run", "bp", "hi", "--json", "--socket", server.path], capsys)
    assert status == 0
    assert json.loads(out) == {"a": [1, 2]}
    assert out == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    server.stop()
    assert server.received[0]["params"]["json"] is True


def test_run_json_missing(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer({**RESULT, "json_error": "no JSON value in the text"}))
    status, out, err = run_main(["run", "bp", "hi", "--json", "--socket", server.path], capsys)
    assert (status, out) == (exitcodes.NO_JSON, "")
    assert err == "llmc: no JSON in the answer: no JSON value in the text\n"


def test_run_raw_and_detach(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer(RESULT))
    status, out, _ = run_main(["run", "bp", "hi", "--raw", "--socket", server.path], capsys)
    assert (status, json.loads(out)) == (0, RESULT)
    server = serve(answer({"job": "j7", "state": "queued"}))
    status, out, _ = run_main(["run", "bp", "hi", "--detach", "--socket", server.path], capsys)
    assert (status, out) == (0, "j7\n")
    server.stop()
    assert server.received[0]["params"]["detach"] is True


def _stream_notes(parts: list[tuple[str, str]]) -> list[Any]:
    notes: list[Any] = [{"jsonrpc": "2.0", "method": "llm.state",
                         "params": {"job": "j1", "request": 1, "state": "running"}}]
    for seq, (stream, text) in enumerate(parts):
        notes.append({"jsonrpc": "2.0", "method": "llm.output", "params": {
            "job": "j1", "request": 1, "seq": seq, "stream": stream, "text": text}})
    return notes


@pytest.mark.parametrize("parts", [
    [("stdout", "hel"), ("stderr", "warn\n"), ("stdout", "lo")],
    [("stdout", "hel"), ("stderr", "warn\n")],  # the tail never came: print only the rest
])
def test_run_stream_prints_once(parts: list[tuple[str, str]], serve: Any,
                                capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer(RESULT, before=_stream_notes(parts)))
    status, out, err = run_main(["run", "bp", "hi", "--stream", "--socket", server.path], capsys)
    assert (status, out, err) == (0, "hello", "warn\n")
    server.stop()
    assert server.received[0]["params"]["stream"] is True


def test_run_stream_with_json_keeps_stdout_clean(serve: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    notes = _stream_notes([("stdout", '{"a": 1}')])
    server = serve(answer({**RESULT, "text": '{"a": 1}', "json": {"a": 1}}, before=notes))
    status, out, err = run_main(["run", "bp", "hi", "--stream", "--json", "--socket",
                                 server.path], capsys)
    assert (status, json.loads(out), err) == (0, {"a": 1}, '{"a": 1}')


def test_ctrl_c_cancels_the_request(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def script(peer: Peer) -> None:
        peer.read()
        signal.pthread_kill(main_thread, signal.SIGINT)
        peer.read()

    server = serve(script)
    status, out, err = run_main(["run", "bp", "hi", "--socket", server.path], capsys)
    assert (status, out, err) == (exitcodes.INTERRUPTED, "", "llmc: interrupted\n")
    server.stop()
    assert server.received[1] == {"jsonrpc": "2.0", "method": "$/cancelRequest",
                                  "params": {"id": 1}}


def test_blueprints_table(serve: Any, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    listing = {"blueprints": [
        {"name": "claude", "parser": "claude-stream-json", "timeout_s": 300,
         "max_concurrency": 4, "description": "Claude Code in print mode, " * 3},
        {"name": "echo", "parser": "text", "timeout_s": 60.5, "max_concurrency": 1,
         "description": "says it back"}]}
    server = serve(answer(listing))
    status, out, _ = run_main(["blueprints", "--socket", server.path], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PARSER", "TIMEOUT", "MAX", "DESCR..."]
    assert lines[1] == "claude  claude-stream-json  300s     4    Claud..."
    assert max(len(line) for line in lines) <= 50
    assert lines[2].split()[:4] == ["echo", "text", "60.5s", "1"]
    server = serve(answer(listing))
    status, out, _ = run_main(["blueprints", "--json", "--socket", server.path], capsys)
    assert (status, json.loads(out)) == (0, listing)


def test_info_key_values(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer({"version": "0.1.0", "pid": 12, "uptime_s": 3.14159,
                           "jobs": {"queued": 0, "running": 2}}))
    status, out, _ = run_main(["info", "--socket", server.path], capsys)
    assert status == 0
    assert out == "version: 0.1.0\npid: 12\nuptime_s: 3.142\njobs.queued: 0\njobs.running: 2\n"


def test_unsupported_method(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(failing(-32601, "method not found"))
    status, out, err = run_main(["jobs", "--socket", server.path], capsys)
    assert (status, out) == (exitcodes.USAGE, "")
    assert err == "llmc: this llmd does not support jobs.list yet\n"


def test_job_wait_status_follows_the_job(serve: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    record = {"job": "j3", "blueprint": "bp", "state": "timed_out", "attempts": 1,
              "result": None, "error": {"code": -32003, "message": "timed out after 60 s"}}
    server = serve(answer(record))
    status, out, _ = run_main(["job", "j3", "--wait", "--timeout", "9", "--socket",
                               server.path], capsys)
    assert status == exitcodes.TIMED_OUT
    assert "state: timed_out\n" in out
    assert "error: timed out after 60 s (-32003)\n" in out
    server.stop()
    assert server.received[0]["params"] == {"job": "j3", "wait": True, "timeout": 9.0}


def test_cancel_and_status(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer({"job": "j4", "cancelled": False}))
    status, out, _ = run_main(["cancel", "j4", "--socket", server.path], capsys)
    assert (status, out) == (0, "j4 had already finished; nothing to cancel\n")
    health = {"blueprints": {"echo": {"state": "healthy", "latency_s": 0.012, "version": "1.0",
                                      "detail": None, "cooldown_until": None}}}
    server = serve(answer(health))
    status, out, _ = run_main(["status", "--check", "--socket", server.path], capsys)
    assert status == 0
    assert out.splitlines()[1].split() == ["echo", "healthy", "1.0", "-", "0.012s"]
    server.stop()
    assert server.received[0]["method"] == "health.check"


def test_table_truncates_only_the_last_column() -> None:
    text = output.table(["A", "B"], [["x", "0123456789"]], width=8)
    assert text == "A  B\nx  01...\n"
    assert output.table(["A", "B"], [["x", "0123456789"]], width=None).endswith("0123456789\n")


def test_read_prompt_argument_wins() -> None:
    assert commands.read_prompt("given") == "given"


def test_table_leaves_out_columns_then_narrows_the_flexible_one() -> None:
    rows = [["1a2b3c", "a-long-blueprint", "running", "12:00:00", "3.0s", "1"]]
    headers = ["JOB", "BLUEPRINT", "STATE", "CREATED", "DURATION", "ATTEMPTS"]
    wide = output.table(headers, rows, width=None, flex=1, droppable=(5, 4, 3))
    assert wide.splitlines()[1].split() == rows[0]
    narrow = output.table(headers, rows, width=43, flex=1, droppable=(5, 4, 3))
    assert narrow.splitlines() == ["JOB     BLUEPRINT         STATE    CREATED",
                                   "1a2b3c  a-long-blueprint  running  12:00:00"]
    narrower = output.table(headers, rows, width=40, flex=1, droppable=(5, 4, 3))
    assert narrower.splitlines()[1] == "1a2b3c  a-long-blu...  running  12:00:00"
    tight = output.table(headers, rows, width=27, flex=1, droppable=(5, 4, 3))
    assert tight.splitlines() == ["JOB     BLUEPRINT   STATE", "1a2b3c  a-long-...  running"]


# -- ticks, the status line and live output ------------------------------------------------------

def test_on_tick_while_waiting(serve: Any) -> None:
    ticked = threading.Event()
    ticks: list[int] = []

    def on_tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            ticked.set()

    def script(peer: Peer) -> None:
        request = peer.read()
        # Notifications keep coming, so recv seldom times out: the ticks must come anyway.
        while not ticked.wait(0.002):
            peer.send({"jsonrpc": "2.0", "method": "llm.output", "params": {"text": "."}})
        peer.reply(request, "done")

    server = serve(script)
    with Connection.connect(server.path, timeout=TIMEOUT) as conn:
        assert conn.call("x", timeout=TIMEOUT, on_tick=on_tick, tick=0.01) == "done"
    assert len(ticks) >= 3


def _note(method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": {"job": "j1", "request": 1, **params}}


def test_status_line_follows_the_run() -> None:
    terminal = Tty()
    line = status.StatusLine(terminal)
    streamer = run.Streamer("bp", live=True, status=line)
    assert streamer.describe() == "bp waiting for llmd"
    streamer("llm.state", {"job": "j1", "state": "queued", "attempt": 0})
    assert streamer.describe(now=streamer.since + 0.5) == "bp queued"
    assert terminal.getvalue() == ""  # nothing is drawn before the first tick
    streamer("llm.state", {"job": "j1", "state": "running", "attempt": 1})
    assert streamer.describe(now=streamer.since + 12.7) == "bp running for 12 s"
    streamer.tick()
    assert terminal.getvalue() == "\r\x1b[2Kllmc: bp running for 0 s"
    streamer("llm.output", {"stream": "stdout", "text": "void"})
    streamer("llm.state", {"job": "j1", "state": "retrying", "attempt": 1, "retry_in_s": 5,
                           "restart_output": True})
    assert streamer.streamed == ""
    assert streamer.describe(now=streamer.since + 1.5) == "bp retrying in 4 s (attempt 2)"
    # Shown, so redrawn at once; the note about the void text comes on a line of its own.
    assert terminal.getvalue().endswith(
        "\r\x1b[2Kllmc: retrying; the answer starts again\n"
        "\r\x1b[2Kllmc: bp retrying in 5 s (attempt 2)")
    streamer("llm.state", {"job": "j1", "state": "running", "attempt": 2})
    assert streamer.describe(now=streamer.since + 2) == "bp running for 2 s (attempt 2)"
    line.clear()
    assert terminal.getvalue().endswith("\r\x1b[2K")
    assert not line.visible
    assert streamer.job == "j1"


def test_status_line_waits_for_an_unfinished_line_and_fits_the_width() -> None:
    terminal = Tty()
    line = status.StatusLine(terminal, shares_stdout=True)
    line.wrote("half a line", to_stdout=True)
    line.show("waiting")
    assert terminal.getvalue() == ""  # erasing would take the half line with it
    line.end_line()
    line.show("x" * 200)
    assert terminal.getvalue() == "\n\r\x1b[2Kllmc: " + "x" * (status.FALLBACK_WIDTH - 7)
    other = status.StatusLine(Tty(), shares_stdout=False)
    other.wrote("half a line", to_stdout=True)  # another terminal's line: no matter
    other.show("ok")
    assert other.visible


def test_run_streams_by_default_on_a_terminal(serve: Any, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    terminal = Tty()
    monkeypatch.setattr(sys, "stdout", terminal)
    notes = [_note("llm.state", state="running", attempt=1),
             _note("llm.output", seq=0, stream="stdout", text="hel"),
             _note("llm.output", seq=1, stream="stdout", text="lo")]
    server = serve(answer(RESULT, before=notes))
    assert cli.main(["run", "bp", "hi", "--socket", server.path]) == 0
    assert terminal.getvalue() == "hello\n"  # live, once, and the line ended on a terminal
    assert capsys.readouterr().err == ""
    server.stop()
    assert server.received[0]["params"]["stream"] is True


def test_terminal_stderr_asks_for_notifications_but_prints_the_answer_once(
        serve: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    terminal = Tty()
    monkeypatch.setattr(sys, "stderr", terminal)
    notes = [_note("llm.state", state="running", attempt=1),
             _note("llm.output", seq=0, stream="stdout", text="hel"),
             _note("llm.output", seq=1, stream="stderr", text="warn\n"),
             _note("llm.output", seq=2, stream="stdout", text="lo")]
    server = serve(answer(RESULT, before=notes))
    assert cli.main(["run", "bp", "hi", "--socket", server.path]) == 0
    assert capsys.readouterr().out == "hello"  # a pipe: not live, exact, no escapes
    assert terminal.getvalue() == ""  # no tick came, and no output is live
    server.stop()
    assert server.received[0]["params"]["stream"] is True


def test_ctrl_c_with_a_known_job_cancels_it_and_waits_for_its_end(
        serve: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class Interrupted(Tty):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt  # Ctrl-C while the first output is printed

    monkeypatch.setattr(sys, "stdout", Interrupted())

    def script(peer: Peer) -> None:
        peer.read()
        peer.send(_note("llm.state", state="running", attempt=1))
        peer.send(_note("llm.output", seq=0, stream="stdout", text="x"))
        cancel = peer.read()
        peer.reply(cancel, {"job": "j1", "cancelled": True})
        wait = peer.read()
        peer.reply(wait, {"job": "j1", "state": "cancelled"})

    server = serve(script)
    assert cli.main(["run", "bp", "hi", "--socket", server.path]) == exitcodes.INTERRUPTED
    assert capsys.readouterr().err == "llmc: interrupted\n"
    server.stop()
    assert [(m["method"], m["params"]) for m in server.received[1:]] == [
        ("llm.cancel", {"job": "j1"}), ("jobs.get", {"job": "j1", "wait": True,
                                                     "timeout": pytest.approx(5.0, abs=1)})]


def test_second_ctrl_c_exits_at_once(serve: Any) -> None:
    cancel_seen = threading.Event()

    def script(peer: Peer) -> None:
        peer.read()
        peer.send(_note("llm.state", state="running", attempt=1))
        peer.send(_note("llm.output", seq=0, stream="stdout", text="x"))
        cancel = peer.read()
        assert (cancel["method"], cancel["params"]) == ("llm.cancel", {"job": "j1"})
        cancel_seen.set()
        with contextlib.suppress(EOFError, OSError):
            peer.read()  # never answered: the client must not wait for it

    server = serve(script)
    proc = subprocess.Popen([sys.executable, "-m", "llmc", "run", "--stream", "bp", "hi",
                             "--socket", server.path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # The output follows the state: once "x" is read, llmc knows the job id.
        assert proc.stdout.read(1) == b"x"
        proc.send_signal(signal.SIGINT)
        assert cancel_seen.wait(TIMEOUT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == exitcodes.INTERRUPTED
        assert proc.stderr.read() == b"llmc: interrupted\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- jobs, job and cancel ----------------------------------------------------------------------

def _record(**fields: Any) -> dict[str, Any]:
    return {"job": "1a2b", "blueprint": "bp", "state": "succeeded",
            "created_at": "2024-05-01T10:00:00.000Z", "started_at": "2024-05-01T10:00:00.000Z",
            "finished_at": "2024-05-01T10:00:42.000Z", "attempts": 1, "result": None,
            "error": None, **fields}


def test_table_columns_align_in_display_width() -> None:
    rows = [["日本語", "wide"], ["ascii", "narrow"], ["e\u0301te\u0301", "combining"],
            ["🚀🚀", "emoji"]]
    text = output.table(["NAME", "NOTE"], rows, width=None)
    starts = {output.display_width(line[:line.index(note)])
              for line, note in zip(text.splitlines()[1:], ["wide", "narrow", "combining",
                                                            "emoji"], strict=True)}
    assert starts == {8}  # "日本語" is 6 columns wide, then two spaces
    # Narrowed to fit 9 columns: the wide column is cut to 3, which holds one 2-column
    # character, and the next column still starts where the header's does.
    cut = output.table(["NAME", "NOTE"], [["日本語日本語日本語", "x"]], width=9, flex=0)
    assert cut.splitlines() == ["NAM  NOTE", "日   x"]
    assert output.truncate("日本語日本語", 7) == "日本..."
    assert output.display_width("🚀") == 2 and output.display_width("e\u0301") == 1


def test_jobs_table(serve: Any, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    listing = {"jobs": [_record(state="queued", started_at=None, finished_at=None),
                        _record(result={**RESULT, "text": "", "duration_s": 75.2}),
                        _record(state="failed", attempts=3)]}
    server = serve(answer(listing))
    assert cli.main(["jobs", "--state", "queued", "--limit", "3", "--socket", server.path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["JOB", "BLUEPRINT", "STATE", "CREATED", "DURATION", "ATTEMPTS"]
    created = commands.local_time("2024-05-01T10:00:00.000Z")
    assert [line.split() for line in lines[1:]] == [
        ["1a2b", "bp", "queued", *created.split(), "-", "1"],
        ["1a2b", "bp", "succeeded", *created.split(), "1m15s", "1"],
        ["1a2b", "bp", "failed", *created.split(), "42s", "3"]]
    server.stop()
    assert server.received[0]["params"] == {"state": "queued", "limit": 3}


def test_time_and_duration_formats() -> None:
    noon = 1714564800.0  # 2024-05-01T12:00:00Z
    assert len(commands.local_time("2024-05-01T11:59:00Z", now=noon)) == len("11:59:00")
    assert commands.local_time("2023-01-02T12:00:00Z", now=noon).startswith("2023-01-0")
    assert commands.local_time("not a time") == "not a time"
    assert [commands.format_duration(s) for s in (0.04, 9.96, 12.5, 185, 7500)] == [
        "0.0s", "10.0s", "12s", "3m05s", "2h05m"]
    running = _record(state="running", finished_at=None)
    started = commands.job_duration(running, now=0.0)
    assert started == 0.0  # never negative
    assert commands.job_duration(_record(state="queued", started_at=None)) is None


@pytest.mark.parametrize(("record", "status_", "shown"), [
    (_record(result={**RESULT, "text": "the answer"}), 0, "\n\nthe answer"),
    (_record(state="failed", error={"code": -32005, "message": "bp failed",
                                    "data": {"stderr": "boom\n"}}), 1, "(-32005)\n"),
    (_record(state="cancelled", error={"code": -32800, "message": "cancelled"}), 10, ""),
    (_record(state="interrupted"), 10, "state: interrupted\n"),
    (_record(state="running", finished_at=None), 0, "state: running\n"),
])
def test_job_status_follows_the_outcome(record: dict[str, Any], status_: int, shown: str,
                                        serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer(record))
    got, out, err = run_main(["job", "1a2b", "--socket", server.path], capsys)
    assert got == status_
    assert shown in out
    assert ("  boom\n" in err) == (record["state"] == "failed")


def test_job_wait_that_runs_out(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(answer(_record(state="running", finished_at=None)))
    got, _, err = run_main(["job", "1a2b", "--wait", "--timeout", "2", "--socket", server.path],
                           capsys)
    assert got == exitcodes.TIMED_OUT
    assert err == "llmc: job 1a2b is still running after waiting 2 s\n"


def test_cancel_unknown_job(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(failing(-32007, "no job 'nope'", {"job": "nope"}))
    assert run_main(["cancel", "nope", "--socket", server.path], capsys) == (
        exitcodes.FAILED, "", "llmc: no job 'nope'\n")
    server = serve(answer({"job": "j4", "cancelled": True}))
    assert run_main(["cancel", "j4", "--socket", server.path], capsys) == (0, "cancelled j4\n", "")


def test_job_states_are_llmds() -> None:
    from llmd.jobs.state import ALL_STATES, FINAL_STATES, LIVE_STATES  # noqa: PLC0415

    assert set(exitcodes.LIVE_STATES) == set(LIVE_STATES)
    assert set(exitcodes.FINAL_STATES) == set(FINAL_STATES)
    assert set(exitcodes.JOB_STATES) == set(ALL_STATES)
    assert len(exitcodes.JOB_STATES) == len(ALL_STATES)


def test_warm_summary_is_the_line_of_status_and_top() -> None:
    assert commands.warm_summary({"processes": 1, "idle": 1, "busy": 0, "rss_mb": 149.5}) \
        == "1 process (1 idle, 0 busy, 149.5 MB)"
    assert commands.warm_summary({"processes": 2, "idle": 0, "busy": 2, "rss_mb": 300}) \
        == "2 processes (0 idle, 2 busy, 300 MB)"
    assert commands.warm_summary({"processes": 0, "idle": 0, "busy": 0, "rss_mb": 0}) is None
    assert commands.warm_summary(None) is None
