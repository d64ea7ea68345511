"""The tools that ``llmc mcp`` lists: names, descriptions and JSON Schemas.

Invariants:
- Written for the model that reads them: what each tool is for, when to prefer another, and,
  in the ``blueprint`` parameter, what each of llmd's blueprints is for (the registry's
  ``description``), so the model can choose without a ``status`` call.
- :func:`tool_definitions` gives the newest protocol's shape; :func:`shape_tools` leaves out
  what an older negotiated version does not define.
- Input schemas keep to what the model APIs behind the clients accept (some pass them on
  nearly verbatim): one type per property, no ``anyOf``, no exclusive bounds.
- Every ``outputSchema`` here is met by the ``structuredContent`` that :mod:`llmc.mcp.tools`
  builds (clients such as the official SDK check it).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INSTRUCTIONS = (
    "llmd runs LLM command-line agents (such as claude, codex, gemini, llm) for you, each "
    "configured as a named blueprint. `run` sends one prompt to one blueprint and returns its "
    "answer when the agent has finished, which can take minutes. For work that may take longer "
    "than a minute or two, call `start` and later `result` with wait: true. The agents do not "
    "see this conversation: put everything they need into the prompt. `status` shows which "
    "blueprints are healthy.")

_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_NUM: dict[str, Any] = {"type": ["number", "null"]}
_NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}

# One shape for `run` and `result`: a job and, once it has succeeded, a page of its answer.
JOB_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job": {"type": "string", "description": "llmd's job id"},
        "blueprint": _NULLABLE_STR,
        "state": {"type": "string",
                  "description": "queued, running, retrying, succeeded, failed, timed_out, "
                                 "cancelled or interrupted"},
        "text": {"type": ["string", "null"],
                 "description": "the answer from `offset` on, at most one page; null until "
                                "the job has succeeded"},
        "offset": {"type": "integer"},
        "next_offset": {"type": ["integer", "null"],
                        "description": "where the next page starts (pass it to `result`); "
                                       "null when the text is complete"},
        "total_chars": _NULLABLE_INT,
        "note": _NULLABLE_STR,
        "exit_code": _NULLABLE_INT,
        "attempts": _NULLABLE_INT,
        "duration_s": _NULLABLE_NUM,
        "session": {"type": ["string", "null"],
                    "description": "the CLI's session id: pass it as `session` to continue "
                                   "the conversation"},
        "usage": {"type": ["object", "null"]},
        "cost_usd": _NULLABLE_NUM,
        "truncated": {"type": ["boolean", "null"],
                      "description": "llmd's output limit cut the CLI's output"},
        "json": {"description": "with json: true, the JSON value found in the answer"},
        "json_error": _NULLABLE_STR,
        "requested_blueprint": _NULLABLE_STR,
        "fallback_reason": _NULLABLE_STR,
        "created_at": _NULLABLE_STR,
        "started_at": _NULLABLE_STR,
        "finished_at": _NULLABLE_STR,
    },
    "required": ["job", "state"],
}

START_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"job": {"type": "string"}, "state": {"type": "string"},
                   "blueprint": _NULLABLE_STR},
    "required": ["job", "state"],
}

CANCEL_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"job": {"type": "string"}, "cancelled": {"type": "boolean"}},
    "required": ["job", "cancelled"],
}

STATUS_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "blueprints": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"}, "description": _NULLABLE_STR,
                "state": {"type": "string",
                          "description": "healthy, unhealthy, missing, cooling_down or "
                                         "unknown (not probed yet)"},
                "detail": _NULLABLE_STR, "version": _NULLABLE_STR,
                "checked_at": _NULLABLE_STR, "cooldown_until": _NULLABLE_STR,
                "timeout_s": _NULLABLE_NUM, "max_concurrency": _NULLABLE_INT,
            },
            "required": ["name", "state"]}},
        "daemon": {"type": "object"},
        "today": {"type": "object", "description": (
            "Runs that ended today (local time): runs, succeeded, failed, input_tokens, "
            "output_tokens, cost_usd (null when no cost is known), duration_s.")},
    },
    "required": ["blueprints"],
}


def blueprint_schema(blueprints: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The ``blueprint`` parameter: an enum of the registry's names, described for the model.

    Args:
        blueprints: ``blueprints.list``'s entries, or None when llmd could not be asked.

    Returns:
        A JSON Schema.
    """
    if blueprints is None:
        return {"type": "string", "minLength": 1, "description": (
            "The llmd blueprint to use: a configured LLM command-line agent such as claude, "
            "codex or gemini. llmd was not reachable when this list was made, so the names "
            "are unknown here; call `status` to list them.")}
    names = [bp["name"] for bp in blueprints if isinstance(bp.get("name"), str)]
    if not names:
        return {"type": "string", "minLength": 1,
                "description": "The llmd blueprint to use (llmd has none configured yet)."}
    lines = []
    for bp in blueprints:
        name = bp.get("name")
        if not isinstance(name, str):
            continue
        description = str(bp.get("description") or "").strip() or "(no description)"
        extras = [word for word, key in (("accepts `model`", "takes_model"),
                                         ("resumes `session`", "resumes_sessions"))
                  if bp.get(key) is True]
        timeout = bp.get("timeout_s")
        if isinstance(timeout, int | float):
            extras.append(f"default timeout {timeout:g} s")
        lines.append(f"- {name}: {description}" + (f" ({'; '.join(extras)})" if extras else ""))
    return {"type": "string", "enum": names,
            "description": "Which llmd blueprint (LLM command-line agent) answers:\n"
                           + "\n".join(lines)}


def _run_input_schema(blueprints: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "blueprint": blueprint_schema(blueprints),
            "prompt": {"type": "string", "description": (
                "The whole task for the agent. It does not see this conversation, so include "
                "every file name, fact and constraint it needs.")},
            "json": {"type": "boolean", "description": (
                "Also extract the JSON value from the answer into the result's `json` field "
                "(ask for JSON in the prompt).")},
            # One plain type: some clients pass the schema to model APIs that refuse `anyOf`
            # over types and `exclusiveMinimum`. A category name is accepted all the same.
            "timeout": {"type": "number", "description": (
                "The run's deadline in seconds (more than 0); a category name such as "
                "\"long\" is accepted too. Default: the blueprint's.")},
            "cwd": {"type": "string", "description": (
                "The directory the agent works in (absolute, or relative to where the MCP "
                "server was started). Default: where the MCP server was started.")},
            "model": {"type": "string",
                      "description": "The model to ask the CLI for, when the blueprint "
                                     "accepts one."},
            "session": {"type": "string", "description": (
                "Continue an earlier conversation: the `session` of a previous result.")},
        },
        "required": ["blueprint", "prompt"],
        "additionalProperties": False,
    }


def tool_definitions(blueprints: list[dict[str, Any]] | None,
                     max_chars: int) -> list[dict[str, Any]]:
    """The five tools, in the newest protocol's shape (see :func:`shape_tools`).

    Args:
        blueprints: ``blueprints.list``'s entries, or None when llmd is not reachable.
        max_chars: The answer size per result, for the descriptions.
    """
    run_schema = _run_input_schema(blueprints)
    return [
        {"name": "run", "title": "Run an LLM agent",
         "description": (
             "Send one prompt to an LLM command-line agent run by llmd and return its final "
             "answer. Blocks until the agent has finished (agents can work for minutes); for "
             "work that may take longer than a minute or two use `start` and `result`. "
             f"Answers over {max_chars} characters are cut: the result says how to read the "
             "rest with `result`. A failure (the CLI's error, a timeout, a rate limit) comes "
             "back as an error result that says what happened and what to do."),
         "inputSchema": run_schema, "outputSchema": JOB_OUTPUT_SCHEMA,
         "annotations": {"title": "Run an LLM agent", "readOnlyHint": False,
                         "destructiveHint": True, "idempotentHint": False,
                         "openWorldHint": True}},
        {"name": "start", "title": "Start an LLM agent in the background",
         "description": (
             "Start the same run as `run` as a background job and return its job id at once. "
             "The job goes on even if this conversation ends; collect the answer with "
             "`result` (wait: true to wait for it) or stop it with `cancel`."),
         "inputSchema": run_schema, "outputSchema": START_OUTPUT_SCHEMA,
         "annotations": {"title": "Start an LLM agent in the background",
                         "readOnlyHint": False, "destructiveHint": True,
                         "idempotentHint": False, "openWorldHint": True}},
        {"name": "result", "title": "Job state and answer",
         "description": (
             "A job's state and, once it has succeeded, its answer: one page of at most "
             f"{max_chars} characters from `offset`. With wait: true, waits until the job "
             "has ended (at most `timeout` seconds)."),
         "inputSchema": {
             "type": "object",
             "properties": {
                 "job": {"type": "string", "minLength": 1,
                         "description": "The job id (from `start`, or a cut `run` answer)."},
                 "wait": {"type": "boolean",
                          "description": "Wait until the job has ended before answering."},
                 "timeout": {"type": "number", "description": (
                     "With wait: give up waiting after this many seconds and report the "
                     "state then.")},
                 "offset": {"type": "integer", "minimum": 0, "description": (
                     "Where in the answer to start, in characters (the `next_offset` of the "
                     "previous page).")},
             },
             "required": ["job"], "additionalProperties": False},
         "outputSchema": JOB_OUTPUT_SCHEMA,
         "annotations": {"title": "Job state and answer", "readOnlyHint": True,
                         "openWorldHint": False}},
        {"name": "cancel", "title": "Cancel a job",
         "description": "Cancel a job: its processes are killed. Harmless when it has "
                        "already ended.",
         "inputSchema": {"type": "object",
                         "properties": {"job": {"type": "string", "minLength": 1,
                                                "description": "The job id."}},
                         "required": ["job"], "additionalProperties": False},
         "outputSchema": CANCEL_OUTPUT_SCHEMA,
         "annotations": {"title": "Cancel a job", "readOnlyHint": False,
                         "destructiveHint": True, "idempotentHint": True,
                         "openWorldHint": False}},
        {"name": "status", "title": "Blueprints and their health",
         "description": (
             "List llmd's blueprints with what each is for and its health (healthy, "
             "unhealthy, missing, cooling_down after a rate limit, unknown), and llmd's job "
             "counts. check: true probes the CLIs now instead of using the last check."),
         "inputSchema": {"type": "object",
                         "properties": {"check": {"type": "boolean", "description": (
                             "Probe every blueprint now (runs each CLI's cheap health "
                             "command).")}},
                         "additionalProperties": False},
         "outputSchema": STATUS_OUTPUT_SCHEMA,
         "annotations": {"title": "Blueprints and their health", "readOnlyHint": True,
                         "openWorldHint": False}},
    ]


TOOL_NAMES = frozenset({"run", "start", "result", "cancel", "status"})


def shape_tools(tools: list[dict[str, Any]], *, structured: bool, titles: bool,
                annotations: bool) -> list[dict[str, Any]]:
    """Drop what the negotiated protocol version does not know.

    Args:
        tools: From :func:`tool_definitions`.
        structured: ``outputSchema`` exists (2025-06-18 on).
        titles: ``title`` exists (2025-06-18 on).
        annotations: ``annotations`` exist (2025-03-26 on).
    """
    drop = {key for key, keep in (("outputSchema", structured), ("title", titles),
                                  ("annotations", annotations)) if not keep}
    if not drop:
        return tools
    return [{k: v for k, v in tool.items() if k not in drop} for tool in tools]
