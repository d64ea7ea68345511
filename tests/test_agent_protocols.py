"""Tests llmd/drivers/rpcpeer.py, llmd/drivers/acp.py and llmd/drivers/codexapp.py.

The messages are the pinned agents' own (gemini 0.61.0 ``--acp``, codex 0.171.0
``app-server``, as recorded against tests/mockllm.py); what llmd relies on is pinned
here: the frames it writes, the events it draws, the answers its policies give. Fuzzed:
any JSON value, any line, is either decoded or refused with ProtocolError, never
another exception.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmd.drivers import acp, codexapp
from llmd.drivers.rpcpeer import (
    Answered,
    Client,
    Notification,
    Peer,
    ProtocolError,
    Request,
    Response,
    Stale,
    decode_result,
)


def _frame(data: bytes) -> dict[str, Any]:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    decoded: dict[str, Any] = json.loads(data)
    return decoded


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- the peer -----------------------------------------------------------------------

def test_peer_frames_with_or_without_the_jsonrpc_member() -> None:
    rid, data = Peer(jsonrpc_member=True).request("initialize", {"a": 1})
    assert _frame(data) == {"jsonrpc": "2.0", "id": rid, "method": "initialize",
                            "params": {"a": 1}}
    peer = Peer(jsonrpc_member=False)
    rid, data = peer.request("thread/start", {})
    assert "jsonrpc" not in _frame(data)
    assert _frame(peer.notify("initialized")) == {"method": "initialized"}
    assert _frame(peer.respond(7, {"ok": True})) == {"id": 7, "result": {"ok": True}}
    assert _frame(peer.respond_error("x", -32601, "no")) == {
        "id": "x", "error": {"code": -32601, "message": "no"}}


def test_peer_matches_answers_to_its_requests_only() -> None:
    peer = Peer(jsonrpc_member=False)
    rid, _ = peer.request("turn/start", {})
    answer = peer.decode(_line({"id": rid, "result": {"turn": {}}, "extra": 1}))
    assert isinstance(answer, Response) and answer.method == "turn/start"
    assert answer.error is None and peer.pending == 0
    with pytest.raises(ProtocolError):
        peer.decode(_line({"id": 99, "result": {}}))  # never sent
    rid2, _ = peer.request("turn/interrupt", {})
    peer.forget(rid2)
    assert isinstance(peer.decode(_line({"id": rid2, "result": {}})), Stale)
    rid3, _ = peer.request("x", {})
    failed = peer.decode(_line({"id": rid3, "error": {"code": 429, "message": "slow"}}))
    assert isinstance(failed, Response) and failed.error == (429, "slow")


@pytest.mark.parametrize("line", [
    b"not json", b"[]", b"3", b'{"id": true, "result": {}}', b'{"method": 5}',
    b'{"id": 1, "method": "m", "result": {}}', b"{}", b'{"id": 1}',
    b'{"id": 1, "error": {"code": "x", "message": "m"}}',
])
def test_peer_refuses_what_is_out_of_protocol(line: bytes) -> None:
    peer = Peer(jsonrpc_member=True)
    peer.request("initialize", {})
    with pytest.raises(ProtocolError):
        peer.decode(line)


def test_both_clients_sort_lines_with_the_peers_one_receive_step() -> None:
    assert acp.Answered is codexapp.Answered is Answered
    for client in (acp.AcpClient(), codexapp.CodexAppClient()):
        assert isinstance(client, Client)
        assert type(client).receive is Client.receive
        rid, _ = client.peer.request("initialize", {})
        gone, _ = client.peer.request("x", {})
        client.peer.forget(gone)
        answer = {"id": rid, "result": {"ok": 1}}
        [answered] = client.receive(_line(answer))
        assert isinstance(answered, Answered) and answered.response.method == "initialize"
        assert client.receive(_line({"id": gone, "result": {}})) == []  # stale: dropped
        assert client.receive(_line({"method": "not/used", "params": {}})) == []
        [replied] = client.receive(_line({"id": "r", "method": "not/served"}))
        assert isinstance(replied, (acp.Replied, codexapp.Replied))
        assert _frame(replied.data)["error"]["code"] == -32601


# --- ACP (gemini --acp) -------------------------------------------------------------

GEMINI_INIT = {"jsonrpc": "2.0", "id": 1, "result": {
    "protocolVersion": 1, "authMethods": [{"id": "gemini-api-key", "name": "Gemini API key"}],
    "agentInfo": {"name": "gemini-cli", "version": "0.61.0"},
    "agentCapabilities": {"loadSession": True, "promptCapabilities": {"image": True},
                          "mcpCapabilities": {"http": True, "sse": True}}}}
GEMINI_PROMPT_RESULT = {"stopReason": "end_turn", "_meta": {"quota": {
    "token_count": {"input_tokens": 13795, "output_tokens": 6},
    "model_usage": [{"model": "gemini-2.5-flash",
                     "token_count": {"input_tokens": 13795, "output_tokens": 6}}]}}}


def test_acp_handshake_session_and_prompt_as_gemini_answers() -> None:
    client = acp.AcpClient()
    rid, data = client.initialize()
    frame = _frame(data)
    assert frame["method"] == "initialize" and frame["params"]["protocolVersion"] == 1
    assert frame["params"]["clientCapabilities"] == {
        "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}
    [answered] = client.receive(_line(GEMINI_INIT))
    assert isinstance(answered, acp.Answered)
    init = decode_result(answered.response, acp.InitializeResult)
    assert init.agentCapabilities.loadSession
    rid, data = client.new_session("/p", [])
    assert _frame(data)["params"] == {"cwd": "/p", "mcpServers": []}
    [answered] = client.receive(_line({"jsonrpc": "2.0", "id": rid, "result": {
        "sessionId": "s1", "modes": {"currentModeId": "default"}}}))
    assert isinstance(answered, acp.Answered)
    assert decode_result(answered.response, acp.NewSessionResult).sessionId == "s1"
    rid, data = client.prompt("s1", "--version and more")
    assert _frame(data)["params"] == {"sessionId": "s1",
                                      "prompt": [{"type": "text", "text": "--version and more"}]}
    update = {"jsonrpc": "2.0", "method": "session/update", "params": {
        "sessionId": "s1", "update": {"sessionUpdate": "agent_message_chunk",
                                      "content": {"type": "text", "text": "Hello "}}}}
    assert client.receive(_line(update)) == [acp.Text("s1", "Hello ")]
    # Tool calls and commands are not answer text; their content is a list.
    for other in ({"sessionUpdate": "tool_call", "toolCallId": "t", "content": []},
                  {"sessionUpdate": "available_commands_update", "availableCommands": []},
                  {"sessionUpdate": "agent_thought_chunk",
                   "content": {"type": "text", "text": "hmm"}}):
        assert client.receive(_line({"jsonrpc": "2.0", "method": "session/update",
                                     "params": {"sessionId": "s1", "update": other}})) == []
    [answered] = client.receive(_line({"jsonrpc": "2.0", "id": rid,
                                       "result": GEMINI_PROMPT_RESULT}))
    assert isinstance(answered, acp.Answered)
    result = decode_result(answered.response, acp.PromptResult)
    assert result.stopReason == "end_turn"
    assert result.usage == {"input_tokens": 13795, "output_tokens": 6}
    assert _frame(client.cancel("s1")) == {"jsonrpc": "2.0", "method": "session/cancel",
                                           "params": {"sessionId": "s1"}}


GEMINI_OPTIONS = [{"optionId": "proceed_always", "name": "Allow for this session",
                   "kind": "allow_always"},
                  {"optionId": "proceed_once", "name": "Allow", "kind": "allow_once"},
                  {"optionId": "cancel", "name": "Reject", "kind": "reject_once"}]


def _permission(kind: str) -> bytes:
    return _line({"jsonrpc": "2.0", "id": 0, "method": "session/request_permission",
                  "params": {"sessionId": "s1", "options": GEMINI_OPTIONS,
                             "toolCall": {"toolCallId": "c1", "status": "pending",
                                          "title": "WriteFile", "kind": kind}}})


def test_acp_permission_requests_are_answered_by_the_policy() -> None:
    [replied] = acp.AcpClient().receive(_permission("edit"))
    assert isinstance(replied, acp.Replied) and replied.session == "s1"
    assert _frame(replied.data) == {"jsonrpc": "2.0", "id": 0, "result": {
        "outcome": {"outcome": "selected", "optionId": "cancel"}}}
    allowing = acp.AcpClient(acp.PermissionPolicy(frozenset({"read"})))
    [replied] = allowing.receive(_permission("read"))
    assert isinstance(replied, acp.Replied)
    assert _frame(replied.data)["result"]["outcome"] == {"outcome": "selected",
                                                         "optionId": "proceed_once"}
    [replied] = allowing.receive(_permission("execute"))
    assert isinstance(replied, acp.Replied)
    assert _frame(replied.data)["result"]["outcome"]["optionId"] == "cancel"


def test_acp_requests_llmd_does_not_serve_get_an_error_not_silence() -> None:
    for method in ("fs/read_text_file", "terminal/create", "whatever"):
        [replied] = acp.AcpClient().receive(_line({
            "jsonrpc": "2.0", "id": "r", "method": method, "params": {"sessionId": "s"}}))
        assert isinstance(replied, acp.Replied) and replied.session == "s"
        assert _frame(replied.data)["error"]["code"] == -32601


# --- codex app-server ---------------------------------------------------------------

T, U = "thread-1", "turn-1"


def test_codex_handshake_thread_and_turn_as_codex_answers() -> None:
    client = codexapp.CodexAppClient()
    rid, data = client.initialize()
    assert _frame(data) == {"id": rid, "method": "initialize",
                            "params": {"clientInfo": {"name": "llmd", "version": "0"}}}
    assert _frame(client.initialized()) == {"method": "initialized"}
    client.receive(_line({"id": rid, "result": {"userAgent": "x", "platformOs": "linux"}}))
    rid, data = client.start_thread("/p", model="gpt-5.5", approval="never",
                                    sandbox="read-only")
    assert _frame(data)["params"] == {"cwd": "/p", "model": "gpt-5.5",
                                      "approvalPolicy": "never", "sandbox": "read-only"}
    [answered] = client.receive(_line({"id": rid, "result": {
        "thread": {"id": T, "cwd": "/p", "ephemeral": False}, "model": "gpt-5.5"}}))
    assert isinstance(answered, codexapp.Answered)
    assert decode_result(answered.response, codexapp.ThreadStartResult).thread.id == T
    _, data = client.start_turn(T, "hi")
    assert _frame(data)["params"] == {"threadId": T, "input": [{"type": "text", "text": "hi"}]}
    events = []
    for message in (
            {"method": "item/agentMessage/delta", "params": {
                "threadId": T, "turnId": U, "itemId": "m", "delta": "Hello "}},
            {"method": "item/completed", "params": {
                "threadId": T, "turnId": U, "completedAtMs": 1,
                "item": {"type": "agentMessage", "id": "m", "text": "Hello there"}}},
            {"method": "item/completed", "params": {
                "threadId": T, "turnId": U, "completedAtMs": 1,
                "item": {"type": "userMessage", "id": "u", "content": []}}},
            {"method": "thread/tokenUsage/updated", "params": {
                "threadId": T, "turnId": U, "tokenUsage": {
                    "total": {"inputTokens": 9, "outputTokens": 6, "cachedInputTokens": 0,
                              "reasoningOutputTokens": 0, "totalTokens": 15},
                    "last": {"inputTokens": 9, "outputTokens": 6, "cachedInputTokens": 0,
                             "reasoningOutputTokens": 0, "totalTokens": 15}}}},
            {"method": "turn/completed", "params": {"threadId": T, "turn": {
                "id": U, "items": [], "status": "completed", "error": None}}}):
        events += client.receive(_line(message))
    assert events[0] == codexapp.Delta(T, U, "Hello ")
    assert events[1] == codexapp.Message(T, U, "Hello there")
    assert isinstance(events[2], codexapp.Usage) and events[2].usage["output_tokens"] == 6
    assert isinstance(events[3], codexapp.TurnDone) and events[3].turn.status == "completed"
    assert len(events) == 4
    rid, data = client.interrupt(T, U)
    assert _frame(data) == {"id": rid, "method": "turn/interrupt",
                            "params": {"threadId": T, "turnId": U}}


def test_codex_turn_moves_its_thread_to_another_cwd_and_sandbox_only_when_asked() -> None:
    client = codexapp.CodexAppClient()
    _, data = client.start_turn(T, "hi")
    assert _frame(data)["params"] == {"threadId": T, "input": [{"type": "text", "text": "hi"}]}
    _, data = client.start_turn(T, "hi", cwd="/elsewhere", sandbox="workspace-write")
    params = _frame(data)["params"]
    assert params["cwd"] == "/elsewhere"
    assert params["sandboxPolicy"] == {"type": "workspaceWrite"}
    for mode, kind in (("read-only", "readOnly"), ("danger-full-access", "dangerFullAccess")):
        assert _frame(client.start_turn(T, "hi", sandbox=mode)[1])["params"][
            "sandboxPolicy"] == {"type": kind}
    with pytest.raises(ValueError, match="no sandbox mode"):
        client.start_turn(T, "hi", sandbox="everything")


def test_codex_429_is_read_from_its_error_info() -> None:
    client = codexapp.CodexAppClient()
    error = {"message": "exceeded retry limit, last status: 429 Too Many Requests",
             "codexErrorInfo": {"responseTooManyFailedAttempts": {"httpStatusCode": 429}}}
    [note] = client.receive(_line({"method": "error", "params": {
        "error": error, "willRetry": False, "threadId": T, "turnId": U}}))
    assert isinstance(note, codexapp.TurnErrorNote) and note.error.http_status == 429
    assert codexapp.TurnError("x", msgspec.Raw(b'"usageLimitExceeded"')).http_status == 429
    assert codexapp.TurnError("x").http_status is None


@pytest.mark.parametrize(("method", "declined", "accepted"), [
    ("item/commandExecution/requestApproval", "decline", "accept"),
    ("item/fileChange/requestApproval", "decline", "accept"),
    ("execCommandApproval", {"denied": {"rejection": "refused by llmd's policy"}},
     "approved"),
])
def test_codex_approvals_are_answered_by_the_policy(method: str, declined: Any,
                                                    accepted: Any) -> None:
    request = _line({"id": 5, "method": method, "params": {"threadId": T, "turnId": U,
                                                           "itemId": "i"}})
    [replied] = codexapp.CodexAppClient().receive(request)
    assert isinstance(replied, codexapp.Replied)
    assert _frame(replied.data) == {"id": 5, "result": {"decision": declined}}
    policy = codexapp.ApprovalPolicy(frozenset({"command", "file_change"}))
    [replied] = codexapp.CodexAppClient(policy).receive(request)
    assert isinstance(replied, codexapp.Replied)
    assert _frame(replied.data)["result"] == {"decision": accepted}
    [refused] = codexapp.CodexAppClient().receive(
        _line({"id": 6, "method": "item/tool/requestUserInput", "params": {"threadId": T}}))
    assert isinstance(refused, codexapp.Replied)
    assert _frame(refused.data)["error"]["code"] == -32601


# --- fuzz ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                 max_size=4),
    max_leaves=12)
methods = st.sampled_from([
    "session/update", "session/request_permission", "fs/read_text_file",
    "item/agentMessage/delta", "item/completed", "turn/completed", "error",
    "thread/tokenUsage/updated", "item/commandExecution/requestApproval", "other"])
messages = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.just("2.0"), "id": st.integers(0, 3) | st.text(max_size=3) | json_values,
    "method": methods | json_values, "params": json_values, "result": json_values,
    "error": json_values})


@settings(max_examples=400, deadline=None)
@given(message=messages | json_values, raw=st.binary(max_size=64))
def test_any_line_is_decoded_or_refused(message: Any, raw: bytes) -> None:
    for line in (_line(message), raw):
        for client in (acp.AcpClient(), codexapp.CodexAppClient()):
            client.peer.request("initialize", {})
            try:
                events = client.receive(line)
            except ProtocolError:
                continue
            for event in events:
                if isinstance(event, (acp.Replied, codexapp.Replied)):
                    reply = _frame(event.data)
                    assert ("result" in reply) != ("error" in reply)


@settings(max_examples=200, deadline=None)
@given(message=messages)
def test_every_request_of_the_agent_is_answered(message: dict[str, Any]) -> None:
    for client in (acp.AcpClient(), codexapp.CodexAppClient()):
        try:
            decoded = client.peer.decode(_line(message))
        except ProtocolError:
            continue
        if not isinstance(decoded, Request):
            assert isinstance(decoded, (Response, Notification, Stale))
            continue
        try:
            events = client.receive(_line(message))
        except ProtocolError:
            continue  # malformed params of a known request: the agent is replaced
        assert [type(e).__name__ for e in events] == ["Replied"]
