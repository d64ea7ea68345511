"""llmd.jobs.worktree through the real daemon, with real git in temporary repositories:
isolation, bases, diff, apply (three-way), discard, cancellation, crashes and pruning."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from llmd.errors import InvalidParams
from llmd.jobs.worktree import Location, Worktrees, git_env, tend
from tests.conftest import DaemonHandle, RawClient, llmc, registry_toml
from tests.harness import wait_until

pytestmark = pytest.mark.usefixtures("fake_bin")

GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
          "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a user would (its output)."""
    env = {**git_env(os.environ), **GIT_ID}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True,
                          capture_output=True, text=True).stdout


def make_repo(where: Path, files: dict[str, str] | None = None) -> Path:
    """A repository with one commit of ``files``."""
    where.mkdir(parents=True)
    git(where, "init", "-q", "-b", "main")
    for name, text in (files or {"a.txt": "one\ntwo\nthree\n"}).items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(text)
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "start")
    return where


def fingerprint(repo: Path) -> dict[str, str]:
    """What a run must never change in the user's checkout."""
    index = Path(repo, git(repo, "rev-parse", "--git-path", "index").strip())
    return {"index": hashlib.sha256(index.read_bytes()).hexdigest(),
            "status": git(repo, "status", "--porcelain=v1", "--untracked-files=all"),
            "refs": git(repo, "for-each-ref"), "head": git(repo, "rev-parse", "HEAD"),
            "stash": git(repo, "stash", "list"),
            "files": json.dumps({p.name: p.read_text() for p in sorted(repo.iterdir())
                                 if p.is_file()})}


def registry(fake_bin: Path, **extra: Any) -> str:
    return registry_toml(fake_bin, {
        "edit": {"command": ["@fakecli", "edit", "a.txt"], "prompt": "stdin",
                 "edit_args": [], **extra},
        "gated": {"command": ["@fakecli", "edit", "a.txt", "{args}"], "prompt": "stdin",
                  "model_args": ["{model}"]},
        "cwd": {"command": ["@fakecli", "cwd", "{args}"], "prompt": "stdin",
                "edit_args": ["--edit-ok"]},
        "argv": {"command": ["@fakecli", "argv", "--", "{args}", "{prompt}"],
                 "edit_args": ["--permission-mode", "acceptEdits"]},
    })


async def start(daemon_factory: Any, fake_bin: Path, state: Path | None = None,
                **extra: Any) -> tuple[DaemonHandle, RawClient]:
    env = {"XDG_STATE_HOME": str(state)} if state is not None else None
    d: DaemonHandle = await daemon_factory(registry(fake_bin, **extra), env=env)
    return d, await d.connect()


async def run(client: RawClient, repo: Path, prompt: str, bp: str = "edit",
              **params: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await client.call("llm.run", {
        "blueprint": bp, "prompt": prompt, "cwd": str(repo), "isolate": "worktree", **params})
    return reply


async def test_two_jobs_edit_one_file_at_once_and_the_checkout_stays_as_it_was(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    before = fingerprint(repo)
    gate = short_tmp / "gate"
    d, client = await start(daemon_factory, fake_bin)
    other = await d.connect()
    results: dict[str, dict[str, Any]] = {}

    async def one(c: RawClient, text: str) -> None:
        results[text] = await run(c, repo, text, bp="gated", model=str(gate))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, client, "first\n")
            nursery.start_soon(one, other, "second\n")
            root = d.workdir / "state" / "llmd" / "worktrees"
            # Both are running, each has written a.txt in its own worktree.
            await wait_until(lambda: sorted(
                p.read_text() for p in root.glob("*/a.txt")) == ["first\n", "second\n"])
            assert fingerprint(repo) == before
            gate.touch()
    trees = set()
    for text, reply in results.items():
        tree = reply["result"]["worktree"]
        assert tree["changed_files"] == 1 and tree["files"] == ["a.txt"]
        assert tree["insertions"] == 1 and tree["deletions"] == 3
        assert tree["base"] == before["head"].strip()
        assert Path(tree["path"], "a.txt").read_text() == text
        trees.add(tree["path"])
    assert len(trees) == 2
    assert fingerprint(repo) == before
    # The user's repository knows the worktrees (consistent admin entries) and nothing else.
    listed = git(repo, "worktree", "list", "--porcelain")
    assert all(t in listed for t in trees)


async def test_edit_needs_a_worktree_and_edit_args(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(30):
        plain = await client.call("llm.run", {"blueprint": "argv", "prompt": "p",
                                              "cwd": str(repo), "edit": True})
        assert plain["error"]["code"] == -32602
        assert "worktree" in plain["error"]["message"]
        none = await run(client, repo, "p", bp="gated", edit=True)
        assert none["error"]["code"] == -32602
        assert "edit_args" in none["error"]["message"]
        ok = await run(client, repo, "p", bp="argv", edit=True)
        assert json.loads(ok["result"]["text"]) == ["--permission-mode", "acceptEdits", "p"]
        unasked = await run(client, repo, "p", bp="argv")
        assert json.loads(unasked["result"]["text"]) == ["p"]


async def test_the_cwd_must_be_a_git_work_tree(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    plain = short_tmp / "plain"
    plain.mkdir()
    bare = short_tmp / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    repo = make_repo(short_tmp / "repo")
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(30):
        for where, words in ((plain, "not"), (bare, "bare"), (repo / ".git", "bare"),
                             (None, "needs a cwd")):
            params: dict[str, Any] = {"blueprint": "edit", "prompt": "x",
                                      "isolate": "worktree", "detach": True}
            if where is not None:
                params["cwd"] = str(where)
            reply = await client.call("llm.run", params)
            assert reply["error"]["code"] == -32602, reply
            assert "git work tree" in reply["error"]["message"]
            assert words in reply["error"]["message"]
        bad = await run(client, repo, "x", base="no-such-ref", detach=True)
        assert bad["error"]["code"] == -32602 and "no-such-ref" in bad["error"]["message"]


async def test_a_cwd_in_a_subdirectory_is_the_same_subdirectory_of_the_worktree(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo", {"src/deep/x.py": "x = 1\n", "a.txt": "a\n"})
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(30):
        reply = await run(client, repo / "src" / "deep", "x", bp="cwd")
    result = reply["result"]
    assert result["text"] == os.path.join(result["worktree"]["path"], "src", "deep")
    assert result["worktree"]["changed_files"] == 0


async def test_the_working_tree_base_holds_staged_unstaged_and_untracked_changes(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo", {"a.txt": "a\n", "s.txt": "s\n", "u.txt": "u\n"})
    (repo / "s.txt").write_text("staged\n")
    git(repo, "add", "s.txt")
    (repo / "u.txt").write_text("unstaged\n")
    (repo / "new.txt").write_text("untracked\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "junk.log").write_text("ignored\n")
    before = fingerprint(repo)
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(30):
        head = await run(client, repo, "x", bp="cwd")
        wt = await run(client, repo, "x", bp="cwd", base="working-tree")
    at_head = Path(head["result"]["worktree"]["path"])
    assert (at_head / "s.txt").read_text() == "s\n" and not (at_head / "new.txt").exists()
    tree = Path(wt["result"]["worktree"]["path"])
    assert (tree / "s.txt").read_text() == "staged\n"
    assert (tree / "u.txt").read_text() == "unstaged\n"
    assert (tree / "new.txt").read_text() == "untracked\n"
    assert not (tree / "junk.log").exists()
    assert wt["result"]["worktree"]["changed_files"] == 0  # measured against that base
    assert fingerprint(repo) == before


async def test_diff_apply_conflict_and_discard(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    d, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(60):
        first = (await run(client, repo, "one\nTWO\nthree\n"))["result"]
        second = (await run(client, repo, "one\n2\nthree\n"))["result"]
        diff = (await client.call("jobs.diff", {"job": first["job"]}))["result"]
        assert "-two\n+TWO\n" in diff["diff"] and "a/a.txt" in diff["diff"]
        shown = await llmc(d, "diff", first["job"])
        assert shown.returncode == 0 and b"+TWO" in shown.stdout
        listed = await llmc(d, "jobs", "--unapplied")
        assert first["job"].encode() in listed.stdout and b"*" in listed.stdout
        index = (repo / ".git" / "index").read_bytes()
        applied = (await client.call("jobs.apply", {"job": first["job"]}))["result"]
        assert applied["applied"] is True and applied["files"] == ["a.txt"]
        assert (repo / "a.txt").read_text() == "one\nTWO\nthree\n"
        assert (repo / ".git" / "index").read_bytes() == index  # the user stages it
        assert not Path(first["worktree"]["path"]).exists()
        # The same lines changed by the second: nothing applied, the files named.
        conflict = (await client.call("jobs.apply", {"job": second["job"]}))["error"]
        assert conflict["code"] == -32010
        assert conflict["data"]["conflicts"] == ["a.txt"]
        assert conflict["data"]["applied_by"] == {"a.txt": first["job"]}
        assert (repo / "a.txt").read_text() == "one\nTWO\nthree\n"
        cli = await llmc(d, "apply", second["job"])
        assert cli.returncode != 0 and b"a.txt" in cli.stderr
        record = (await client.call("jobs.get", {"job": first["job"]}))["result"]
        assert record["worktree"]["status"] == "applied"
        discarded = await llmc(d, "discard", second["job"])
        assert discarded.returncode == 0, discarded.stderr
        assert not Path(second["worktree"]["path"]).exists()
        record = (await client.call("jobs.get", {"job": second["job"]}))["result"]
        assert record["worktree"]["status"] == "discarded"
        gone = await client.call("jobs.diff", {"job": second["job"]})
        assert gone["error"]["code"] == -32007
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    assert len(git(repo, "worktree", "list", "--porcelain").split("\n\n")) == 1 + 1


async def test_apply_merges_around_other_changes_of_the_checkout(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    lines = "".join(f"{i}\n" for i in range(20))
    repo = make_repo(short_tmp / "repo", {"a.txt": lines})
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(60):
        job = (await run(client, repo, lines.replace("2\n", "two\n", 1)))["result"]
        other = (await run(client, repo, lines.replace("10\n", "ten\n", 1)))["result"]
        # Meanwhile the user edits the far end of the same file.
        (repo / "a.txt").write_text(lines.replace("18\n", "eighteen\n"))
        applied = await client.call("jobs.apply", {"job": job["job"]})
        assert applied["result"]["applied"] is True, applied
        assert applied["result"]["overlapping"] == {}
        # The second job changed the same file: it merges, and the answer says so.
        second = (await client.call("jobs.apply", {"job": other["job"]}))["result"]
        assert second["overlapping"] == {"a.txt": job["job"]}
    assert (repo / "a.txt").read_text() == lines.replace("2\n", "two\n", 1).replace(
        "10\n", "ten\n", 1).replace("18\n", "eighteen\n")


async def test_a_binary_file_is_named_in_the_diff_and_applied_whole(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(60):
        job = (await run(client, repo, "\x00\x01binary\xff"))["result"]
        diff = (await client.call("jobs.diff", {"job": job["job"]}))["result"]["diff"]
        assert "Binary files a/a.txt and b/a.txt differ" in diff
        await client.call("jobs.apply", {"job": job["job"]})
    assert (repo / "a.txt").read_bytes() == "\x00\x01binary\xff".encode()


async def test_a_cancelled_job_keeps_its_partial_worktree(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    _, client = await start(daemon_factory, fake_bin)
    never = short_tmp / "never"
    with trio.fail_after(60):
        started = await run(client, repo, "partial\n", bp="gated", model=str(never),
                            detach=True)
        job = started["result"]["job"]
        root = short_tmp / "d0" / "state" / "llmd" / "worktrees" / job
        await wait_until(lambda: (root / "a.txt").read_text() == "partial\n")
        await client.call("llm.cancel", {"job": job})
        record = (await client.call("jobs.get", {"job": job, "wait": True}))["result"]
    assert record["state"] == "cancelled"
    assert record["worktree"]["changed_files"] == 1
    assert record["worktree"]["status"] == "unapplied"
    assert (Path(record["worktree"]["path"]) / "a.txt").read_text() == "partial\n"


async def test_waiting_for_a_job_that_just_ended_waits_for_its_worktree_measure(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    # The job's state turns final before its worktree is measured; a git slow to write
    # the measuring tree holds that gap open, so a waiter arriving in it is certain.
    slow = short_tmp / "slowgit"
    slow.mkdir()
    real = shutil.which("git")
    assert real is not None
    (slow / "git").write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        "if 'write-tree' in sys.argv and '.diff-' in os.environ.get('GIT_INDEX_FILE', ''):\n"
        "    time.sleep(3)\n"
        f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n")
    (slow / "git").chmod(0o755)
    repo = make_repo(short_tmp / "repo")
    d: DaemonHandle = await daemon_factory(
        registry(fake_bin), env={"PATH": f"{slow}{os.pathsep}{os.environ['PATH']}"})
    client = await d.connect()
    with trio.fail_after(60):
        started = await run(client, repo, "partial\n", bp="gated",
                            model=str(short_tmp / "never"), detach=True)
        job = started["result"]["job"]
        root = short_tmp / "d0" / "state" / "llmd" / "worktrees" / job
        await wait_until(lambda: (root / "a.txt").read_text() == "partial\n")
        await client.call("llm.cancel", {"job": job})
        while (await client.call("jobs.get", {"job": job}))["result"]["state"] != "cancelled":
            await trio.sleep(0.01)
        record = (await client.call("jobs.get", {"job": job, "wait": True}))["result"]
    assert record["worktree"]["changed_files"] == 1, record["worktree"]
    assert record["worktree"]["files"] == ["a.txt"]


async def test_a_killed_daemon_leaves_the_worktree_listed_and_consistent(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    state = short_tmp / "state"
    never = short_tmp / "never"
    d, client = await start(daemon_factory, fake_bin, state)
    with trio.fail_after(60):
        started = await run(client, repo, "partial\n", bp="gated", model=str(never),
                            detach=True)
        job = started["result"]["job"]
        path = state / "llmd" / "worktrees" / job
        await wait_until((path / "a.txt").exists)
        await d.stop(signal.SIGKILL)
        d2, client2 = await start(daemon_factory, fake_bin, state)
        record = (await client2.call("jobs.get", {"job": job}))["result"]
        assert record["state"] == "interrupted"
        assert record["worktree"]["changed_files"] == 1
        assert job in d2.log() and str(path) in d2.log()
        unapplied = (await client2.call("jobs.list", {"unapplied": True}))["result"]["jobs"]
        assert [j["job"] for j in unapplied] == [job]
        assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
        await client2.call("jobs.discard", {"job": job})
    assert not path.exists()
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


async def test_a_submodule_is_left_alone(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    inner = make_repo(short_tmp / "inner", {"lib.txt": "lib\n"})
    repo = make_repo(short_tmp / "repo")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(inner), "sub")
    git(repo, "commit", "-q", "-m", "sub")
    before = fingerprint(repo)
    sub_before = fingerprint(repo / "sub")
    _, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(60):
        job = (await run(client, repo, "changed\n"))["result"]
        applied = await client.call("jobs.apply", {"job": job["job"]})
    # Not checked out in the worktree (documented); the job's change still applies.
    assert applied["result"]["files"] == ["a.txt"]
    assert (repo / "sub" / "lib.txt").read_text() == "lib\n"
    assert fingerprint(repo / "sub") == sub_before
    assert fingerprint(repo)["refs"] == before["refs"]


async def test_prune_removes_the_worktrees_of_pruned_records_and_logs_each(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = make_repo(short_tmp / "repo")
    trees = Worktrees(short_tmp / "state" / "worktrees")
    with trio.fail_after(30):
        kept = await trees.create("kept", str(repo), "head")
        gone = await trees.create("gone", str(repo), "head")
        Path(gone.info.path, "a.txt").write_text("unapplied work\n")
        again = Worktrees(trees.root)
        assert {s.job for s in again.load()} == {"kept", "gone"}
        assert await again.prune(["kept"]) == 1
    assert not Path(gone.info.path).exists() and Path(kept.info.path).exists()
    assert "gone" in caplog.text and gone.info.path in caplog.text
    assert sorted(p.name for p in trees.root.glob("*.json")) == ["kept.json"]
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""


async def test_git_never_sees_the_daemons_git_variables(short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    decoy = make_repo(short_tmp / "decoy")
    trees = Worktrees(short_tmp / "wt", {**os.environ, "GIT_DIR": str(decoy / ".git"),
                                          "GIT_WORK_TREE": str(decoy)})
    with trio.fail_after(30):
        top, _, _ = await trees.locate(str(repo))
    assert top == str(repo)
    assert not any(k.startswith("GIT_") and k not in ("GIT_TERMINAL_PROMPT", "GIT_PAGER",
                                                      "GIT_OPTIONAL_LOCKS",
                                                      "GIT_CONFIG_NOSYSTEM")
                   for k in git_env(trees.environ))


async def test_llmc_run_isolate_and_the_mark_in_llmc_jobs(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    d, client = await start(daemon_factory, fake_bin)
    with trio.fail_after(60):
        started = await llmc(d, "run", "cwd", "x", "--isolate", "--edit", "--detach",
                             cwd=str(repo / "."))
        assert started.returncode == 0, started.stderr
        job = started.stdout.decode().strip()
        record = (await client.call("jobs.get", {"job": job, "wait": True}))["result"]
        assert record["result"]["text"] == record["worktree"]["path"]
        listed = await llmc(d, "jobs")
        assert "*" not in listed.stdout.decode()  # nothing changed, nothing to apply
        edited = await llmc(d, "run", "edit", "new", "--isolate", cwd=str(repo))
        assert edited.returncode == 0, edited.stderr
        listed = await llmc(d, "jobs")
        assert "succeeded*" in listed.stdout.decode()
        assert "* unapplied" in listed.stdout.decode()
        marked = (await client.call("jobs.list", {"unapplied": True}))["result"]["jobs"]
        assert len(marked) == 1 and marked[0]["job"] != job
        await client.call("jobs.discard", {"job": marked[0]["job"]})
        refused = await llmc(d, "run", "cwd", "x", "--isolate", cwd=str(short_tmp))
        assert refused.returncode == 2 and b"git work tree" in refused.stderr
        unsafe = await llmc(d, "run", "cwd", "x", "--edit", cwd=str(repo))
        assert unsafe.returncode == 2 and b"--isolate" in unsafe.stderr
        empty = await llmc(d, "diff", job)
        assert empty.stdout == f"job {job} changed nothing\n".encode()
        gone = await llmc(d, "discard", job)
        assert gone.returncode == 0
        listed = await llmc(d, "jobs", "--unapplied")
        assert listed.stdout == b"no jobs\n"


async def test_a_blueprint_may_isolate_by_default(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    _, client = await start(daemon_factory, fake_bin, isolate="worktree")
    with trio.fail_after(60):
        isolated = (await client.call("llm.run", {"blueprint": "edit", "prompt": "new\n",
                                                  "cwd": str(repo)}))["result"]
        shared = (await client.call("llm.run", {"blueprint": "edit", "prompt": "new\n",
                                                "cwd": str(repo), "isolate": "none"}))
    assert isolated["worktree"]["changed_files"] == 1
    assert (repo / "a.txt").read_text() == "new\n"  # isolate "none": the checkout itself
    assert shared["result"]["worktree"] is None


def test_the_mcp_tools_pass_isolate_base_and_edit() -> None:
    from llmc.mcp.tools import run_params  # noqa: PLC0415 - the client's own package

    params = run_params({"blueprint": "claude", "prompt": "p", "isolate": "worktree",
                         "base": "working-tree", "edit": True}, "/tmp")
    assert params["isolate"] == "worktree" and params["base"] == "working-tree"
    assert params["edit"] is True


async def test_the_worktree_methods_answer_the_documented_shapes(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    from tests.test_contract import different, keys_in, method_rows  # noqa: PLC0415

    repo = make_repo(short_tmp / "repo")
    _, client = await start(daemon_factory, fake_bin)
    rows = method_rows()
    with trio.fail_after(60):
        one = (await run(client, repo, "changed\n"))["result"]["job"]
        two = (await run(client, repo, "changed\n"))["result"]["job"]
        answers = {"jobs.diff": await client.call("jobs.diff", {"job": one}),
                   "jobs.apply": await client.call("jobs.apply", {"job": one}),
                   "jobs.discard": await client.call("jobs.discard", {"job": two})}
    for method, reply in answers.items():
        documented = keys_in(rows[method][1], top=True)
        assert not different(set(reply["result"]), documented), method
    worktree = keys_in(DOC_WORKTREE)
    assert not different(set(answers["jobs.diff"]["result"]["worktree"]), worktree)


DOC_WORKTREE = Path(__file__).resolve().parent.parent.joinpath("docs", "API.md").read_text(
).split("### Worktrees", 1)[1].split("###", 1)[0]


def test_a_diff_is_coloured_line_by_line() -> None:
    from llmc.worktree import colour  # noqa: PLC0415 - the client's own package

    shown = colour("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n ctx\n")
    assert shown.splitlines() == [
        "\x1b[1mdiff --git a/x b/x\x1b[0m", "\x1b[1m--- a/x\x1b[0m", "\x1b[1m+++ b/x\x1b[0m",
        "\x1b[36m@@ -1 +1 @@\x1b[0m", "\x1b[31m-old\x1b[0m", "\x1b[32m+new\x1b[0m", " ctx"]


def logging_git(where: Path, log: Path) -> Path:
    """A ``git`` in ``where`` that appends its arguments to ``log``, then runs the real one."""
    real = shutil.which("git")
    assert real is not None
    where.mkdir(parents=True, exist_ok=True)
    wrapper = where / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n'
                       f'exec {shlex.quote(real)} "$@"\n')
    wrapper.chmod(0o755)
    return where


async def test_an_isolated_run_locates_its_repository_once(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    log = short_tmp / "git.log"
    wrapped = logging_git(short_tmp / "gitbin", log)
    d: DaemonHandle = await daemon_factory(
        registry(fake_bin), env={"PATH": f"{wrapped}{os.pathsep}{os.environ['PATH']}"})
    client = await d.connect()
    with trio.fail_after(30):
        reply = await run(client, repo, "changed\n")
    assert reply["result"]["worktree"]["changed_files"] == 1
    calls = log.read_text().splitlines()
    # Admission checks the cwd; the worktree is then made where that check found it.
    assert sum(c.startswith("rev-parse --is-inside-work-tree") for c in calls) == 1, calls
    assert sum(c.startswith("worktree add") for c in calls) == 1, calls


async def test_git_is_found_once_and_a_missing_git_is_refused_as_before(
        short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    empty = short_tmp / "empty"
    empty.mkdir()
    trees = Worktrees(short_tmp / "wt", {**os.environ, "PATH": str(empty)})
    with trio.fail_after(30):
        with pytest.raises(InvalidParams) as missing:
            await trees.check(str(repo), None)
        assert missing.value.message == (
            f"isolate \"worktree\" needs a cwd inside a git work tree; {str(repo)!r} is not "
            "([Errno 2] No such file or directory: 'git')")
        # Not remembered as missing: a git installed later is found.
        first = short_tmp / "first.log"
        logging_git(empty, first)
        located = await trees.check(str(repo), None)
        assert located == (str(repo), str(repo / ".git"), "")
        # Found once: a git put before it on the PATH afterwards is not looked for.
        later = short_tmp / "later.log"
        trees.environ["PATH"] = f"{logging_git(short_tmp / 'later', later)}{os.pathsep}{empty}"
        sidecar = await trees.create("j", str(repo), "head", located)
        # A checkout gone since admission is located again, not trusted.
        moved = Location(str(short_tmp / "moved"), str(short_tmp / "moved" / ".git"), "")
        again = await trees.create("k", str(repo), "head", moved)
    assert Path(sidecar.cwd) == short_tmp / "wt" / "j"
    assert again.checkout == str(repo) and again.common_dir == str(repo / ".git")
    assert not later.exists()
    assert "worktree add" in first.read_text()


async def test_a_waiter_for_the_measure_of_a_pruned_worktree_is_let_go(
        short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    trees = Worktrees(short_tmp / "state" / "worktrees")
    with trio.fail_after(30):
        await trees.concluded("never-made")  # no worktree: nothing to wait for
        await trees.create("job", str(repo), "head")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trees.concluded, "job")
            await trio.testing.wait_all_tasks_blocked()
            assert await trees.prune([]) == 1  # its record is gone: no measure will come
        await trees.conclude("job")  # the job's end, after: leaves nothing behind
    assert trees._concluded == {}


async def test_an_isolated_run_a_fallback_takes_over_works_on_in_its_worktree(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    d: DaemonHandle = await daemon_factory(registry_toml(fake_bin, {
        "limited": {"command": ["@fakecli", "ratelimit", "1000", str(short_tmp / "count")],
                    "prompt": "stdin", "fallbacks": ["edit"], "retry": {"max_attempts": 1}},
        "edit": {"command": ["@fakecli", "edit", "a.txt"], "prompt": "stdin"},
    }))
    client = await d.connect()
    with trio.fail_after(60):
        reply = await run(client, repo, "edited\n", bp="limited")
        result = reply["result"]
        assert result["blueprint"] == "edit" and result["fallback_reason"], reply
        assert result["worktree"]["changed_files"] == 1
        trees = short_tmp / "d0" / "state" / "llmd" / "worktrees"
        assert sorted(p.name for p in trees.iterdir() if p.is_dir()) == [result["job"]]
        applied = await client.call("jobs.apply", {"job": result["job"]})
    assert applied["result"]["applied"] is True, applied
    assert (repo / "a.txt").read_text() == "edited\n"


async def test_unapplied_jobs_are_listed_without_their_text_after_a_restart(
        daemon_factory: Any, fake_bin: Path, short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    state = short_tmp / "state"
    d, client = await start(daemon_factory, fake_bin, state)
    with trio.fail_after(60):
        job = (await run(client, repo, "new text\n"))["result"]
        assert job["text"]  # the record holds it
        await client.call("llm.run", {"blueprint": "cwd", "prompt": "x", "cwd": str(repo)})
        assert await d.stop() == 0
        # Only the store has the job now, and not on the first page of one.
        _, client = await start(daemon_factory, fake_bin, state)
        listed = await client.call("jobs.list", {"unapplied": True, "limit": 1})
    [entry] = listed["result"]["jobs"]
    assert entry["job"] == job["job"]
    assert (entry["result"]["text"], entry["result"]["output"]) == ("", "")


async def test_tending_leaves_alone_a_worktree_made_while_it_looks(short_tmp: Path) -> None:
    repo = make_repo(short_tmp / "repo")
    trees = Worktrees(short_tmp / "state" / "worktrees")
    asked_again = trio.Event()

    async def exists(job: str) -> bool:
        if job == "old":  # its record is gone; meanwhile a new job makes its worktree
            await trees.create("new", str(repo), "head")
            return False
        asked_again.set()  # the next round: "new" was left to be asked about
        return True

    with trio.fail_after(30):
        await trees.create("old", str(repo), "head")
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(tend, trees, exists, interval=0.01))
            await asked_again.wait()
            nursery.cancel_scope.cancel()
    assert set(trees.sidecars) == {"new"}
