"""``jobs.output``: the text a job has produced so far, by character offset.

Invariants:
- While a job runs, its output is the stdout text its attempt in flight has streamed so
  far (a retry starts it again): for a plain-text blueprint the attempt's kept stdout,
  which is that text, for a structured parser the text parsed from it. Once it has
  succeeded, its answer's text, which is the same text (docs/API.md, Streaming); once it
  has ended otherwise, the text its last attempt streamed while the job is in memory,
  else the partial output its error kept.
- Offsets count characters (code points) of that text; a page never holds more than the
  ``limit`` asked for, nor more than ``MAX_PAGE`` characters.
- Pure functions of a job or a record: no I/O here. A prompt leaves only as the first
  line `jobs.list` asks for, never into a log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmd.jobs.job import Job
from llmd.jobs.records import JobRecord
from llmd.jobs.state import FINAL_STATES, JobState

# A page large enough for any answer kept whole (16 MiB of output at most), small enough
# for one message.
MAX_PAGE = 4 << 20


def live(job: Job) -> str:
    """The output of a job in the daemon's memory."""
    if job.state == "succeeded" and job.result is not None:
        return job.result.text
    if job.live_text:
        # Joined once and kept joined: a follower polling by offset does not re-join
        # everything streamed so far on every call.
        text = "".join(job.live_text)
        job.live_text[:] = [text]
        return text
    if job.attempt is not None and (job.bp is None or job.bp.parser == "text"):
        # A plain-text attempt's kept stdout is its text (the manager keeps no copy).
        return job.attempt.stdout
    if job.state in FINAL_STATES and job.error is not None:
        return _error_output(job.error.to_wire())
    return ""


def stored(record: JobRecord) -> str:
    """The output of a job known only to the store."""
    if record.result is not None:
        return record.result.text
    return _error_output(record.error)


def _error_output(error: dict[str, Any] | None) -> str:
    data = error.get("data") if isinstance(error, dict) else None
    output = data.get("output") if isinstance(data, dict) else None
    return output if isinstance(output, str) else ""


def page(job: str, state: JobState, text: str, offset: int,
         limit: int | None) -> dict[str, Any]:
    """The ``jobs.output`` result for ``text`` from ``offset`` on."""
    size = min(limit or MAX_PAGE, MAX_PAGE)
    start = min(offset, len(text))
    chunk = text[start:start + size]
    return {"job": job, "state": state, "text": chunk, "offset": start,
            "next_offset": start + len(chunk), "total_chars": len(text),
            "done": state in FINAL_STATES and start + len(chunk) >= len(text)}


# Enough of a prompt's first line to recognise the job by.
PROMPT_LINE_CHARS = 200


def with_prompt_line(record: JobRecord, job: Job | None) -> dict[str, Any]:
    """A ``jobs.list`` entry with ``prompt_line``: the first line of the job's prompt when
    the daemon holds the job in memory (the prompt is not read back from the store)."""
    entry: dict[str, Any] = msgspec.to_builtins(record)
    line = None
    if job is not None:
        stripped = job.params.prompt.strip()
        line = stripped.splitlines()[0][:PROMPT_LINE_CHARS] if stripped else ""
    entry["prompt_line"] = line
    return entry
