"""``llmc completion`` and ``llmc`` alone: the scripts parse in their shells, and bash
completes blueprint names and job ids asked of the real daemon.

Modules: llmc.completion, llmc.cli (the short usage).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, llmc, registry_toml

pytestmark = pytest.mark.usefixtures("fake_bin")

# The venv's llmc, which the scripts call as `llmc`.
BIN = str(Path(sys.executable).parent)


def script(shell: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "llmc", "completion", shell],
                          capture_output=True, check=False, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b"")
    return proc.stdout.decode()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_parses_in_its_shell(shell: str, tmp_path: Path) -> None:
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed")
    path = tmp_path / f"llmc.{shell}"
    path.write_text(script(shell))
    proc = subprocess.run([program, "-n", str(path)], capture_output=True, check=False,
                          timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b""), proc.stderr
    text = path.read_text()
    for command in ("run", "status", "jobs", "cancel", "completion"):
        assert command in text
    assert "llmc __complete" in text


def bash_complete(d: DaemonHandle | None, *words: str) -> list[str]:
    """What bash's completion offers for the command line ``words`` (the last one the
    word being completed), with the script loaded the way the README says."""
    line = " ".join(f"'{w}'" for w in words)
    program = (f'eval "$(llmc completion bash)"\n'
               f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
               '_llmc; printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/nonexistent"}
    if d is not None:
        env["LLMD_SOCKET"] = str(d.socket)
    else:
        env["LLMD_SOCKET"] = "/nonexistent/llmd.sock"
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program],
                          capture_output=True, check=False, timeout=60, env=env)
    assert (proc.returncode, proc.stderr) == (0, b""), proc.stderr
    return [w for w in proc.stdout.decode().split("\n") if w]


async def test_bash_completes_commands_options_blueprints_and_job_ids(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "alpha": {"command": ["@fakecli", "text", "a"], "prompt": "stdin"},
        "alpine": {"command": ["@fakecli", "text", "b"], "prompt": "stdin"},
        "beta": {"command": ["@fakecli", "text", "c"], "prompt": "stdin"},
    }))
    started = await llmc(d, "run", "--detach", "beta", "x")
    assert started.returncode == 0, started.stderr
    job = started.stdout.decode().strip()
    with trio.fail_after(60):
        assert await trio.to_thread.run_sync(bash_complete, d, "llmc", "sta") == ["status", "stats"]
        assert await trio.to_thread.run_sync(bash_complete, d, "llmc", "run", "al") == \
            ["alpha", "alpine"]
        # After an option that takes a value, the blueprint is still the first positional.
        assert await trio.to_thread.run_sync(
            bash_complete, d, "llmc", "run", "--timeout", "quick", "b") == ["beta"]
        assert await trio.to_thread.run_sync(
            bash_complete, d, "llmc", "run", "--tim") == ["--timeout"]
        assert await trio.to_thread.run_sync(
            bash_complete, d, "llmc", "run", "--timeout", "q") == ["quick"]
        # The prompt is not completed.
        assert await trio.to_thread.run_sync(bash_complete, d, "llmc", "run", "beta", "") == []
        assert job in await trio.to_thread.run_sync(bash_complete, d, "llmc", "cancel", "")
        assert await trio.to_thread.run_sync(bash_complete, d, "llmc", "completion", "z") == \
            ["zsh"]


def test_without_a_daemon_completion_offers_nothing_and_says_nothing() -> None:
    assert bash_complete(None, "llmc", "run", "") == []
    proc = subprocess.run([sys.executable, "-m", "llmc", "__complete", "blueprints"],
                          capture_output=True, check=False, timeout=30,
                          env={"LLMD_SOCKET": "/nonexistent/llmd.sock", "PATH": "/usr/bin"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def test_llmc_alone_prints_a_short_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "llmc"], capture_output=True, check=False,
                          timeout=30)
    assert (proc.returncode, proc.stdout) == (2, b"")
    lines = proc.stderr.decode().splitlines()
    assert lines[0] == "usage: llmc COMMAND [ARGS...]"
    commands = [line.split()[1] for line in lines if line.startswith("  llmc ")]
    assert len(commands) == 5
    assert commands[:2] == ["run", "status"]
    assert "llmc completion bash|zsh|fish" in proc.stderr.decode()
    assert len(lines) <= 12


async def test_zsh_offers_blueprint_names_from_the_daemon(daemon_factory: Any,
                                                          fake_bin: Path) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "alpha": {"command": ["@fakecli", "text", "a"], "prompt": "stdin"},
        "beta": {"command": ["@fakecli", "text", "b"], "prompt": "stdin"},
    }))
    # compadd stands in for zsh's completion system: it prints what it is offered (zsh
    # itself then keeps those that match the word typed).
    program = ('compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }\n'
               'eval "$(llmc completion zsh)"\n'
               'words=(llmc run ""); CURRENT=3; _llmc\n'
               'print -- ---\n'
               'words=(llmc run alpha ""); CURRENT=4; _llmc; true\n')
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/nonexistent",
           "LLMD_SOCKET": str(d.socket)}
    with trio.fail_after(60):
        proc = await trio.run_process([zsh, "-f", "-c", program], capture_stdout=True,
                                      capture_stderr=True, env=env, check=False)
    assert (proc.returncode, proc.stderr) == (0, b""), proc.stderr
    # The blueprints, then nothing for the prompt.
    assert proc.stdout.decode().splitlines() == ["alpha", "beta", "---"]
