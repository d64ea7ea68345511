"""``llmc mcp``'s figures, measured with the official MCP Python client (``mcp``).

    python bench/mcp.py [--quick] [--runs N]

Figures (targets in brackets), each against a baseline measured in the same run:
- cold start: from launching ``llmc mcp`` to a completed ``tools/list`` (initialize, the
  initialized notification, tools/list with the registry's blueprints)   [<= 150 ms; the
  best peer measured 144 ms]
- per call: p50 of ``tools/call run`` of a ``/bin/echo`` blueprint on one session   [<= 2.0 ms;
  peers 2.3 to 3.1 ms], next to spawning the same argv directly and to the same ``llm.run``
  sent to llmd on one socket without the bridge (the floor that llmd sets) and to an MCP
  ping (the client's and the pipes' cost), in alternating blocks; what is left over is split
  into the MCP client's own work on a tool result (its CPU beyond a ping's: parsing and
  validating the result, checking ``structuredContent`` against the ``outputSchema``, which
  is also timed alone) and the bridge's call handling
- CPU time per ``run`` call of the bridge and of the MCP client, next to a ping's and to the
  ``llm.run`` sent straight (CPU time, unlike wall time, changes little with other load on
  the machine), and the bridge's resident memory after the calls   [peers 67 to 88 MB]

- MCP tasks (2025-11-25, spoken by hand: the SDK has no client for them): a task-augmented
  ``tools/call run`` answered with its task   [<= 50 ms], and ``tasks/get`` of a task   [<=
  5 ms p50], p50 and p90 over N of each on one bridge
- the wait cap: a 3-minute job started by ``run`` through the SDK with ``--max-wait 2``,
  how long after the cap its handle comes back   [<= 1 s]

``$LLMC_MCP_BENCH_SERVER`` starts the bridge otherwise, e.g. under cProfile (see
:func:`server_command`).

Bytecode caching is on, as for an installed llmc (a session may have turned it off).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This script is named like the SDK it measures with: its own directory, first on the path
# when it runs, would shadow the package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import anyio  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

from tests.harness import launch, rss_kb  # noqa: E402

ROOT = HERE.parent
# Whether the kernel counts each thread's CPU time in nanoseconds (see cpu_s).
SCHEDSTAT = Path("/proc/self/schedstat").exists()
# Calls per block of back-to-back calls of one kind (see per_call).
BLOCK = 25
REGISTRY = """
[blueprints.echo]
command = ["/bin/echo", "{prompt}"]
description = "Echoes the prompt (a trivial CLI for measuring)."

[blueprints.sleep]
command = ["/bin/sleep", "{prompt}"]
description = "Sleeps for the prompt's seconds (a long job)."
"""


def server_command() -> list[str]:
    """``llmc mcp`` as a user's MCP client would start it: the installed script.

    ``$LLMC_MCP_BENCH_SERVER`` replaces it (split like a shell would) for a look inside the
    bridge, e.g. ``python -m cProfile -o mcp.prof -m llmc mcp`` (cProfile sees only the
    main thread, which reads stdin; the command must name ``mcp`` for the CPU figures).
    """
    override = os.environ.get("LLMC_MCP_BENCH_SERVER", "").strip()
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "llmc"
    if script.exists():
        return [str(script), "mcp"]
    return [sys.executable, "-m", "llmc", "mcp"]


def bridge_env(sock: str) -> dict[str, str]:
    env = {**os.environ, "LLMD_SOCKET": sock}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_s(pid: int) -> float:
    """CPU time of a process's threads, in seconds.

    To the nanosecond from the scheduler's own count where the kernel keeps one: the
    clock ticks of ``/proc/PID/stat`` (10 ms) are coarse next to a call's tenths of a
    millisecond. Threads that have ended drop out of the count; the bridge's worker threads
    stay (parked) between calls.
    """
    if not SCHEDSTAT:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue  # the thread has just ended
    return total / 1e9


def bridge_pid() -> int | None:
    """The ``llmc mcp`` child of this process (not llmd, whose socket path may say mcp)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"mcp" in argv:
            return int(entry.name)
    return None


async def cold_start(sock: str) -> tuple[float, int]:
    command = server_command()
    params = StdioServerParameters(command=command[0], args=command[1:], env=bridge_env(sock))
    t = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
        elapsed = time.perf_counter() - t
    run = next(tool for tool in listed.tools if tool.name == "run")
    assert "echo" in str(run.input_schema), "the blueprint list is missing"
    return elapsed, len(listed.tools)


async def per_call(sock: str, n: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Four figures, measured in alternating blocks of back-to-back calls.

    ``via``: ``run`` through the bridge; ``daemon``: the same ``llm.run`` straight to llmd on
    one socket (the floor that llmd sets); ``direct``: spawning the argv; ``ping``: an MCP
    ping, the client's and the pipes' own cost. Calls within a block follow each other as
    a client's would; the blocks alternate so that all four see the same load on a shared
    machine, which comes and goes.

    Besides the times, the CPU that the bridge and this process (the client) spend per call
    of each kind, and the time that the SDK spends checking a ``run`` result's
    ``structuredContent`` against the tool's ``outputSchema`` (client work that lands in
    the wall time of a call, not in the bridge).
    """
    sys.path.insert(0, str(ROOT / "client"))
    from llmc.connection import Connection  # noqa: PLC0415

    command = server_command()
    params = StdioServerParameters(command=command[0], args=command[1:], env=bridge_env(sock))
    arguments = {"blueprint": "echo", "prompt": "hello"}
    # As the bridge sends it for a client that asks for no progress.
    straight = {**arguments, "cwd": os.getcwd()}
    times: dict[str, list[float]] = {"via": [], "daemon": [], "direct": [], "ping": []}
    with Connection.connect(sock) as conn:
        async with stdio_client(params) as (read, write), \
                ClientSession(read, write) as session:

            async def via() -> None:
                result = await session.call_tool("run", arguments)
                assert not result.is_error, result

            async def daemon() -> None:
                conn.call("llm.run", straight)

            async def direct() -> None:
                subprocess.run(["/bin/echo", "hello"], capture_output=True, check=True)

            async def ping() -> None:
                await session.send_ping()

            steps = {"via": via, "daemon": daemon, "direct": direct, "ping": ping}
            checks: list[float] = []
            check = session.validate_tool_result

            async def timed_check(name: str, result: Any) -> None:
                t = time.perf_counter()
                await check(name, result)
                checks.append(time.perf_counter() - t)

            session.validate_tool_result = timed_check  # type: ignore[method-assign]
            await session.initialize()
            await session.list_tools()
            for step in steps.values():  # warm caches and the bridge's connection pool
                for _ in range(BLOCK):
                    await step()
            pid = bridge_pid()
            # CPU seconds per kind of step: the bridge's, and this process's (the client's).
            bridge_cpu = dict.fromkeys(steps, 0.0)
            client_cpu = dict.fromkeys(steps, 0.0)
            for _ in range(max(1, n // BLOCK)):
                for name, step in steps.items():
                    before = (cpu_s(pid) if pid is not None else 0.0, time.process_time())
                    for _ in range(BLOCK):
                        t = time.perf_counter()
                        await step()
                        times[name].append(time.perf_counter() - t)
                    bridge_cpu[name] += (cpu_s(pid) if pid is not None else 0.0) - before[0]
                    client_cpu[name] += time.process_time() - before[1]
            # CPU time, unlike wall time, does not depend on what else the machine runs.
            calls = len(times["via"])
            facts = {"rss_mb": rss_kb(pid) / 1024 if pid is not None else 0.0,
                     "cpu_ms": bridge_cpu["via"] / calls * 1e3,
                     "ping_cpu_ms": bridge_cpu["ping"] / calls * 1e3,
                     "straight_cpu_ms": client_cpu["daemon"] / calls * 1e3,
                     "client_cpu_ms": client_cpu["via"] / calls * 1e3,
                     "client_ping_cpu_ms": client_cpu["ping"] / calls * 1e3,
                     "check_ms": statistics.median(checks[-calls:]) * 1e3}
    return times, facts


async def capped_run(sock: str, cap: float) -> tuple[float, str]:
    """Seconds a ``run`` of a 3-minute job took to return its handle; the job id."""
    command = server_command()
    params = StdioServerParameters(command=command[0],
                                   args=[*command[1:], "--max-wait", str(cap)],
                                   env=bridge_env(sock))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        t = time.perf_counter()
        result = await session.call_tool("run", {"blueprint": "sleep", "prompt": "180"})
        elapsed = time.perf_counter() - t
    assert result.structured_content is not None, result
    assert result.structured_content["state"] == "running", result
    return elapsed, str(result.structured_content["job"])


def task_figures(sock: str, n: int) -> dict[str, list[float]]:
    """Seconds per task-augmented ``run`` (until its task is back) and per ``tasks/get``,
    over a raw 2025-11-25 session: line-delimited JSON on the bridge's pipes."""
    import json  # noqa: PLC0415

    command = server_command()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=bridge_env(sock))
    assert proc.stdin is not None and proc.stdout is not None
    ids = iter(range(1, 1 << 30))

    def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
        number = next(ids)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": number, "method": method,
                                     "params": params}).encode() + b"\n")
        proc.stdin.flush()
        while True:
            reply = json.loads(proc.stdout.readline())
            if reply.get("id") == number:
                assert "result" in reply, reply
                return dict(reply["result"])

    try:
        call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                            "clientInfo": {"name": "bench", "version": "1"}})
        created: list[float] = []
        got: list[float] = []
        task_id = ""
        for index in range(n + 10):  # the first ten warm the bridge's connections
            t = time.perf_counter()
            reply = call("tools/call", {"name": "run", "task": {"ttl": 60000},
                                        "arguments": {"blueprint": "echo", "prompt": "hi"}})
            elapsed = time.perf_counter() - t
            task_id = reply["task"]["taskId"]
            if index >= 10:
                created.append(elapsed)
        for index in range(n + 10):
            t = time.perf_counter()
            call("tasks/get", {"taskId": task_id})
            elapsed = time.perf_counter() - t
            if index >= 10:
                got.append(elapsed)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    return {"task_created": created, "task_get": got}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--runs", type=int, default=None, help="cold starts to time")
    args = parser.parse_args()
    calls = 100 if args.quick else 500
    starts = args.runs or (5 if args.quick else 20)
    workdir = Path(tempfile.mkdtemp(prefix="llmc-mcp-bench-"))
    daemon = launch(workdir, REGISTRY)
    sock = str(daemon.socket)
    results: dict[str, Any] = {}
    try:
        anyio.run(cold_start, sock)  # writes the bytecode, as a first launch would
        colds = [anyio.run(cold_start, sock)[0] for _ in range(starts)]
        bare = []
        for _ in range(starts):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=bridge_env(sock), check=True)
            bare.append(time.perf_counter() - t)
        times, facts = anyio.run(per_call, sock, calls)
        results = {"cold": colds, "bare": bare, **facts, **times,
                   **task_figures(sock, calls // 2)}
        capped, job = anyio.run(capped_run, sock, 2.0)
        results["capped_over_s"] = capped - 2.0
        sys.path.insert(0, str(ROOT / "client"))
        from llmc.connection import Connection  # noqa: PLC0415

        with Connection.connect(sock) as conn:
            conn.call("llm.cancel", {"job": job})
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    cold_ms = statistics.median(results["cold"]) * 1e3
    print(f"cold start to tools/list, p50 of {starts}: {cold_ms:.1f} ms "
          f"(min {min(results['cold']) * 1e3:.1f}, python -c pass "
          f"{statistics.median(results['bare']) * 1e3:.1f} ms) [target: <= 150 ms]")
    via_ms = statistics.median(results["via"]) * 1e3
    direct_ms = statistics.median(results["direct"]) * 1e3
    daemon_ms = statistics.median(results["daemon"]) * 1e3
    ping_ms = statistics.median(results["ping"]) * 1e3
    print(f"run /bin/echo per call, p50 of {calls}: {via_ms:.2f} ms "
          f"(p90 {percentile(results['via'], 0.9) * 1e3:.2f}) [target: <= 2.0 ms]; "
          f"spawning it directly {direct_ms:.2f} ms (ratio {via_ms / direct_ms:.2f}x)")
    left_ms = via_ms - daemon_ms - ping_ms
    print(f"  of which: llm.run straight to llmd {daemon_ms:.2f} ms (ratio "
          f"{daemon_ms / direct_ms:.2f}x); an MCP ping (client and pipes) {ping_ms:.2f} ms; "
          f"left over {left_ms:.2f} ms")
    # What is left over is not all the bridge's: the client works harder on a tool result
    # than on a ping's empty one (parsing and validating a CallToolResult, checking its
    # structuredContent against the outputSchema), and it works while the call is timed.
    # Its CPU beyond a ping's measures that; the bridge has the rest.
    client_extra_ms = results["client_cpu_ms"] - results["client_ping_cpu_ms"]
    print(f"  left over: the MCP client's own work on a tool result {client_extra_ms:.2f} ms "
          f"(its CPU beyond a ping's; the SDK's outputSchema check alone, p50, "
          f"{results['check_ms']:.2f} ms); the bridge's call handling "
          f"{left_ms - client_extra_ms:.2f} ms")
    print(f"CPU per run call: the bridge {results['cpu_ms']:.2f} ms (a ping "
          f"{results['ping_cpu_ms']:.2f}; the llm.run's own, sent straight, "
          f"{results['straight_cpu_ms']:.2f}), the MCP client {results['client_cpu_ms']:.2f} "
          f"ms (a ping {results['client_ping_cpu_ms']:.2f}); bridge RSS after "
          f"{calls + 30} calls: {results['rss_mb']:.1f} MB [peers 67 to 88 MB]")
    print(f"a 3-minute job's handle from run with --max-wait 2: "
          f"{results['capped_over_s']:.3f} s after the cap [target: <= 1 s]")
    for key, label, target in (("task_created", "task-augmented run to its task", 50),
                               ("task_get", "tasks/get", 5)):
        values = results[key]
        print(f"{label}, p50 of {len(values)}: {statistics.median(values) * 1e3:.2f} ms "
              f"(p90 {percentile(values, 0.9) * 1e3:.2f}) [target: <= {target} ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
