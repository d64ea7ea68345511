"""Load: many clients at once against low queue limits, idle crowds, no descriptors left.

The shared daemon runs with ``max_jobs = 6``, ``max_queue = 10`` and ``max_concurrency = 4``
for its blueprints, so most of a burst must be refused with -32006 at once while the rest
completes; every request is answered exactly once either way.
"""

from __future__ import annotations

import contextlib
import json
import resource
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import DaemonHandle, RawClient, alive, registry_toml
from tests.reliability.support import (
    SHARED_LIMITS,
    SharedDaemon,
    Soak,
    assert_healthy,
    assert_serves,
    children,
    cpu_seconds,
    fd_count,
    gather,
    lsp,
    open_stream,
    read_lsp,
    request,
    tally,
    wait_until,
)

CLIENTS = 50
PROMPTS = 20


async def daemon_info(socket: Path) -> dict[str, Any]:
    client = await RawClient.connect(socket)
    try:
        reply = await client.call("daemon.info", id="info")
    finally:
        await client.aclose()
    info: dict[str, Any] = reply["result"]
    return info


class Burst:
    """The outcome of one burst: every reply (and its latency) by request id."""

    def __init__(self) -> None:
        self.replies: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.streamed: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.prompts: dict[str, tuple[str, str]] = {}

    async def client(self, socket: Path, tag: str, lsp_framed: bool) -> None:
        stream = await trio.open_unix_socket(str(socket))
        try:
            payload = b""
            ids = []
            for i in range(PROMPTS):
                rid = f"{tag}-{i}"
                blueprint = "echo" if i % 2 else "argecho"
                prompt = f"prompt of {rid}"
                self.prompts[rid] = (blueprint, prompt)
                line = request("llm.run", {"blueprint": blueprint, "prompt": prompt,
                                           "stream": i % 5 == 0}, id=rid)
                payload += lsp(line.rstrip()) if lsp_framed else line
                ids.append(rid)
            started = trio.current_time()
            await stream.send_all(payload)
            # The sentinel goes last; replies to it and to the runs may come in any order,
            # so it is sent once every run has its answer: anything after it is a duplicate.
            pending = set(ids)
            buf = bytearray()
            sentinel = f"{tag}-sentinel"
            sent_sentinel = False
            while True:
                message = await (read_lsp(stream, buf) if lsp_framed else _ndjson(stream, buf))
                if "method" in message:
                    params = message["params"]
                    if message["method"] == "llm.output" and params["stream"] == "stdout":
                        self.streamed[params["request"]].append((params["seq"], params["text"]))
                    continue
                if message["id"] == sentinel:
                    break
                self.replies[message["id"]].append((trio.current_time() - started, message))
                pending.discard(message["id"])
                if not pending and not sent_sentinel:
                    line = request("daemon.info", id=sentinel)
                    await stream.send_all(lsp(line.rstrip()) if lsp_framed else line)
                    sent_sentinel = True
        finally:
            await stream.aclose()

    def check(self) -> tuple[int, int, int, float]:
        """Successes, refusals, records lost, and the slowest refusal in seconds."""
        ok = busy = lost = 0
        slowest_busy = 0.0
        for rid, (blueprint, prompt) in self.prompts.items():
            got = self.replies.get(rid, [])
            if len(got) != 1:
                lost += 1
                continue
            latency, reply = got[0]
            if "result" in reply:
                expected = prompt if blueprint == "echo" else json.dumps([prompt])
                text = reply["result"]["text"]
                if text != expected:
                    lost += 1
                    continue
                chunks = self.streamed.get(rid)
                if chunks is not None and ([s for s, _ in chunks] != list(range(len(chunks)))
                                           or "".join(t for _, t in chunks) != text):
                    lost += 1
                    continue
                ok += 1
            elif reply["error"]["code"] == -32006:
                busy += 1
                slowest_busy = max(slowest_busy, latency)
            else:
                lost += 1
        lost += sum(1 for rid in self.replies if rid not in self.prompts)
        return ok, busy, lost, slowest_busy


async def _ndjson(stream: trio.SocketStream, buf: bytearray) -> Any:
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed"
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


@pytest.mark.soak
async def test_fifty_clients_of_twenty_prompts_against_low_limits(daemon: SharedDaemon,
                                                                   soak: Soak) -> None:
    with trio.fail_after(soak.limit(150)):
        for round_ in soak.rounds():
            before = await daemon_info(daemon.socket)
            burst = Burst()
            await gather(*(partial(burst.client, daemon.socket, f"r{round_}c{n}", n % 2 == 1)
                           for n in range(CLIENTS)))
            ok, busy, lost, slowest_busy = burst.check()
            after = await daemon_info(daemon.socket)
            tally("requests", CLIENTS * PROMPTS)
            tally("connections", CLIENTS)
            tally("records_lost", lost)
            tally("busy_latency_ms", round(slowest_busy * 1000))
            assert lost == 0, f"{lost} requests lost, answered twice or wrongly"
            assert ok + busy == CLIENTS * PROMPTS
            # The limits let through at least a full house, and refused the excess.
            assert ok >= SHARED_LIMITS["max_jobs"] + SHARED_LIMITS["max_queue"]
            assert busy > 0
            # Refusals come at once: well before the runs could have made room.
            assert slowest_busy < 2.0, f"a -32006 took {slowest_busy:.2f} s"
            # Every accepted run finished, and was counted once.
            assert after["jobs"]["finished"] - before["jobs"]["finished"] == ok
            assert after["jobs"]["running"] == 0 and after["jobs"]["queued"] == 0
        await assert_healthy(daemon)


IDLE = 1000


@pytest.mark.soak
async def test_a_thousand_idle_connections_while_others_are_served(daemon: SharedDaemon,
                                                                    soak: Soak) -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < IDLE + 200:
        pytest.skip(f"RLIMIT_NOFILE is {soft}; {IDLE} connections need more")
    with trio.fail_after(soak.limit(90)):
        for round_ in soak.rounds():
            idle: list[trio.SocketStream] = []
            try:
                for i in range(IDLE):
                    stream = await open_stream(daemon.socket)
                    idle.append(stream)
                    if i % 10 == 0:
                        await stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "meth')
                info: dict[str, Any] = {}

                async def all_held() -> bool:
                    nonlocal info
                    info = await daemon_info(daemon.socket)
                    return bool(info["connections"] >= IDLE + 1)

                while not await all_held():
                    await trio.sleep(0.01)
                tally("held", info["connections"])
                tally("connections", IDLE)

                async def served(n: int, round_: int = round_) -> None:
                    client = await RawClient.connect(daemon.socket)
                    try:
                        for i in range(5):
                            prompt = f"among the idle {round_}-{n}-{i}"
                            reply = await client.call("llm.run", {"blueprint": "echo",
                                                                  "prompt": prompt}, id=i)
                            assert reply["result"]["text"] == prompt, reply
                            tally("requests")
                    finally:
                        await client.aclose()

                # Ten clients at once fit in max_jobs + max_queue: none is refused.
                await gather(*(partial(served, n) for n in range(10)))
                tally("connections", 10)
            finally:
                for stream in idle:
                    await stream.aclose()
        await assert_healthy(daemon)


def exhaust_registry(fake_bin: Path) -> str:
    # Health probes spawn children too; after one health.check none is due for long, so
    # none competes for the few descriptors these tests leave.
    quiet = {"interval": 1_000_000}
    return registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin", "health": quiet},
        "slow": {"command": ["@fakecli", "sleep", "30"], "prompt": "stdin", "health": quiet}})


async def test_running_out_of_descriptors_refuses_politely_and_recovers(
        daemon_factory: Any, fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(exhaust_registry(fake_bin),
                                           args=["--log-level", "info"])
    pid = d.proc.pid
    keeper = await d.connect()  # connected before: it must stay usable
    with trio.fail_after(10):
        assert "result" in await keeper.call("health.check")
    base = fd_count(pid)
    limit = base + 12
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    hogs: list[trio.SocketStream] = []
    try:
        with trio.fail_after(60):
            # More clients than descriptors: the daemon takes what it can, the rest wait in
            # the listen backlog (their connect succeeds; accept does not happen yet).
            for _ in range(40):
                hogs.append(await trio.open_unix_socket(str(d.socket)))
            await wait_until(lambda: fd_count(pid) >= limit)
            tally("connections", 40)
            # Exhausted: it must neither spin nor die. A measurement window, not a wait
            # for an event: CPU time is only known by letting time pass.
            log_before = len(d.log())
            cpu_before = cpu_seconds(pid)
            await trio.sleep(2.0)
            cpu_used = cpu_seconds(pid) - cpu_before
            logged = len(d.log()) - log_before
            assert alive(pid)
            assert cpu_used < 0.5, f"llmd used {cpu_used:.2f} s of CPU in 2 s while exhausted"
            assert logged < 64 * 1024, f"llmd logged {logged} bytes in 2 s while exhausted"
            # An existing connection is still answered; a run that cannot get its pipes
            # fails cleanly instead of hanging.
            assert (await keeper.call("daemon.info", id=2))["result"]["pid"] == pid
            reply = await keeper.call("llm.run", {"blueprint": "echo", "prompt": "x"}, id=3)
            assert "error" in reply or reply["result"]["text"] == "x", reply
            if "error" in reply:
                assert reply["error"]["code"] != -32603, reply
            tally("faults")
            # A client arriving now is not turned away: it waits in the listen backlog...
            waiting = RawClient(await trio.open_unix_socket(str(d.socket)))
            d.clients.append(waiting)
            await waiting.send(json.loads(request("daemon.info", id="waited")))
            # ...and once descriptors are free again (the hogs leave; the daemon takes the
            # ones left in its backlog, finds them gone, lets go), it is answered.
            for stream in hogs:
                await stream.aclose()
            hogs.clear()
            assert (await waiting.recv())["id"] == "waited"
            await waiting.aclose()
            d.clients.remove(waiting)
            await wait_until(lambda: fd_count(pid) <= base + 1)
            await assert_serves(d.socket, pid, "recovered")
            assert not children(pid)
    finally:
        for stream in hogs:
            with contextlib.suppress(Exception):
                await stream.aclose()


async def test_out_of_descriptors_is_not_a_missing_executable(daemon_factory: Any,
                                                              fake_bin: Path) -> None:
    d: DaemonHandle = await daemon_factory(exhaust_registry(fake_bin))
    client = await d.connect()
    with trio.fail_after(20):
        assert "result" in await client.call("health.check")
        limit = fd_count(d.proc.pid) + 3  # fewer than a child's pipes need
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
        reply = await client.call("llm.run", {"blueprint": "echo", "prompt": "x"}, id=2)
    tally("faults")
    assert reply["error"]["code"] == -32006, reply
