"""Runs end to end: the real daemon, the real client, fake CLIs that are real executables."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from llmc.connection import Connection

from tests.conftest import alive, assert_all_die, llmc, read_pids, registry_toml
from tests.harness import launch, wait_until

pytestmark = pytest.mark.usefixtures("fake_bin")

TRICKY_PROMPTS = [
    "two words",
    "line one\nline two\n",
    "quotes ' \" ` and $HOME and $(id) and ; rm -rf /",
    "--version",
    "-n hi --model opus --add-dir /",
    "{prompt} {model} {session}",
    "{prompt}",
    "héllo wörld — 你好 🌍",
    "  leading and trailing spaces  ",
    "",
    "\t\r\x1b[31m",
]


def blueprints(fake_bin: Path, **extra: dict[str, Any]) -> str:
    specs: dict[str, dict[str, Any]] = {
        "argv": {"command": ["@fakecli", "argv", "--", "{prompt}"]},
        "nodash": {"command": ["@fakecli", "text", "{prompt}"]},
        "stdin": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "sha": {"command": ["@fakecli", "stdin-sha"], "prompt": "stdin"},
        "env": {"command": ["@fakecli", "env"], "prompt": "stdin",
                "env": {"ADDED": "yes"}, "env_remove": ["SECRET_TOKEN"]},
        "cwd": {"command": ["@fakecli", "cwd"], "prompt": "stdin"},
        "fail": {"command": ["@fakecli", "fail", "3"], "prompt": "stdin"},
        "missing": {"command": ["no-such-cli-anywhere", "{prompt}"]},
        "flood": {"command": ["@fakecli", "flood", "300000"], "prompt": "stdin",
                  "max_output_bytes": 100000},
        "text": {"command": ["@fakecli", "text", "Here: ```json\n{\"a\": [1, 2]}\n``` done"],
                 "prompt": "stdin"},
    }
    specs.update(extra)
    return registry_toml(fake_bin, specs)


async def test_tricky_prompts_reach_the_cli_byte_exact_as_one_argument(
        daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()
    with trio.fail_after(30):
        for i, prompt in enumerate(TRICKY_PROMPTS):
            reply = await client.call("llm.run", {"blueprint": "argv", "prompt": prompt}, id=i)
            assert json.loads(reply["result"]["text"]) == [prompt], prompt
    # And through the real client, prompt as an argument and from stdin.
    for prompt in TRICKY_PROMPTS[:9]:
        proc = await llmc(d, "run", "argv", "--", prompt) if prompt.startswith("-") else \
            await llmc(d, "run", "argv", prompt)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [prompt]
        proc = await llmc(d, "run", "argv", stdin=prompt.encode())
        assert json.loads(proc.stdout) == [prompt]


async def test_a_dash_prompt_is_refused_where_it_would_be_an_option(
        daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()
    with trio.fail_after(10):
        reply = await client.call("llm.run", {"blueprint": "nodash", "prompt": "--version"})
    assert reply["error"]["code"] == -32602
    assert "option" in reply["error"]["message"]


async def test_nul_byte_in_an_argument_prompt_is_invalid_params(
        daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()
    with trio.fail_after(10):
        reply = await client.call("llm.run", {"blueprint": "argv", "prompt": "a\x00b"})
        assert reply["error"]["code"] == -32602
        assert "NUL" in reply["error"]["message"]
        # On stdin a NUL byte is just data.
        reply = await client.call("llm.run", {"blueprint": "stdin", "prompt": "a\x00b"}, id=2)
        assert reply["result"]["text"] == "a\x00b"


async def test_a_300_kb_prompt_goes_through_stdin(daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    prompt = ("0123456789abcdé\n" * 19000)[:300_000]
    data = prompt.encode()
    proc = await llmc(d, "run", "sha", stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    proc = await llmc(d, "run", "stdin", stdin=data)
    assert proc.stdout == data


async def test_children_get_a_scrubbed_environment(daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin), env={
        "SECRET_TOKEN": "s3cret", "LISTEN_FDS": "1", "LISTEN_PID": "1", "WATCHDOG_USEC": "5",
        "CLAUDECODE": "1", "NO_COLOR": "0", "KEPT": "kept"})
    proc = await llmc(d, "run", "env", "x")
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)
    for gone in ("SECRET_TOKEN", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "NOTIFY_SOCKET",
                 "CLAUDECODE"):
        assert gone not in env
    assert env["NO_COLOR"] == "1"
    assert env["ADDED"] == "yes"
    assert env["KEPT"] == "kept"


async def test_cwd_defaults_to_the_clients_and_must_exist(
        daemon_factory: Any, fake_bin: Path, tmp_path: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    proc = await llmc(d, "run", "cwd", "x", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == str(tmp_path)
    client = await d.connect()
    with trio.fail_after(10):
        for bad in ("/no/such/dir", "relative/dir", str(fake_bin / "fakecli")):
            reply = await client.call("llm.run", {"blueprint": "cwd", "prompt": "x",
                                                  "cwd": bad})
            assert reply["error"]["code"] == -32602, bad
            assert "cwd" in reply["error"]["message"]


async def test_failures_have_their_codes_and_client_exit_statuses(
        daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "fail", "prompt": "x"})
        assert reply["error"]["code"] == -32005
        assert reply["error"]["data"]["exit_code"] == 3
        assert reply["error"]["data"]["stderr"] == "boom\n"
        reply = await client.call("llm.run", {"blueprint": "nope", "prompt": "x"})
        assert reply["error"]["code"] == -32001
        assert "argv" in reply["error"]["message"]  # lists the known ones
        reply = await client.call("llm.run", {"blueprint": "missing", "prompt": "x"})
        assert reply["error"]["code"] == -32002
        assert "no-such-cli-anywhere" in reply["error"]["message"]
        assert "PATH searched" in reply["error"]["message"]
    for args, status in ((("run", "fail", "x"), 1), (("run", "nope", "x"), 7),
                         (("run", "missing", "x"), 7)):
        proc = await llmc(d, *args)
        assert proc.returncode == status, proc.stderr
        assert proc.stderr.decode().startswith("llmc: ")
        assert b"Traceback" not in proc.stderr


async def test_output_is_capped_and_marked_truncated(daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "flood", "prompt": "x"})
    result = reply["result"]
    assert result["truncated"] is True
    assert len(result["output"]) == 100000
    assert result["exit_code"] == 0


async def test_json_extraction(daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "text", "prompt": "x", "json": True})
        assert reply["result"]["json"] == {"a": [1, 2]}
        assert reply["result"]["json_error"] is None
        reply = await client.call("llm.run", {"blueprint": "stdin", "prompt": "no json here",
                                              "json": True})
        assert reply["result"]["json"] is None
        assert reply["result"]["json_error"]


@pytest.mark.parametrize("mode", ["grandchild", "ignore-term"])
async def test_timeout_kills_the_whole_group_in_time(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, mode: str) -> None:
    pidfile = short_tmp / f"{mode}.pids"
    grace = 1.0
    d = await daemon_factory(blueprints(fake_bin, hang={
        "command": ["@fakecli", mode], "prompt": "stdin", "kill_grace": grace,
        "env": {"FAKE_PIDFILE": str(pidfile)}}))
    client = await d.connect()
    timeout = 1.5
    start = time.monotonic()
    with trio.fail_after(timeout + grace + 5):
        reply = await client.call("llm.run", {"blueprint": "hang", "prompt": "x",
                                              "timeout": timeout})
    elapsed = time.monotonic() - start
    assert reply["error"]["code"] == -32003
    assert reply["error"]["data"]["state"] == "timed_out"
    assert timeout <= elapsed <= timeout + grace + 1.0
    if mode == "ignore-term":
        assert elapsed >= timeout + grace * 0.9  # it took SIGKILL after the grace
    pids = read_pids(pidfile)
    assert len(pids) == (2 if mode == "grandchild" else 1)
    await assert_all_die(pids)


async def test_a_grandchild_holding_the_pipes_does_not_hold_the_run(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "gc.pids"
    d = await daemon_factory(blueprints(fake_bin, gc={
        "command": ["@fakecli", "grandchild", "--exit"], "prompt": "stdin",
        "env": {"FAKE_PIDFILE": str(pidfile)}}))
    client = await d.connect()
    with trio.fail_after(5):
        reply = await client.call("llm.run", {"blueprint": "gc", "prompt": "x"})
    assert reply["result"]["text"] == "parent\n"
    await assert_all_die(read_pids(pidfile))


async def test_rate_limits_are_retried_then_succeed(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    state = short_tmp / "rl.count"
    d = await daemon_factory(blueprints(fake_bin, rl={
        "command": ["@fakecli", "ratelimit", "2", str(state)], "prompt": "stdin",
        "retry": {"max_attempts": 3, "base_delay": 0.05, "max_delay": 1.0}}))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "rl", "prompt": "x"})
    assert reply["result"]["attempts"] == 3
    assert reply["result"]["text"] == "ok after 2"
    state.write_text("0")
    proc = await llmc(d, "run", "rl", "x", env={})
    assert proc.returncode == 0


async def test_rate_limit_exhausted_is_32004_with_retry_after(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    state = short_tmp / "rl2.count"
    d = await daemon_factory(blueprints(fake_bin, rl={
        "command": ["@fakecli", "ratelimit", "9", str(state)], "prompt": "stdin",
        "retry": {"max_attempts": 2, "base_delay": 0.05, "max_delay": 2.0}}))
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "rl", "prompt": "x"})
    assert reply["error"]["code"] == -32004
    assert reply["error"]["data"]["attempts"] == 2
    assert reply["error"]["data"]["retry_after_s"] == 1.0
    proc = await llmc(d, "run", "rl", "x")
    assert proc.returncode == 5


async def test_fifty_concurrent_runs_on_one_connection(daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin, slow={
        "command": ["@fakecli", "sleep", "0.3"], "prompt": "stdin", "max_concurrency": 50}))
    client = await d.connect()
    start = time.monotonic()
    with trio.fail_after(30):
        for i in range(50):
            await client.send({"jsonrpc": "2.0", "id": i, "method": "llm.run",
                               "params": {"blueprint": "slow", "prompt": str(i)}})
        replies = [await client.recv() for _ in range(50)]
    assert sorted(r["id"] for r in replies) == list(range(50))
    assert all(r["result"]["text"] == "done" for r in replies)
    assert len({r["result"]["job"] for r in replies}) == 50
    # 16 at a time (the default max_jobs): about four rounds, not fifty.
    assert time.monotonic() - start < 0.3 * 50 / 2


async def test_cancel_request_kills_the_group(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "c.pids"
    d = await daemon_factory(blueprints(fake_bin, hang={
        "command": ["@fakecli", "grandchild"], "prompt": "stdin", "kill_grace": 1.0,
        "env": {"FAKE_PIDFILE": str(pidfile)}}))
    client = await d.connect()
    with trio.fail_after(15):
        await client.send({"jsonrpc": "2.0", "id": "r1", "method": "llm.run",
                           "params": {"blueprint": "hang", "prompt": "x"}})
        await wait_until(lambda: len(read_pids(pidfile)) >= 2)
        await client.send({"jsonrpc": "2.0", "method": "$/cancelRequest",
                           "params": {"id": "r1"}})
        reply = await client.recv()
    assert reply["id"] == "r1"
    assert reply["error"]["code"] == -32800
    await assert_all_die(read_pids(pidfile))
    with trio.fail_after(10):
        listed = await client.call("jobs.list", {"limit": 1}, id=2)
    [record] = listed["result"]["jobs"]
    assert record["state"] == "cancelled"
    assert record["error"]["code"] == -32800


async def test_disconnect_cancels_the_clients_runs(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "dc.pids"
    d = await daemon_factory(blueprints(fake_bin, hang={
        "command": ["@fakecli", "grandchild"], "prompt": "stdin", "kill_grace": 1.0,
        "env": {"FAKE_PIDFILE": str(pidfile)}}))
    client = await d.connect()
    with trio.fail_after(15):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "hang", "prompt": "x"}})
        await wait_until(lambda: len(read_pids(pidfile)) >= 2)
        await client.aclose()
        await wait_until(lambda: not any(alive(p) for p in read_pids(pidfile)))
        other = await d.connect()
        info = await other.call("daemon.info")
        assert info["result"]["jobs"]["running"] == 0


async def test_shutdown_kills_running_groups_and_removes_the_socket(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    pidfile = short_tmp / "sd.pids"
    d = await daemon_factory(registry_toml(fake_bin, {"hang": {
        "command": ["@fakecli", "ignore-term"], "prompt": "stdin", "kill_grace": 0.5,
        "env": {"FAKE_PIDFILE": str(pidfile)}}}, daemon={"stop_grace": 0.5}))
    client = await d.connect()
    with trio.fail_after(15):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "hang", "prompt": "x"}})
        await wait_until(lambda: bool(read_pids(pidfile)))
        assert await d.stop(signal.SIGTERM) == 0
        reply = await client.recv()
    assert reply["error"]["code"] == -32802
    assert "shutting down" in reply["error"]["message"]
    await assert_all_die(read_pids(pidfile))
    assert not d.socket.exists()
    assert any("STOPPING=1" in n for n in [*d.notes, await d.next_notify()])


async def test_client_without_a_daemon_says_how_to_start_it(short_tmp: Path) -> None:
    sock = short_tmp / "none" / "llmd.sock"
    with trio.fail_after(20):
        proc = await trio.run_process(
            [sys.executable, "-m", "llmc", "run", "x", "hello"], capture_stdout=True,
            capture_stderr=True, check=False, env={**os.environ, "LLMD_SOCKET": str(sock)})
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert str(sock) in err and "llmd serve" in err
    assert err.count("\n") <= 2


async def test_prompts_and_environment_values_stay_out_of_the_log(
        daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin), env={"SECRET_TOKEN": "tok-9f8e7d"})
    for name in ("argv", "stdin", "env", "fail"):
        proc = await llmc(d, "run", name, "prompt-5a4b3c secret words")
        assert proc.returncode in (0, 1)
    log = d.log()
    assert "job " in log  # it does log the runs
    assert "prompt-5a4b3c" not in log
    assert "tok-9f8e7d" not in log


@pytest.mark.parametrize("given", [None, "warning"])
def test_a_reload_puts_the_log_level_in_force_unless_the_command_line_named_one(
        fake_bin: Path, short_tmp: Path, given: str | None) -> None:
    toml = registry_toml(fake_bin, {"stdin": {"command": ["@fakecli", "stdin"],
                                              "prompt": "stdin"}},
                         daemon={"log_level": "warning"})
    log = short_tmp / "daemon.log"
    d = launch(short_tmp, toml, log_level=given, log_path=log)
    try:
        d.config.write_text(toml.replace('log_level = "warning"', 'log_level = "info"'))
        with Connection.connect(str(d.socket), timeout=20) as conn:
            assert "stdin" in conn.call("daemon.reload", timeout=20)["blueprints"]
    finally:
        assert d.stop() == 0
    text = log.read_text()
    assert "llmd serving" not in text  # started at warning
    # The reload's own line is logged at info once the new level is in force.
    assert ("registry reloaded" in text) == (given is None), text


async def test_info_blueprints_and_reload(daemon_factory: Any, fake_bin: Path) -> None:
    d = await daemon_factory(blueprints(fake_bin))
    proc = await llmc(d, "info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["pid"] == d.proc.pid
    assert info["socket"] == str(d.socket)
    assert info["config"] == str(d.config)
    assert info["blueprints"] == 10
    proc = await llmc(d, "blueprints")
    assert proc.returncode == 0 and b"argv" in proc.stdout
    client = await d.connect()
    with trio.fail_after(20):
        good = d.config.read_text() + (
            '[blueprints.added]\ncommand = ["/bin/echo"]\nprompt = "stdin"\n')
        d.config.write_text(good)
        reply = await client.call("daemon.reload")
        assert "added" in reply["result"]["blueprints"]
        assert [(await d.next_notify())[:11] for _ in range(2)] == ["RELOADING=1", "READY=1"]
        d.config.write_text(good + "[blueprints.broken]\n")
        reply = await client.call("daemon.reload", id=2)
        assert [(await d.next_notify())[:11] for _ in range(2)] == ["RELOADING=1", "READY=1"]
        assert reply["error"]["code"] == -32008
        assert "blueprints.broken.command: required key is missing" in reply["error"]["message"]
        reply = await client.call("llm.run", {"blueprint": "added", "prompt": "x"}, id=3)
        assert reply["result"]["exit_code"] == 0  # the old registry is still in force
        # SIGHUP: same, with a good file again.
        d.config.write_text(good.replace("[blueprints.added]", "[blueprints.hup]"))
        d.proc.send_signal(signal.SIGHUP)
        assert (await d.next_notify()).startswith("RELOADING=1")
        assert await d.next_notify() == "READY=1"
        listed = await client.call("blueprints.list", id=4)
        assert "hup" in [b["name"] for b in listed["result"]["blueprints"]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_lets_running_jobs_finish_sigint_does_not(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, sig: int) -> None:
    flag = short_tmp / f"go-{sig}"
    d = await daemon_factory(registry_toml(fake_bin, {
        "hand": {"command": ["@fakecli", "handshake", "{prompt}"]}},
        daemon={"stop_grace": 30}))
    client = await d.connect()
    with trio.fail_after(20):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run",
                           "params": {"blueprint": "hand", "prompt": str(flag), "stream": True}})
        while (await client.recv()).get("method") != "llm.output":
            pass
        d.proc.send_signal(sig)
        if sig == signal.SIGTERM:
            assert await d.next_notify() == "STOPPING=1\nSTATUS=stopping"
            # Draining: no new runs, but the running one may finish.
            refused = await client.call("llm.run", {"blueprint": "hand", "prompt": "x"}, id=2)
            assert refused["error"]["code"] == -32006
            assert not d.socket.exists()
            flag.touch()
        reply = await client.recv()
        while "method" in reply:
            reply = await client.recv()
        assert await d.proc.wait() == 0
    if sig == signal.SIGTERM:
        assert reply["result"]["text"] == "before\nafter\n"
    else:
        assert reply["error"]["code"] == -32802
