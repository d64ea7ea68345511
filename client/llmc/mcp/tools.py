"""The tools of ``llmc mcp``: argument checks, and results built from llmd's replies.

The schemas are in :mod:`llmc.mcp.schemas`, the calls to llmd in :mod:`llmc.mcp.calls`.

Invariants:
- Pure functions of their inputs (arguments, a daemon reply, the size limit): no sockets,
  threads or clocks, so the I/O stays in :mod:`llmc.mcp.server` and :mod:`llmc.mcp.calls`.
- A tool's outcome is always an MCP ``CallToolResult`` object. Whatever the model can act on
  (a CLI that failed, an unknown blueprint, llmd not running, bad arguments) is a result with
  ``isError: true`` whose one text block tells the whole story, because Claude Code shows
  the model only the text of an error result.
- A successful result carries the answer inside ``structuredContent`` as well as in its text,
  because Claude Code hands the model only ``JSON.stringify(structuredContent)`` when there
  is one; ``structuredContent`` always conforms to the tool's ``outputSchema``.
- At most ``max_chars`` characters of answer go into one result (Claude Code caps a tool
  result at about 25k tokens); the rest is read with ``result`` and ``offset``, and the
  note saying so names the job and the offset.
"""

from __future__ import annotations

import json
import os

from llmc import exitcodes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_MAX_CHARS = 20_000
# The least that --max-chars accepts: a page must hold more than its own note.
MIN_MAX_CHARS = 200
# How much of a failed CLI's stderr or partial output an error result quotes.
TAIL_CHARS = 2_000
# As llmd names them (API.md, "Job record").
FINAL_STATES = frozenset(exitcodes.FINAL_STATES)
ALL_STATES = frozenset(exitcodes.JOB_STATES)
START_LLMD = ("start it in a terminal with `llmd serve`, or once for good with `llmd "
              "install-service && systemctl --user enable --now llmd.socket` (systemd then "
              "starts llmd on the first call)")


class ArgumentError(ValueError):
    """A tool's arguments are unusable; ``str()`` tells the model how to fix them."""


# -- arguments ---------------------------------------------------------------------------------

def _check_keys(arguments: dict[str, Any], allowed: tuple[str, ...], tool: str) -> None:
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ArgumentError(f"`{tool}` takes no argument {', '.join(map(repr, unknown))}; "
                            f"its arguments are: {', '.join(allowed)}")


def _string(arguments: dict[str, Any], key: str, *, required: bool = False,
            empty: bool = False) -> str | None:
    value = arguments.get(key)
    if value is None:
        if required:
            raise ArgumentError(f"`{key}` is required")
        return None
    if not isinstance(value, str):
        raise ArgumentError(f"`{key}` must be a string, not {_json_type(value)}")
    if not empty and not value.strip():
        raise ArgumentError(f"`{key}` must not be empty")
    return value


def _boolean(arguments: dict[str, Any], key: str) -> bool:
    value = arguments.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ArgumentError(f"`{key}` must be true or false, not {_json_type(value)}")
    return value


def _seconds(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise ArgumentError(f"`{key}` must be a positive number of seconds")
    return float(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


RUN_ARGUMENTS = ("blueprint", "prompt", "json", "timeout", "cwd", "model", "session",
                 "isolate", "base", "edit")


def run_params(arguments: dict[str, Any], default_cwd: str | None, tool: str = "run"
               ) -> dict[str, Any]:
    """The ``llm.run`` parameters for a ``run`` or ``start`` call.

    Args:
        arguments: The tool call's arguments.
        default_cwd: The directory the bridge was started in (None if it is gone).
        tool: The tool's name, for messages.

    Raises:
        ArgumentError: A missing, unknown or mistyped argument.
    """
    _check_keys(arguments, RUN_ARGUMENTS, tool)
    blueprint = _string(arguments, "blueprint", required=True)
    prompt = _string(arguments, "prompt", required=True, empty=True)
    params: dict[str, Any] = {"blueprint": blueprint, "prompt": prompt}
    if _boolean(arguments, "json"):
        params["json"] = True
    timeout = arguments.get("timeout")
    if timeout is not None:
        if isinstance(timeout, str):
            if not timeout.strip():
                raise ArgumentError("`timeout` must be seconds or a category name")
            # A model may write seconds as a string ("120"); llmd wants a number for those.
            try:
                params["timeout"] = _seconds(float(timeout), "timeout")
            except ValueError:
                params["timeout"] = timeout.strip()
        else:
            params["timeout"] = _seconds(timeout, "timeout")
    cwd = _string(arguments, "cwd")
    if cwd is not None:
        cwd = os.path.expanduser(cwd)
        if not os.path.isabs(cwd):
            if default_cwd is None:
                raise ArgumentError("`cwd` must be an absolute path")
            cwd = os.path.join(default_cwd, cwd)
        params["cwd"] = os.path.normpath(cwd)
    elif default_cwd is not None:
        params["cwd"] = default_cwd
    for key in ("model", "session", "isolate", "base"):
        value = _string(arguments, key)
        if value is not None:
            params[key] = value
    if _boolean(arguments, "edit"):
        params["edit"] = True
    return params


def job_params(arguments: dict[str, Any], tool: str,
               allowed: tuple[str, ...] = ("job",)) -> str:
    """The ``job`` argument of ``result`` and ``cancel`` (after checking the others' names)."""
    _check_keys(arguments, allowed, tool)
    return (_string(arguments, "job", required=True) or "").strip()


def result_options(arguments: dict[str, Any]) -> tuple[bool, float | None, int]:
    """``result``'s ``wait``, ``timeout`` and ``offset``.

    Raises:
        ArgumentError: A mistyped value.
    """
    wait = _boolean(arguments, "wait")
    timeout = arguments.get("timeout")
    limit = None if timeout is None else _seconds(timeout, "timeout")
    offset = arguments.get("offset", 0)
    if offset is None:
        offset = 0
    if isinstance(offset, float) and offset.is_integer():
        offset = int(offset)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ArgumentError("`offset` must be a whole number of characters, 0 or more")
    return wait, limit, offset


def status_options(arguments: dict[str, Any]) -> bool:
    """``status``'s ``check``."""
    _check_keys(arguments, ("check",), "status")
    return _boolean(arguments, "check")


# -- results -----------------------------------------------------------------------------------

def text_block(text: str) -> dict[str, Any]:
    """An MCP text content block."""
    return {"type": "text", "text": text}


def error_result(message: str) -> dict[str, Any]:
    """A tool result that tells the model what went wrong."""
    return {"content": [text_block(message)], "isError": True}


def _page(text: str, offset: int, max_chars: int) -> tuple[str, int | None]:
    end = offset + max_chars
    if end >= len(text):
        return text[offset:], None
    # End the page at a line break when one is near, so no line is split in two.
    cut = text.rfind("\n", offset + max_chars * 9 // 10, end)
    end = cut + 1 if cut >= 0 else end
    return text[offset:end], end


def _outcome_fields(result: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, kinds in (("exit_code", (int,)), ("attempts", (int,)),
                       ("duration_s", (int, float)), ("session", (str,)), ("usage", (dict,)),
                       ("cost_usd", (int, float)), ("truncated", (bool,)),
                       ("json_error", (str,)), ("requested_blueprint", (str,)),
                       ("fallback_reason", (str,))):
        value = result.get(key)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        fields[key] = value if ok else None
    fields["json"] = result.get("json")
    return fields


def answer_result(result: dict[str, Any], max_chars: int, offset: int = 0,
                  record: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tool result for a succeeded run: one page of its answer, and its facts.

    Args:
        result: A run result (API.md).
        max_chars: The page size.
        offset: Where the page starts.
        record: The job record it came from (``result``), for its timestamps.
    """
    job = str(result.get("job") or (record or {}).get("job") or "")
    text = result.get("text")
    text = text if isinstance(text, str) else ""
    page, next_offset = _page(text, min(offset, len(text)), max_chars)
    structured: dict[str, Any] = {
        "job": job, "blueprint": result.get("blueprint") if isinstance(
            result.get("blueprint"), str) else None,
        "state": str(result.get("state") or "succeeded"),
        "text": page, "offset": offset, "next_offset": next_offset,
        "total_chars": len(text), **_outcome_fields(result)}
    if record is not None:
        for key in ("created_at", "started_at", "finished_at"):
            value = record.get(key)
            structured[key] = value if isinstance(value, str) else None
    notes = []
    if offset > len(text):
        notes.append(f"offset {offset} is past the end: the answer has {len(text)} characters.")
    elif next_offset is not None:
        notes.append(f"The answer was cut at character {next_offset} of {len(text)}: call "
                     f"`result` with job \"{job}\" and offset {next_offset} for the rest.")
    if structured["truncated"]:
        notes.append("llmd's output limit cut the CLI's output, so the answer may be "
                     "incomplete.")
    found = result.get("json")
    if found is not None and len(json.dumps(found, ensure_ascii=False)) > max_chars:
        structured["json"] = None
        notes.append("The JSON value is too large for one result; it is in the answer text.")
    if isinstance(structured["json_error"], str):
        notes.append(f"No JSON in the answer: {structured['json_error']}.")
    structured["note"] = " ".join(notes) or None
    content = [text_block(page)] if page else []
    facts = [f"llmd job {job}"]
    if structured["blueprint"]:
        facts.append(f"blueprint {structured['blueprint']}")
    if isinstance(structured["duration_s"], int | float):
        facts.append(_duration(structured["duration_s"]))
    if isinstance(structured["session"], str):
        facts.append(f"session {structured['session']}")
    empty = "" if page or offset else " The answer is empty."
    content.append(text_block(f"[{', '.join(facts)}]{empty}"
                              + (f" {structured['note']}" if structured["note"] else "")))
    return {"content": content, "structuredContent": _compact(structured)}


def _compact(structured: dict[str, Any]) -> dict[str, Any]:
    # Claude Code shows the model this object as JSON: unknown facts are left out rather than
    # spelt null, except where null says something (no answer yet; no further page).
    return {key: value for key, value in structured.items()
            if value is not None or key in ("text", "next_offset")}


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def job_result(record: dict[str, Any], max_chars: int, offset: int,
               waited: float | None) -> dict[str, Any]:
    """The result of ``result``: the job's state, its answer page, or its failure.

    Args:
        record: A job record (API.md).
        max_chars: The page size.
        offset: Where the page starts.
        waited: The seconds waited without the job ending, or None if it did not wait.
    """
    job = str(record.get("job") or "")
    state = str(record.get("state") or "unknown")
    result = record.get("result")
    if state == "succeeded" and isinstance(result, dict):
        return answer_result(result, max_chars, offset, record)
    error = record.get("error")
    if state in FINAL_STATES:
        if isinstance(error, dict):
            data = error.get("data")
            return rpc_error_result(
                int(error.get("code") or -32603), str(error.get("message") or state),
                {**(data if isinstance(data, dict) else {}), "job": job})
        return error_result(f"llmd job {job} ended {state.replace('_', ' ')} without an answer.")
    blueprint = record.get("blueprint")
    attempts = record.get("attempts")
    structured: dict[str, Any] = {
        "job": job, "blueprint": blueprint if isinstance(blueprint, str) else None,
        "state": state, "text": None, "offset": offset, "next_offset": None,
        "total_chars": None, "attempts": attempts if isinstance(attempts, int)
        and not isinstance(attempts, bool) else None}
    for key in ("created_at", "started_at", "finished_at"):
        value = record.get(key)
        structured[key] = value if isinstance(value, str) else None
    still = f" still {state} after waiting {waited:g} s" if waited is not None else f" {state}"
    structured["note"] = (f"llmd job {job} is{still}. Call `result` again (wait: true to wait "
                          "for it), or `cancel` to stop it.")
    return {"content": [text_block(structured["note"])],
            "structuredContent": _compact(structured)}


def still_running_result(record: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The result of a ``run`` that waited as long as it may: the job goes on; its handle.

    Args:
        record: The job's record (not ended).
        elapsed: Seconds the call waited.
    """
    job = str(record.get("job") or "")
    state = str(record.get("state") or "running")
    structured = {"job": job, "state": state, "elapsed_s": round(elapsed, 1)}
    text = (f"llmd job {job} is still {state} after {elapsed:.0f} s; it goes on in the "
            f"background. Call `result` with job \"{job}\" and wait: true to wait for its "
            "answer (call it again if it is still running then), `peek` to see its output so "
            "far, or `cancel` to stop it.")
    return {"content": [text_block(text)], "structuredContent": structured}


def fan_out_result(started: list[dict[str, Any]]) -> dict[str, Any]:
    """The result of ``start``: each job started (or refused), in the order asked."""
    lines = []
    for entry in started:
        if entry["job"]:
            lines.append(f"- llmd job {entry['job']} ({entry['blueprint']}, {entry['state']})")
        else:
            lines.append(f"- {entry['blueprint']}: not started: {entry['error']}")
    ids = [entry["job"] for entry in started if entry["job"]]
    if len(started) == 1 and ids:
        head = f"Started llmd job {ids[0]} ({started[0]['state']})."
    else:
        head = f"Started {len(ids)} of {len(started)} llmd jobs:"
    advice = ("Call `wait` with these job ids (mode \"all\" or \"any\") or `result` with wait: "
              "true to get the answers; `peek` shows a job's output so far; `cancel` stops one."
              if ids else "Nothing was started.")
    body = [head] if len(started) == 1 and ids else [head, *lines]
    structured: dict[str, Any] = {"jobs": started}
    if len(started) == 1 and ids:
        structured.update(job=ids[0], state=started[0]["state"],
                          blueprint=started[0]["blueprint"])
    return {"content": [text_block("\n".join([*body, advice]))],
            "structuredContent": structured, **({} if ids else {"isError": True})}


def wait_result(records: list[dict[str, Any]], mode: str, complete: bool,
                max_chars: int) -> dict[str, Any]:
    """The result of ``wait``: each job's state and, once ended, its answer or error.

    Args:
        records: The jobs' records, in the order asked.
        mode: ``any`` or ``all``.
        complete: Whether the wait's condition was met (else the time ran out).
        max_chars: The characters of answers all jobs share.
    """
    share = max(max_chars // max(len(records), 1), MIN_MAX_CHARS // 2)
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for record in records:
        job = str(record.get("job") or "")
        state = str(record.get("state") or "unknown")
        row: dict[str, Any] = {"job": job, "state": state,
                               "blueprint": record.get("blueprint")
                               if isinstance(record.get("blueprint"), str) else None,
                               "text": None, "next_offset": None, "error": None}
        result = record.get("result")
        error = record.get("error")
        if state == "succeeded" and isinstance(result, dict):
            text = result.get("text") if isinstance(result.get("text"), str) else ""
            page, next_offset = _page(str(text), 0, share)
            row.update(text=page, next_offset=next_offset)
            lines.append(f"## llmd job {job} ({row['blueprint']}): succeeded\n{page}"
                         + (f"\n[cut at character {next_offset} of {len(str(text))}: call "
                            f"`result` with job \"{job}\" and offset {next_offset} for the "
                            "rest]" if next_offset is not None else ""))
        elif isinstance(error, dict):
            row["error"] = f"{error.get('message')} ({error.get('code')})"
            lines.append(f"## llmd job {job} ({row['blueprint']}): {state}: {row['error']}")
        else:
            lines.append(f"## llmd job {job} ({row['blueprint']}): {state}")
        rows.append(row)
    ended = sum(1 for row in rows if row["state"] in FINAL_STATES)
    head = (f"{ended} of {len(rows)} jobs have ended" + ("." if complete else
            f"; the wait for {mode} ended first. Call `wait` again to wait longer."))
    return {"content": [text_block("\n\n".join([head, *lines]))],
            "structuredContent": {"jobs": rows, "mode": mode, "complete": complete}}


def jobs_result(records: list[dict[str, Any]], prompt_chars: int) -> dict[str, Any]:
    """The result of ``jobs``: recent jobs with their prompt's first line."""
    rows = []
    lines = []
    for record in records:
        prompt = record.get("prompt_line")
        line = prompt[:prompt_chars] if isinstance(prompt, str) else None
        row = {"job": str(record.get("job") or ""), "state": str(record.get("state") or ""),
               "blueprint": str(record.get("blueprint") or ""), "prompt": line,
               "created_at": record.get("created_at")
               if isinstance(record.get("created_at"), str) else None,
               "finished_at": record.get("finished_at")
               if isinstance(record.get("finished_at"), str) else None}
        rows.append(row)
        lines.append(f"- {row['job']} {row['blueprint']} {row['state']}"
                     + (f": {line}" if line else ""))
    text = "\n".join(lines) if lines else "No jobs."
    return {"content": [text_block(text)], "structuredContent": {"jobs": rows}}


def peek_result(page: dict[str, Any]) -> dict[str, Any]:
    """The result of ``peek``: the end of a job's output so far."""
    job = str(page.get("job") or "")
    state = str(page.get("state") or "unknown")
    text = page.get("text") if isinstance(page.get("text"), str) else ""
    total = page.get("total_chars") if isinstance(page.get("total_chars"), int) else 0
    offset = page.get("offset") if isinstance(page.get("offset"), int) else 0
    structured = {"job": job, "state": state, "text": text, "offset": offset,
                  "total_chars": total}
    head = (f"[llmd job {job}, {state}: characters {offset} to {total} of its output"
            + (" so far]" if state not in FINAL_STATES else "]"))
    return {"content": [text_block(head), *([text_block(str(text))] if text else [])],
            "structuredContent": structured}


def cancel_result(reply: dict[str, Any], job: str) -> dict[str, Any]:
    """The result of ``cancel``."""
    cancelled = reply.get("cancelled") is True
    text = (f"Cancelled llmd job {job}; its processes are being killed." if cancelled
            else f"llmd job {job} had already ended; nothing to cancel.")
    return {"content": [text_block(text)],
            "structuredContent": {"job": str(reply.get("job") or job), "cancelled": cancelled}}


def status_result(blueprints: list[dict[str, Any]], health: dict[str, Any],
                  info: dict[str, Any] | None,
                  today: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result of ``status``: every blueprint with its health, the daemon's counts and
    today's totals (``usage.summary``'s ``total`` since local midnight)."""
    rows = []
    lines = []
    if info is not None:
        counts = info.get("jobs")
        jobs: dict[str, Any] = counts if isinstance(counts, dict) else {}
        lines.append(f"llmd {info.get('version', '?')} (pid {info.get('pid', '?')}); jobs: "
                     f"{jobs.get('running', 0)} running, {jobs.get('queued', 0)} queued.")
    for bp in blueprints:
        name = bp.get("name")
        if not isinstance(name, str):
            continue
        found = health.get(name)
        facts: dict[str, Any] = found if isinstance(found, dict) else {}
        row: dict[str, Any] = {"name": name,
                               "description": str(bp.get("description") or "") or None,
                               "state": str(facts.get("state") or "unknown")}
        for key in ("detail", "version", "checked_at", "cooldown_until"):
            value = facts.get(key)
            row[key] = value if isinstance(value, str) else None
        timeout = bp.get("timeout_s")
        row["timeout_s"] = timeout if isinstance(timeout, int | float) and not isinstance(
            timeout, bool) else None
        limit = bp.get("max_concurrency")
        row["max_concurrency"] = limit if isinstance(limit, int) and not isinstance(
            limit, bool) else None
        rows.append(row)
        extra = [row["version"]] if row["version"] else []
        if row["detail"]:
            extra.append(row["detail"])
        if row["cooldown_until"]:
            extra.append(f"until {row['cooldown_until']}")
        head = f"- {name}: {row['state']}" + (f" ({'; '.join(extra)})" if extra else "")
        lines.append(head + (f". {row['description']}" if row["description"] else ""))
    if not rows:
        lines.append("No blueprints are configured in llmd's registry.")
    structured: dict[str, Any] = {"blueprints": rows}
    if info is not None:
        structured["daemon"] = info
    if today is not None:
        cost = today.get("cost_usd")
        runs = today.get("runs", 0)
        lines.append(f"Today: {runs} run{'' if runs == 1 else 's'} "
                     f"({today.get('failed', 0)} failed), "
                     f"{today.get('input_tokens', 0)} tokens in, "
                     f"{today.get('output_tokens', 0)} out, "
                     + (f"${cost:.2f} known cost." if isinstance(cost, int | float)
                        else "cost unknown."))
        structured["today"] = today
    return {"content": [text_block("\n".join(lines))], "structuredContent": structured}


# -- failures ----------------------------------------------------------------------------------

_ADVICE = {
    -32001: "Use one of the blueprints listed in the `blueprint` parameter, or call `status`.",
    -32002: "The CLI is not installed where llmd looks (llmd's PATH). Install it, fix the "
            "blueprint's command in llmd's registry, or use another blueprint.",
    -32003: "Give a larger `timeout` (seconds, or a category such as long), split the task, "
            "or use `start` and `result` for long work.",
    -32004: "The provider is rate limiting. Wait before retrying, or use another blueprint.",
    -32005: "Read the CLI's error above: fix the prompt or the options, or use another "
            "blueprint. Retrying the same call usually fails the same way.",
    -32006: "llmd's queue is full. Retry in a little while.",
    -32007: "Check the job id: it is the `job` of a `start` or `run` result.",
    -32008: "llmd's registry file is invalid; fix it (`llmd check-config` shows where). "
            "llmd keeps serving the last valid registry meanwhile.",
    -32009: "A spending budget is used up until `resets_at`. Use a blueprint with budget "
            "left, or wait; ask the user before raising the budget.",
    -32800: "The job was cancelled (by `cancel`, another client, or llmd stopping). Run it "
            "again if it is still wanted.",
    -32802: "The job was cancelled (by `cancel`, another client, or llmd stopping). Run it "
            "again if it is still wanted.",
    -32602: "Fix the arguments and call again.",
}


def _tail(text: str) -> str:
    text = text.strip("\n")
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


def rpc_error_result(code: int, message: str, data: dict[str, Any]) -> dict[str, Any]:
    """An error result for one of llmd's JSON-RPC errors: what, where, and what to do."""
    lines = [f"llmd: {message}"]
    facts = []
    job = data.get("job")
    if isinstance(job, str):
        facts.append(f"job {job}")
    for key, label in (("state", "state"), ("attempts", "attempts"),
                       ("exit_code", "exit status"), ("duration_s", "after")):
        value = data.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            facts.append(f"{label} {value:g} s" if key == "duration_s"
                         and isinstance(value, int | float) else f"{label} {value}")
    retry_after = data.get("retry_after_s")
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        facts.append(f"retry after {retry_after:g} s")
    if facts:
        lines.append(f"({'; '.join(facts)})")
    stderr = data.get("stderr")
    if isinstance(stderr, str) and stderr.strip():
        lines.append("The CLI's stderr (end):\n" + _tail(stderr))
    output = data.get("output")
    if code in (-32003, -32800, -32802) and isinstance(output, str) and output.strip():
        lines.append("Its output so far (end):\n" + _tail(output))
    advice = _ADVICE.get(code)
    if advice:
        lines.append(advice)
    return error_result("\n".join(lines))


def unavailable_result(message: str, reason: str) -> dict[str, Any]:
    """An error result for a daemon that cannot be reached, saying how to start it.

    Args:
        message: The connection error's message.
        reason: :class:`llmc.connection.DaemonUnavailable`'s ``reason``.
    """
    if reason in ("missing", "refused"):
        # The client's message ends with its own short hint; this one is fuller.
        head = message.split("; start it", 1)[0]
        return error_result(f"{head}. The user needs to {START_LLMD}. Then call this "
                            "tool again.")
    return error_result(f"{message}. Check that llmd runs for this user (`llmc info` in a "
                        "terminal).")
