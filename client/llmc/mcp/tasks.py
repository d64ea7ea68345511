"""MCP tasks for ``run``: the 2025-11-25 tasks utility and the 2026-07-28 extension
``io.modelcontextprotocol/tasks``, each under the revision that defines it.

Invariants:
- The task id is the llmd job id, and a task's state is read from llmd each time: any
  ``llmc mcp`` process (a client restarted, a second one) answers for a task another made,
  and a task outlives the process that made it. Nothing about tasks is kept here.
- A task is handed out only once its job's record is committed in llmd (the detached run's
  answer), so ``tasks/get`` resolves at once.
- Statuses: a job queued, running or retrying is ``working``; succeeded is ``completed``;
  cancelled is ``cancelled``. A job that failed, timed out or was interrupted is a tool
  result with ``isError``: ``failed`` under 2025-11-25, ``completed`` (with that result)
  under the extension, which keeps ``failed`` for JSON-RPC errors.
- ``statusMessage`` tells the job's state as a person would ("running 2m10s").
- Tasks are retained as long as llmd's job store keeps the job: ``ttl`` is null (unlimited).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from llmc import exitcodes
from llmc.calling import QUICK_CALL_TIMEOUT as QUICK_TIMEOUT
from llmc.connection import ClientError, RpcError
from llmc.mcp import tools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from llmc.mcp.calls import Call, Runner

EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
RELATED_TASK = "io.modelcontextprotocol/related-task"
UTILITY_VERSION = "2025-11-25"
EXTENSION_VERSION = "2026-07-28"
MISSING_CAPABILITY = -32021
# Agents work for minutes: polling every 2 s is prompt enough and cheap (a tasks/get is one
# jobs.get, well under a millisecond in llmd).
POLL_INTERVAL_MS = 2000
LIST_LIMIT = 100
LIVE = frozenset(exitcodes.LIVE_STATES)


class TaskError(Exception):
    """A task request fails with a JSON-RPC error (not a tool result)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def declares_extension(params: dict[str, Any]) -> bool:
    """Whether a 2026-07-28 request declares the tasks extension in its capabilities."""
    meta = params.get("_meta")
    caps = meta.get(CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
    extensions = caps.get("extensions") if isinstance(caps, dict) else None
    return isinstance(extensions, dict) and EXTENSION in extensions


def require_extension(params: dict[str, Any]) -> None:
    """Refuse a 2026-07-28 task request from a client that did not declare the extension.

    Raises:
        TaskError: -32021, naming the capability.
    """
    if not declares_extension(params):
        raise TaskError(MISSING_CAPABILITY, "Missing required client capability",
                        {"requiredCapabilities": {"extensions": {EXTENSION: {}}}})


def _stamp(record: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            return value
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _elapsed(since: object) -> str:
    if not isinstance(since, str):
        return ""
    try:
        then = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(int(time.time() - then.timestamp()), 0)
    if seconds < 60:
        return f" {seconds}s"
    if seconds < 3600:
        return f" {seconds // 60}m{seconds % 60:02d}s"
    return f" {seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_message(record: dict[str, Any]) -> str:
    """The job's state for people: "running 2m10s", "retrying (attempt 2)", ..."""
    state = str(record.get("state") or "unknown")
    blueprint = record.get("blueprint")
    head = f"{blueprint}: " if isinstance(blueprint, str) else ""
    attempts = record.get("attempts")
    if state == "running":
        text = "running" + _elapsed(record.get("started_at"))
        if isinstance(attempts, int) and attempts > 1:
            text += f" (attempt {attempts})"
        return head + text
    if state == "retrying":
        return head + f"retrying after a rate limit (attempt {attempts} was refused)"
    if state == "queued":
        return head + "queued" + _elapsed(record.get("created_at"))
    error = record.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return head + f"{state.replace('_', ' ')}: {error['message']}"
    return head + state.replace("_", " ")


def tool_result(record: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """The ``run`` result a finished job stands for (its answer or its error)."""
    return tools.job_result(record, max_chars, 0, None)


def task(record: dict[str, Any], version: str, max_chars: int, *,
         detailed: bool = False) -> dict[str, Any]:
    """The task a job record stands for, in the shape of ``version``.

    Args:
        record: The job's record (``jobs.get``).
        version: 2025-11-25 (the utility) or 2026-07-28 (the extension).
        max_chars: The answer size of a result inlined (the extension's ``tasks/get``).
        detailed: Inline the result (``completed``) or the error (``failed``), as the
            extension's ``tasks/get`` does.
    """
    state = str(record.get("state") or "unknown")
    result = None
    if state in LIVE:
        status = "working"
    elif state == "cancelled":
        status = "cancelled"
    else:
        result = tool_result(record, max_chars)
        failed = result.get("isError") is True and version == UTILITY_VERSION
        status = "failed" if failed else "completed"
    created = _stamp(record, "created_at")
    shape: dict[str, Any] = {
        "taskId": str(record.get("job") or ""), "status": status,
        "statusMessage": status_message(record), "createdAt": created,
        "lastUpdatedAt": _stamp(record, "finished_at", "started_at", "created_at")}
    if version == UTILITY_VERSION:
        shape.update(ttl=None, pollInterval=POLL_INTERVAL_MS)
    else:
        shape.update(ttlMs=None, pollIntervalMs=POLL_INTERVAL_MS)
        if detailed and result is not None:
            shape["result"] = result
    return shape


def _record(runner: Runner, call: Call | None, job: object, *, wait: bool = False
            ) -> dict[str, Any]:
    if not isinstance(job, str) or not job.strip():
        raise TaskError(-32602, "Invalid params: taskId must be a non-empty string")
    params: dict[str, Any] = {"job": job}
    if wait:
        params["wait"] = True
    try:
        record = runner.daemon.call("jobs.get", params,
                                    timeout=None if wait else QUICK_TIMEOUT, call=call)
    except RpcError as exc:
        if exc.code == -32007:
            raise TaskError(-32602, "Failed to retrieve task: Task not found") from None
        raise TaskError(-32603, f"llmd: {exc.message}") from None
    except ClientError as exc:
        raise TaskError(-32603, f"llmd cannot be reached: {exc}") from None
    if not isinstance(record, dict):
        raise TaskError(-32603, "llmd answered jobs.get with something not an object")
    return record


def create(runner: Runner, call: Call, arguments: object, version: str) -> dict[str, Any]:
    """Start a ``run`` as a task: its job, detached; the task, at once.

    Raises:
        TaskError: The arguments are unusable or llmd refused the run.
    """
    try:
        if not isinstance(arguments, dict):
            raise tools.ArgumentError("the arguments must be a JSON object")
        params = tools.run_params(arguments, runner.cwd, "run")
        job = runner.submit(call, params)
    except tools.ArgumentError as exc:
        raise TaskError(-32602, f"Invalid arguments for `run`: {exc}") from None
    except RpcError as exc:
        raise TaskError(exc.code, exc.message, exc.data) from None
    except ClientError as exc:
        raise TaskError(-32603, f"llmd cannot be reached: {exc}") from None
    # The run was only handed out once committed: from now on, a cancel of the tools/call
    # no longer ends the job (tasks/cancel does).
    call.owns_job = False
    shaped = task(_record(runner, None, job), version, runner.max_chars)
    if version == UTILITY_VERSION:
        return {"task": shaped}
    return {**shaped, "resultType": "task"}


def get(runner: Runner, params: dict[str, Any], version: str) -> dict[str, Any]:
    """``tasks/get``."""
    return task(_record(runner, None, params.get("taskId")), version, runner.max_chars,
                detailed=version != UTILITY_VERSION)


def result(runner: Runner, call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``tasks/result`` (2025-11-25): waits for the end; the tool result of the task."""
    job = params.get("taskId")
    record = _record(runner, call, job, wait=True)
    shaped = tool_result(record, runner.max_chars) if record.get("state") not in LIVE \
        else tools.error_result("The task has not ended.")
    shaped["_meta"] = {RELATED_TASK: {"taskId": job}}
    return shaped


def listed(runner: Runner) -> dict[str, Any]:
    """``tasks/list`` (2025-11-25): llmd's recent jobs as tasks, newest first."""
    try:
        reply = runner.daemon.call("jobs.list", {"limit": LIST_LIMIT}, timeout=QUICK_TIMEOUT)
    except ClientError as exc:
        raise TaskError(-32603, f"llmd cannot be reached: {exc}") from None
    records = reply.get("jobs") if isinstance(reply, dict) else None
    return {"tasks": [task(r, UTILITY_VERSION, runner.max_chars)
                      for r in records or [] if isinstance(r, dict)]}


def cancel(runner: Runner, params: dict[str, Any], version: str) -> dict[str, Any]:
    """``tasks/cancel``: cancel the job; the task (2025-11-25) or an acknowledgement."""
    record = _record(runner, None, params.get("taskId"))
    job = str(record.get("job"))
    if record.get("state") not in LIVE:
        if version == UTILITY_VERSION:
            status = task(record, version, runner.max_chars)["status"]
            raise TaskError(-32602, f"Cannot cancel task: already in terminal status "
                                    f"'{status}'")
        return {}
    try:
        reply = runner.daemon.call("llm.cancel", {"job": job}, timeout=QUICK_TIMEOUT)
    except RpcError as exc:
        raise TaskError(-32602 if exc.code == -32602 else -32603,
                        f"llmd: {exc.message}") from None
    except ClientError as exc:
        raise TaskError(-32603, f"llmd cannot be reached: {exc}") from None
    if version != UTILITY_VERSION:
        return {}
    shaped = task(_record(runner, None, job), version, runner.max_chars)
    if isinstance(reply, dict) and reply.get("cancelled") is True:
        # llmd has promised the job ends cancelled; its record may lag by a moment.
        shaped["status"] = "cancelled"
        shaped["statusMessage"] = "cancelled by tasks/cancel"
    return shaped


def update(runner: Runner, params: dict[str, Any]) -> dict[str, Any]:
    """``tasks/update`` (extension): llmd's tasks never ask for input; an acknowledgement
    for a known task."""
    _record(runner, None, params.get("taskId"))
    return {}
