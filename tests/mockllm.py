"""A local stand-in for the LLM providers' HTTP APIs, for driving the real CLIs offline.

It speaks just enough of four APIs for the real programs to complete a prompt:

- Anthropic Messages (``POST /v1/messages``, SSE when ``"stream": true``; ``HEAD /``)
  for ``claude``;
- OpenAI Responses (``POST /v1/responses``, SSE) for ``codex``;
- OpenAI Chat Completions (``POST /v1/chat/completions``, SSE or not) for ``openai``
  and ``llm``;
- Gemini (``POST /v1beta/models/M:streamGenerateContent?alt=sse``,
  ``:generateContent``, ``:countTokens``) for ``gemini``. A ``generateContent`` call
  that asks for JSON (``responseSchema`` / ``responseJsonSchema``, as gemini's model
  router does) gets an instance of that schema.

Every answer is :data:`ANSWER`, streamed as the pieces of :data:`ANSWER_PARTS`. Every
request is recorded (:attr:`MockLLM.requests`).

Several clients share one mock without seeing each other's settings: a path that
starts with a name other than an API version (``/claude/v1/messages``) belongs to the
client of that name, and the name is stripped before routing. Per client, a test can

- switch on a failure for the next model requests (:meth:`MockLLM.fail`,
  :meth:`MockLLM.hang`): HTTP 429 with ``Retry-After``, 500, or a request read and
  never answered;
- hold a streamed answer after its first piece until the test has seen that piece
  arrive (:meth:`MockLLM.gate`, :meth:`MockLLM.release`), so that a streaming client
  provably gets the answer in more than one piece;
- answer a Gemini request with a tool call (:meth:`MockLLM.tool_call`), so that the
  agent asks to use the tool.

A prompt holding ``MOCK-WRITE NAME TEXT`` (one word each) makes the Anthropic endpoint
ask for claude's ``Write`` tool first: ``NAME`` in the working directory the request's
system prompt names, holding ``TEXT`` and a newline; once the tool's result comes back,
the usual answer follows. Whether the file then exists is what claude's permission mode
decided.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

ANSWER = "Hello from the mock LLM server."
ANSWER_PARTS = ("Hello ", "from ", "the ", "mock ", "LLM ", "server.")
OUTPUT_TOKENS = len(ANSWER_PARTS)

_WRITE_RE = re.compile(r"MOCK-WRITE (\S+) (\S+)")
_CWD_RE = re.compile(r"[Ww]orking directory: (/\S+)")
_GEMINI_RE = re.compile(r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):(?P<verb>\w+)$")
_CLIENT_RE = re.compile(r"^/(?!v\d)(?P<client>[A-Za-z][\w.-]*)(?P<rest>/.*)?$")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a decoded JSON value (object keys excluded)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@dataclass(frozen=True)
class Request:
    """One request the mock received."""

    method: str
    path: str
    """The path, without the client's prefix and the query."""
    client: str | None
    """The client's name from the path's prefix, if it had one."""
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any

    @property
    def api(self) -> str:
        """Which API it spoke: ``anthropic``, ``responses``, ``chat``, ``gemini`` or ``other``."""
        if self.method != "POST":
            return "other"
        if self.path.endswith("/messages"):
            return "anthropic"
        if self.path.endswith("/responses"):
            return "responses"
        if self.path.endswith("/chat/completions"):
            return "chat"
        if _GEMINI_RE.match(self.path):
            return "gemini"
        return "other"

    @property
    def model(self) -> str | None:
        """The model the request asked for."""
        match = _GEMINI_RE.match(self.path)
        if match:
            return match.group("model")
        if isinstance(self.json, dict) and isinstance(self.json.get("model"), str):
            return str(self.json["model"])
        return None

    @property
    def streaming(self) -> bool:
        """Whether it asked for a streamed answer."""
        if self.path.endswith(":streamGenerateContent"):
            return True
        return isinstance(self.json, dict) and self.json.get("stream") is True

    def strings(self) -> list[str]:
        """Every string value in the JSON body."""
        return list(_strings(self.json))

    def has_text(self, text: str) -> bool:
        """Whether some string value of the body contains ``text``."""
        return any(text in s for s in _strings(self.json))


@dataclass
class Failure:
    """A failure the mock answers model requests with."""

    status: int
    """HTTP status, or 0: read the request and never answer."""
    times: int | None
    """How many model requests still fail; ``None``: all of them."""
    retry_after: str | None = None
    only: str | None = None
    """Fail only requests whose path contains this."""
    message: str | None = None
    """The error's message (else each API's usual one)."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Request] = field(default_factory=list)
    failures: dict[str | None, Failure] = field(default_factory=dict)
    gates: dict[str | None, threading.Event] = field(default_factory=dict)
    closing: threading.Event = field(default_factory=threading.Event)
    connections: set[socket.socket] = field(default_factory=set)
    delta_delay: float = 0.02
    tool_calls: dict[str | None, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class MockLLM:
    """The mock endpoint, on 127.0.0.1 and a free port, served by threads.

    Args:
        delta_delay: Pause between streamed pieces of the answer, in seconds.
    """

    def __init__(self, delta_delay: float = 0.0) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State(delta_delay=delta_delay)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="mockllm", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MockLLM:
        """Start serving."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, release hanging requests and drop every open connection."""
        state = self._server.state
        state.closing.set()
        with state.lock:
            gates = list(state.gates.values())
        for gate in gates:
            gate.set()
        self._server.shutdown()
        self._server.server_close()
        with state.lock:
            conns = list(state.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> MockLLM:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- what a test switches and reads ------------------------------------

    def fail(self, status: int, times: int | None = None, retry_after: float | None = None,
             only: str | None = None, client: str | None = None,
             message: str | None = None) -> None:
        """Answer the next ``times`` model requests (all when ``None``) with ``status``.

        Args:
            status: The HTTP status (429, 500, ...); 0 reads the request and never answers.
            times: How many requests fail before the mock answers again.
            retry_after: Seconds to send in a ``Retry-After`` header.
            only: Fail only requests whose path contains this (the others are answered
                and not counted).
            client: Fail only this client's requests; ``None``: every client's that has
                no failure of its own.
            message: The error's message in the body (else the API's usual one).
        """
        ra = None if retry_after is None else f"{retry_after:g}"
        with self._server.state.lock:
            self._server.state.failures[client] = Failure(status, times, ra, only, message)

    def hang(self, times: int | None = None, only: str | None = None,
             client: str | None = None) -> None:
        """Read the next ``times`` model requests and never answer them."""
        self.fail(0, times, only=only, client=client)

    def heal(self, client: str | None = None) -> None:
        """Answer ``client``'s requests (with ``None``: everyone's) normally again."""
        with self._server.state.lock:
            if client is None:
                self._server.state.failures.clear()
            else:
                self._server.state.failures.pop(client, None)

    def gate(self, client: str | None = None) -> None:
        """Hold ``client``'s streamed answers after their first piece until :meth:`release`."""
        with self._server.state.lock:
            self._server.state.gates[client] = threading.Event()

    def release(self, client: str | None = None) -> None:
        """Let ``client``'s held answers go on (and stop holding new ones)."""
        with self._server.state.lock:
            gate = self._server.state.gates.pop(client, None)
        if gate is not None:
            gate.set()

    def tool_call(self, name: str, args: dict[str, Any], client: str | None = None) -> None:
        """Answer ``client``'s next streamed Gemini request with a call of tool ``name``."""
        with self._server.state.lock:
            self._server.state.tool_calls.setdefault(client, []).append((name, args))

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in order."""
        with self._server.state.lock:
            return list(self._server.state.requests)

    def model_requests(self, api: str | None = None,
                       client: str | None = None) -> list[Request]:
        """The requests that asked a model for an answer (of one API or client, if given)."""
        return [r for r in self.requests
                if r.api != "other" and (api is None or r.api == api)
                and (client is None or r.client == client)
                and not r.path.endswith(":countTokens")]

    def saw_text(self, text: str, client: str | None = None) -> bool:
        """Whether some model request (of ``client``) carried ``text`` in one of its strings."""
        return any(r.has_text(text) for r in self.model_requests(client=client))


# --- protocol -----------------------------------------------------------------

def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _input_tokens(body: bytes) -> int:
    return max(1, len(body) // 4)


def schema_instance(schema: Any) -> Any:
    """A value that satisfies a JSON Schema or a Gemini ``Schema`` (first enum choices)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_instance(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind or "object").lower()
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {name: schema_instance(sub) for name, sub in props.items()}
    if kind == "array":
        return [schema_instance(schema.get("items"))] * int(schema.get("minItems", 0) or 0)
    if kind in ("integer", "number"):
        minimum = schema.get("minimum")
        return minimum if isinstance(minimum, (int, float)) else 1
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "mock"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # --- plumbing -------------------------------------------------------------

    def _record(self) -> Request:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() in ("gzip", "deflate", "zstd"):
            decoded: Any = None
        else:
            try:
                decoded = json.loads(body) if body else None
            except ValueError:
                decoded = None
        split = urlsplit(self.path)
        path, client = split.path, None
        match = _CLIENT_RE.match(path)
        if match:
            client, path = match.group("client"), match.group("rest") or "/"
        request = Request(method=self.command, path=path, client=client,
                          query=parse_qs(split.query),
                          headers={k.lower(): v for k, v in self.headers.items()},
                          body=body, json=decoded)
        with self.server.state.lock:
            self.server.state.requests.append(request)
        return request

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send_json(self, status: int, payload: Any,
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _pace(self, index: int, request: Request) -> None:
        """Before the answer's piece ``index``: pause between pieces, and after the
        first one wait while the client's answers are gated."""
        if index == 0:
            return
        state = self.server.state
        if index == 1:
            with state.lock:
                gate = state.gates.get(request.client)
            if gate is not None:
                gate.wait()  # set by release() or close()
        if state.delta_delay > 0:
            time.sleep(state.delta_delay)

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _take_failure(self, request: Request) -> Failure | None:
        state = self.server.state
        with state.lock:
            key = request.client if request.client in state.failures else None
            failure = state.failures.get(key)
            if failure is None or (failure.only is not None and failure.only not in request.path):
                return None
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del state.failures[key]
            return Failure(failure.status, None, failure.retry_after)

    def _next_id(self) -> str:
        return f"{next(self.server.state.ids):06d}"

    # --- verbs ----------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._record()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        request = self._record()
        if request.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [], "models": []})
            return
        self._not_found(request)

    def do_POST(self) -> None:
        request = self._record()
        api = request.api
        if api == "other":
            self._not_found(request)
            return
        failure = (None if request.path.endswith(":countTokens")
                   else self._take_failure(request))
        if failure is not None:
            self._fail(api, failure)
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if api == "anthropic":
                self._anthropic(request)
            elif api == "responses":
                self._responses(request)
            elif api == "chat":
                self._chat(request)
            else:
                self._gemini(request)

    def _not_found(self, request: Request) -> None:
        self._send_json(404, {"error": {"message": f"mock: no route for {request.method} "
                                                   f"{request.path}", "code": 404}})

    def _fail(self, api: str, failure: Failure) -> None:
        if failure.status == 0:
            # Read, never answered: the client waits until it gives up or is killed.
            self.server.state.closing.wait()
            self.close_connection = True
            return
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
        limited = failure.status == 429
        if api == "anthropic":
            kind = "rate_limit_error" if limited else "api_error"
            message = "Rate limit reached (mock)" if limited else "Internal server error (mock)"
            body: Any = {"type": "error", "error": {"type": kind, "message": message}}
        elif api == "gemini":
            body = {"error": {"code": failure.status,
                              "message": ("Resource has been exhausted (e.g. check quota)."
                                          if limited else "Internal error encountered."),
                              "status": "RESOURCE_EXHAUSTED" if limited else "INTERNAL"}}
        else:
            body = {"error": {"message": ("Rate limit reached for requests (mock)" if limited
                                          else "The server had an error (mock)"),
                              "type": "requests" if limited else "server_error",
                              "param": None,
                              "code": "rate_limit_exceeded" if limited else None}}
        if failure.message is not None:
            body["error"]["message"] = failure.message
        self._send_json(failure.status, body, headers)

    # --- Anthropic Messages ----------------------------------------------------

    def _anthropic(self, request: Request) -> None:
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model") or "claude-mock")
        msg_id = f"msg_mock_{self._next_id()}"
        usage = {"input_tokens": _input_tokens(request.body), "output_tokens": OUTPUT_TOKENS,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if request.streaming and self._ask_write(request, msg_id, model, usage):
            return
        if not request.streaming:
            self._send_json(200, {"id": msg_id, "type": "message", "role": "assistant",
                                  "model": model,
                                  "content": [{"type": "text", "text": ANSWER}],
                                  "stop_reason": "end_turn", "stop_sequence": None,
                                  "usage": usage})
            return
        self._start_stream()
        self._chunk(_sse("message_start", {
            "type": "message_start",
            "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {**usage, "output_tokens": 1}}}))
        self._chunk(_sse("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}))
        for i, part in enumerate(ANSWER_PARTS):
            self._pace(i, request)
            self._chunk(_sse("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": part}}))
        self._chunk(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        self._chunk(_sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": OUTPUT_TOKENS}}))
        self._chunk(_sse("message_stop", {"type": "message_stop"}))
        self._end_stream()

    def _ask_write(self, request: Request, msg_id: str, model: str,
                   usage: dict[str, int]) -> bool:
        """Answer with a ``Write`` tool call when the prompt asks for one (see the module)
        and no tool result has come back yet; False otherwise."""
        body = request.json if isinstance(request.json, dict) else {}
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        if not messages or '"tool_result"' in json.dumps(messages):
            return False
        wanted = next((m for m in map(_WRITE_RE.search, _strings(messages)) if m), None)
        cwd = next((m for m in map(_CWD_RE.search, request.strings()) if m), None)
        if wanted is None or cwd is None:
            return False
        tool_input = {"file_path": f"{cwd.group(1).rstrip('.')}/{wanted.group(1)}",
                      "content": wanted.group(2) + "\n"}
        self._start_stream()
        self._chunk(_sse("message_start", {
            "type": "message_start",
            "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {**usage, "output_tokens": 1}}}))
        self._chunk(_sse("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": f"toolu_mock_{self._next_id()}",
                              "name": "Write", "input": {}}}))
        self._chunk(_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": json.dumps(tool_input)}}))
        self._chunk(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        self._chunk(_sse("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": OUTPUT_TOKENS}}))
        self._chunk(_sse("message_stop", {"type": "message_stop"}))
        self._end_stream()
        return True

    # --- OpenAI Responses --------------------------------------------------------

    def _responses(self, request: Request) -> None:
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model") or "gpt-mock")
        n = self._next_id()
        resp_id, item_id = f"resp_mock_{n}", f"msg_mock_{n}"
        tokens_in = _input_tokens(request.body)
        usage = {"input_tokens": tokens_in, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": OUTPUT_TOKENS,
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": tokens_in + OUTPUT_TOKENS}
        done_item = {"id": item_id, "type": "message", "status": "completed",
                     "role": "assistant",
                     "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}
        response = {"id": resp_id, "object": "response", "created_at": int(time.time()),
                    "status": "in_progress", "model": model, "output": []}
        if not request.streaming:
            self._send_json(200, {**response, "status": "completed", "output": [done_item],
                                  "usage": usage})
            return
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            return _sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

        self._start_stream()
        self._chunk(event("response.created", response=response))
        self._chunk(event("response.in_progress", response=response))
        self._chunk(event("response.output_item.added", output_index=0, item={
            "id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
            "content": []}))
        self._chunk(event("response.content_part.added", item_id=item_id, output_index=0,
                          content_index=0,
                          part={"type": "output_text", "text": "", "annotations": []}))
        for i, part in enumerate(ANSWER_PARTS):
            self._pace(i, request)
            self._chunk(event("response.output_text.delta", item_id=item_id, output_index=0,
                              content_index=0, delta=part))
        self._chunk(event("response.output_text.done", item_id=item_id, output_index=0,
                          content_index=0, text=ANSWER))
        self._chunk(event("response.content_part.done", item_id=item_id, output_index=0,
                          content_index=0,
                          part={"type": "output_text", "text": ANSWER, "annotations": []}))
        self._chunk(event("response.output_item.done", output_index=0, item=done_item))
        self._chunk(event("response.completed", response={
            **response, "status": "completed", "output": [done_item], "usage": usage}))
        self._end_stream()

    # --- OpenAI Chat Completions -------------------------------------------------

    def _chat(self, request: Request) -> None:
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model") or "gpt-mock")
        chat_id = f"chatcmpl-mock{self._next_id()}"
        created = int(time.time())
        tokens_in = _input_tokens(request.body)
        usage = {"prompt_tokens": tokens_in, "completion_tokens": OUTPUT_TOKENS,
                 "total_tokens": tokens_in + OUTPUT_TOKENS}
        if not request.streaming:
            self._send_json(200, {
                "id": chat_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": ANSWER}}],
                "usage": usage})
            return

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            return _sse(None, {"id": chat_id, "object": "chat.completion.chunk",
                               "created": created, "model": model,
                               "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish}]})

        self._start_stream()
        self._chunk(chunk({"role": "assistant", "content": ""}, None))
        for i, part in enumerate(ANSWER_PARTS):
            self._pace(i, request)
            self._chunk(chunk({"content": part}, None))
        self._chunk(chunk({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            self._chunk(_sse(None, {"id": chat_id, "object": "chat.completion.chunk",
                                    "created": created, "model": model, "choices": [],
                                    "usage": usage}))
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()

    # --- Gemini -----------------------------------------------------------------

    def _gemini(self, request: Request) -> None:
        match = _GEMINI_RE.match(request.path)
        assert match is not None
        model, verb = match.group("model"), match.group("verb")
        tokens_in = _input_tokens(request.body)
        if verb == "countTokens":
            self._send_json(200, {"totalTokens": tokens_in})
            return
        usage = {"promptTokenCount": tokens_in, "candidatesTokenCount": OUTPUT_TOKENS,
                 "totalTokenCount": tokens_in + OUTPUT_TOKENS}
        response_id = f"mock{self._next_id()}"

        def reply(text: str, finish: str | None, counts: dict[str, int]) -> dict[str, Any]:
            candidate: dict[str, Any] = {
                "content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            return {"candidates": [candidate], "usageMetadata": counts,
                    "modelVersion": model, "responseId": response_id}

        if verb != "streamGenerateContent":
            body = request.json if isinstance(request.json, dict) else {}
            config = body.get("generationConfig")
            config = config if isinstance(config, dict) else {}
            schema = config.get("responseJsonSchema") or config.get("responseSchema")
            text = json.dumps(schema_instance(schema)) if schema else ANSWER
            self._send_json(200, reply(text, "STOP", usage))
            return
        with self.server.state.lock:
            calls = self.server.state.tool_calls.get(request.client)
            call = calls.pop(0) if calls else None
        self._start_stream()
        if call is not None:
            answer = reply("", "STOP", usage)
            answer["candidates"][0]["content"]["parts"] = [
                {"functionCall": {"name": call[0], "args": call[1]}}]
            self._chunk(_sse(None, answer))
            self._end_stream()
            return
        last = len(ANSWER_PARTS) - 1
        for i, part in enumerate(ANSWER_PARTS):
            counts = usage if i == last else {
                "promptTokenCount": tokens_in, "totalTokenCount": tokens_in}
            self._pace(i, request)
            self._chunk(_sse(None, reply(part, "STOP" if i == last else None, counts)))
        self._end_stream()
