"""The client side of the Agent Client Protocol, as ``gemini --acp`` speaks it, without I/O.

What llmd relies on (pinned in tests/test_acp.py against gemini 0.61.0): ``initialize``
with protocol version 1 and no file-system or terminal capabilities (the agent uses its
own, as in print mode); per run ``session/new {cwd, mcpServers}`` (or ``session/load``
where the agent advertises ``loadSession``), then ``session/prompt {sessionId, prompt}``
whose answer carries ``stopReason`` and token counts in ``_meta.quota.token_count``; the
answer's text comes as ``session/update`` notifications with ``sessionUpdate:
"agent_message_chunk"``; ``session/cancel`` (a notification) ends a turn with
``stopReason: "cancelled"``. A provider error ends ``session/prompt`` with a JSON-RPC
error whose code is the HTTP status (429 for a rate limit).

Invariants:
- Every request the agent makes is answered at once, never left hanging:
  ``session/request_permission`` by the :class:`PermissionPolicy` (by default the
  reject option, as print mode refuses), anything else with a JSON-RPC error.
- Only ``agent_message_chunk`` text is answer text; thoughts, plans and tool calls are
  not part of the answer.
- Messages are decoded by structs that refuse wrong types and ignore unknown members;
  a message out of protocol raises :class:`~llmd.drivers.rpcpeer.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec

from llmd.drivers.rpcpeer import (
    Answered,
    Client,
    Notification,
    Peer,
    Request,
    RequestId,
    decode_params,
    decode_result,
)
from llmd.errors import METHOD_NOT_FOUND

__all__ = ["Answered", "decode_result"]

PROTOCOL_VERSION = 1


# --- what the agent sends (tolerant of unknown members, strict on types) -------------

class AgentCapabilities(msgspec.Struct, frozen=True):
    """The part of ``agentCapabilities`` llmd uses."""

    loadSession: bool = False


class InitializeResult(msgspec.Struct, frozen=True):
    """The answer to ``initialize``."""

    protocolVersion: int
    agentCapabilities: AgentCapabilities = AgentCapabilities()


class NewSessionResult(msgspec.Struct, frozen=True):
    """The answer to ``session/new``."""

    sessionId: str


class TokenCount(msgspec.Struct, frozen=True):
    """Token counts as gemini reports them in ``_meta.quota``."""

    input_tokens: int = 0
    output_tokens: int = 0


class Quota(msgspec.Struct, frozen=True):
    """gemini's ``_meta.quota``."""

    token_count: TokenCount | None = None


class PromptMeta(msgspec.Struct, frozen=True):
    """The ``_meta`` of a prompt's answer."""

    quota: Quota | None = None


class PromptResult(msgspec.Struct, frozen=True, rename={"meta": "_meta"}):
    """The answer to ``session/prompt``."""

    stopReason: str
    meta: PromptMeta | None = None

    @property
    def usage(self) -> dict[str, int] | None:
        """Token counts, when the agent reported them."""
        quota = self.meta.quota if self.meta is not None else None
        count = quota.token_count if quota is not None else None
        if count is None:
            return None
        return {"input_tokens": count.input_tokens, "output_tokens": count.output_tokens}


class _TextContent(msgspec.Struct, frozen=True):
    type: str
    text: str = ""


class _Update(msgspec.Struct, frozen=True):
    sessionUpdate: str
    # Its shape depends on the kind of update (a list for tool calls): decoded per kind.
    content: msgspec.Raw = msgspec.Raw(b"")


class _SessionUpdate(msgspec.Struct, frozen=True):
    sessionId: str
    update: _Update


class PermissionOption(msgspec.Struct, frozen=True):
    """One answer the agent offers to a permission request."""

    optionId: str
    kind: str
    name: str = ""


class ToolCallRef(msgspec.Struct, frozen=True):
    """The tool call a permission request is about."""

    toolCallId: str
    kind: str | None = None
    title: str | None = None


class PermissionRequest(msgspec.Struct, frozen=True):
    """``session/request_permission`` params."""

    sessionId: str
    toolCall: ToolCallRef
    options: list[PermissionOption]


# --- what the client makes of it ----------------------------------------------------

@dataclass(frozen=True)
class PermissionPolicy:
    """How permission requests are answered.

    Attributes:
        allow_kinds: Tool kinds (ACP's ``read``, ``edit``, ``execute``, ``fetch``...) that
            are allowed once; every other request is rejected, as print mode does.
    """

    allow_kinds: frozenset[str] = frozenset()

    def answer(self, request: PermissionRequest) -> tuple[dict[str, Any], bool]:
        """The response to ``request`` and whether it allows the tool call."""
        allowed = request.toolCall.kind in self.allow_kinds
        wanted = ("allow_once", "allow_always") if allowed else ("reject_once",
                                                                 "reject_always")
        for kind in wanted:
            for option in request.options:
                if option.kind == kind:
                    return {"outcome": {"outcome": "selected",
                                        "optionId": option.optionId}}, allowed
        # No option of the kind wanted: "cancelled" refuses whatever was asked.
        return {"outcome": {"outcome": "cancelled"}}, False


@dataclass(frozen=True)
class Text:
    """A piece of a session's answer."""

    session: str
    text: str


@dataclass(frozen=True)
class Replied:
    """llmd answered a request of the agent; ``data`` is the line to write back.

    Attributes:
        session: The session the request named, when it named one.
        method: The agent's method.
        data: The answer's frame.
        note: What was answered, for the record.
    """

    session: str | None
    method: str
    data: bytes
    note: str


AcpEvent: TypeAlias = Text | Answered | Replied


class _SessionRef(msgspec.Struct, frozen=True):
    sessionId: str | None = None


class AcpClient(Client[Text | Replied]):
    """The client side of one ACP connection (one agent process).

    Args:
        policy: How permission requests are answered.
        client_name: The ``clientInfo`` name llmd gives.
        client_version: Its version.
    """

    def __init__(self, policy: PermissionPolicy | None = None, *,
                 client_name: str = "llmd", client_version: str = "0") -> None:
        self.peer = Peer(jsonrpc_member=True)
        self.policy = policy or PermissionPolicy()
        self._client = {"name": client_name, "version": client_version}

    def initialize(self) -> tuple[int, bytes]:
        """The ``initialize`` request: no file-system or terminal delegation."""
        return self.peer.request("initialize", {
            "protocolVersion": PROTOCOL_VERSION,
            "clientCapabilities": {"fs": {"readTextFile": False, "writeTextFile": False},
                                   "terminal": False},
            "clientInfo": self._client})

    def new_session(self, cwd: str, mcp_servers: Sequence[Any] = ()) -> tuple[int, bytes]:
        """A ``session/new`` request for ``cwd``."""
        return self.peer.request("session/new", {"cwd": cwd, "mcpServers": list(mcp_servers)})

    def load_session(self, session: str, cwd: str,
                     mcp_servers: Sequence[Any] = ()) -> tuple[int, bytes]:
        """A ``session/load`` request (only where ``loadSession`` is advertised)."""
        return self.peer.request("session/load", {"sessionId": session, "cwd": cwd,
                                                  "mcpServers": list(mcp_servers)})

    def prompt(self, session: str, text: str) -> tuple[int, bytes]:
        """A ``session/prompt`` request with the whole prompt as one text block."""
        return self.peer.request("session/prompt", {
            "sessionId": session, "prompt": [{"type": "text", "text": text}]})

    def cancel(self, session: str) -> bytes:
        """The ``session/cancel`` notification."""
        return self.peer.notify("session/cancel", {"sessionId": session})

    def _notification(self, message: Notification) -> list[AcpEvent]:
        if message.method != "session/update":
            return []
        params = decode_params(message.params, _SessionUpdate, "session/update")
        update = params.update
        if update.sessionUpdate != "agent_message_chunk" or not update.content:
            return []
        content = decode_params(update.content, _TextContent, "agent_message_chunk content")
        if content.type != "text" or not content.text:
            return []
        return [Text(params.sessionId, content.text)]

    def _answer(self, request: Request) -> Replied:
        if request.method == "session/request_permission":
            params = decode_params(request.params, PermissionRequest,
                                   "session/request_permission")
            result, allowed = self.policy.answer(params)
            kind = params.toolCall.kind or "unknown"
            return Replied(params.sessionId, request.method,
                           self.peer.respond(request.id, result),
                           f"{'allowed' if allowed else 'rejected'} a tool call ({kind})")
        return Replied(_session_of(request), request.method,
                       self._refuse(request.id, request.method),
                       f"refused {request.method}")

    def _refuse(self, rid: RequestId, method: str) -> bytes:
        return self.peer.respond_error(rid, METHOD_NOT_FOUND,
                                       f"llmd does not serve {method}")


def _session_of(request: Request) -> str | None:
    if not request.params:
        return None
    try:
        return msgspec.json.decode(request.params, type=_SessionRef).sessionId
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None

