"""llmc's exit statuses and their mapping from llmd's JSON-RPC error codes.

Invariants:
- Each status means one thing, so scripts can branch on it; the table below is the single
  source for the ``--help`` epilog (the ``llmc.cli`` docstring repeats it for readers).
- llmd's job states are named here once (docs/API.md, "Job record"), with the status a
  final one maps to: every command and ``llmc mcp`` take them from here.
- Imports nothing: it is loaded on every start.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
TIMED_OUT = 4
RATE_LIMITED = 5
BUSY = 6
NOT_FOUND = 7
BAD_CONFIG = 8
NO_JSON = 9
# Not 130: that says this process got SIGINT, and a script waiting on a job that someone else
# cancelled (llmc cancel, a daemon stop) must be able to tell the two apart.
CANCELLED = 10
INTERRUPTED = 130

# llmd's job states: a job is live in these...
LIVE_STATES = ("queued", "running", "retrying")
# ... and has ended in these, each with the status of a record that carries no error code.
FINAL_STATUS = {"succeeded": OK, "failed": FAILED, "timed_out": TIMED_OUT,
                "cancelled": CANCELLED, "interrupted": CANCELLED}
FINAL_STATES = tuple(FINAL_STATUS)
JOB_STATES = LIVE_STATES + FINAL_STATES

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (FAILED, "the CLI failed (-32005), another llmd error, or output could not be written"),
    (USAGE, "usage error: bad arguments, invalid params (-32602), unsupported method (-32601)"),
    (UNREACHABLE, "llmd is not reachable, or it dropped the connection"),
    (TIMED_OUT, "timed out (-32003), or job --wait --timeout ran out before the job ended"),
    (RATE_LIMITED, "rate limited (-32004), or a budget is exhausted (-32009)"),
    (BUSY, "busy: llmd's queue is full (-32006)"),
    (NOT_FOUND, "unknown blueprint (-32001) or its executable is missing (-32002)"),
    (BAD_CONFIG, "invalid configuration (-32008)"),
    (NO_JSON, "run --json: the answer held no JSON value"),
    (CANCELLED, "the run or job was cancelled (-32800, -32802) or cut short by a daemon stop"),
    (INTERRUPTED, "this llmc was interrupted (Ctrl-C); a run in flight is cancelled first"),
)

_BY_RPC_CODE: dict[int, int] = {
    -32005: FAILED,
    -32602: USAGE,
    -32601: USAGE,
    -32003: TIMED_OUT,
    -32004: RATE_LIMITED,
    -32009: RATE_LIMITED,
    -32006: BUSY,
    -32001: NOT_FOUND,
    -32002: NOT_FOUND,
    -32008: BAD_CONFIG,
    -32800: CANCELLED,
    -32802: CANCELLED,
}


def exit_code_for(rpc_code: int) -> int:
    """Map a JSON-RPC error code to llmc's exit status.

    Args:
        rpc_code: The ``code`` of an error reply.

    Returns:
        The exit status; codes without their own status give :data:`FAILED`.
    """
    return _BY_RPC_CODE.get(rpc_code, FAILED)


def epilog() -> str:
    """Return the exit-status table as text for ``--help``."""
    lines = ["exit status:"]
    lines.extend(f"  {code:>3}  {meaning}" for code, meaning in TABLE)
    return "\n".join(lines)
