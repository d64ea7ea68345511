"""A git worktree per job: the run works on a detached copy, its changes come back as a diff.

A run with ``isolate: "worktree"`` gets ``git worktree add --detach`` of its base commit
under ``worktrees/JOB`` beside the job store, and works in the same subdirectory there as
its ``cwd`` was in the user's checkout. When it ends, what it changed (committed or not,
untracked files included) is measured against the base; ``jobs.diff`` shows it,
``jobs.apply`` merges it into the user's checkout, ``jobs.discard`` throws it away.

Invariants:
- git runs as an argv (never a shell) with a scrubbed environment: no ``GIT_*`` variable
  of the daemon's reaches it except those set here (a temporary index, the identity of the
  base commits), so a ``GIT_DIR`` of the user's cannot redirect a command.
- The user's checkout, index, stash, refs and branches are never changed by a run or by a
  diff: bases are dangling commits made through a temporary index. Only ``jobs.apply``
  writes to the checkout, and then only the working-tree files a clean merge changes.
- ``git worktree`` commands (and applies) on one repository are serialised (one lock per
  common git directory).
- A merge with a conflict applies nothing (the merge is computed with ``git merge-tree``
  before any file is touched).
- Each worktree has a sidecar ``JOB.json`` beside it: the record of its state
  (``unapplied``, ``applied``, ``discarded``), which survives a daemon crash. A worktree
  with unapplied changes is removed only by ``jobs.discard`` or when its job record is
  pruned, and that removal is logged (WARNING) with its path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec
import trio

from llmd.errors import ApplyConflict, InvalidParams, NoSuchJob
from llmd.jobs.records import WorktreeInfo
from llmd.paths import write_atomically

log = logging.getLogger("llmd.worktree")

# What the base commits made for "working-tree" say about themselves.
_IDENTITY = {"GIT_AUTHOR_NAME": "llmd", "GIT_AUTHOR_EMAIL": "llmd@localhost",
             "GIT_COMMITTER_NAME": "llmd", "GIT_COMMITTER_EMAIL": "llmd@localhost"}
# Kept from the daemon's environment: what git needs to find itself, its config and ssh.
_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "XDG_CONFIG_HOME", "USER",
         "LOGNAME", "SSH_AUTH_SOCK")
MAX_DIFF_CHARS = 16 << 20


class Sidecar(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What is kept on disk beside a worktree (``JOB.json``)."""

    job: str
    info: WorktreeInfo
    checkout: str
    """The top of the user's checkout, where ``jobs.apply`` writes."""
    common_dir: str
    """The repository's common git directory (the lock's key)."""
    cwd: str
    """Where the run works inside the worktree."""
    created_at: float


def git_env(environ: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment of a git command: the few variables git needs, nothing of
    ``GIT_*`` but ``extra``, no pager, no prompt for credentials."""
    env = {key: environ[key] for key in _KEEP if key in environ}
    env.setdefault("PATH", os.defpath)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    env.update(extra)
    return env


class GitFailed(Exception):
    """A git command exited non-zero (its stderr is the message)."""


class Location(NamedTuple):
    """Where a ``cwd`` is in its repository (see :meth:`Worktrees.locate`)."""

    top: str
    """The top of the work tree."""
    common_dir: str
    """The common git directory."""
    prefix: str
    """``cwd`` relative to the top (``""`` at the top)."""


class Worktrees:
    """The worktrees of the jobs of one job store.

    Args:
        root: Their directory (``worktrees`` beside the job store).
        environ: The daemon's environment (scrubbed for git).
    """

    def __init__(self, root: Path, environ: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.environ = dict(os.environ if environ is None else environ)
        self._locks: dict[str, trio.Lock] = {}
        self.sidecars: dict[str, Sidecar] = {}
        self._concluded: dict[str, trio.Event] = {}
        self._program: str | None = None

    # --- git ---------------------------------------------------------------

    def _git_program(self) -> str:
        """git's path, looked up on the PATH once it is found (until it fails to start)."""
        if self._program is None:
            found = shutil.which("git", path=self.environ.get("PATH", os.defpath))
            if found is None:
                return "git"  # not kept: a git installed later is found at the next call
            self._program = found
        return self._program

    async def _git(self, args: list[str], cwd: str | Path, *, stdin: bytes | None = None,
                   check: bool = True, env: Mapping[str, str] | None = None,
                   ) -> subprocess.CompletedProcess[bytes]:
        try:
            done = await trio.run_process([self._git_program(), *args], cwd=str(cwd),
                                          stdin=stdin or b"", capture_stdout=True,
                                          capture_stderr=True, check=False,
                                          env=git_env(self.environ, **(env or {})))
        except FileNotFoundError:
            self._program = None  # git moved or went (or cwd did): looked up again next time
            raise
        if check and done.returncode != 0:
            raise GitFailed(done.stderr.decode("utf-8", "replace").strip()
                            or f"git {args[0]} exited {done.returncode}")
        return done

    async def _out(self, args: list[str], cwd: str | Path,
                   env: Mapping[str, str] | None = None) -> str:
        return (await self._git(args, cwd, env=env)).stdout.decode("utf-8", "surrogateescape")

    def _lock(self, common_dir: str) -> trio.Lock:
        return self._locks.setdefault(common_dir, trio.Lock())

    # --- admission ---------------------------------------------------------

    async def locate(self, cwd: str) -> Location:
        """Where ``cwd`` is in its repository.

        Returns:
            The top of the work tree, the common git directory, and ``cwd`` relative to
            the top (``""`` at the top).

        Raises:
            InvalidParams: ``cwd`` is not inside a git work tree (a bare repository and a
                ``.git`` directory are not).
        """
        def refused(why: str) -> InvalidParams:
            return InvalidParams(f"isolate \"worktree\" needs a cwd inside a git work tree; "
                                 f"{cwd!r} is {why}", {"cwd": cwd})

        try:
            where = (await self._out(["rev-parse", "--is-inside-work-tree"], cwd)).strip()
            if where != "true":
                raise refused("in a bare repository or a .git directory")
            out = await self._out(["rev-parse", "--show-toplevel", "--path-format=absolute",
                                   "--git-common-dir", "--show-prefix"], cwd)
        except (GitFailed, OSError) as exc:
            raise refused(f"not ({_first_line(exc)})") from None
        lines = ["true", *out.split("\n")]
        if len(lines) < 4:
            raise refused("not (git said nothing of it)")
        return Location(lines[1], lines[2], lines[3].rstrip("/"))

    async def check(self, cwd: str, base: str | None) -> Location:
        """Refuse now what :meth:`create` would refuse later: a ``cwd`` outside a git work
        tree, a ``base`` that names no commit.

        Returns:
            Where ``cwd`` is, for :meth:`create`.

        Raises:
            InvalidParams: Saying which.
        """
        where = await self.locate(cwd)
        if base not in (None, "head", "working-tree"):
            await self._base(where.top, base, self.root)  # a ref: resolved, nothing written
        return where

    async def _base(self, top: str, base: str, scratch: Path) -> str:
        """The commit a worktree starts from (see API.md ``base``)."""
        if base == "head":
            ref = "HEAD"
        elif base == "working-tree":
            return await self.snapshot(top, scratch)
        else:
            if base.startswith("-") or "\x00" in base:
                raise InvalidParams(f"base {base!r} is not a ref", {"param": "base"})
            ref = base
        try:
            return (await self._out(["rev-parse", "--verify", "--quiet", "--end-of-options",
                                     f"{ref}^{{commit}}"], top)).strip()
        except GitFailed:
            raise InvalidParams(f"base {base!r} names no commit in {top!r}",
                                {"param": "base"}) from None

    async def snapshot(self, top: str, scratch: Path) -> str:
        """A dangling commit of the checkout as it is: staged, unstaged and untracked
        (not ignored) files. ``git stash create`` takes the tracked changes without
        touching the checkout, the index or the stash; the untracked files are added on
        top through a temporary index."""
        head = (await self._out(["rev-parse", "--verify", "HEAD^{commit}"], top)).strip()
        # On a copy of the index: stash create refreshes the one it reads and writes it back.
        own = Path((await self._out(["rev-parse", "--path-format=absolute", "--git-path",
                                     "index"], top)).strip())
        copy = scratch / "user-index"
        if own.exists():
            shutil.copy2(own, copy)  # mtime kept: see _tree
        stash = (await self._out(["stash", "create"], top,
                                 env={"GIT_INDEX_FILE": str(copy), **_IDENTITY})).strip()
        copy.unlink(missing_ok=True)
        commit = stash or head
        untracked = (await self._git(["ls-files", "-z", "--others", "--exclude-standard"],
                                     top)).stdout
        if not untracked:
            return commit
        index = scratch / "index"
        env = {"GIT_INDEX_FILE": str(index), **_IDENTITY}
        try:
            await self._git(["read-tree", commit], top, env=env)
            await self._git(["update-index", "--add", "-z", "--stdin"], top,
                            stdin=untracked, env=env)
            tree = (await self._out(["write-tree"], top, env=env)).strip()
        finally:
            index.unlink(missing_ok=True)
        return (await self._out(["commit-tree", tree, "-p", commit, "-m",
                                 "llmd: working tree with untracked files"], top,
                                env=env)).strip()

    async def create(self, job: str, cwd: str, base: str,
                     where: Location | None = None) -> Sidecar:
        """Add the job's worktree (``git worktree add --detach``).

        Args:
            job: The job's id (the worktree's name).
            cwd: The run's ``cwd`` in the user's checkout.
            base: ``"head"``, ``"working-tree"`` or a ref.
            where: Where ``cwd`` is, as :meth:`check` found it at admission (None: it
                is located now).

        Returns:
            Its sidecar; the run works in ``cwd`` of it.

        Raises:
            InvalidParams: Not a git work tree, or ``base`` names no commit.
        """
        if where is None or not os.path.isdir(where.top):
            # Not located at admission, or the checkout went while the job waited: refused
            # as admission would refuse it now.
            where = await self.locate(cwd)
        top, common, prefix = where
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.root / job
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".base-") as scratch:
            commit = await self._base(top, base, Path(scratch))
        run_cwd = path / prefix if prefix else path
        sidecar = Sidecar(job=job, info=WorktreeInfo(path=str(path), base=commit),
                          checkout=top, common_dir=common, cwd=str(run_cwd),
                          created_at=time.time())
        # Written first: a crash during the add still leaves what recovery needs to know.
        self._save(sidecar)
        async with self._lock(common):
            try:
                # --no-checkout then a checkout would be two passes; one add is the fastest.
                await self._git(["worktree", "add", "--detach", "--quiet", "--", str(path),
                                 commit], top)
            except GitFailed as exc:
                self._forget(job)
                raise InvalidParams(f"git worktree add failed: {_first_line(exc)}",
                                    {"cwd": cwd}) from None
        run_cwd.mkdir(parents=True, exist_ok=True)  # a subdirectory the base lacks
        log.info("job %s: worktree %s at %s", job, path, commit[:12])
        return sidecar

    # --- what changed ------------------------------------------------------

    async def _tree(self, sidecar: Sidecar, scratch: Path) -> str:
        """The tree of the worktree as it is (committed or not, untracked included),
        written through a temporary index so the worktree's own stays as the agent left it."""
        path = sidecar.info.path
        index = scratch / "index"
        own = (await self._out(["rev-parse", "--path-format=absolute", "--git-path", "index"],
                               path)).strip()
        if os.path.exists(own):
            # Its stat data spares rehashing unchanged files; its own mtime (kept) is what
            # lets git tell a racily clean entry from a clean one.
            shutil.copy2(own, index)
        env = {"GIT_INDEX_FILE": str(index)}
        if not os.path.exists(own):
            await self._git(["read-tree", "HEAD"], path, env=env)
        await self._git(["add", "--all", "--", "."], path, env=env)
        return (await self._out(["write-tree"], path, env=env)).strip()

    async def settle(self, job: str) -> WorktreeInfo:
        """Measure what the job changed against its base and keep it in the sidecar.

        Raises:
            NoSuchJob: The job has no worktree.
        """
        sidecar = self.get(job)
        if sidecar.info.status != "unapplied" or not os.path.isdir(sidecar.info.path):
            return sidecar.info
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".diff-") as scratch:
            tree = await self._tree(sidecar, Path(scratch))
        out = await self._out(["diff", "--numstat", "-z", "--no-renames", sidecar.info.base,
                               tree], sidecar.info.path)
        files: list[str] = []
        plus = minus = 0
        for item in out.split("\x00"):
            if not item:
                continue
            added, removed, name = item.split("\t", 2)
            files.append(name)
            plus += int(added) if added.isdigit() else 0
            minus += int(removed) if removed.isdigit() else 0
        info = msgspec.structs.replace(sidecar.info, changed_files=len(files),
                                       insertions=plus, deletions=minus, files=tuple(files))
        self._save(msgspec.structs.replace(sidecar, info=info))
        return info

    async def conclude(self, job: str, *, measure: bool = True) -> None:
        """Measure a job's worktree once the job has ended (unless ``measure`` is False:
        it was, with its result); whatever happens, :meth:`concluded` returns after."""
        try:
            # NoSuchJob: pruned meanwhile, nothing left to measure.
            with contextlib.suppress(GitFailed, OSError, NoSuchJob):
                if measure:
                    await self.settle(job)
        finally:
            self._concluded.setdefault(job, trio.Event()).set()
            if job not in self.sidecars:  # discarded meanwhile: nothing left to wait for
                self._concluded.pop(job, None)

    async def concluded(self, job: str) -> None:
        """Return once :meth:`conclude` has measured the ended job's worktree (at once
        when the job has no worktree, or it was forgotten)."""
        if job in self.sidecars:
            await self._concluded.setdefault(job, trio.Event()).wait()

    async def diff(self, job: str, *, binary: bool = False) -> str:
        """The unified diff of the job's changes against its base (binary files named,
        not inlined, unless ``binary``).

        Raises:
            NoSuchJob: No worktree (any more) for this job.
        """
        sidecar = self._present(job)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".diff-") as scratch:
            tree = await self._tree(sidecar, Path(scratch))
        args = ["diff", "--no-color", "--no-ext-diff", "--no-renames"]
        if binary:
            args.append("--binary")
        return await self._out([*args, sidecar.info.base, tree], sidecar.info.path)

    # --- apply, discard ----------------------------------------------------

    async def apply(self, job: str) -> dict[str, object]:
        """Merge the job's changes into the user's checkout, three-way against the base.

        The merge is computed first (``git merge-tree``) between the checkout as it is
        and the worktree; only a clean merge is written, and then only the working-tree
        files it changes (the index, refs and branches stay as they are).

        Raises:
            ApplyConflict: Both sides changed the same lines; nothing was applied.
            NoSuchJob: No unapplied worktree for this job.
        """
        sidecar = self._present(job)
        info = await self.settle(job)
        top = sidecar.checkout
        overlap = self._overlapping(job, info.files)
        async with self._lock(sidecar.common_dir):
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".apply-") as scratch:
                theirs_tree = await self._tree(sidecar, Path(scratch))
                mine = await self.snapshot(top, Path(scratch))
                # Both sides as children of the base: merge-tree then merges against it.
                ours = (await self._out(["commit-tree", f"{mine}^{{tree}}", "-p", info.base,
                                         "-m", "llmd: checkout"], top, env=_IDENTITY)).strip()
                theirs = (await self._out(["commit-tree", theirs_tree, "-p", info.base, "-m",
                                           f"llmd: job {job}"], top, env=_IDENTITY)).strip()
            merged = await self._git(["merge-tree", "--write-tree", "--name-only",
                                      "--no-messages", ours, theirs], top, check=False,
                                     env=_IDENTITY)
            lines = merged.stdout.decode("utf-8", "surrogateescape").splitlines()
            if merged.returncode == 1:
                conflicts = sorted(set(lines[1:]))
                who = {f: overlap[f] for f in conflicts if f in overlap}
                also = (" (also changed by applied job"
                        + "".join(f" {j}" for j in sorted(set(who.values()))) + ")"
                        if who else "")
                raise ApplyConflict(
                    f"job {job}'s changes conflict with the checkout in "
                    f"{', '.join(conflicts)}{also}; nothing was applied",
                    {"job": job, "conflicts": conflicts, "applied_by": who})
            if merged.returncode != 0 or not lines:
                raise GitFailed(merged.stderr.decode("utf-8", "replace").strip())
            tree = lines[0]
            patch = (await self._git(["diff", "--binary", "--no-color", "--no-ext-diff",
                                      "--no-renames", ours, tree], top)).stdout
            if patch:
                await self._git(["apply", "--whitespace=nowarn", "-"], top, stdin=patch)
        self._save(msgspec.structs.replace(
            self.get(job), info=msgspec.structs.replace(info, status="applied")))
        await self.remove(job)
        return {"job": job, "applied": True, "files": list(info.files),
                "overlapping": {f: overlap[f] for f in info.files if f in overlap}}

    def _overlapping(self, job: str, files: Iterable[str]) -> dict[str, str]:
        """Which of ``files`` another job of the same checkout changed and had applied."""
        mine = self.get(job)
        wanted = set(files)
        found: dict[str, str] = {}
        for other in self.sidecars.values():
            if (other.job != job and other.checkout == mine.checkout
                    and other.info.status == "applied"):
                for name in wanted.intersection(other.info.files):
                    found[name] = other.job
        return found

    async def discard(self, job: str) -> dict[str, object]:
        """Throw the job's worktree away.

        Raises:
            NoSuchJob: The job has no worktree (any more).
        """
        sidecar = self._present(job)
        self._save(msgspec.structs.replace(
            sidecar, info=msgspec.structs.replace(sidecar.info, status="discarded")))
        await self.remove(job)
        return {"job": job, "discarded": True}

    async def remove(self, job: str) -> None:
        """Remove the worktree directory and its admin entry (the sidecar stays)."""
        sidecar = self.get(job)
        path = sidecar.info.path
        async with self._lock(sidecar.common_dir):
            done = await self._git(["worktree", "remove", "--force", "--force", "--", path],
                                   sidecar.checkout, check=False)
            if done.returncode != 0:
                # The checkout moved or the directory half went: clear both sides anyway.
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(path, ignore_errors=True))
                await self._git(["worktree", "prune"], sidecar.checkout, check=False)

    # --- bookkeeping -------------------------------------------------------

    def get(self, job: str) -> Sidecar:
        """A job's sidecar.

        Raises:
            NoSuchJob: The job never had a worktree (or its record was pruned).
        """
        sidecar = self.sidecars.get(job)
        if sidecar is None:
            raise NoSuchJob(f"job {job!r} has no worktree", {"job": job})
        return sidecar

    def _present(self, job: str) -> Sidecar:
        sidecar = self.get(job)
        if sidecar.info.status != "unapplied" or not os.path.isdir(sidecar.info.path):
            raise NoSuchJob(f"job {job!r}'s worktree is {sidecar.info.status}; nothing left "
                            "to show or apply", {"job": job, "state": sidecar.info.status})
        return sidecar

    def info(self, job: str) -> WorktreeInfo | None:
        """What records show of a job's worktree (None: it has none)."""
        sidecar = self.sidecars.get(job)
        return None if sidecar is None else sidecar.info

    def unapplied(self) -> list[str]:
        """The jobs whose worktree holds changes not applied nor discarded."""
        return [s.job for s in self.sidecars.values()
                if s.info.status == "unapplied" and s.info.changed_files > 0
                and os.path.isdir(s.info.path)]

    def _save(self, sidecar: Sidecar) -> None:
        self.sidecars[sidecar.job] = sidecar
        target = self.root / f"{sidecar.job}.json"
        write_atomically(target, msgspec.json.encode(sidecar))

    def load(self) -> list[Sidecar]:
        """Read the sidecars left on disk (at start); the worktrees of jobs that did not
        finish are kept for inspection and listed in the log.

        Returns:
            The sidecars whose worktree is still there with unapplied changes.
        """
        kept: list[Sidecar] = []
        if not self.root.is_dir():
            return kept
        for file in sorted(self.root.glob("*.json")):
            try:
                sidecar = msgspec.json.decode(file.read_bytes(), type=Sidecar)
            except (OSError, msgspec.DecodeError):
                log.warning("unreadable worktree record %s left alone", file)
                continue
            self.sidecars[sidecar.job] = sidecar
            if sidecar.info.status == "unapplied" and os.path.isdir(sidecar.info.path):
                kept.append(sidecar)
        if kept:
            log.info("worktrees kept with unapplied changes: %s",
                     ", ".join(f"{s.job} ({s.info.path})" for s in kept))
        return kept

    async def prune(self, alive: Iterable[str]) -> int:
        """Remove the worktrees (and sidecars) of jobs whose record is gone, each logged.

        Args:
            alive: The jobs whose records the store still has.

        Returns:
            How many were removed.
        """
        keep = set(alive)
        gone = [s for s in list(self.sidecars.values()) if s.job not in keep]
        for sidecar in gone:
            if os.path.isdir(sidecar.info.path):
                log.warning("job %s's record was pruned: removing its worktree %s (%s)",
                            sidecar.job, sidecar.info.path, sidecar.info.status)
                await self.remove(sidecar.job)
            self._forget(sidecar.job)
        return len(gone)

    def _forget(self, job: str) -> None:
        self.sidecars.pop(job, None)
        waiters = self._concluded.pop(job, None)
        if waiters is not None:
            waiters.set()  # they wait for a measure that will not come
        (self.root / f"{job}.json").unlink(missing_ok=True)


async def tend(worktrees: Worktrees, exists: Callable[[str], Awaitable[bool]], *,
               interval: float = 3600.0,
               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Load the worktrees left by an earlier daemon (those of interrupted jobs stay, measured
    and listed), then every ``interval`` seconds remove those whose job record is pruned.

    Args:
        worktrees: The job store's worktrees.
        exists: Whether a job is still known (its record in the store, or in memory).
    """
    for sidecar in worktrees.load():
        with contextlib.suppress(GitFailed, OSError):
            await worktrees.settle(sidecar.job)
    task_status.started()
    while True:
        # Only those found gone: a worktree made while this looks is not one of them.
        gone = {job for job in list(worktrees.sidecars) if not await exists(job)}
        await worktrees.prune(set(worktrees.sidecars) - gone)
        await trio.sleep(interval)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
