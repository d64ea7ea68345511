"""Throughput of the output parsers on 100 MB of synthetic claude stream-json.

Run: ``python -m bench.bench_parsers [MB]``. Two mixes: partial-message deltas only (the
worst case: one small JSON line per token), and a mix with bulky tool results and whole
assistant messages. Input is fed in 64 KiB chunks, as the supervisor reads it.
"""

from __future__ import annotations

import json
import sys
import time

from llmd.parsers import TextDelta, make_parser

CHUNK = 65536
SESSION = "6f2567ee-063b-474f-a391-668fbfcdfd5f"


def delta_line(text: str) -> str:
    return json.dumps({"type": "stream_event", "event": {
        "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        "session_id": SESSION, "parent_tool_use_id": None,
        "uuid": "0f14574f-707a-46e5-ad26-55c64f6056df"}, separators=(",", ":"))


def build(target: int, mix: str) -> str:
    lines: list[str] = []
    size = 0
    i = 0
    while size < target:
        if mix == "mixed" and i % 50 == 0:
            line = json.dumps({"type": "user", "session_id": SESSION, "message": {
                "content": [{"type": "tool_result", "content": "x" * 20000}]}})
        elif mix == "mixed" and i % 50 == 1:
            line = json.dumps({"type": "assistant", "session_id": SESSION, "message": {
                "id": f"m{i}", "content": [{"type": "text", "text": "Some text. " * 20}]}})
        else:
            line = delta_line("word ")
        lines.append(line)
        size += len(line) + 1
        i += 1
    lines.append(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                             "result": "", "session_id": SESSION}))
    return "\n".join(lines) + "\n"


def measure(data: str) -> tuple[float, int]:
    parser = make_parser("claude-stream-json")
    start = time.perf_counter()
    streamed = 0
    for pos in range(0, len(data), CHUNK):
        for event in parser.feed(data[pos:pos + CHUNK]):
            if isinstance(event, TextDelta):
                streamed += len(event.text)
    _events, result = parser.finish()
    elapsed = time.perf_counter() - start
    assert len(result.text) == streamed
    return len(data.encode()) / elapsed / 1e6, streamed


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    for mix in ("deltas", "mixed"):
        data = build(megabytes * 1_000_000, mix)
        rate, streamed = measure(data)
        print(f"{mix:7} {len(data) / 1e6:6.1f} MB  {rate:6.1f} MB/s  ({streamed} chars of text)")


if __name__ == "__main__":
    main()
