"""Drivers: how one attempt of a run talks to a CLI.

The job manager decides what runs, when, how often and until when (admission, the queue,
retries, deadlines, records); a driver carries out one attempt: it starts the CLI, streams
its parsed text as it comes, can be cancelled, and ends with an :class:`Outcome`. Health
probes are attempts too, carried out by the one-shot driver. There are two drivers:
:mod:`llmd.drivers.oneshot` (a process per attempt) and
:mod:`llmd.drivers.warm` (the prompt handed to a CLI started ahead of need, one-shot when
none is ready; its policy is :mod:`llmd.drivers.pool`).

Invariants:
- Whatever the driver, an attempt's children live in process groups of their own that a
  cancellation kills (the supervisor's guarantee), and a rate-limit signal in the output
  ends the attempt at once with its verdict: the retry policy is the manager's, never the
  CLI's.
- The text a driver streams is the text the outcome keeps: streaming stops where the kept
  output stops (``max_output_bytes``).
- A driver raises only errors of the family (:mod:`llmd.errors`) for a spawn that fails,
  and ``trio.Cancelled`` when its scope is cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from llmd.config import Blueprint
from llmd.parsers import ParseResult
from llmd.parsers.ratelimit import Verdict
from llmd.process.argv import Invocation
from llmd.process.supervisor import Stream

TextSink = Callable[[Stream, str], Awaitable[None]]
"""Where an attempt's text goes as it comes: ``await sink(stream, text)``."""


class AttemptProcess(Protocol):
    """What is known of an attempt's CLI while it runs and once it has ended."""

    # Read-only here: the job manager only reads them; each process sets its own.
    @property
    def exit_code(self) -> int | None:
        """The exit status, once known."""

    @property
    def stderr_tail(self) -> str:
        """The end of what it wrote to stderr."""

    @property
    def truncated(self) -> bool:
        """Whether the kept stdout was cut at ``max_output_bytes``."""

    @property
    def duration(self) -> float:
        """Seconds it ran."""

    @property
    def stdout(self) -> str:
        """The stdout kept so far (up to ``max_output_bytes``)."""


class FollowCurrent:
    """An attempt's process as the job manager reads it: whichever one the attempt uses
    now (a warm process, a turn of an agent, or the one-shot process it fell back to).

    Args:
        current: Returns the process in use now.
    """

    def __init__(self, current: Callable[[], AttemptProcess]) -> None:
        self._current = current

    @property
    def exit_code(self) -> int | None:
        """The current process's exit status."""
        return self._current().exit_code

    @property
    def stderr_tail(self) -> str:
        """The current process's stderr tail."""
        return self._current().stderr_tail

    @property
    def truncated(self) -> bool:
        """Whether the current process's kept output was cut."""
        return self._current().truncated

    @property
    def duration(self) -> float:
        """The current process's duration."""
        return self._current().duration

    @property
    def stdout(self) -> str:
        """The current process's kept stdout."""
        return self._current().stdout


@dataclass(frozen=True)
class AttemptSpec:
    """One attempt, as the job manager asks for it.

    Attributes:
        blueprint: The blueprint's name (for messages and error data).
        bp: The blueprint (its parser, output cap and kill grace).
        invocation: The argv (its program found on the PATH) and stdin.
        env: The child's environment.
        cwd: The child's working directory (None: the daemon's).
        on_spawn: Told the pid of each child spawned (its process group's id).
        model: The model the run asked for (a warm process is started for one).
        session: The conversation the run resumes (a warm process is bound to one).
        edit: The run may edit its cwd (the blueprint's ``edit_args`` are in the argv).
    """

    blueprint: str
    bp: Blueprint
    invocation: Invocation
    env: Mapping[str, str]
    cwd: str | None
    on_spawn: Callable[[int], None]
    model: str | None = None
    session: str | None = None
    edit: bool = False


@dataclass
class Outcome:
    """How an attempt ended.

    Attributes:
        process: The CLI's exit status, kept output and stderr.
        parsed: What its output said (the answer's text, session, usage...).
        verdict: A rate limit or failure signalled in the output, which ended the attempt
            early; None when the attempt ran to its end (the manager classifies it then).
        warm: Served by a process started before the request.
    """

    process: AttemptProcess
    parsed: ParseResult
    verdict: Verdict | None
    warm: bool = False


class RunningAttempt(Protocol):
    """One attempt, made by a driver and run once."""

    @property
    def process(self) -> AttemptProcess:
        """The CLI of this attempt (readable while it runs, e.g. after a timeout)."""

    async def run(self, on_text: TextSink) -> Outcome:
        """Run the attempt to its end, streaming its text to ``on_text``."""


class Driver(Protocol):
    """A way of carrying out attempts."""

    def attempt(self, spec: AttemptSpec) -> RunningAttempt:
        """Prepare one attempt (nothing is started before :meth:`RunningAttempt.run`)."""
