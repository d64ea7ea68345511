"""The one-shot driver: a CLI process per attempt, its output parsed as it comes.

Invariants:
- One supervised process group per attempt (:class:`~llmd.process.supervisor.Attempt`);
  cancelling :meth:`OneShotAttempt.run` kills the whole group before it returns.
- The first signal in the output that is not ``ok`` (a rate limit, a login error) ends
  the attempt at once: the CLI would retry internally for minutes.
- Plain text needs no parser: its answer is the kept stdout itself. A structured answer
  longer than ``max_output_bytes`` is cut there and the outcome says ``truncated``.
- Streamed stdout stops where the kept output does, so the streamed text always adds up
  to (a start of) the answer.
- A spawn that fails is -32602 when the run's ``cwd`` vanished while it waited, -32006
  when the daemon is out of processes or descriptors, else -32002.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import trio

from llmd.drivers import AttemptProcess, AttemptSpec, Outcome, TextSink
from llmd.errors import Busy, ExecutableMissing, InvalidParams
from llmd.parsers import Event, Signal, TextDelta, make_parser
from llmd.parsers.ratelimit import Verdict
from llmd.process.supervisor import Attempt, Stream

# Spawn failures that say the daemon, not the CLI, ran out of something.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})
_NO_LIMIT = 1 << 62


class OneShot:
    """The driver that starts a process for every attempt.

    Args:
        attempt_factory: Builds the supervised child, called like
            :class:`~llmd.process.supervisor.Attempt` (tests swap in a scripted stand-in).
    """

    def __init__(self, attempt_factory: Callable[..., Attempt] = Attempt) -> None:
        self.attempt_factory = attempt_factory

    def attempt(self, spec: AttemptSpec) -> OneShotAttempt:
        """Prepare one attempt."""
        return OneShotAttempt(spec, self.attempt_factory)


class OneShotAttempt:
    """One attempt: one process, run once by :meth:`run`."""

    def __init__(self, spec: AttemptSpec, attempt_factory: Callable[..., Attempt]) -> None:
        self.spec = spec
        self._parser = make_parser(spec.bp.parser)
        # Plain text needs no parsing, and its answer is the kept stdout itself.
        self._plain = spec.bp.parser == "text"
        self._early: list[Verdict] = []
        self._scope = trio.CancelScope()
        self._streamed = 0  # characters of stdout streamed so far
        self._on_text: TextSink | None = None
        self.spawn_error: OSError | None = None
        """Why the process could not be started (the error raised says it for a run)."""
        self._process = attempt_factory(
            spec.invocation, env=spec.env, cwd=spec.cwd,
            max_output_bytes=spec.bp.max_output_bytes, kill_grace=spec.bp.kill_grace,
            on_output=self._on_output, on_spawn=spec.on_spawn)

    @property
    def process(self) -> AttemptProcess:
        """The supervised child."""
        return self._process

    async def run(self, on_text: TextSink) -> Outcome:
        """Run the process to its end (or to its first bad signal).

        Raises:
            InvalidParams: The run's ``cwd`` is gone (-32602).
            Busy: The daemon is out of processes or descriptors (-32006).
            ExecutableMissing: The program cannot be run (-32002).
        """
        self._on_text = on_text
        spec, process = self.spec, self._process
        try:
            with self._scope:
                try:
                    await process.run()
                except OSError as exc:
                    self.spawn_error = exc
                    raise _spawn_failure(spec, exc) from None
        finally:
            # The process and this attempt refer to each other (its on_output is ours): cut
            # that, so that what it kept goes when the job lets go of it, not at a later
            # garbage collection.
            process.on_output = None
        events, parsed = self._parser.finish()
        if self._plain:
            parsed.text = process.stdout
        elif len(parsed.text) > spec.bp.max_output_bytes:
            parsed.text = parsed.text[:spec.bp.max_output_bytes]
            process.truncated = True
        if not self._early:
            await self._forward("stdout", events)
        return Outcome(process, parsed, self._early[0] if self._early else None)

    async def _on_output(self, stream: Stream, text: str) -> None:
        events: list[Event]
        if stream == "stderr":
            # Some CLIs tell of their internal retries on stderr only (gemini).
            events = [TextDelta(text), *self._parser.feed_stderr(text)]
        elif self._plain:
            events = [TextDelta(text)]
        else:
            events = self._parser.feed(text)
        await self._forward(stream, events)

    async def _forward(self, stream: Stream, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Signal):
                if event.verdict.kind != "ok" and not self._early:
                    # The CLI would retry internally for minutes; the retry policy is ours.
                    self._early.append(event.verdict)
                    self._scope.cancel()
                continue
            text = event.text
            if not text or self._on_text is None:
                continue
            if stream == "stdout":
                # The stream stops where the kept text does (max_output_bytes).
                room = self._room()
                if len(text) > room:
                    text = text[:room]
                    if not text:
                        continue
                self._streamed += len(text)
            await self._on_text(stream, text)

    def _room(self) -> int:
        """How many more characters of stdout may stream."""
        process = self._process
        if self._plain:
            if not process.truncated:
                return _NO_LIMIT  # everything so far is kept
            return process.kept_chars - self._streamed
        return self.spec.bp.max_output_bytes - self._streamed


def _spawn_failure(spec: AttemptSpec, exc: OSError) -> Exception:
    cwd = spec.cwd
    if cwd is not None and not os.path.isdir(cwd):
        # Checked at admission; gone while the job waited.
        return InvalidParams(f"cwd {cwd!r} does not exist any more",
                             {"blueprint": spec.blueprint, "cwd": cwd})
    if exc.errno in _OUT_OF_RESOURCES:
        return Busy(f"llmd cannot start {spec.blueprint!r} now: {exc.strerror}; "
                    "try again later", {"blueprint": spec.blueprint})
    program = spec.invocation.argv[0]
    return ExecutableMissing(f"{spec.blueprint!r}: cannot run {program!r}: "
                             f"{exc.strerror or exc}",
                             {"blueprint": spec.blueprint, "executable": program})
