"""Security: the socket's directory, what a client can make llmd run, what reaches the log.

Peers of another uid are refused in tests/test_protocol.py, and a NUL byte in an argument
prompt in tests/test_runs.py; neither is repeated here.
"""

from __future__ import annotations

import contextlib
import os
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
from tests.reliability.support import children, request, tally, wait_until

ROOT_AND_SETPRIV = pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                                      reason="needs root and setpriv to act as another uid")
FOREIGN_UID = 65534


def one_blueprint(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "modelled": {"command": ["@fakecli", "argv", "--", "{prompt}"],
                     "model_args": ["--model", "{model}"], "resume_args": ["-r", "{session}"]}})


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_RUNTIME_DIR", "LLMD_SOCKET", "LLMD_CONFIG", "NOTIFY_SOCKET")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


async def serve_refused(argv_prefix: list[str], config: Path, env: dict[str, str]) -> str:
    """Run ``llmd serve`` on its default socket; it must exit 1 at once. Its stderr."""
    with trio.fail_after(30):
        proc = await trio.run_process(
            [*argv_prefix, sys.executable, "-m", "llmd", "serve", "--config", str(config)],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
            stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    return proc.stderr.decode()


async def serve_until_ready(argv_prefix: list[str], config: Path, env: dict[str, str],
                            notify_path: Path) -> trio.Process:
    """Start ``llmd serve`` on its default socket and wait for ``READY=1``."""
    notify = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    os.chmod(notify_path, 0o777)  # so that another uid may send to it
    proc = await trio.lowlevel.open_process(
        [*argv_prefix, sys.executable, "-m", "llmd", "serve", "--config", str(config)],
        env={**env, "NOTIFY_SOCKET": str(notify_path)}, stdin=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            while b"READY=1" not in (await notify.recv(65536)).split(b"\n"):
                pass
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    finally:
        notify.close()
    return proc


@pytest.mark.parametrize("case", ["symlink", "foreign"])
async def test_an_unsafe_runtime_socket_directory_is_refused(short_tmp: Path, fake_bin: Path,
                                                             case: str) -> None:
    runtime = short_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    config = short_tmp / "llmd.toml"
    config.write_text(one_blueprint(fake_bin))
    decoy = short_tmp / "decoy"
    decoy.mkdir(mode=0o700)
    where = runtime / "llmd"
    if case == "symlink":
        where.symlink_to(decoy)
    else:
        where.mkdir(mode=0o700)
        os.chown(where, FOREIGN_UID, FOREIGN_UID)
    err = await serve_refused([], config, serve_env(XDG_RUNTIME_DIR=str(runtime)))
    assert ("symbolic link" if case == "symlink" else f"belongs to uid {FOREIGN_UID}") in err
    assert not list(decoy.iterdir()) and not list(where.iterdir())
    tally("inputs")


async def test_a_loose_runtime_socket_directory_of_ours_is_tightened(short_tmp: Path,
                                                                     fake_bin: Path) -> None:
    runtime = short_tmp / "xdg"
    (runtime / "llmd").mkdir(parents=True, mode=0o755)
    os.chmod(runtime / "llmd", 0o777)
    config = short_tmp / "llmd.toml"
    config.write_text(one_blueprint(fake_bin))
    env = serve_env(XDG_RUNTIME_DIR=str(runtime), XDG_STATE_HOME=str(short_tmp / "state"))
    proc = await serve_until_ready([], config, env, short_tmp / "notify.sock")
    try:
        assert stat.S_IMODE(os.stat(runtime / "llmd").st_mode) == 0o700
        sock = runtime / "llmd" / "llmd.sock"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        client = await RawClient.connect(sock)
        with trio.fail_after(10):
            reply = await client.call("llm.run", {"blueprint": "echo", "prompt": "here"})
        await client.aclose()
        assert reply["result"]["text"] == "here"
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0


def unused_uid() -> int:
    """A uid with no /tmp/llmd-UID of its own yet, for the shared /tmp fallback."""
    for uid in range(43000 + os.getpid() % 1000, 60000, 997):
        if not os.path.lexists(f"/tmp/llmd-{uid}"):
            return uid
    raise RuntimeError("no free uid for /tmp/llmd-UID")


@ROOT_AND_SETPRIV
@pytest.mark.parametrize("case", ["symlink", "foreign", "fresh"])
async def test_the_tmp_fallback_directory_is_checked(short_tmp: Path, fake_bin: Path,
                                                     case: str) -> None:
    # XDG_RUNTIME_DIR unset: /tmp/llmd-$UID, shared ground. Run as a uid of our own making,
    # so that no real daemon's /tmp/llmd-UID is touched.
    uid = unused_uid()
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    for path in (short_tmp, fake_bin):
        os.chmod(path, 0o755)
    config = short_tmp / "llmd.toml"
    config.write_text(one_blueprint(fake_bin))
    home = short_tmp / "home"
    home.mkdir()
    os.chown(home, uid, uid)
    env = serve_env(HOME=str(home), XDG_STATE_HOME=str(home / "state"))
    where = Path(f"/tmp/llmd-{uid}")
    decoy = short_tmp / "decoy"
    decoy.mkdir()
    os.chown(decoy, uid, uid)
    try:
        if case == "symlink":
            where.symlink_to(decoy)
        elif case == "foreign":
            where.mkdir(mode=0o700)
            os.chown(where, FOREIGN_UID, FOREIGN_UID)
        if case != "fresh":
            err = await serve_refused(as_uid, config, env)
            assert ("symbolic link" if case == "symlink"
                    else f"belongs to uid {FOREIGN_UID}") in err
            assert not list(decoy.iterdir())
            assert case == "symlink" or not list(where.iterdir())
            tally("inputs")
            return
        notify = short_tmp / "notify"
        notify.mkdir(mode=0o777)
        os.chmod(notify, 0o777)
        proc = await serve_until_ready(as_uid, config, env, notify / "n.sock")
        try:
            st = os.lstat(where)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid
            assert stat.S_IMODE(st.st_mode) == 0o700
            assert stat.S_IMODE(os.stat(where / "llmd.sock").st_mode) == 0o600
            # We (root) are another uid: served nothing, closed at once. That it answered
            # at all also says its loop runs, so SIGTERM below finds its handler (READY=1
            # comes a moment too early: see test_ready_is_sent_only_once_signals_are_handled).
            stream = await trio.open_unix_socket(str(where / "llmd.sock"))
            with trio.fail_after(10):
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(request("daemon.info"))
                    assert await stream.receive_some(100) == b""
            await stream.aclose()
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await proc.wait() == 0
        assert not (where / "llmd.sock").exists()
    finally:
        if where.is_symlink():
            where.unlink()
        elif where.exists():
            shutil.rmtree(where)


OUTSIDE = ["/bin/sh", "sh", "fakecli", "../bin/sh", "echo/../../bin/sh", "ECHO", "echo ",
           " echo", "echo\x00", "", "*", ".", "echo;id", "$(id)", "blueprints.echo",
           "echo.command", "__proto__", "constructor"]
SMUGGLED = ["env", "environment", "command", "argv", "args", "shell", "executable",
            "program", "cmd", "PATH", "env_remove", "config", "prompt_file", "stdin",
            "kill_grace", "max_output_bytes", "parser", "blueprint_command", "uid"]


async def test_clients_cannot_reach_beyond_the_registry(daemon_factory: Any, fake_bin: Path,
                                                        short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(one_blueprint(fake_bin))
    client = await d.connect()
    # The first health probes start with the daemon; let them end, so that any child seen
    # below is one a request started.
    with trio.fail_after(30):
        await client.call("health.check", id="probes")
    a_file = short_tmp / "file"
    a_file.write_text("x")
    bad_cwds = ["relative", "", ".", "~", "/nonexistent/dir", str(a_file), "/tmp\x00/x",
                str(short_tmp) + "/../" + short_tmp.name + "/missing"]
    cases: list[tuple[str, dict[str, Any] | list[Any], int]] = []
    for name in OUTSIDE:
        cases.append(("llm.run", {"blueprint": name, "prompt": "x"}, -32001))
    for key in SMUGGLED:
        for value in ("/bin/sh", ["/bin/sh", "-c", "id"], {"LD_PRELOAD": "/tmp/x.so"}):
            cases.append(("llm.run", {"blueprint": "echo", "prompt": "x", key: value}, -32602))
    for cwd in bad_cwds:
        cases.append(("llm.run", {"blueprint": "echo", "prompt": "x", "cwd": cwd}, -32602))
    for key in ("model", "session"):
        for value in ("a\x00b", "-x", "--add-dir=/", ""):
            cases.append(("llm.run", {"blueprint": "modelled", "prompt": "x", key: value},
                          -32602))
    cases.append(("llm.run", {"blueprint": "echo", "prompt": "x", "model": "m"}, -32602))
    cases.append(("llm.run", ["echo", "x", False, False, None, None, None, None, False,
                              "extra"], -32602))
    cases.append(("daemon.reload", {"config": "/tmp/evil.toml"}, -32602))
    cases.append(("daemon.reload", ["/tmp/evil.toml"], -32602))
    with trio.fail_after(30):
        for i, (method, params, code) in enumerate(cases):
            await client.send_raw(request(method, params, id=i))
            reply = await client.recv()
            assert reply["id"] == i
            assert reply.get("error", {}).get("code") == code, (method, params, reply)
        info = (await client.call("daemon.info", id="info"))["result"]
    tally("inputs", len(cases))
    tally("requests", len(cases))
    # Not one of them became a job, nor started a process.
    assert info["jobs"] == {"queued": 0, "running": 0, "finished": 0}
    assert not children(d.proc.pid)
    # What is allowed: an existing directory, even through a symlink, is the cwd.
    link = short_tmp / "link"
    link.symlink_to(short_tmp)
    with trio.fail_after(10):
        reply = await client.call("llm.run", {"blueprint": "echo", "prompt": "ok",
                                              "cwd": str(link)}, id="ok")
    assert reply["result"]["text"] == "ok"


SECRET_ENV = "tok-7f3e9a1c"
SECRET_BP_ENV = "key-4b8d2e6f"
MARK = "mark-51c0ffee"


def leaky(fake_bin: Path, short_tmp: Path) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin",
                 "env": {"API_KEY": SECRET_BP_ENV}},
        "argv": {"command": ["@fakecli", "argv", "--", "{prompt}"],
                 "env": {"API_KEY": SECRET_BP_ENV}},
        "env": {"command": ["@fakecli", "env"], "prompt": "stdin",
                "env": {"API_KEY": SECRET_BP_ENV}},
        "arg": {"command": ["@fakecli", "text", "{prompt}"]},
        "fail": {"command": ["@fakecli", "fail", "3"], "prompt": "stdin"},
        "slow": {"command": ["@fakecli", "sleep", "30"], "prompt": "stdin"},
        "ratelimit": {"command": ["@fakecli", "ratelimit", "1", str(short_tmp / "rl")],
                      "prompt": "stdin", "retry": {"max_attempts": 2, "base_delay": 0.01,
                                                   "max_delay": 0.02}},
        "json": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "missing": {"command": ["no-such-cli-anywhere", "{prompt}"]},
    }, daemon={"log_level": "info"})


async def test_prompts_and_secrets_stay_out_of_the_info_log(daemon_factory: Any,
                                                            fake_bin: Path,
                                                            short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(leaky(fake_bin, short_tmp),
                                           env={"SECRET_TOKEN": SECRET_ENV},
                                           args=["--log-level", "info"])
    client = await d.connect()
    sent = 0

    def prompt(n: int) -> str:
        return f"{MARK}-{n} please"

    with trio.fail_after(60):
        for n in range(20):
            blueprint = ["echo", "argv", "env", "fail", "ratelimit", "json", "missing"][n % 7]
            reply = await client.call("llm.run", {"blueprint": blueprint, "prompt": prompt(n),
                                                  "json": blueprint == "json",
                                                  "stream": n % 3 == 0}, id=n)
            assert "result" in reply or "error" in reply
            (short_tmp / "rl").unlink(missing_ok=True)
            sent += 1
        # Refused prompts and params: the reasons must not quote them into the log.
        for n, params in enumerate([
                {"blueprint": "arg", "prompt": f"-{MARK}-dash"},
                {"blueprint": "arg", "prompt": f"{MARK}-nul\x00"},
                {"blueprint": "arg", "prompt": MARK + "x" * 140_000},
                {"blueprint": "echo", "prompt": MARK, "cwd": f"/{MARK}"},
                {"blueprint": "echo", "prompt": MARK, "timeout": MARK},
                {"blueprint": f"{MARK}-blueprint", "prompt": MARK},
                {"blueprint": "echo", "prompt": MARK, "model": MARK},
                {"blueprint": "echo", "prompt": MARK, MARK: 1}]):
            reply = await client.call("llm.run", params, id=f"bad{n}")
            assert "error" in reply
            sent += 1
        # Notifications, batches, detached runs, cancels and timeouts.
        await client.send({"jsonrpc": "2.0", "method": "llm.run",
                           "params": {"blueprint": "fail", "prompt": f"{MARK}-notify"}})
        await client.send([{"jsonrpc": "2.0", "id": "b1", "method": "llm.run",
                            "params": {"blueprint": "echo", "prompt": f"{MARK}-batch"}}])
        await client.recv()
        job = (await client.call("llm.run", {"blueprint": "fail", "prompt": f"{MARK}-det",
                                             "detach": True}, id="det"))["result"]["job"]
        await client.call("jobs.get", {"job": job, "wait": True}, id="wait")
        slow = (await client.call("llm.run", {"blueprint": "slow", "prompt": f"{MARK}-c",
                                              "detach": True}, id="slow"))["result"]["job"]
        await client.call("llm.cancel", {"job": slow}, id="cancel")
        reply = await client.call("llm.run", {"blueprint": "slow", "prompt": f"{MARK}-t",
                                              "timeout": 0.5}, id="timeout")
        assert reply["error"]["code"] == -32003
        await client.send({"jsonrpc": "2.0", "id": "gone", "method": "llm.run",
                           "params": {"blueprint": "slow", "prompt": f"{MARK}-gone"}})
        await client.send({"jsonrpc": "2.0", "method": "$/cancelRequest",
                           "params": {"id": "gone"}})
        assert (await client.recv())["error"]["code"] == -32800
        await client.call("health.check", id="health")
        sent += 8
        await wait_until(lambda: not children(d.proc.pid))
    tally("requests", sent)
    log = d.log()
    assert " INFO " in log and "job " in log  # it does log the runs, at info
    assert " DEBUG " not in log
    for secret in (MARK, SECRET_ENV, SECRET_BP_ENV):
        assert secret not in log, log[max(0, log.find(secret) - 300):log.find(secret) + 100]


async def test_a_cli_echoing_the_prompt_in_its_error_does_not_leak_it(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "echo-fail": {"command": ["@fakecli", "echo-fail"], "prompt": "stdin"},
        "missing": {"command": ["no-such-cli-anywhere"], "prompt": "stdin"},
    }), env={"PATH": f"/opt/{MARK}-path:{os.environ['PATH']}"},
        args=["--log-level", "info"])
    client = await d.connect()
    with trio.fail_after(20):
        reply = await client.call("llm.run", {"blueprint": "echo-fail",
                                              "prompt": f"{MARK} my secret question"})
        assert reply["error"]["code"] == -32005
        reply = await client.call("llm.run", {"blueprint": "missing", "prompt": "x"}, id=2)
        assert reply["error"]["code"] == -32002
        detached = await client.call("llm.run", {"blueprint": "echo-fail", "detach": True,
                                                 "prompt": f"{MARK} detached"}, id=3)
        await client.call("jobs.get", {"job": detached["result"]["job"], "wait": True}, id=4)
        # As a notification (no id, so no answer), it fails all the same.
        await client.send({"jsonrpc": "2.0", "method": "llm.run",
                           "params": {"blueprint": "echo-fail", "prompt": f"{MARK} unasked"}})
        await wait_until(lambda: "notification llm.run failed" in d.log())
        # A probe that finds the program missing is logged too, without the PATH.
        await client.call("health.check", {"blueprint": "missing"}, id=5)
        await wait_until(lambda: "health: missing is missing" in d.log())
    tally("requests", 6)
    assert MARK not in d.log(), d.log()[-2000:]
