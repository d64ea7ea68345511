"""The Neovim plugin and the Emacs package, headless, against a real daemon with fake CLIs.

Each editor runs its own suite (editors/nvim/tests, editors/emacs/tests) and writes one line
per test to a file; a test here fails with the editor's own message. A suite that stops the
daemon (to test reconnection) finds a new one on the same socket, started here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, registry_toml

ROOT = Path(__file__).parent.parent
EDITORS = ROOT / "editors"
# 2,000 lines as fast as the shell writes them, then a quiet while before the run ends: a
# client that held its editor until the answer was complete would show a gap longer than
# the bound (generous: a loaded 2-core machine), one that keeps up shows about 10-40 ms.
FLOOD = 'i=0; while [ "$i" -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; sleep 1.5'
GAP_BOUND_MS = 1000


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "lines": {"command": ["@fakecli", "lines", "300"], "prompt": "stdin"},
        "flood": {"command": ["/bin/sh", "-c", FLOOD], "prompt": "stdin"},
        "slow": {"command": ["@fakecli", "sleep", "60"], "prompt": "stdin"},
        "missing": {"command": ["llm-cli-that-is-not-there"], "prompt": "stdin"},
    }, daemon={"stop_grace": 0})


async def run_suite(daemon_factory: Any, fake_bin: Path, short_tmp: Path,
                    argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run an editor's suite against a daemon that is restarted whenever it stops."""
    toml = registry(fake_bin)
    d: DaemonHandle = await daemon_factory(toml)
    out = short_tmp / "results.txt"
    full_env = {**d.env, **env, "LLMD_SOCKET": str(d.socket), "LLMD_TEST_OUT": str(out),
                "LLMD_TEST_GAP_BOUND_MS": str(GAP_BOUND_MS), "HOME": str(short_tmp)}
    full_env.pop("NOTIFY_SOCKET", None)
    done: list[subprocess.CompletedProcess[bytes]] = []
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:

            async def restarter() -> None:
                current = d
                while True:
                    await current.proc.wait()
                    current = await daemon_factory(toml, args=["--socket", str(d.socket)])

            async def editor() -> None:
                done.append(await trio.run_process(
                    argv, env=full_env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                    capture_stdout=True, capture_stderr=True, check=False))
                nursery.cancel_scope.cancel()

            nursery.start_soon(restarter)
            nursery.start_soon(editor)
    lines = out.read_text().splitlines() if out.exists() else []
    figures = {line.split()[1]: float(line.split()[2])
               for line in lines if line.startswith("figure ")}
    results = [line for line in lines if not line.startswith(("figure ", "    "))]
    failures = [line for line in lines if not line.startswith(("ok ", "figure "))]
    output = (done[0].stdout + done[0].stderr).decode(errors="replace")
    assert not failures and done[0].returncode == 0, "\n".join(failures) + "\n" + output[-6000:]
    return {"ok": [line.split()[1] for line in results], "figures": figures, "output": output}


NVIM_TESTS = {"streaming_order_and_completeness", "non_ascii_text",
              "cancel_once_the_job_is_known", "cancel_before_the_job_is_known", "errors",
              "daemon_restart_between_two_runs", "flood_of_2000_lines_keeps_the_ui_responsive",
              "command_run_with_a_range", "command_run_asks_for_a_prompt",
              "command_cancel_and_jobs_and_status", "long_line_read_in_small_chunks"}


async def test_neovim_plugin(daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    nvim = shutil.which("nvim")
    if nvim is None:
        pytest.skip("nvim is not installed")
    rtp = EDITORS / "nvim"
    found = await run_suite(daemon_factory, fake_bin, short_tmp, [
        nvim, "--headless", "-u", "NONE", "-i", "NONE", "--cmd", f"set rtp^={rtp}",
        "--cmd", "runtime plugin/llmd.lua", "-c", f"luafile {rtp / 'tests' / 'run.lua'}"],
        {"XDG_DATA_HOME": str(short_tmp / "data"), "XDG_STATE_HOME": str(short_tmp / "st")})
    assert set(found["ok"]) == NVIM_TESTS
    assert found["figures"]["flood_largest_gap_ms"] < GAP_BOUND_MS


def test_neovim_help_has_its_tags(tmp_path: Path) -> None:
    nvim = shutil.which("nvim")
    if nvim is None:
        pytest.skip("nvim is not installed")
    doc = tmp_path / "doc"
    shutil.copytree(EDITORS / "nvim" / "doc", doc)
    done = subprocess.run([nvim, "--headless", "-u", "NONE", "-i", "NONE", "-c",
                           f"helptags {doc}", "-c", "qa!"], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    tags = (doc / "tags").read_text()
    for tag in ("llmd", ":Llmd", "llmd.run()", "llmd.setup()", "llmd.statusline()"):
        assert f"{tag}\t" in tags, tag


EMACS_TESTS = 12


def emacs_batch() -> str:
    emacs = shutil.which("emacs")
    if emacs is None:
        pytest.skip("emacs is not installed")
    return emacs


async def test_emacs_package(daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    emacs = emacs_batch()
    found = await run_suite(daemon_factory, fake_bin, short_tmp, [
        emacs, "--batch", "-Q", "-L", str(EDITORS / "emacs"),
        "-l", str(EDITORS / "emacs" / "tests" / "llmd-tests.el"),
        "-f", "ert-run-tests-batch-and-exit"], {})
    assert f"Ran {EMACS_TESTS} tests, {EMACS_TESTS} results as expected" in found["output"]
    assert found["figures"]["flood_largest_gap_ms"] < GAP_BOUND_MS


def test_emacs_package_compiles_clean_and_passes_checkdoc(tmp_path: Path) -> None:
    emacs = emacs_batch()
    source = tmp_path / "llmd.el"
    shutil.copy(EDITORS / "emacs" / "llmd.el", source)
    compiled = subprocess.run(
        [emacs, "--batch", "-Q", "--eval", "(setq byte-compile-error-on-warn t)",
         "-f", "batch-byte-compile", str(source)],
        capture_output=True, timeout=120, check=False)
    assert compiled.returncode == 0, compiled.stderr.decode(errors="replace")
    assert (tmp_path / "llmd.elc").exists()
    checked = subprocess.run(
        [emacs, "--batch", "-Q", "--eval",
         "(progn (require 'checkdoc) (setq checkdoc-arguments-in-order-flag t)"
         f" (checkdoc-file {json.dumps(str(source))}))"],
        capture_output=True, timeout=120, check=False)
    assert checked.returncode == 0
    assert b"Warning" not in checked.stderr, checked.stderr.decode(errors="replace")


# package-lint 0.16 (Debian 12's elpa-package-lint) predates Emacs 28 and calls any
# dependency on it "uninstallable in all released Emacs versions"; that one is ignored.
STALE_PACKAGE_LINT = "This makes the package uninstallable in all released Emacs versions."
# llmd has no published home page to name in a URL header yet.
NO_URL = "Package should have a Homepage or URL header."


def test_emacs_package_lint(tmp_path: Path) -> None:
    emacs = emacs_batch()
    found = sorted(Path("/usr/share/emacs/site-lisp/elpa").glob("package-lint-*"))
    if not found:
        pytest.skip("package-lint is not installed (Debian: elpa-package-lint)")
    source = tmp_path / "llmd.el"
    shutil.copy(EDITORS / "emacs" / "llmd.el", source)
    done = subprocess.run(
        [emacs, "--batch", "-Q", "-L", str(found[-1]), "--eval", "(require 'package-lint)",
         "-f", "package-lint-batch-and-exit", str(source)],
        capture_output=True, timeout=120, check=False)
    problems = [line for line in done.stderr.decode(errors="replace").splitlines()
                if ": warning: " in line or ": error: " in line]
    assert [p for p in problems if STALE_PACKAGE_LINT not in p and NO_URL not in p] == []
    assert any(NO_URL in p for p in problems)  # the linter did run over the file
