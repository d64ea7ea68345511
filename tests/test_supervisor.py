"""The supervisor's keeping of output, on a real child."""

from __future__ import annotations

import os
import sys

import trio

from llmd.process.argv import Invocation
from llmd.process.supervisor import SEGMENT_CHARS, Attempt

# 6 Mi two-byte characters: 12 MiB of stdout in pipe-sized chunks.
CHARS = 6 << 20
WRITER = f"import sys; sys.stdout.buffer.write(('\\u00e9' * {CHARS}).encode())"


async def test_kept_stdout_ends_at_the_byte_cap_on_a_character_boundary() -> None:
    streamed: list[str] = []

    async def sink(stream: str, text: str) -> None:
        if stream == "stdout":
            streamed.append(text)

    cap = 9 * 1024 * 1024 + 1  # inside a character
    attempt = Attempt(Invocation([sys.executable, "-c", WRITER], None),
                      env={"PATH": os.defpath}, cwd=None, max_output_bytes=cap,
                      kill_grace=1.0, on_output=sink)
    with trio.fail_after(30):
        assert await attempt.run() == 0
    kept = attempt.stdout
    assert attempt.truncated is True
    # The half character at the cap is left out, not replaced.
    assert kept == "\u00e9" * (cap // 2)
    assert len(kept) > SEGMENT_CHARS  # kept across segments
    # Everything streamed, whole; text and output will be this one string.
    assert "".join(streamed) == "\u00e9" * CHARS
    assert attempt.stdout is kept


async def test_stdout_under_the_cap_is_kept_whole_with_a_cut_character_replaced() -> None:
    attempt = Attempt(Invocation([sys.executable, "-c",
                                  "import sys; sys.stdout.buffer.write(b'ok \\xe2\\x82')"],
                                 None),
                      env={"PATH": os.defpath}, cwd=None, max_output_bytes=1 << 20,
                      kill_grace=1.0)
    with trio.fail_after(30):
        assert await attempt.run() == 0
    assert attempt.truncated is False
    assert attempt.stdout == "ok \ufffd"
