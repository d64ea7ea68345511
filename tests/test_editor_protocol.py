"""What editor clients need of the protocol, through the real daemon: null as absent,
-32802 for a run cancelled from elsewhere, and a vscode-jsonrpc client run from Node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, RawClient, llmc, registry_toml

HERE = Path(__file__).parent
NODE_CACHE = Path(os.environ.get("LLMD_NODE_CACHE",
                                  Path.home() / ".cache" / "llmd-node"))
VSCODE_JSONRPC = "vscode-jsonrpc@10"


def registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "lines": {"command": ["@fakecli", "lines", "50"], "prompt": "stdin"},
        "slow": {"command": ["@fakecli", "sleep", "60"], "prompt": "stdin"},
    })


async def running_job(client: RawClient) -> str:
    """The id of the one running job, once it runs."""
    for n in range(2000):
        jobs = (await client.call("jobs.list", {"state": "running"}, id=f"poll{n}")
                )["result"]["jobs"]
        if jobs:
            return str(jobs[0]["job"])
        await trio.sleep(0.01)
    raise AssertionError("no job started")


@pytest.mark.parametrize("method", ["blueprints.list", "daemon.info", "health.status",
                                    "jobs.list"])
async def test_null_params_are_no_params(daemon_factory: Any, fake_bin: Path,
                                         method: str) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        await client.send({"jsonrpc": "2.0", "method": method, "params": None, "id": 1})
        reply = await client.recv()
    assert "result" in reply, reply


async def test_null_members_are_absent_for_every_method(daemon_factory: Any,
                                                        fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    client = await d.connect()
    nulls = {"stream": None, "json": None, "timeout": None, "cwd": None, "model": None,
             "session": None, "detach": None}
    with trio.fail_after(30):
        run = await client.call("llm.run", {"blueprint": "echo", "prompt": "héllo", **nulls})
        assert run["result"]["text"] == "héllo"
        job = run["result"]["job"]
        got = await client.call("jobs.get", {"job": job, "wait": None, "timeout": None}, id=2)
        assert got["result"]["state"] == "succeeded"
        listed = await client.call("jobs.list", {"state": None, "limit": None}, id=3)
        assert [r["job"] for r in listed["result"]["jobs"]] == [job]
        health = await client.call("health.status", {"blueprint": None}, id=4)
        assert set(health["result"]["blueprints"]) == {"echo", "lines", "slow"}
        by_position = await client.call("llm.run", ["echo", "x", None, None, None], id=5)
        assert by_position["result"]["text"] == "x"
        missing = await client.call("llm.run", {"blueprint": None, "prompt": "x"}, id=6)
        assert missing["error"]["code"] == -32602
        assert missing["error"]["data"]["path"] == "$.blueprint"


async def test_cancel_from_elsewhere_is_server_cancelled_and_recorded(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    runner = await d.connect()
    other = await d.connect()
    with trio.fail_after(30):
        await runner.send({"jsonrpc": "2.0", "id": "r", "method": "llm.run",
                           "params": {"blueprint": "slow", "prompt": ""}})
        job = await running_job(other)
        assert (await other.call("llm.cancel", {"job": job}))["result"]["cancelled"]
        reply = await runner.recv()
        assert reply["id"] == "r"
        assert reply["error"]["code"] == -32802
        assert reply["error"]["data"]["job"] == job
        record = (await other.call("jobs.get", {"job": job}, id=2))["result"]
    assert record["state"] == "cancelled"
    assert record["error"]["code"] == -32802


async def test_llmc_exits_10_when_its_run_is_cancelled_elsewhere(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    other = await d.connect()
    results: list[subprocess.CompletedProcess[bytes]] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                results.append(await llmc(d, "run", "slow", "x"))

            nursery.start_soon(run)
            job = await running_job(other)
            await other.call("llm.cancel", {"job": job})
    assert results[0].returncode == 10, results[0].stderr


def vscode_jsonrpc() -> Path:
    """The node_modules holding vscode-jsonrpc, installed once outside the tree."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    modules = NODE_CACHE / "node_modules"
    if not (modules / "vscode-jsonrpc" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(NODE_CACHE), "--no-audit",
                               "--no-fund", "--silent", VSCODE_JSONRPC],
                              capture_output=True, timeout=300, check=False)
        if done.returncode != 0:
            pytest.skip(f"npm could not install {VSCODE_JSONRPC}: "
                        f"{done.stderr.decode(errors='replace')[-300:]}")
    return modules


async def test_vscode_jsonrpc_client_from_node(daemon_factory: Any, fake_bin: Path) -> None:
    modules = vscode_jsonrpc()
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        done = await trio.run_process(
            ["node", str(HERE / "fixtures" / "editors" / "vscode_client.js"), str(d.socket)],
            capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "NODE_PATH": str(modules)})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    found = json.loads(done.stdout)
    assert found["blueprints"] == ["echo", "lines", "slow"]
    assert found["text"] == "".join(f"line {i}\n" for i in range(50))
    assert found["text_matches"] is True
    assert found["cancelled_elsewhere"] == -32802
    assert found["cancelled_own"] == -32800
    assert found["after"] is True
    assert found["unknown"] == -32001


async def test_emacs_jsonrpc_el_client(daemon_factory: Any, fake_bin: Path) -> None:
    emacs = shutil.which("emacs")
    if emacs is None:
        pytest.skip("emacs is not installed")
    d: DaemonHandle = await daemon_factory(registry(fake_bin))
    with trio.fail_after(60):
        done = await trio.run_process(
            [emacs, "--batch", "-Q", "-l",
             str(HERE / "fixtures" / "editors" / "jsonrpc_client.el")],
            capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "LLMD_SOCKET": str(d.socket)})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    found = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert found == {"blueprints": ["echo", "lines", "slow"], "text": "héllo",
                     "unknown": -32001}
