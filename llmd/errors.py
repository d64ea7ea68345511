"""The error family: every failure a client can see, with its JSON-RPC code.

Invariants:
- Each class carries its wire ``code``; ``data`` holds only what is known and JSON-safe.
- Messages are written for the person reading them: what failed and what to do.
- Nothing here formats tracebacks; internal errors never reach the wire with one.
"""

from __future__ import annotations

from typing import Any, ClassVar

# JSON-RPC 2.0 specification codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# llmd codes (API.md).
UNKNOWN_BLUEPRINT = -32001
EXECUTABLE_MISSING = -32002
TIMED_OUT = -32003
RATE_LIMITED = -32004
CLI_FAILED = -32005
BUSY = -32006
NO_SUCH_JOB = -32007
INVALID_CONFIG = -32008
BUDGET_EXHAUSTED = -32009
APPLY_CONFLICT = -32010
CANCELLED = -32800
# LSP's ServerCancelled: cancelled by something other than the request's own client.
SERVER_CANCELLED = -32802


class LlmdError(Exception):
    """Base of every error that is answered on the wire.

    Args:
        message: One line for the person reading it.
        data: Extra JSON-safe facts (``job``, ``blueprint``, ``stderr``...).
    """

    code: ClassVar[int] = INTERNAL_ERROR

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = dict(data) if data else {}

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-RPC ``error`` object."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            error["data"] = self.data
        return error


class ParseError(LlmdError):
    """The bytes were not JSON."""

    code = PARSE_ERROR


class InvalidRequest(LlmdError):
    """Valid JSON that is not a JSON-RPC 2.0 request (or too large)."""

    code = INVALID_REQUEST


class MethodNotFound(LlmdError):
    """No such method."""

    code = METHOD_NOT_FOUND


class InvalidParams(LlmdError):
    """Parameters of the wrong shape or value."""

    code = INVALID_PARAMS


class InternalError(LlmdError):
    """A bug in llmd; the details go to the log, not to the client."""

    code = INTERNAL_ERROR


class UnknownBlueprint(LlmdError):
    """The request named a blueprint that the registry does not have."""

    code = UNKNOWN_BLUEPRINT


class ExecutableMissing(LlmdError):
    """The blueprint's program is not installed or not executable."""

    code = EXECUTABLE_MISSING


class TimedOut(LlmdError):
    """The run's deadline passed; its process group was killed."""

    code = TIMED_OUT


class RateLimited(LlmdError):
    """The CLI reported a rate limit and the retries are spent (or it is cooling down)."""

    code = RATE_LIMITED


class CliFailed(LlmdError):
    """The CLI exited non-zero or its own output reports an error."""

    code = CLI_FAILED


class Busy(LlmdError):
    """The queue is full."""

    code = BUSY


class NoSuchJob(LlmdError):
    """No job has that id."""

    code = NO_SUCH_JOB


class ConfigError(LlmdError):
    """The registry file is invalid.

    Args:
        problems: Every problem found, each ``"dotted.path: what is wrong"``.
        source: Where the configuration came from, for the message.
    """

    code = INVALID_CONFIG

    def __init__(self, problems: list[str], source: str = "") -> None:
        where = f" in {source}" if source else ""
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''}{where}"
        super().__init__(f"invalid configuration ({head}): " + "; ".join(problems),
                         {"problems": problems, "source": source})
        self.problems = problems
        self.source = source


class BudgetExhausted(LlmdError):
    """A run would start past a budget's hard limit (API.md -32009)."""

    code = BUDGET_EXHAUSTED


class Cancelled(LlmdError):
    """The run was cancelled by ``$/cancelRequest`` or a disconnect."""

    code = CANCELLED


class ServerCancelled(Cancelled):
    """The run was cancelled from elsewhere: ``llm.cancel`` (any client), a daemon stop."""

    code = SERVER_CANCELLED


class ApplyConflict(LlmdError):
    """A job's changes conflict with the checkout they would be applied to; nothing was
    applied."""

    code = APPLY_CONFLICT
