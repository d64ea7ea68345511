"""The Neovim plugin and the Emacs package refuse a socket that is not the user's own, as llmc
does: another uid's listener (root's too) and a default socket directory set up by someone else.

Each test runs the real editor, headless, on a probe (editors/nvim/tests/probe.lua,
editors/emacs/tests/llmd-probe.el) that sends a run and a request together through the
plugin and writes both answers to a file; listeners of another uid run under setpriv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, registry_toml
from tests.harness import (
    ACTS_AS_ANOTHER_UID,
    AS_FOREIGN,
    FOREIGN_UID,
    ROOT_AND_SETPRIV,
    Forger,
    client_env,
    foreign_place,
    open_listener,
)

ROOT = Path(__file__).parent.parent
EDITORS = ROOT / "editors"
PROMPT = "the secret prompt"
UNREACHABLE = -32000


def editor_argv(editor: str) -> list[str]:
    """The command that runs ``editor``'s probe; skips when it is not installed."""
    program = shutil.which("nvim" if editor == "nvim" else "emacs")
    if program is None:
        pytest.skip(f"{editor} is not installed")
    if editor == "nvim":
        rtp = EDITORS / "nvim"
        return [program, "--headless", "-u", "NONE", "-i", "NONE", "--cmd", f"set rtp^={rtp}",
                "-c", f"luafile {rtp / 'tests' / 'probe.lua'}"]
    return [program, "--batch", "-Q", "-L", str(EDITORS / "emacs"),
            "-l", str(EDITORS / "emacs" / "tests" / "llmd-probe.el")]


async def probe(editor: str, place: Path, env: dict[str, str], *, as_foreign: bool = False,
                wait_ms: int = 20000) -> dict[str, Any]:
    """Run the probe in ``editor`` with ``env`` (on top of a clean one); what it wrote.

    ``place`` is a fresh directory for the editor's home and the answer file; as_foreign
    runs the editor as :data:`FOREIGN_UID`.
    """
    place.mkdir(mode=0o755)
    if as_foreign:
        os.chown(place, FOREIGN_UID, FOREIGN_UID)
    out = place / "answer.json"
    full_env = client_env(HOME=str(place), XDG_DATA_HOME=str(place),
                          XDG_STATE_HOME=str(place), XDG_CONFIG_HOME=str(place),
                          LLMD_TEST_OUT=str(out), LLMD_PROBE_PROMPT=PROMPT,
                          LLMD_PROBE_WAIT_MS=str(wait_ms), **env)
    with trio.fail_after(wait_ms / 1000 + 60):
        done = await trio.run_process(
            [*(AS_FOREIGN if as_foreign else []), *editor_argv(editor)], env=full_env,
            cwd=str(place), stdin=subprocess.DEVNULL, capture_stdout=True,
            capture_stderr=True, check=False)
    said = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0 and out.exists(), said
    answer: dict[str, Any] = json.loads(out.read_text())
    return answer


def refusals(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors of both requests, which must both have been answered."""
    assert answer["finished"] is True, answer
    errors = [answer["run"]["error"], answer["info"]["error"]]
    assert all(isinstance(error, dict) for error in errors), answer
    return errors


EDITOR = pytest.mark.parametrize("editor", ["nvim", "emacs"])


@ROOT_AND_SETPRIV
@EDITOR
async def test_a_listener_of_another_uid_gets_no_prompt(short_tmp: Path, editor: str) -> None:
    path = foreign_place(short_tmp) / "llmd.sock"
    with trio.fail_after(20):
        forger = await Forger.start(path)
    try:
        answer = await probe(editor, short_tmp / "editor", {"LLMD_SOCKET": str(path)},
                             wait_ms=5000)
    finally:
        with trio.fail_after(10):
            told = await forger.stop()
    # Not one connection: the forger prints a line for each it accepted.
    assert told == b"ready\n", told
    assert PROMPT not in told.decode()
    for error in refusals(answer):
        assert error["code"] == UNREACHABLE
        assert error["data"] == {"socket": str(path), "reason": "foreign"}
        assert error["message"].startswith(f"refusing to talk to {path}: it belongs to uid "
                                           f"{FOREIGN_UID}, not to you (uid 0)"), error


@ROOT_AND_SETPRIV
@EDITOR
async def test_a_root_socket_is_refused_to_another_user(short_tmp: Path, editor: str) -> None:
    # A daemon started with sudo would run that user's agents as root.
    os.chmod(short_tmp, 0o755)
    path = short_tmp / "root.sock"
    listener = open_listener(path)
    listener.setblocking(False)
    try:
        answer = await probe(editor, short_tmp / "editor", {"LLMD_PROBE_SOCKET": str(path)},
                             as_foreign=True, wait_ms=5000)
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            pass  # nobody connected
        else:
            conn.close()
            pytest.fail("the editor connected to root's socket")
    finally:
        listener.close()
    for error in refusals(answer):
        assert error["code"] == UNREACHABLE
        assert error["data"] == {"socket": str(path), "reason": "foreign"}
        assert error["message"].startswith(f"refusing to talk to {path}: it belongs to uid 0, "
                                           f"not to you (uid {FOREIGN_UID})"), error


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {"echo": {"command": ["@fakecli", "stdin"],
                                             "prompt": "stdin"}})


@EDITOR
@pytest.mark.parametrize("case", ["foreign", "loose", "symlink"])
async def test_a_default_socket_directory_not_ours_alone_is_refused(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path, editor: str, case: str) -> None:
    if case == "foreign" and not ACTS_AS_ANOTHER_UID:
        pytest.skip("needs root to give a directory to another uid")
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    runtime = short_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    where = runtime / "llmd"
    if case == "symlink":
        ours = short_tmp / "ours"
        ours.mkdir(mode=0o700)
        where.symlink_to(ours)
    else:
        where.mkdir(mode=0o700)
    if case == "foreign":
        os.chown(where, FOREIGN_UID, FOREIGN_UID)
    elif case == "loose":
        os.chmod(where, 0o777)
    # A working daemon behind it: only the directory is wrong.
    (where / "llmd.sock").symlink_to(d.socket)
    default = runtime / "llmd" / "llmd.sock"
    # Once the directory is made private, the same client connects; what it refused
    # before must not go out then.
    then = {"LLMD_PROBE_THEN_PRIVATE": str(where)} if case == "loose" else {}
    answer = await probe(editor, short_tmp / "editor",
                         {"XDG_RUNTIME_DIR": str(runtime), **then}, wait_ms=5000)
    assert answer["socket"] == str(default)
    problem = {"foreign": f"belongs to uid {FOREIGN_UID}, not to you (uid {os.getuid()})",
               "loose": f"is writable by others (mode 0777, owner uid {os.getuid()})",
               "symlink": f"is a symbolic link (owner uid {os.getuid()})"}[case]
    for error in refusals(answer):
        assert error["code"] == UNREACHABLE
        assert error["data"] == {"socket": str(default), "reason": "unsafe"}
        assert error["message"] == (f"refusing to connect to {default}: its directory {where} "
                                    f"{problem}; another user could be listening there")
    if case == "loose":
        assert answer["after"]["pid"] == d.proc.pid, answer
        client = await d.connect()
        with trio.fail_after(20):
            listed = await client.call("jobs.list", {})
        assert listed["result"]["jobs"] == []  # the refused run never reached llmd
    # The same socket named explicitly is the user's own choice, and works.
    named = await probe(editor, short_tmp / "named",
                        {"XDG_RUNTIME_DIR": str(runtime), "LLMD_SOCKET": str(d.socket)})
    assert named["finished"] is True, named
    assert named["run"]["text"] == PROMPT, named
    assert named["info"]["pid"] == d.proc.pid, named


@EDITOR
async def test_a_missing_default_directory_says_how_to_start_llmd(short_tmp: Path,
                                                                   editor: str) -> None:
    runtime = short_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    answer = await probe(editor, short_tmp / "editor", {"XDG_RUNTIME_DIR": str(runtime)})
    default = runtime / "llmd" / "llmd.sock"
    for error in refusals(answer):
        assert error["code"] == UNREACHABLE
        assert error["data"] == {"socket": str(default)}
        assert error["message"].startswith(f"llmd is not reachable at {default}: "), error
        assert "start it with" in error["message"]
