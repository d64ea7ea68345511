"""Process facts from /proc and the killing of orphan process groups, on real processes.

Each test starts its own ``sleep`` processes in sessions of their own and always reaps
them; exits are awaited through pidfds or ``wait``, never by sleeping.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from llmd.process import procs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def start(spawned: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    spawned.append(child)
    return child


def start_shell(spawned: list[subprocess.Popen[bytes]], script: str) -> subprocess.Popen[bytes]:
    """A shell in a session of its own, returned once it printed its first line."""
    child = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    spawned.append(child)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    child.stdout.close()
    return child


def pidfds(pids: list[int]) -> list[int]:
    return [os.pidfd_open(pid) for pid in pids]


def wait_exits(fds: list[int]) -> None:
    """Block until every process behind ``fds`` (children of ours or not) has exited."""
    try:
        for fd in fds:
            readable, _, _ = select.select([fd], [], [], 10)
            assert readable, "a process is still alive"
    finally:
        for fd in fds:
            os.close(fd)


def test_start_time_and_identity(spawned: list[subprocess.Popen[bytes]]) -> None:
    child = start(spawned, "sleep", "1000")
    started = procs.process_start_time(child.pid)
    assert isinstance(started, int)
    assert started >= (procs.process_start_time(os.getpid()) or 0)
    assert procs.is_same_process(child.pid, started)
    assert not procs.is_same_process(child.pid, started + 1)
    assert procs.process_start_time(0) is None
    assert procs.process_start_time(2**22 + 1) is None  # above any pid_max
    assert not procs.is_same_process(2**22 + 1, None)
    assert procs.boot_id()


def test_comm_with_spaces_and_parentheses(spawned: list[subprocess.Popen[bytes]],
                                          tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    child = start(spawned, str(odd), "1000")
    assert procs.group_members(child.pid) == [child.pid]
    assert procs.process_start_time(child.pid) is not None


def test_group_members_of_a_session(spawned: list[subprocess.Popen[bytes]]) -> None:
    # Forked before the echo, the sleeps are in the group once the line arrives.
    child = start_shell(spawned, "sleep 1000 & sleep 1000 & echo ready; wait")
    members = procs.group_members(child.pid)
    assert len(members) == 3 and child.pid in members
    assert procs.group_members(0) == []


def test_kill_group_when_leader_matches(spawned: list[subprocess.Popen[bytes]]) -> None:
    child = start_shell(spawned, "sleep 1000 & sleep 1000 & echo ready; wait")
    started = procs.process_start_time(child.pid)
    assert started is not None
    fds = pidfds([pid for pid in procs.group_members(child.pid) if pid != child.pid])
    assert procs.kill_orphan_group(child.pid, started) == 3
    assert child.wait(timeout=10) == -signal.SIGKILL
    wait_exits(fds)


def test_reused_pid_is_not_killed(spawned: list[subprocess.Popen[bytes]]) -> None:
    child = start(spawned, "sleep", "1000")
    started = procs.process_start_time(child.pid)
    assert started is not None
    assert procs.kill_orphan_group(child.pid, started - 1) == 0
    assert procs.kill_orphan_group(child.pid, started + 1) == 0
    assert child.poll() is None


def test_members_outlive_their_leader(spawned: list[subprocess.Popen[bytes]]) -> None:
    leader = start_shell(spawned, "sleep 1000 & echo ready")
    leader_start = procs.process_start_time(leader.pid)
    assert leader_start is not None
    assert leader.wait(timeout=10) == 0  # reaped: the leader is gone, its group is not
    orphans = procs.group_members(leader.pid)
    assert len(orphans) == 1
    # A recorded start time later than every member's: nothing qualifies.
    assert procs.kill_orphan_group(leader.pid, 2**62) == 0
    assert procs.group_members(leader.pid) == orphans
    fds = pidfds(orphans)
    assert procs.kill_orphan_group(leader.pid, leader_start) == 1
    wait_exits(fds)


def test_never_our_own_group() -> None:
    own = os.getpgrp()
    assert procs.kill_orphan_group(own, procs.process_start_time(own) or 0) == 0
    assert procs.kill_orphan_group(os.getpid(), procs.process_start_time(os.getpid()) or 0) == 0
    assert procs.kill_orphan_group(1, 0) == 0
    assert procs.kill_orphan_group(0, 0) == 0


def test_gone_group(spawned: list[subprocess.Popen[bytes]]) -> None:
    child = start(spawned, "true")
    started = procs.process_start_time(child.pid) or 0
    child.wait(timeout=10)
    assert procs.kill_orphan_group(child.pid, started) == 0


def test_a_zombie_is_not_the_same_process(spawned: list[subprocess.Popen[bytes]]) -> None:
    child = start(spawned, "true")
    started = procs.process_start_time(child.pid)
    assert started is not None
    # Exited but not reaped: /proc still shows the pid, with its start time.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert procs.process_start_time(child.pid) == started
    assert procs.is_same_process(child.pid, started) is False
    assert procs.is_same_process(child.pid, None) is False
    me = os.getpid()
    assert procs.is_same_process(me, procs.process_start_time(me)) is True
