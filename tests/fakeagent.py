"""A scripted ACP agent on stdio, for what the real one cannot be made to do on cue.

    python tests/fakeagent.py MODE [LOG]

It answers ``initialize`` (advertising ``loadSession``) and ``session/new`` like
``gemini --acp``; what it does with ``session/prompt`` depends on MODE:

- ``ok``: asks the client ``fs/read_text_file`` and ``session/request_permission`` (an
  ``edit``), waits for both answers, then streams the two answers' outcomes as text
  chunks (``fs:<error code> perm:<optionId>``) and ends the turn;
- ``garbage``: streams one chunk, then writes a line that is not JSON;
- ``die-after-text``: streams one chunk, then exits;
- ``die``: exits at once;
- ``stall``: streams one chunk and ignores everything after, ``session/cancel`` too;
- ``cancellable``: streams one chunk and ends the turn ``cancelled`` on
  ``session/cancel``;
- ``mute``: never answers anything, ``initialize`` included;
- ``limited``: answers ``session/prompt`` with a 429 error whose message says when to
  retry.

Every message it receives is appended to LOG (one JSON line each), when given.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

MODE = sys.argv[1]
LOG = sys.argv[2] if len(sys.argv) > 2 else None


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    sys.stdout.flush()


def receive() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    message: dict[str, Any] = json.loads(line)
    if LOG:
        with open(LOG, "a") as log:
            log.write(line if line.endswith("\n") else line + "\n")
    return message


def chunk(session: str, text: str) -> None:
    send({"method": "session/update", "params": {"sessionId": session, "update": {
        "sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}}})


def ask(rid: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    send({"id": rid, "method": method, "params": params})
    while True:
        message = receive()
        if message.get("id") == rid and "method" not in message:
            return message


def prompt(rid: Any, session: str) -> None:
    if MODE == "die":
        sys.exit(3)
    if MODE == "limited":
        send({"id": rid, "error": {"code": 429, "message": (
            "You exceeded your current quota. Please retry in 7.5s.")}})
        return
    if MODE == "ok":
        fs = ask("a1", "fs/read_text_file", {"sessionId": session, "path": "/etc/hostname"})
        perm = ask("a2", "session/request_permission", {
            "sessionId": session,
            "toolCall": {"toolCallId": "c1", "kind": "edit", "title": "WriteFile"},
            "options": [{"optionId": "proceed_once", "name": "Allow", "kind": "allow_once"},
                        {"optionId": "cancel", "name": "Reject", "kind": "reject_once"}]})
        chunk(session, f"fs:{fs.get('error', {}).get('code')} ")
        chunk(session, f"perm:{perm['result']['outcome'].get('optionId')}")
        send({"id": rid, "result": {"stopReason": "end_turn", "_meta": {"quota": {
            "token_count": {"input_tokens": 3, "output_tokens": 2}}}}})
        return
    chunk(session, "partial ")
    if MODE == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
    elif MODE == "die-after-text":
        sys.exit(4)
    elif MODE == "stall":
        while True:
            receive()
    elif MODE == "cancellable":
        while True:
            message = receive()
            if message.get("method") == "session/cancel":
                send({"id": rid, "result": {"stopReason": "cancelled"}})
                return
    while True:
        time.sleep(60)


def main() -> None:
    sessions = 0
    while True:
        message = receive()
        method, rid = message.get("method"), message.get("id")
        if MODE == "mute":
            continue
        if method == "initialize":
            send({"id": rid, "result": {"protocolVersion": 1,
                                        "agentCapabilities": {"loadSession": True}}})
        elif method == "session/new":
            sessions += 1
            send({"id": rid, "result": {"sessionId": f"s{sessions}"}})
        elif method == "session/prompt":
            prompt(rid, message["params"]["sessionId"])
        elif rid is not None:
            send({"id": rid, "error": {"code": -32601, "message": "no"}})


if __name__ == "__main__":
    main()
