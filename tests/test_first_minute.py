"""What a newcomer meets first, through the real daemon and client: the answer without the
CLI's chatter, health known at once, and a rate-limited run that moves itself.

Modules: llmc.run (stderr on a terminal), llmd.jobs.noise (``stderr_ignore``),
llmd.health.monitor (first probes), llmc.commands (status waiting for them),
llmd.jobs.moving and llmd.routing (the run moving to a fallback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from llmd.config import parse_registry
from llmd.errors import ConfigError
from llmd.jobs.noise import NoiseFilter
from tests.conftest import DaemonHandle, RawClient, llmc, registry_toml
from tests.test_client_tty import start_llmc

pytestmark = pytest.mark.usefixtures("fake_bin")

BANNER = "Warning: colour banner"
COMPLAINT = "a real complaint"


def noisy_registry(fake_bin: Path) -> str:
    return registry_toml(fake_bin, {
        "noisy": {"command": ["@fakecli", "noisy", "the answer"], "prompt": "stdin",
                  "stderr_ignore": ["^Warning: colour"]},
        "noisy-fails": {"command": ["@fakecli", "noisy", "", "3"], "prompt": "stdin",
                        "stderr_ignore": ["^Warning: colour"]},
    })


async def tty_run(d: DaemonHandle, *args: str) -> tuple[int, bytes, bytes]:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = await start_llmc(nursery, d, "run", *args)
            return await run.finish()


async def test_on_a_terminal_the_clis_stderr_is_hidden(daemon_factory: Any,
                                                       fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(noisy_registry(fake_bin))
    status, out, err = await tty_run(d, "noisy", "hi")
    assert status == 0, err
    assert out == b"the answer\n"
    assert COMPLAINT.encode() not in err
    assert BANNER.encode() not in err


async def test_verbose_shows_stderr_but_not_the_ignored_banner(daemon_factory: Any,
                                                               fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(noisy_registry(fake_bin))
    status, out, err = await tty_run(d, "-v", "noisy", "hi")
    assert status == 0, err
    assert out == b"the answer\n"
    assert COMPLAINT.encode() + b"\n" in err
    assert BANNER.encode() not in err


async def test_a_failed_run_quotes_the_stderr_tail_on_a_terminal(daemon_factory: Any,
                                                                 fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(noisy_registry(fake_bin))
    status, out, err = await tty_run(d, "noisy-fails", "hi")
    assert status == 1, err
    assert out == b""
    text = err.decode()
    assert "failed: the CLI failed (exit status 3)" in text
    # The tail is the child's own: the record keeps even what clients are not shown live.
    assert COMPLAINT in text
    assert BANNER in text


async def test_ignored_lines_leave_the_stream_but_stay_in_the_record(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(noisy_registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(30):
        notes, reply = await call_collecting(client, "llm.run", {
            "blueprint": "noisy", "prompt": "x", "stream": True})
    shown = "".join(n["params"]["text"] for n in notes
                    if n["method"] == "llm.output" and n["params"]["stream"] == "stderr")
    assert shown == COMPLAINT + "\n"
    result = reply["result"]
    assert result["stderr"] == f"{BANNER}\n{COMPLAINT}\n"
    # Piped (no terminal), llmc shows the CLI's stderr as before, minus the banner.
    proc = await llmc(d, "run", "--stream", "noisy", "x")
    assert (proc.returncode, proc.stdout) == (0, b"the answer"), proc.stderr
    assert COMPLAINT.encode() in proc.stderr
    assert BANNER.encode() not in proc.stderr


def test_bad_stderr_ignore_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_registry(b'[blueprints.a]\ncommand = ["a"]\nstderr_ignore = ["("]\n')
    assert "blueprints.a.stderr_ignore[0]: invalid regular expression" in str(caught.value)


def test_noise_is_judged_by_whole_lines() -> None:
    noise = NoiseFilter([r"^Warning: ", r"^\[STARTUP\] "])
    shown = [noise.feed(chunk) for chunk in ("Warn", "ing: x\nkeep", " me\r\n[STA",
                                             "RTUP] y\nlast")]
    assert shown == ["", "", "keep me\r\n", ""]
    assert noise.flush() == "last"
    assert noise.flush() == ""
    noise.feed("Warning: no newline")
    assert noise.flush() == ""
    # Without patterns every chunk passes at once, partial lines too.
    assert NoiseFilter([]).feed("Warn") == "Warn"


async def call_collecting(client: RawClient, method: str, params: Any,
                          id: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Send a request; return the notifications that came before its reply, and the reply."""
    await client.send({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
    notes: list[dict[str, Any]] = []
    while True:
        message = await client.recv()
        if "method" in message:
            notes.append(message)
        elif message.get("id") == id:
            return notes, message


def health_registry(fake_bin: Path, count: int) -> str:
    return registry_toml(fake_bin, {
        f"bp{i}": {"command": ["@fakecli", "stdin"], "prompt": "stdin"} for i in range(count)})


async def test_status_right_after_start_shows_real_states(daemon_factory: Any,
                                                          fake_bin: Path) -> None:
    # More blueprints than first probes run at once, each with the default 300 s interval:
    # before, their first probes were spread over 10 s.
    d: DaemonHandle = await daemon_factory(health_registry(fake_bin, 6))
    proc = await llmc(d, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    states = {name: entry["state"]
              for name, entry in json.loads(proc.stdout)["blueprints"].items()}
    assert states == {f"bp{i}": "healthy" for i in range(6)}
    proc = await llmc(d, "status")
    assert proc.returncode == 0, proc.stderr
    assert b"unknown" not in proc.stdout


def moving_registry(fake_bin: Path, short_tmp: Path) -> str:
    return registry_toml(fake_bin, {
        "good": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "limited": {"command": ["@fakecli", "ratelimit", "1000", str(short_tmp / "a.count"),
                                "--partial"],
                    "prompt": "stdin", "fallbacks": ["good"],
                    "resume_args": ["--session", "{session}"],
                    "retry": {"max_attempts": 2, "base_delay": 0, "max_delay": 1}},
        "pinned": {"command": ["@fakecli", "ratelimit", "1000", str(short_tmp / "b.count")],
                   "prompt": "stdin", "fallbacks": ["good"],
                   "model_args": ["--model", "{model}"],
                   "retry": {"max_attempts": 1}},
    })


async def test_the_rate_limited_run_moves_itself_to_a_fallback(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(moving_registry(fake_bin, short_tmp))
    client = await d.connect()
    with trio.fail_after(30):
        notes, reply = await call_collecting(client, "llm.run", {
            "blueprint": "limited", "prompt": "moved", "stream": True})
    result = reply["result"]
    assert (result["blueprint"], result["text"]) == ("good", "moved")
    assert result["requested_blueprint"] == "limited"
    assert "limited is rate limited until" in result["fallback_reason"]
    assert "using good" in result["fallback_reason"]
    assert result["attempts"] == 3  # two on limited, one on good
    assert (short_tmp / "a.count").read_text() == "2"
    states = [n["params"] for n in notes if n["method"] == "llm.state"]
    assert [s["state"] for s in states] == ["queued", "running", "retrying", "running",
                                            "retrying", "running", "succeeded"]
    move = states[4]
    assert move["blueprint"] == "good"
    assert move["requested_blueprint"] == "limited"
    assert move["fallback_reason"] == result["fallback_reason"]
    assert move["restart_output"] is True  # "partial answer" had streamed
    assert move["retry_in_s"] == 0
    # What streamed after the move is the answer.
    texts = [n["params"]["text"] for n in notes if n["method"] == "llm.output"
             and n["params"]["stream"] == "stdout"]
    assert "".join(texts).endswith("moved")
    # The record says where it ran and what was asked.
    record = (await client.call("jobs.get", {"job": result["job"]}, id=2))["result"]
    assert record["blueprint"] == "good"
    assert record["result"]["requested_blueprint"] == "limited"


async def test_a_pinned_run_does_not_move(daemon_factory: Any, fake_bin: Path,
                                          short_tmp: Path) -> None:
    d: DaemonHandle = await daemon_factory(moving_registry(fake_bin, short_tmp))
    client = await d.connect()
    with trio.fail_after(30):
        reply = await client.call("llm.run", {"blueprint": "pinned", "prompt": "x",
                                              "model": "m1"}, id=1)
        assert reply["error"]["code"] == -32004
        assert reply["error"]["data"]["blueprint"] == "pinned"
        assert "gave up after 1 attempt" in reply["error"]["message"]
        # Nor one that names a session: it spends its retries and fails where it asked.
        reply = await client.call("llm.run", {"blueprint": "limited", "prompt": "x",
                                              "session": "s-1"}, id=2)
        assert reply["error"]["code"] == -32004
        assert reply["error"]["data"]["blueprint"] == "limited"
        assert reply["error"]["data"]["attempts"] == 2
    # The llmc client exits 5 and says why.
    proc = await llmc(d, "run", "--model", "m1", "pinned", "x")
    assert proc.returncode == 5
    assert b"rate limited" in proc.stderr


async def test_status_waits_for_first_probes_only_so_long(daemon_factory: Any,
                                                          fake_bin: Path,
                                                          short_tmp: Path) -> None:
    hang = short_tmp / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 1000\n")
    hang.chmod(0o755)
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "good": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "hangs": {"command": [str(hang)], "prompt": "stdin"},
    }))
    # The hanging probe is still in flight (its timeout is 30 s): status gives up waiting
    # after its 3 s and shows it unknown, next to the state already known.
    proc = await llmc(d, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    states = {name: entry["state"]
              for name, entry in json.loads(proc.stdout)["blueprints"].items()}
    assert states == {"good": "healthy", "hangs": "unknown"}
