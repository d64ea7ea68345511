"""The process groups llmd starts: signalling and ending one, and listing those that
outlive any job (warm processes, agents) so that a daemon started after a crash kills
what its predecessor left.

Invariants:
- Every child llmd starts leads a process group of its own (a new session); a group is
  signalled through its leader's pid, and signalling a group that is gone is a no-op.
- A group is ended as SIGTERM, ``grace`` seconds, SIGKILL, then a bounded wait for the
  leader: shielded by the callers, it never hangs a shutdown.
- The leader is waited for through a pidfd without reaping it where the kernel has
  them, so while its group is signalled the zombie leader keeps the pgid from reuse.
- :class:`OwnedGroups` writes the file whole and atomically (a temporary file renamed
  over it) on every change, with the boot id; :func:`kill_leftovers` believes only a
  file of this boot and signals a group only when it is provably the recorded one
  (:func:`llmd.process.procs.kill_orphan_group`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import trio

from llmd.process import procs

log = logging.getLogger("llmd.groups")

_HAS_PIDFD = hasattr(os, "pidfd_open")


def signal_group(pgid: int | None, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``; nothing when it is gone (or None)."""
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def open_pidfd(pid: int) -> int:
    """A pidfd for ``pid``, or -1 (no pidfd on this kernel, or out of descriptors: the
    child is ours all the same and is waited for by reaping)."""
    if not _HAS_PIDFD:  # pragma: no cover - kernels before 5.3
        return -1
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


async def leader_exited(proc: trio.Process, pidfd: int) -> None:
    """Wait until the group's leader has exited (not reaped, where ``pidfd`` is one)."""
    if pidfd >= 0:
        await trio.lowlevel.wait_readable(pidfd)
    else:  # reaping first is racy (the pgid may be reused) but such kernels are rare
        await proc.wait()


async def end_group(proc: trio.Process, pidfd: int, grace: float) -> None:
    """SIGTERM the group ``proc`` leads, give it ``grace`` seconds, then SIGKILL it and
    wait (bounded) for the leader. Call it shielded."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        with trio.move_on_after(grace):
            await leader_exited(proc, pidfd)
    # Whatever the leader left behind would outlive it.
    signal_group(proc.pid, signal.SIGKILL)
    with trio.move_on_after(grace + 1.0):
        await leader_exited(proc, pidfd)


async def close_streams(proc: trio.Process) -> None:
    """Close ``proc``'s pipes, whatever state they are in."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()


class OwnedGroups:
    """The live process groups that outlive any job, listed in a file for crash recovery.

    Args:
        path: The file (beside the socket); None keeps the list in memory only.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.groups: dict[int, int] = {}
        """pgid -> its leader's start time."""
        self._boot = procs.boot_id() if path is not None else None

    def add(self, pgid: int) -> None:
        """List the group ``pgid`` leads (its leader just started)."""
        starttime = procs.process_start_time(pgid)
        if starttime is None:
            return  # already gone: nothing to recover
        self.groups[pgid] = starttime
        self._write()

    def discard(self, pgid: int | None) -> None:
        """Drop the group ``pgid`` (it ended)."""
        if pgid is not None and self.groups.pop(pgid, None) is not None:
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        doc = {"boot": self._boot,
               "groups": [[pgid, start] for pgid, start in sorted(self.groups.items())]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc.strerror or exc)


def kill_leftovers(path: Path) -> int:
    """Kill the process groups a daemon that died left (same boot, same start times);
    return how many processes were killed. The file is removed."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    killed = 0
    if isinstance(doc, dict) and doc.get("boot") == procs.boot_id():
        for entry in doc.get("groups") or ():
            if (isinstance(entry, list) and len(entry) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)):
                killed += procs.kill_orphan_group(entry[0], entry[1])
    with contextlib.suppress(OSError):
        path.unlink()
    if killed:
        log.info("killed %d processes of warm process groups left by a previous llmd",
                 killed)
    return killed
