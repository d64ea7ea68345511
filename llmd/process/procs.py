"""Process facts from Linux ``/proc``, and killing the process groups a dead daemon left.

Invariants:
- A process is identified by (boot, pid, start time): a pid alone may have been reused.
  The start time is field 22 of ``/proc/PID/stat``, in clock ticks since boot.
- ``kill_orphan_group`` signals a group only when it can prove the group is the recorded
  one: its leader has the recorded start time, or (leader gone) each member started no
  earlier than the recorded leader. It never signals the calling process's own group.
- Nothing here raises for a process that vanished meanwhile: it simply is not there.
- A zombie is dead: it has exited, and only its parent has not reaped it yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Container, Iterable
from pathlib import Path

log = logging.getLogger("llmd.procs")

_PROC = "/proc"
# Fields of /proc/PID/stat counted from 1; the list after the comm's ")" starts at field 3.
_FIRST_FIELD_AFTER_COMM = 3
_STATE_FIELD = 3
_PGRP_FIELD = 5
# Zombie, dead: the process has exited, whatever its pid still shows.
_DEAD_STATES = frozenset({"Z", "X", "x"})
_STARTTIME_FIELD = 22


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from field 3 on, or None when it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses; it ends at the last ")".
    end = raw.rfind(b")")
    if end < 0:
        return None
    fields = raw[end + 1:].decode("ascii", "replace").split()
    if len(fields) <= _STARTTIME_FIELD - _FIRST_FIELD_AFTER_COMM:
        return None
    return fields


def _field(fields: list[str], number: int) -> int:
    return int(fields[number - _FIRST_FIELD_AFTER_COMM])


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when there is no such process.

    Args:
        pid: A process id.

    Returns:
        Field 22 (``starttime``) of ``/proc/PID/stat``, or None.
    """
    if pid <= 0:
        return None
    fields = _stat_fields(pid)
    return None if fields is None else _field(fields, _STARTTIME_FIELD)


def boot_id() -> str | None:
    """This boot's id (start times from another boot mean nothing), or None off Linux."""
    try:
        with open(f"{_PROC}/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def is_same_process(pid: int, starttime: int | None) -> bool:
    """Whether ``pid`` is alive (not a zombie) and is the process that started at
    ``starttime``.

    Args:
        pid: A process id.
        starttime: Its recorded start time; None means "unknown", and any live ``pid``
            then counts as the same process (the cautious answer).
    """
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is not None and fields[_STATE_FIELD - _FIRST_FIELD_AFTER_COMM] in _DEAD_STATES:
        return False  # a zombie (or dying) process has ended; only its parent has not looked
    if starttime is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return fields is not None and _field(fields, _STARTTIME_FIELD) == starttime


def _members_with_start(pgids: Container[int]) -> list[tuple[int, int]]:
    """(pid, start time) of every process in any of the groups ``pgids``: one pass over
    ``/proc``, whatever their number."""
    members: list[tuple[int, int]] = []
    try:
        names = os.listdir(_PROC)
    except OSError:
        return members
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None and _field(fields, _PGRP_FIELD) in pgids:
            members.append((int(name), _field(fields, _STARTTIME_FIELD)))
    members.sort()
    return members


def _group_members_with_start(pgid: int) -> list[tuple[int, int]]:
    return _members_with_start((pgid,))


def group_members(pgid: int) -> list[int]:
    """The pids of every process in process group ``pgid`` (zombies included), sorted.

    Args:
        pgid: A process group id.
    """
    if pgid <= 0:
        return []
    return [pid for pid, _ in _group_members_with_start(pgid)]


def groups_rss_bytes(pgids: Iterable[int]) -> int:
    """The resident memory of every process in the process groups ``pgids``, in bytes (a
    process gone meanwhile counts 0); ``/proc`` is read once for all of them."""
    wanted = {pgid for pgid in pgids if pgid > 0}
    if not wanted:
        return 0
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid, _ in _members_with_start(wanted):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"{_PROC}/{pid}/statm").read_text().split()[1]) * page
    return total


def _signal(pid: int, *, group: bool) -> bool:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        log.warning("cannot kill %s %d left by a previous daemon: %s",
                    "process group" if group else "process", pid, exc.strerror)
        return False
    return True


def kill_orphan_group(pgid: int, leader_starttime: int) -> int:
    """SIGKILL the process group a dead daemon's child led, if it is provably that group.

    Linux does not reuse a pid while a process group or session of that id exists, so a
    live group ``pgid`` whose leader is gone is the recorded group; the start times are
    checked anyway.

    Args:
        pgid: The recorded group id (the child's pid: children start a session of their own).
        leader_starttime: The child's recorded start time (see :func:`process_start_time`).

    Returns:
        How many processes were signalled (0 when the group is gone, the pid was reused,
        or the group is the caller's own).
    """
    if pgid <= 1 or pgid in (os.getpgrp(), os.getpid()):
        return 0
    members = _group_members_with_start(pgid)
    me = os.getpid()
    if any(pid == me for pid, _ in members):
        return 0
    leader_start = process_start_time(pgid)
    if leader_start is not None:
        if leader_start != leader_starttime:
            # The pid was reused: the recorded group cannot exist any more.
            return 0
        targets = {pid for pid, _ in members} | {pgid}
        if members:
            _signal(pgid, group=True)
        if pgid not in {pid for pid, _ in members}:
            _signal(pgid, group=False)
        return len(targets)
    eligible = [pid for pid, start in members if start >= leader_starttime]
    if not eligible:
        return 0
    if len(eligible) == len(members):
        # One killpg reaches every member at once; a member forking meanwhile cannot escape.
        return len(eligible) if _signal(pgid, group=True) else 0
    return sum(_signal(pid, group=False) for pid in eligible)
