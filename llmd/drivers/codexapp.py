"""The client side of ``codex app-server``'s protocol, without I/O.

What llmd relies on (read from ``codex app-server generate-json-schema`` of codex
0.171.0 and pinned in tests/test_codexapp.py): JSON-RPC one message a line, without the
``"jsonrpc"`` member; ``initialize {clientInfo}`` then the ``initialized`` notification;
per run ``thread/start {cwd, model?, approvalPolicy, sandbox}`` (or ``thread/resume
{threadId}`` to continue a thread) and ``turn/start {threadId, input}``; the answer
streams as ``item/agentMessage/delta`` notifications, its whole text comes in
``item/completed`` (an ``agentMessage`` item), token counts in
``thread/tokenUsage/updated``, and the turn ends with ``turn/completed`` whose ``turn``
has ``status`` (``completed``, ``interrupted``, ``failed``) and ``error``;
``turn/interrupt {threadId, turnId}`` stops a turn. A provider error also comes as an
``error`` notification (``willRetry`` says whether codex tries again itself).

Invariants:
- Every request the app server makes is answered at once: the approval requests by the
  :class:`ApprovalPolicy` (decline unless the blueprint allows that kind), anything
  else with a JSON-RPC error; none is left hanging.
- Only ``agentMessage`` text is answer text.
- Messages are decoded by structs that refuse wrong types and ignore unknown members;
  a message out of protocol raises :class:`~llmd.drivers.rpcpeer.ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec

from llmd.drivers.rpcpeer import (
    Answered,
    Client,
    Notification,
    Peer,
    Request,
    decode_params,
)
from llmd.errors import METHOD_NOT_FOUND

__all__ = ["Answered"]

# --- what the app server sends (tolerant of unknown members, strict on types) ---------



# The ``--sandbox`` modes, as turn/start's ``sandboxPolicy`` types (thread/start takes the
# modes themselves).
SANDBOX_POLICIES = {"read-only": "readOnly", "workspace-write": "workspaceWrite",
                    "danger-full-access": "dangerFullAccess"}

class ThreadRef(msgspec.Struct, frozen=True):
    """A thread as ``thread/start`` and ``thread/resume`` return it."""

    id: str


class ThreadStartResult(msgspec.Struct, frozen=True):
    """The answer to ``thread/start`` (and ``thread/resume``)."""

    thread: ThreadRef


class TurnError(msgspec.Struct, frozen=True):
    """Why a turn failed."""

    message: str
    # A string ("usageLimitExceeded") or an object ({"httpConnectionFailed": {...}}).
    codexErrorInfo: msgspec.Raw = msgspec.Raw(b"null")

    @property
    def http_status(self) -> int | None:
        """The HTTP status inside ``codexErrorInfo``, when it names one."""
        try:
            info = msgspec.json.decode(self.codexErrorInfo)
        except msgspec.DecodeError:  # pragma: no cover - raw came from a valid document
            return None
        if isinstance(info, str):
            return {"usageLimitExceeded": 429, "rateLimitExceeded": 429,
                    "unauthorized": 401}.get(info)
        if isinstance(info, dict):
            for value in info.values():
                if isinstance(value, dict):
                    status = value.get("httpStatusCode")
                    if isinstance(status, int) and not isinstance(status, bool):
                        return status
        return None


class Turn(msgspec.Struct, frozen=True):
    """A turn as ``turn/start`` and ``turn/completed`` carry it."""

    id: str
    status: str
    error: TurnError | None = None


class TurnStartResult(msgspec.Struct, frozen=True):
    """The answer to ``turn/start``."""

    turn: Turn


class _TurnCompleted(msgspec.Struct, frozen=True):
    threadId: str
    turn: Turn


class _Delta(msgspec.Struct, frozen=True):
    threadId: str
    turnId: str
    delta: str


class _Item(msgspec.Struct, frozen=True):
    type: str
    text: str = ""


class _ItemCompleted(msgspec.Struct, frozen=True):
    threadId: str
    turnId: str
    item: _Item


class _Breakdown(msgspec.Struct, frozen=True):
    inputTokens: int
    outputTokens: int
    cachedInputTokens: int = 0
    reasoningOutputTokens: int = 0
    totalTokens: int = 0


class _TokenUsage(msgspec.Struct, frozen=True):
    last: _Breakdown


class _TokenUsageUpdated(msgspec.Struct, frozen=True):
    threadId: str
    turnId: str
    tokenUsage: _TokenUsage


class _ErrorNote(msgspec.Struct, frozen=True):
    threadId: str
    turnId: str
    error: TurnError
    willRetry: bool = False


class _ThreadRefParams(msgspec.Struct, frozen=True):
    threadId: str | None = None


# --- what the client makes of it ----------------------------------------------------

# Approval requests and the decisions that decline and accept them. The v2 requests
# decline with "decline" (the turn goes on); the legacy ones take a ReviewDecision.
_APPROVALS: dict[str, tuple[str, Any, Any]] = {
    "item/commandExecution/requestApproval": ("command", "decline", "accept"),
    "item/fileChange/requestApproval": ("file_change", "decline", "accept"),
    "execCommandApproval": ("command", {"denied": {"rejection": "refused by llmd's policy"}},
                            "approved"),
    "applyPatchApproval": ("file_change",
                           {"denied": {"rejection": "refused by llmd's policy"}}, "approved"),
}


@dataclass(frozen=True)
class ApprovalPolicy:
    """How the app server's approval requests are answered.

    Attributes:
        allow_kinds: ``command`` and/or ``file_change``: kinds accepted once; every other
            request is declined.
    """

    allow_kinds: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Delta:
    """A piece of a turn's answer."""

    thread: str
    turn: str
    text: str


@dataclass(frozen=True)
class Message:
    """A whole agent message of a turn (``item/completed``)."""

    thread: str
    turn: str
    text: str


@dataclass(frozen=True)
class Usage:
    """The last turn's token counts."""

    thread: str
    turn: str
    usage: dict[str, int]


@dataclass(frozen=True)
class TurnDone:
    """A turn ended."""

    thread: str
    turn: Turn


@dataclass(frozen=True)
class TurnErrorNote:
    """A provider error in a turn; ``will_retry`` when codex tries again itself."""

    thread: str
    turn: str
    error: TurnError
    will_retry: bool


@dataclass(frozen=True)
class Replied:
    """llmd answered a request of the app server; ``data`` is the line to write back."""

    thread: str | None
    method: str
    data: bytes
    note: str


CodexEvent: TypeAlias = (Delta | Message | Usage | TurnDone | TurnErrorNote | Answered
                         | Replied)


class CodexAppClient(Client[Delta | Message | Usage | TurnDone | TurnErrorNote | Replied]):
    """The client side of one app-server connection (one codex process).

    Args:
        policy: How approval requests are answered.
        client_name: The ``clientInfo`` name llmd gives.
        client_version: Its version.
    """

    def __init__(self, policy: ApprovalPolicy | None = None, *,
                 client_name: str = "llmd", client_version: str = "0") -> None:
        self.peer = Peer(jsonrpc_member=False)
        self.policy = policy or ApprovalPolicy()
        self._client = {"name": client_name, "version": client_version}

    def initialize(self) -> tuple[int, bytes]:
        """The ``initialize`` request (follow its answer with :meth:`initialized`)."""
        return self.peer.request("initialize", {"clientInfo": self._client})

    def initialized(self) -> bytes:
        """The ``initialized`` notification."""
        return self.peer.notify("initialized")

    def start_thread(self, cwd: str, *, model: str | None, approval: str,
                     sandbox: str) -> tuple[int, bytes]:
        """A ``thread/start`` request."""
        params: dict[str, Any] = {"cwd": cwd, "approvalPolicy": approval, "sandbox": sandbox}
        if model is not None:
            params["model"] = model
        return self.peer.request("thread/start", params)

    def resume_thread(self, thread: str, cwd: str, *, model: str | None, approval: str,
                      sandbox: str) -> tuple[int, bytes]:
        """A ``thread/resume`` request (the thread continues where it ended)."""
        params: dict[str, Any] = {"threadId": thread, "cwd": cwd, "approvalPolicy": approval,
                                  "sandbox": sandbox}
        if model is not None:
            params["model"] = model
        return self.peer.request("thread/resume", params)

    def start_turn(self, thread: str, text: str, *, cwd: str | None = None,
                   sandbox: str | None = None) -> tuple[int, bytes]:
        """A ``turn/start`` request with the whole prompt as one text input; ``cwd`` and
        ``sandbox`` (a ``--sandbox`` mode) change the thread's from this turn on.

        Raises:
            ValueError: ``sandbox`` is no mode the app server knows.
        """
        params: dict[str, Any] = {"threadId": thread,
                                  "input": [{"type": "text", "text": text}]}
        if cwd is not None:
            params["cwd"] = cwd
        if sandbox is not None:
            if sandbox not in SANDBOX_POLICIES:
                raise ValueError(f"no sandbox mode {sandbox!r}")
            params["sandboxPolicy"] = {"type": SANDBOX_POLICIES[sandbox]}
        return self.peer.request("turn/start", params)

    def interrupt(self, thread: str, turn: str) -> tuple[int, bytes]:
        """A ``turn/interrupt`` request."""
        return self.peer.request("turn/interrupt", {"threadId": thread, "turnId": turn})

    def _notification(self, message: Notification) -> list[CodexEvent]:
        method, raw = message.method, message.params
        if method == "item/agentMessage/delta":
            delta = decode_params(raw, _Delta, method)
            return [Delta(delta.threadId, delta.turnId, delta.delta)] if delta.delta else []
        if method == "item/completed":
            done = decode_params(raw, _ItemCompleted, method)
            if done.item.type != "agentMessage":
                return []
            return [Message(done.threadId, done.turnId, done.item.text)]
        if method == "thread/tokenUsage/updated":
            updated = decode_params(raw, _TokenUsageUpdated, method)
            last = updated.tokenUsage.last
            usage = {"input_tokens": last.inputTokens, "output_tokens": last.outputTokens,
                     "cached_input_tokens": last.cachedInputTokens,
                     "reasoning_output_tokens": last.reasoningOutputTokens}
            return [Usage(updated.threadId, updated.turnId, usage)]
        if method == "turn/completed":
            completed = decode_params(raw, _TurnCompleted, method)
            return [TurnDone(completed.threadId, completed.turn)]
        if method == "error":
            note = decode_params(raw, _ErrorNote, method)
            return [TurnErrorNote(note.threadId, note.turnId, note.error, note.willRetry)]
        return []

    def _answer(self, request: Request) -> Replied:
        thread = _thread_of(request)
        approval = _APPROVALS.get(request.method)
        if approval is not None:
            kind, decline, accept = approval
            allowed = kind in self.policy.allow_kinds
            frame = self.peer.respond(request.id, {"decision": accept if allowed else decline})
            return Replied(thread, request.method, frame,
                           f"{'accepted' if allowed else 'declined'} an approval ({kind})")
        frame = self.peer.respond_error(request.id, METHOD_NOT_FOUND,
                                       f"llmd does not serve {request.method}")
        return Replied(thread, request.method, frame, f"refused {request.method}")


def _thread_of(request: Request) -> str | None:
    if not request.params:
        return None
    try:
        return msgspec.json.decode(request.params, type=_ThreadRefParams).threadId
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
