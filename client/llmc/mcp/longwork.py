"""The tools of ``llmc mcp`` for long and parallel work: fan-out ``start``, ``wait``,
``jobs`` and ``peek``.

Invariants:
- ``start`` starts every job before it answers and reports each one, started or refused:
  one refused blueprint or prompt never hides the jobs that did start.
- ``wait`` never waits longer than the call's inline cap (:meth:`Runner.cap`), whatever
  its ``timeout``: it learns of ends from a ``jobs.watch`` on a connection of its own, set
  up before it looks at the jobs, so no end is missed between the look and the wait.
- All the answers of one ``wait`` result hold at most ``max_chars`` characters together;
  each says where the rest of a cut answer is read (``result`` with ``offset``).
- Results conform to the tools' ``outputSchema`` (:mod:`llmc.mcp.schemas`).
"""

from __future__ import annotations

import time

from llmc.calling import QUICK_CALL_TIMEOUT as QUICK_TIMEOUT
from llmc.connection import ConnectionLost, RpcError
from llmc.mcp import tools
from llmc.mcp.schemas import DEFAULT_LIST, DEFAULT_TAIL, MAX_FAN_OUT, MAX_LIST, MAX_WAIT_JOBS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from llmc.mcp.calls import Call, Runner

PROMPT_LINE = 120


def add_tools(runner: Runner) -> None:
    """Put the long-work tools into the runner's table."""
    runner.tools.update({
        "start": lambda call, arguments: start(runner, call, arguments),
        "wait": lambda call, arguments: wait(runner, call, arguments),
        "jobs": lambda call, arguments: jobs(runner, call, arguments),
        "peek": lambda call, arguments: peek(runner, call, arguments)})


def _strings(arguments: dict[str, Any], key: str, limit: int) -> list[str] | None:
    value = arguments.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or \
            not all(isinstance(item, str) and item.strip() for item in value):
        raise tools.ArgumentError(f"`{key}` must be a non-empty array of non-empty strings")
    if len(value) > limit:
        raise tools.ArgumentError(f"`{key}` holds at most {limit} entries")
    return value


def start(runner: Runner, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
    """``start``: one job, the same prompt to several ``blueprints``, or several ``prompts``
    to one blueprint; every job's id."""
    arguments = dict(arguments)
    blueprints = _strings(arguments, "blueprints", MAX_FAN_OUT)
    prompts = _strings(arguments, "prompts", MAX_FAN_OUT)
    arguments.pop("blueprints", None)
    arguments.pop("prompts", None)
    if blueprints is not None and prompts is not None:
        raise tools.ArgumentError("give `blueprints` (one prompt to each) or `prompts` (each "
                                  "to one blueprint), not both")
    if blueprints is not None:
        if "blueprint" in arguments:
            raise tools.ArgumentError("give `blueprint` or `blueprints`, not both")
        runs = [{**arguments, "blueprint": name} for name in blueprints]
    elif prompts is not None:
        if "prompt" in arguments:
            raise tools.ArgumentError("give `prompt` or `prompts`, not both")
        runs = [{**arguments, "prompt": text} for text in prompts]
    else:
        runs = [arguments]
    checked = [tools.run_params(run, runner.cwd, "start") for run in runs]
    started: list[dict[str, Any]] = []
    for index, params in enumerate(checked):
        entry: dict[str, Any] = {"index": index, "blueprint": params["blueprint"]}
        try:
            reply = runner.daemon.call("llm.run", {**params, "detach": True},
                                       timeout=QUICK_TIMEOUT, call=call)
        except RpcError as exc:
            entry.update(job=None, state="refused", error=f"{exc.message} ({exc.code})")
        else:
            record = reply if isinstance(reply, dict) else {}
            entry.update(job=str(record.get("job") or ""),
                         state=str(record.get("state") or "queued"), error=None)
        started.append(entry)
    return tools.fan_out_result(started)


def _job_list(arguments: dict[str, Any]) -> tuple[list[str], str, float | None]:
    allowed = ("jobs", "mode", "timeout")
    tools._check_keys(arguments, allowed, "wait")
    ids = _strings(arguments, "jobs", MAX_WAIT_JOBS)
    if ids is None:
        raise tools.ArgumentError("`jobs` is required: the job ids to wait for")
    mode = arguments.get("mode") or "all"
    if mode not in ("any", "all"):
        raise tools.ArgumentError("`mode` is \"any\" or \"all\"")
    timeout = arguments.get("timeout")
    limit = None
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
                not 0 <= timeout < 1e9:
            raise tools.ArgumentError("`timeout` must be a number of seconds, 0 or more")
        limit = float(timeout)
    return list(dict.fromkeys(ids)), str(mode), limit


def wait(runner: Runner, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
    """``wait``: until any or all of the jobs have ended (within the inline cap); each
    job's state and, for the finished ones, its answer."""
    ids, mode, timeout = _job_list(arguments)
    limit = runner.cap(call) if timeout is None else min(timeout, runner.cap(call))
    deadline = time.monotonic() + limit
    finals = sorted(tools.FINAL_STATES)
    records: dict[str, dict[str, Any]] = {}
    conn = runner.daemon.watching(call)
    try:
        ended: set[str] = set()

        def heard(method: str, params: dict[str, Any]) -> None:
            if method == "jobs.event" and params.get("job") in ids:
                ended.add(str(params["job"]))

        conn.call("jobs.watch", {"states": finals}, timeout=QUICK_TIMEOUT)
        for job in ids:
            try:
                record = conn.call("jobs.get", {"job": job}, timeout=QUICK_TIMEOUT,
                                   on_notification=heard)
            except RpcError as exc:
                records[job] = {"job": job, "state": "unknown",
                                "error": {"code": exc.code, "message": exc.message}}
                continue
            records[job] = record if isinstance(record, dict) else {"job": job}
            if records[job].get("state") in tools.FINAL_STATES:
                ended.add(job)

        def satisfied() -> bool:
            known = [job for job in ids if records[job].get("state") != "unknown"]
            done = [job for job in known if job in ended]
            return bool(done) if mode == "any" else len(done) == len(known)

        while not satisfied():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if call.token is not None:
                runner.progress(call, f"waiting for {len(ids) - len(ended)} of {len(ids)} "
                                      f"llmd jobs: {int(time.monotonic() - call.started)} s")
            conn.listen(heard, timeout=min(left, runner.progress_s), what="jobs.event")
        for job in ids:
            if job in ended and records[job].get("state") not in tools.FINAL_STATES:
                record = conn.call("jobs.get", {"job": job}, timeout=QUICK_TIMEOUT,
                                   on_notification=heard)
                records[job] = record if isinstance(record, dict) else {"job": job}
        complete = satisfied()
    except ConnectionLost:
        if call.cancelled:
            from llmc.mcp.calls import Abandoned  # noqa: PLC0415 - calls imports this module

            raise Abandoned from None
        raise
    finally:
        call.detach()
        conn.close()
    return tools.wait_result([records[job] for job in ids], mode, complete,
                             runner.max_chars)


def jobs(runner: Runner, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
    """``jobs``: recent jobs, newest first, with their prompt's first line."""
    allowed = ("state", "blueprint", "limit")
    tools._check_keys(arguments, allowed, "jobs")
    state = arguments.get("state")
    if state is not None and state not in tools.ALL_STATES:
        raise tools.ArgumentError(f"`state` is one of {', '.join(sorted(tools.ALL_STATES))}")
    blueprint = arguments.get("blueprint")
    if blueprint is not None and not isinstance(blueprint, str):
        raise tools.ArgumentError("`blueprint` must be a string")
    limit = arguments.get("limit", DEFAULT_LIST)
    if limit is None:
        limit = DEFAULT_LIST
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise tools.ArgumentError(f"`limit` must be a whole number from 1 to {MAX_LIST}")
    params: dict[str, Any] = {"limit": limit, "prompt_line": True}
    if state is not None:
        params["state"] = state
    if blueprint is not None:
        params["blueprint"] = blueprint
    reply = runner.daemon.call("jobs.list", params, timeout=QUICK_TIMEOUT, call=call)
    listed = reply.get("jobs") if isinstance(reply, dict) else None
    records = [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []
    return tools.jobs_result(records[:limit], PROMPT_LINE)


def peek(runner: Runner, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
    """``peek``: the latest output of a job (running or not)."""
    job = tools.job_params(arguments, "peek", ("job", "tail_chars"))
    tail = arguments.get("tail_chars", DEFAULT_TAIL)
    if tail is None:
        tail = DEFAULT_TAIL
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 1:
        raise tools.ArgumentError("`tail_chars` must be a whole number of characters, 1 or "
                                  "more")
    tail = min(tail, runner.max_chars)
    first = runner.daemon.call("jobs.output", {"job": job, "limit": 1}, timeout=QUICK_TIMEOUT,
                               call=call)
    total = int(first.get("total_chars") or 0) if isinstance(first, dict) else 0
    offset = max(total - tail, 0)
    page = runner.daemon.call("jobs.output", {"job": job, "offset": offset, "limit": tail},
                              timeout=QUICK_TIMEOUT, call=call)
    return tools.peek_result(page if isinstance(page, dict) else {"job": job})
