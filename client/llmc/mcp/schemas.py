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

from llmc import exitcodes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The long-work tools' bounds and defaults, declared here and enforced by llmc.mcp.longwork.
MAX_FAN_OUT = 32
MAX_WAIT_JOBS = 64
DEFAULT_LIST = 20
MAX_LIST = 200
DEFAULT_TAIL = 2_000

INSTRUCTIONS = (
    "llmd runs LLM command-line agents (such as claude, codex, gemini, llm) for you, each "
    "configured as a named blueprint. `run` sends one prompt to one blueprint and returns its "
    "answer when the agent has finished, or, after about a minute (five with progress), the "
    "id of the job, which goes on: collect it with `result` and wait: true. To run several "
    "jobs in parallel (one prompt to several blueprints, or several prompts), call `start` "
    "and then `wait`; `jobs` lists recent jobs, `peek` shows a job's output so far. The "
    "agents do not see this conversation: put everything they need into the prompt. "
    "`status` shows which blueprints are healthy.")

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
        "elapsed_s": {"type": "number",
                      "description": "set when the job is still running after the longest "
                                     "wait of one call: seconds waited"},
    },
    "required": ["job", "state"],
}

START_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job": {"type": "string", "description": "the job id, when one job was started"},
        "state": {"type": "string"}, "blueprint": _NULLABLE_STR,
        "jobs": {"type": "array", "items": {
            "type": "object",
            "properties": {"index": {"type": "integer"}, "job": _NULLABLE_STR,
                           "blueprint": {"type": "string"},
                           "state": {"type": "string",
                                     "description": "queued or running; refused when it "
                                                    "could not start (see error)"},
                           "error": _NULLABLE_STR},
            "required": ["index", "job", "blueprint", "state"]}},
    },
    "required": ["jobs"],
}

WAIT_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "jobs": {"type": "array", "items": {
            "type": "object",
            "properties": {"job": {"type": "string"}, "state": {"type": "string"},
                           "blueprint": _NULLABLE_STR,
                           "text": {"type": ["string", "null"],
                                    "description": "the answer (its first page) once the "
                                                   "job has succeeded"},
                           "next_offset": {"type": ["integer", "null"], "description": (
                               "where the rest of a cut answer starts (`result` with "
                               "`offset`)")},
                           "error": _NULLABLE_STR},
            "required": ["job", "state"]}},
        "mode": {"type": "string"},
        "complete": {"type": "boolean",
                     "description": "false when the wait ended before its condition"},
    },
    "required": ["jobs", "mode", "complete"],
}

JOBS_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"jobs": {"type": "array", "items": {
        "type": "object",
        "properties": {"job": {"type": "string"}, "state": {"type": "string"},
                       "blueprint": {"type": "string"},
                       "prompt": {"type": ["string", "null"],
                                  "description": "the first line of its prompt, when llmd "
                                                 "still holds it"},
                       "created_at": _NULLABLE_STR, "finished_at": _NULLABLE_STR},
        "required": ["job", "state", "blueprint"]}}},
    "required": ["jobs"],
}

PEEK_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"job": {"type": "string"}, "state": {"type": "string"},
                   "text": {"type": "string"}, "offset": {"type": "integer"},
                   "total_chars": {"type": "integer"}},
    "required": ["job", "state", "text"],
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
            "isolate": {"type": "string", "enum": ["none", "worktree"], "description": (
                "\"worktree\": work in a git worktree of its own (cwd must be in a git "
                "repository); its changes come back as a diff to apply or discard.")},
            "base": {"type": "string", "description": (
                "With a worktree: start from \"head\" (default), \"working-tree\" (the "
                "uncommitted changes too) or a ref.")},
            "edit": {"type": "boolean", "description": (
                "With a worktree: let the agent edit files without asking.")},
        },
        "required": ["blueprint", "prompt"],
        "additionalProperties": False,
    }


def _start_input_schema(blueprints: list[dict[str, Any]] | None) -> dict[str, Any]:
    schema = _run_input_schema(blueprints)
    names = schema["properties"]["blueprint"]
    item = {key: value for key, value in names.items() if key != "description"}
    schema["properties"] = {
        **schema["properties"],
        "blueprints": {"type": "array", "items": item, "minItems": 1,
                       "maxItems": MAX_FAN_OUT,
                       "description": "Instead of `blueprint`: send the same prompt to each "
                                      "of these blueprints (a job each), to compare them."},
        "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                    "maxItems": MAX_FAN_OUT,
                    "description": "Instead of `prompt`: send each of these prompts to the "
                                   "blueprint (a job each), for independent tasks in "
                                   "parallel."}}
    schema["required"] = []
    return schema


def tool_definitions(blueprints: list[dict[str, Any]] | None,
                     max_chars: int) -> list[dict[str, Any]]:
    """The tools, in the newest protocol's shape (see :func:`shape_tools`).

    Args:
        blueprints: ``blueprints.list``'s entries, or None when llmd is not reachable.
        max_chars: The answer size per result, for the descriptions.
    """
    run_schema = _run_input_schema(blueprints)
    return [
        {"name": "run", "title": "Run an LLM agent",
         "description": (
             "Send one prompt to an LLM command-line agent run by llmd and return its final "
             "answer. Waits for the agent (agents can work for minutes), but at most about a "
             "minute (five with progress): a job still running then is left running and "
             "its id returned, to collect with `result` (wait: true). For several jobs at "
             "once use `start` and `wait`. "
             f"Answers over {max_chars} characters are cut: the result says how to read the "
             "rest with `result`. A failure (the CLI's error, a timeout, a rate limit) comes "
             "back as an error result that says what happened and what to do."),
         "inputSchema": run_schema, "outputSchema": JOB_OUTPUT_SCHEMA,
         "execution": {"taskSupport": "optional"},
         "annotations": {"title": "Run an LLM agent", "readOnlyHint": False,
                         "destructiveHint": True, "idempotentHint": False,
                         "openWorldHint": True}},
        {"name": "start", "title": "Start LLM agents in the background",
         "description": (
             "Start the same run as `run` as a background job and return its job id at once; "
             "with `blueprints`, the same prompt goes to each blueprint, with `prompts`, "
             "each prompt to the one blueprint (a job each, run in parallel). Give "
             "`blueprint` or `blueprints`, and `prompt` or `prompts`. The jobs go on even if "
             "this conversation ends; collect the answers with `wait` or `result`, see "
             "progress with `peek`, stop one with `cancel`."),
         "inputSchema": _start_input_schema(blueprints), "outputSchema": START_OUTPUT_SCHEMA,
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
        {"name": "wait", "title": "Wait for jobs",
         "description": (
             "Wait until all (mode \"all\", the default) or any (mode \"any\") of the given "
             "jobs have ended, and return each job's state and, for the finished ones, the "
             "answer or the error. Waits at most `timeout` seconds and never longer than one "
             "call may last (about a minute, or five with progress); if `complete` is false, "
             "call it again."),
         "inputSchema": {
             "type": "object",
             "properties": {
                 "jobs": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                          "maxItems": MAX_WAIT_JOBS,
                          "description": "The job ids (from `start`)."},
                 "mode": {"type": "string", "enum": ["all", "any"],
                          "description": "all: until every job has ended; any: until one "
                                         "has. Default all."},
                 "timeout": {"type": "number", "minimum": 0,
                             "description": "Seconds to wait at most."}},
             "required": ["jobs"], "additionalProperties": False},
         "outputSchema": WAIT_OUTPUT_SCHEMA,
         "annotations": {"title": "Wait for jobs", "readOnlyHint": True,
                         "openWorldHint": False}},
        {"name": "jobs", "title": "Recent jobs",
         "description": (
             "List llmd's recent jobs, newest first, with their state, blueprint and the "
             "first line of their prompt: to find a job started earlier (by any client)."),
         "inputSchema": {
             "type": "object",
             "properties": {
                 "state": {"type": "string", "enum": list(exitcodes.JOB_STATES),
                           "description": "Only jobs in this state."},
                 "blueprint": {"type": "string", "description": "Only this blueprint's."},
                 "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIST,
                           "description": f"At most this many ({DEFAULT_LIST})."}},
             "additionalProperties": False},
         "outputSchema": JOBS_OUTPUT_SCHEMA,
         "annotations": {"title": "Recent jobs", "readOnlyHint": True,
                         "openWorldHint": False}},
        {"name": "peek", "title": "A job's latest output",
         "description": (
             "The latest output of a job (the end of what it has printed so far): to see "
             "how a running job is getting on without waiting for it."),
         "inputSchema": {
             "type": "object",
             "properties": {
                 "job": {"type": "string", "minLength": 1, "description": "The job id."},
                 "tail_chars": {"type": "integer", "minimum": 1,
                                "description": "How many of the last characters "
                                               f"({DEFAULT_TAIL})."}},
             "required": ["job"], "additionalProperties": False},
         "outputSchema": PEEK_OUTPUT_SCHEMA,
         "annotations": {"title": "A job's latest output", "readOnlyHint": True,
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


# The tools a 2025-11-25 client may call as a task (the others answer at once).
TASK_TOOLS = frozenset({"run"})


def shape_tools(tools: list[dict[str, Any]], *, structured: bool, titles: bool,
                annotations: bool, tasks: bool = False) -> list[dict[str, Any]]:
    """Drop what the negotiated protocol version does not know.

    Args:
        tools: From :func:`tool_definitions`.
        structured: ``outputSchema`` exists (2025-06-18 on).
        titles: ``title`` exists (2025-06-18 on).
        annotations: ``annotations`` exist (2025-03-26 on).
        tasks: ``execution.taskSupport`` exists (2025-11-25 alone: 2026-07-28 moved tasks
            to an extension whose server decides per call).
    """
    drop = {key for key, keep in (("outputSchema", structured), ("title", titles),
                                  ("annotations", annotations), ("execution", tasks))
            if not keep}
    if not drop:
        return tools
    return [{k: v for k, v in tool.items() if k not in drop} for tool in tools]
