"""The job state table, exhaustively: every pair of states, and the shape of the graph;
and the states as ``jobs.list`` takes them."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio

from llmd.errors import InternalError
from llmd.jobs.state import (
    ALL_STATES,
    FINAL_STATES,
    INITIAL_STATE,
    LIVE_STATES,
    TRANSITIONS,
    JobState,
    advance,
    can_follow,
)
from llmd.server.methods import MAX_LIST_LIMIT
from tests.harness import DaemonFactory, registry_toml

# Written out pair by pair, apart from the table's own shorthand.
ALLOWED: set[tuple[str, str]] = {
    ("queued", "running"), ("queued", "failed"), ("queued", "timed_out"),
    ("queued", "cancelled"), ("queued", "interrupted"),
    ("running", "retrying"), ("running", "succeeded"), ("running", "failed"),
    ("running", "timed_out"), ("running", "cancelled"), ("running", "interrupted"),
    ("retrying", "running"), ("retrying", "failed"), ("retrying", "timed_out"),
    ("retrying", "cancelled"), ("retrying", "interrupted"),
}


def test_the_states_are_the_documented_eight() -> None:
    assert sorted(ALL_STATES) == sorted(["queued", "running", "retrying", "succeeded",
                                         "failed", "timed_out", "cancelled", "interrupted"])
    assert sorted(FINAL_STATES) == sorted(["succeeded", "failed", "timed_out", "cancelled",
                                           "interrupted"])
    assert sorted(LIVE_STATES) == sorted(["queued", "running", "retrying"])
    assert set(TRANSITIONS) == ALL_STATES
    assert INITIAL_STATE == "queued"


@pytest.mark.parametrize(("current", "new"), sorted(itertools.product(ALL_STATES, repeat=2)))
def test_every_pair(current: JobState, new: JobState) -> None:
    allowed = (current, new) in ALLOWED
    assert can_follow(current, new) is allowed
    if allowed:
        assert advance(current, new) == new
    else:
        with pytest.raises(InternalError) as info:
            advance(current, new)
        assert info.value.code == -32603
        assert f"from {current} to {new}" in info.value.message


def test_nothing_follows_a_final_state_and_every_live_one_can_end() -> None:
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
    for state in LIVE_STATES:
        assert TRANSITIONS[state] & FINAL_STATES, state
        # A deadline, a cancel or a shutdown never waits for an attempt.
        assert {"failed", "timed_out", "cancelled", "interrupted"} <= TRANSITIONS[state]


def test_every_state_is_reached_from_the_start_and_succeeded_only_by_running() -> None:
    seen = {INITIAL_STATE}
    frontier = [INITIAL_STATE]
    while frontier:
        for new in TRANSITIONS[frontier.pop()]:
            if new not in seen:
                seen.add(new)
                frontier.append(new)
    assert seen == ALL_STATES
    assert {s for s in ALL_STATES if "succeeded" in TRANSITIONS[s]} == {"running"}
    assert {s for s in ALL_STATES if "retrying" in TRANSITIONS[s]} == {"running"}
    assert not any(INITIAL_STATE in TRANSITIONS[s] for s in ALL_STATES)


async def test_jobs_list_takes_only_job_states_and_bounded_limits(
        daemon_factory: DaemonFactory, fake_bin: Path) -> None:
    d = await daemon_factory(registry_toml(fake_bin, {
        "echo": {"command": ["@fakecli", "stdin"], "prompt": "stdin"}}))
    client = await d.connect()
    with trio.fail_after(20):
        for n, (params, path) in enumerate([
                ({"state": "done"}, "$.state"), ({"limit": 0}, "$.limit"),
                ({"limit": MAX_LIST_LIMIT + 1}, "$.limit"), (["finished"], "$[0]")]):
            reply = await client.call("jobs.list", params, id=n)
            assert reply["error"]["code"] == -32602, reply
            assert reply["error"]["data"]["path"] == path, reply
        await client.call("llm.run", {"blueprint": "echo", "prompt": "x"}, id="run")
        for state in sorted(ALL_STATES):
            reply = await client.call("jobs.list", {"state": state, "limit": MAX_LIST_LIMIT},
                                      id=state)
            assert [job["state"] for job in reply["result"]["jobs"]] == (
                ["succeeded"] if state == "succeeded" else []), reply
