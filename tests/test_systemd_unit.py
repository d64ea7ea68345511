"""systemd integration, piece by piece: activation parsing, passed fds, watchdog, status,
journal logging, unit rendering, ``llmd install-service`` and ``systemd-analyze verify``.

The descriptor tests that need fd 3 run in a child process, so the test process never
has its own descriptors replaced.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.cli import main, setup_logging
from llmd.systemd import activation, runtime
from llmd.systemd import units as unit_files
from llmd.systemd.activation import ActivationError
from llmd.systemd.notify import Notifier

REPO = Path(__file__).parent.parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (.ci/run installs the systemd package)")


# --- LISTEN_* parsing ----------------------------------------------------------


def test_parse_listen_env_names_and_counts() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "other:llmd.sock"}
    assert activation.parse_listen_env(env, 42) == [(3, "other"), (4, "llmd.sock")]
    assert activation.parse_listen_env({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == [
        (3, "unknown")]
    assert activation.parse_listen_env({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, 42) == []


def test_parse_listen_env_ignores_what_is_not_ours() -> None:
    assert activation.parse_listen_env({}, 42) == []
    # Inherited from an activated parent: another pid.
    assert activation.parse_listen_env({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, 42) == []
    # Not even for us, so not even parsed.
    assert activation.parse_listen_env({"LISTEN_PID": "41", "LISTEN_FDS": "x"}, 42) == []


@pytest.mark.parametrize(("env", "message"), [
    ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "LISTEN_PID='me' is not a pid"),
    ({"LISTEN_PID": "42"}, "LISTEN_FDS='' is not a number"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "negative"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"},
     "LISTEN_FDNAMES names 1 descriptor but LISTEN_FDS=2"),
])
def test_parse_listen_env_refuses_malformed_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ActivationError, match=re.escape(message)):
        activation.parse_listen_env(env, 42)


def test_choose_fd_prefers_our_name_then_the_first() -> None:
    assert activation.choose_fd([(3, "a"), (4, "llmd.sock"), (5, "llmd")]) == (4, "llmd.sock")
    assert activation.choose_fd([(3, "a"), (4, "llmd")]) == (4, "llmd")
    assert activation.choose_fd([(3, "a"), (4, "llmd.socket")]) == (4, "llmd.socket")
    assert activation.choose_fd([(3, "a"), (4, "b")]) == (3, "a")
    with pytest.raises(ValueError, match="no descriptors"):
        activation.choose_fd([])


def test_listen_socket_with_another_pid_unsets_the_variables() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x",
           "OTHER": "kept"}
    assert activation.listen_socket(env) is None
    assert env == {"OTHER": "kept"}


def test_listen_socket_unsets_the_variables_even_when_malformed() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"}
    with pytest.raises(ActivationError):
        activation.listen_socket(env)
    assert env == {}


# --- checking a passed descriptor (any fd number, in this process) -------------


def test_socket_from_fd_accepts_a_listening_unix_stream_socket(short_tmp: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(short_tmp / "s"))
        listener.listen()
        fd = os.dup(listener.fileno())
        sock = activation.socket_from_fd(fd, "llmd.sock")
        with sock:
            assert sock.fileno() == fd
            assert activation.socket_path_of(sock) == short_tmp / "s"


@pytest.mark.parametrize(("kind", "message"), [
    ("socketpair", "is a Unix stream socket that is not listening"),
    ("udp", "is a AF_INET/SOCK_DGRAM socket; llmd serves only AF_UNIX/SOCK_STREAM"),
    ("unix-dgram", "is a AF_UNIX/SOCK_DGRAM socket"),
    ("file", "is a regular file, not a socket"),
    ("pipe", "is a pipe, not a socket"),
    ("closed", "is not open"),
])
def test_socket_from_fd_refuses_anything_else(kind: str, message: str) -> None:
    keep: list[Any] = []
    if kind == "socketpair":
        a, b = socket.socketpair()
        keep += [a, b]
        fd = a.fileno()
    elif kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        keep.append(s)
        fd = s.fileno()
    elif kind == "unix-dgram":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        keep.append(s)
        fd = s.fileno()
    elif kind == "file":
        f = open(__file__, "rb")  # noqa: SIM115 - closed below
        keep.append(f)
        fd = f.fileno()
    elif kind == "pipe":
        r, w = os.pipe()
        keep += [io.FileIO(r), io.FileIO(w, "w")]
        fd = r
    else:
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        fd = r
    try:
        with pytest.raises(ActivationError, match=re.escape(f"fd {fd} (llmd.sock) {message}")):
            activation.socket_from_fd(fd, "llmd.sock")
        if kind != "closed":
            os.fstat(fd)  # a refused descriptor is left open for its owner
    finally:
        for thing in keep:
            thing.close()


# --- fd 3 itself, in a child process -----------------------------------------

CHILD = r"""
import json, os, socket, sys
from llmd.systemd import activation

spec = json.loads(sys.argv[1])
for _ in spec["fds"]:
    os.open("/dev/null", os.O_RDONLY)  # hold fds 3..., so the objects below get others
fds = []
for kind in spec["fds"]:
    if kind == "listening":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(spec["path"])
        s.listen()
    elif kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    elif kind == "file":
        s = open("/dev/null", "rb")
    fds.append(s)
for number, thing in enumerate(fds, start=3):
    os.dup2(thing.fileno(), number, inheritable=True)
os.environ.update({"LISTEN_PID": str(os.getpid() if spec["mine"] else 1),
                   "LISTEN_FDS": str(len(fds)), **spec.get("env", {})})
result = {}
try:
    sock = activation.listen_socket()
except activation.ActivationError as exc:
    result["error"] = str(exc)
else:
    if sock is not None:
        result.update(fd=sock.fileno(), family=sock.family.name, type=sock.type.name,
                      path=str(activation.socket_path_of(sock)))
result["inheritable"] = [os.get_inheritable(n) for n in range(3, 3 + len(fds))]
result["left"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
print(json.dumps(result))
"""


async def run_child(spec: dict[str, Any], cwd: Path) -> dict[str, Any]:
    with trio.fail_after(30):
        proc = await trio.run_process([sys.executable, "-c", CHILD, json.dumps(spec)],
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      cwd=str(cwd))
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def test_fd_3_is_served_and_the_variables_are_gone(short_tmp: Path) -> None:
    path = str(short_tmp / "a.sock")
    result = await run_child({"fds": ["listening"], "path": path, "mine": True,
                              "env": {"LISTEN_FDNAMES": "llmd.sock"}}, short_tmp)
    assert result == {"fd": 3, "family": "AF_UNIX", "type": "SOCK_STREAM", "path": path,
                      "inheritable": [False], "left": []}


async def test_the_socket_named_for_llmd_is_chosen(short_tmp: Path) -> None:
    path = str(short_tmp / "b.sock")
    result = await run_child({"fds": ["udp", "listening"], "path": path, "mine": True,
                              "env": {"LISTEN_FDNAMES": "metrics:llmd.sock"}}, short_tmp)
    assert result["fd"] == 4
    assert result["path"] == path
    # Every passed descriptor is close-on-exec: none leaks into a CLI.
    assert result["inheritable"] == [False, False]


async def test_without_names_the_first_is_chosen(short_tmp: Path) -> None:
    result = await run_child({"fds": ["listening"], "path": str(short_tmp / "c.sock"),
                              "mine": True}, short_tmp)
    assert result["fd"] == 3


async def test_another_pids_descriptors_are_left_alone(short_tmp: Path) -> None:
    result = await run_child({"fds": ["listening"], "path": str(short_tmp / "d.sock"),
                              "mine": False}, short_tmp)
    assert "fd" not in result
    assert "error" not in result
    assert result["inheritable"] == [True]  # not ours: untouched
    assert result["left"] == []


async def test_a_non_socket_on_fd_3_is_refused_clearly(short_tmp: Path) -> None:
    result = await run_child({"fds": ["file"], "mine": True,
                              "env": {"LISTEN_FDNAMES": "llmd.sock"}}, short_tmp)
    assert result["error"] == "fd 3 (llmd.sock) is a character device, not a socket"
    assert result["left"] == []


async def test_llmd_serve_exits_1_on_an_unusable_passed_fd(short_tmp: Path) -> None:
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "llmd.sock"}
    # LISTEN_PID must be the pid of the python that runs llmd: a shell sets it to its own
    # pid, then execs python (same pid) with a regular file on fd 3.
    script = 'LISTEN_PID=$$ exec "$0" -m llmd serve --socket "$1/x.sock" 3<"$1/f"'
    (short_tmp / "f").write_text("not a socket")
    with trio.fail_after(30):
        proc = await trio.run_process(["sh", "-c", script, sys.executable, str(short_tmp)],
                                      env=env, capture_stdout=True, capture_stderr=True,
                                      check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        "llmd: socket activation: fd 3 (llmd.sock) is a regular file, not a socket")
    assert not (short_tmp / "x.sock").exists()


# --- watchdog and status -------------------------------------------------------


def test_watchdog_interval() -> None:
    pid = 1234
    assert runtime.watchdog_interval({"WATCHDOG_USEC": "200000"}, pid) == 0.1
    assert runtime.watchdog_interval(
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1234"}, pid) == 15.0
    assert runtime.watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, pid) \
        is None
    for bad in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "x"},
                {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}):
        assert runtime.watchdog_interval(bad, pid) is None


@pytest.fixture
async def notify(short_tmp: Path) -> AsyncIterator[tuple[trio.socket.SocketType, Notifier]]:
    """A bound notify socket (what systemd listens on) and a Notifier aimed at it."""
    path = short_tmp / "notify"
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        await receiver.bind(str(path))
        yield receiver, notifier
    finally:
        notifier.close()
        receiver.close()


async def test_watchdog_pings_every_half_period(autojump_clock: Any, notify: Any) -> None:
    receiver, notifier = notify
    times: list[float] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.watchdog, notifier, {"WATCHDOG_USEC": "200000"})
            while len(times) < 4:
                assert await receiver.recv(100) == b"WATCHDOG=1"
                times.append(trio.current_time())
            nursery.cancel_scope.cancel()
    assert [t - times[0] for t in times] == pytest.approx([0.0, 0.1, 0.2, 0.3])


async def test_watchdog_returns_at_once_without_a_watchdog_for_us(short_tmp: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(short_tmp / "nobody")})
    with trio.fail_after(5):
        await runtime.watchdog(notifier, {})
        await runtime.watchdog(notifier, {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        await runtime.watchdog(Notifier({}), {"WATCHDOG_USEC": "200000"})


async def test_status_is_rate_limited_and_always_the_latest(autojump_clock: Any,
                                                            notify: Any) -> None:
    receiver, notifier = notify
    state = {"text": "0 running"}
    reporter = runtime.StatusReporter(notifier, lambda: state["text"], interval=1.0)
    got: list[tuple[float, bytes]] = []

    async def receive() -> None:
        data = await receiver.recv(1000)
        got.append((trio.current_time(), data))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reporter.run)
            start = trio.current_time()
            reporter.update()
            await receive()
            # A burst: only the last state goes out, one interval after the first.
            for text in ("1 running", "2 running", "1 running\n3 queued"):
                state["text"] = text
                reporter.update()
            await receive()
            # Nothing changed: nothing is sent; the next datagram is the next change.
            reporter.update()
            await trio.sleep(5)
            state["text"] = "0 running"
            reporter.update()
            await receive()
            nursery.cancel_scope.cancel()
    assert [(round(t - start, 6), data) for t, data in got] == [
        (0.0, b"STATUS=0 running"), (1.0, b"STATUS=1 running 3 queued"),
        (6.0, b"STATUS=0 running")]


async def test_status_polls_when_asked(autojump_clock: Any, notify: Any) -> None:
    receiver, notifier = notify
    state = {"text": "a"}
    reporter = runtime.StatusReporter(notifier, lambda: state["text"], poll=2.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reporter.run)
            assert await receiver.recv(100) == b"STATUS=a"
            assert trio.current_time() == pytest.approx(2.0)
            state["text"] = "b"  # no update(): found by the next poll
            assert await receiver.recv(100) == b"STATUS=b"
            # Looks are a poll apart, whatever was sent in between.
            assert trio.current_time() == pytest.approx(4.0)
            nursery.cancel_scope.cancel()


async def test_status_without_a_notify_socket_returns_at_once() -> None:
    reporter = runtime.StatusReporter(Notifier({}), lambda: "x")
    with trio.fail_after(5):
        await reporter.run()


def test_notifier_never_blocks_on_a_full_receiver(short_tmp: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        try:
            with caplog.at_level(logging.DEBUG, logger="llmd.sdnotify"):
                # Far more than any receive queue holds (net.unix.max_dgram_qlen).
                for _ in range(2000):
                    notifier.send("WATCHDOG=1")
        finally:
            notifier.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first failure of a run; the rest at DEBUG
    assert "cannot notify systemd" in warnings[0].getMessage()


# --- logging for the journal ---------------------------------------------------


def _log_through(tmp: Path, env: dict[str, str], *, match_stream: bool) -> str:
    out = tmp / "stderr"
    logger = logging.getLogger("llmd")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    with open(out, "w") as stream:
        if match_stream:
            st = os.fstat(stream.fileno())
            env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        try:
            setup_logging("debug", stream=stream, env=env)
            logging.getLogger("llmd.test").debug("fine detail")
            logging.getLogger("llmd").info("serving")
            logging.getLogger("llmd.test").warning("odd")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                logging.getLogger("llmd.test").exception("failed")
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved
    return out.read_text()


def test_journal_logging_has_priorities_and_no_timestamps(short_tmp: Path) -> None:
    lines = _log_through(short_tmp, {}, match_stream=True).splitlines()
    assert lines[:4] == ["<7>llmd.test: fine detail", "<6>llmd: serving",
                         "<4>llmd.test: odd", "<3>llmd.test: failed"]
    # Every traceback line keeps the error priority: the journal stores lines one by one.
    assert len(lines) > 4
    assert all(line.startswith("<3>") for line in lines[4:])
    assert lines[-1] == "<3>RuntimeError: boom"


def test_plain_logging_outside_the_journal(short_tmp: Path) -> None:
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    for env in ({}, {"JOURNAL_STREAM": "1:2"}, {"JOURNAL_STREAM": "garbage"}):
        text = _log_through(short_tmp, env, match_stream=False)
        assert re.search(rf"^{stamp} INFO llmd: serving$", text, re.M), text
        assert "<6>" not in text


def test_is_journal_stream_needs_a_real_matching_descriptor(short_tmp: Path) -> None:
    with open(short_tmp / "x", "w") as stream:
        st = os.fstat(stream.fileno())
        assert runtime.is_journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not runtime.is_journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:1"})
        assert not runtime.is_journal_stream(stream, {})
    assert not runtime.is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    assert not runtime.is_journal_stream(None, {"JOURNAL_STREAM": "1:2"})


# --- units -------------------------------------------------------------------


def _options(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_units_say_what_the_issue_asks() -> None:
    units = unit_files.render_units(["/opt/llmd/bin/llmd"])
    sock = _options(units["llmd.socket"])
    assert sock["ListenStream"] == ["%t/llmd/llmd.sock"]
    assert sock["FileDescriptorName"] == ["llmd.sock"]
    assert sock["SocketMode"] == ["0600"]
    assert sock["DirectoryMode"] == ["0700"]
    assert sock["WantedBy"] == ["sockets.target"]
    svc = _options(units["llmd.service"])
    assert svc["ExecStart"] == ["/opt/llmd/bin/llmd serve"]
    assert svc["Type"] == ["notify"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["KillMode"] == ["mixed"]
    assert svc["Requires"] == ["llmd.socket"]
    assert svc["Also"] == ["llmd.socket"]
    # Above the longest default shutdown: the stop grace, then llmd's own shutdown
    # limit (which holds the kill grace and the replies), with room to spare.
    from llmd.config import DaemonSection  # noqa: PLC0415
    from llmd.daemon import SHUTDOWN_LIMIT  # noqa: PLC0415

    worst = DaemonSection().stop_grace + SHUTDOWN_LIMIT
    assert int(svc["TimeoutStopSec"][0].rstrip("s")) >= worst + 10
    # The watchdog pings every half period: WatchdogSec must leave room for that.
    assert int(svc["WatchdogSec"][0].rstrip("s")) >= 10
    for name in ("NoNewPrivileges", "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID"):
        assert svc[name] == ["yes"]


def test_units_hide_nothing_from_the_clis() -> None:
    for text in unit_files.render_units(["/usr/bin/llmd"]).values():
        options = _options(text)
        assert not [o for o in unit_files.UNSAFE_OPTIONS if o in options]


def test_the_repository_units_are_the_rendered_ones() -> None:
    rendered = unit_files.render_units(["/usr/bin/llmd"])
    for name, text in rendered.items():
        assert (REPO / "systemd" / name).read_text() == text, (
            f"systemd/{name} is out of date: regenerate it with "
            "llmd.systemd.units.render_units")


@pytest.mark.parametrize(("arg", "quoted"), [
    ("serve", "serve"),
    ("/home/me/my tools/llmd", '"/home/me/my tools/llmd"'),
    ("100%", "100%%"),
    ("$HOME", "$$HOME"),
    ('a"b\\c', '"a\\"b\\\\c"'),
    (";", '";"'),
    ("", '""'),
])
def test_exec_quote_arguments(arg: str, quoted: str) -> None:
    assert unit_files.exec_quote(arg) == quoted


@pytest.mark.parametrize(("arg", "quoted"), [
    ("/usr/bin/llmd", "/usr/bin/llmd"),
    ("/home/me/my tools/llmd", '"/home/me/my tools/llmd"'),
    ("/opt/100%/llmd", "/opt/100%%/llmd"),
    # No variables are expanded in the program's path.
    ("/opt/$x/llmd", "/opt/$x/llmd"),
    ("/opt/a $x/llmd", '"/opt/a $x/llmd"'),
])
def test_exec_quote_the_program(arg: str, quoted: str) -> None:
    assert unit_files.exec_quote(arg, executable=True) == quoted


def test_unit_values_refuse_what_systemd_cannot_read() -> None:
    with pytest.raises(ValueError, match="control character"):
        unit_files.exec_quote("/a\nb")
    for path in ('/a"b/llmd', "/a'b/llmd", "/a\\b/llmd"):
        with pytest.raises(ValueError, match="refuses quotes and backslashes"):
            unit_files.render_units([path])
    with pytest.raises(ValueError, match="absolute path"):
        unit_files.render_units(["llmd"])
    with pytest.raises(ValueError, match="control character"):
        unit_files.env_assignment("PATH", "/bin\n")
    assert unit_files.env_assignment("PATH", "/a:/b") == "PATH=/a:/b"
    assert unit_files.env_assignment("PATH", "/a b:/c%") == '"PATH=/a b:/c%%"'


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_llmd_command_order(short_tmp: Path) -> None:
    script = _executable(short_tmp / "bin" / "llmd")
    scripts = _executable(short_tmp / "venv" / "bin" / "llmd").parent
    on_path = _executable(short_tmp / "path" / "llmd")
    none: Any = lambda name: None  # noqa: E731
    found: Any = lambda name: str(on_path)  # noqa: E731
    # The running script itself...
    assert unit_files.llmd_command(str(script), scripts=str(scripts), which=found) == [
        str(script)]
    # ...a relative one is made absolute (symlinks are kept)...
    link = short_tmp / "link" / "llmd"
    link.parent.mkdir()
    link.symlink_to(script)
    assert unit_files.llmd_command(str(link), scripts="", which=none) == [str(link)]
    # ...`python -m llmd` (argv[0] is __main__.py): this environment's script...
    main_py = str(short_tmp / "src" / "llmd" / "__main__.py")
    assert unit_files.llmd_command(main_py, scripts=str(scripts), which=found) == [
        str(scripts / "llmd")]
    # ...then llmd on PATH...
    assert unit_files.llmd_command(main_py, scripts=str(short_tmp), which=found) == [
        str(on_path)]
    # ...and last, the interpreter itself.
    assert unit_files.llmd_command(main_py, scripts=str(short_tmp), which=none,
                                executable="/opt/py/bin/python3") == [
        "/opt/py/bin/python3", "-m", "llmd"]
    # A file called llmd that cannot be run is not taken.
    (short_tmp / "noexec").mkdir()
    plain = short_tmp / "noexec" / "llmd"
    plain.write_text("")
    assert unit_files.llmd_command(str(plain), scripts="", which=found) == [str(on_path)]


def test_user_unit_dir() -> None:
    assert unit_files.user_unit_dir({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == Path(
        "/x/cfg/systemd/user")
    assert unit_files.user_unit_dir({"HOME": "/h"}) == Path("/h/.config/systemd/user")
    # A relative XDG_CONFIG_HOME is invalid by the specification: ignored.
    assert unit_files.user_unit_dir({"XDG_CONFIG_HOME": "cfg", "HOME": "/h"}) == Path(
        "/h/.config/systemd/user")


# --- llmd install-service ------------------------------------------------------


@pytest.fixture
def user_env(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """HOME, XDG_CONFIG_HOME and XDG_RUNTIME_DIR in a temporary directory; argv[0] llmd."""
    dirs = {"home": short_tmp / "home", "config": short_tmp / "cfg",
            "runtime": short_tmp / "run"}
    for path in dirs.values():
        path.mkdir(mode=0o700)
    dirs["llmd"] = _executable(short_tmp / "my bin" / "llmd")
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(dirs["config"]))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(dirs["runtime"]))
    monkeypatch.setattr(sys, "argv", [str(dirs["llmd"]), "install-service"])
    return dirs


def test_install_service_writes_both_units(user_env: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-service"]) == 0
    unit_dir = user_env["config"] / "systemd" / "user"
    names = sorted(p.name for p in unit_dir.iterdir())
    assert names == ["llmd.service", "llmd.socket"]
    for name in names:
        assert stat.S_IMODE((unit_dir / name).stat().st_mode) == 0o644
    service = (unit_dir / "llmd.service").read_text()
    assert f'ExecStart="{user_env["llmd"]}" serve\n' in service
    assert (unit_dir / "llmd.socket").read_text() == unit_files.SOCKET_TEMPLATE
    out = capsys.readouterr().out
    assert f"wrote {unit_dir / 'llmd.socket'}" in out
    for command in ("systemctl --user daemon-reload",
                    "systemctl --user enable --now llmd.socket",
                    "systemctl --user status llmd.socket llmd.service",
                    "journalctl --user -u llmd -f",
                    "systemctl --user import-environment PATH"):
        assert command in out
    # Again: nothing to change.
    assert main(["install-service"]) == 0
    assert f"unchanged {unit_dir / 'llmd.service'}" in capsys.readouterr().out


def test_install_service_print_writes_nothing(user_env: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-service", "--print"]) == 0
    assert not (user_env["config"] / "systemd").exists()
    out = capsys.readouterr().out
    unit_dir = user_env["config"] / "systemd" / "user"
    assert f"# {unit_dir / 'llmd.socket'}\n{unit_files.SOCKET_TEMPLATE}" in out
    assert f"# {unit_dir / 'llmd.service'}\n" in out
    assert f'ExecStart="{user_env["llmd"]}" serve' in out
    assert "systemctl --user enable --now llmd.socket" in out


def test_install_service_reports_an_unwritable_directory(
        user_env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    (user_env["config"] / "systemd").write_text("a file where a directory should be")
    assert main(["install-service"]) == 1
    assert "llmd: cannot write the units to" in capsys.readouterr().err


async def verify(unit_dir: Path, env_dirs: dict[str, Path]) -> subprocess.CompletedProcess[bytes]:
    assert SYSTEMD_ANALYZE is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_dirs["home"]),
           "XDG_CONFIG_HOME": str(env_dirs["config"]),
           "XDG_RUNTIME_DIR": str(env_dirs["runtime"]), "SYSTEMD_LOG_LEVEL": "notice"}
    with trio.fail_after(60):
        return await trio.run_process(
            [SYSTEMD_ANALYZE, "--user", "verify",
             str(unit_dir / "llmd.socket"), str(unit_dir / "llmd.service")],
            env=env, capture_stdout=True, capture_stderr=True, check=False)


@needs_analyze
async def test_written_units_pass_systemd_analyze_verify(user_env: dict[str, Path]) -> None:
    # The path holds a blank, so this also proves ExecStart= quoting: verify checks that
    # the command it reads back exists and is executable.
    assert main(["install-service"]) == 0
    unit_dir = user_env["config"] / "systemd" / "user"
    result = await verify(unit_dir, user_env)
    assert result.stderr.decode() == ""
    assert result.returncode == 0


@needs_analyze
async def test_verify_would_catch_a_bad_unit(user_env: dict[str, Path]) -> None:
    # Proves the test above can fail: verify does complain in this environment.
    assert main(["install-service"]) == 0
    unit_dir = user_env["config"] / "systemd" / "user"
    service = unit_dir / "llmd.service"
    service.write_text(service.read_text().replace("KillMode=mixed", "KillMode=bogus")
                       .replace(str(user_env["llmd"]), str(user_env["llmd"]) + "-missing"))
    result = await verify(unit_dir, user_env)
    err = result.stderr.decode()
    assert "KillMode" in err or "kill mode" in err
    assert "-missing" in err


@needs_analyze
async def test_odd_paths_survive_the_unit_syntax(user_env: dict[str, Path]) -> None:
    odd = _executable(user_env["home"] / "100% $weird; dir" / "llmd")
    unit_dir = user_env["config"] / "systemd" / "user"
    unit_files.write_units(unit_files.render_units([str(odd)]), unit_dir)
    result = await verify(unit_dir, user_env)
    assert result.stderr.decode() == ""
