"""docs/API.md against the code, both ways: what one has and the other lacks fails.

Compared: the methods and their params (the dispatcher's table), the results of every
method (from a real daemon), the run result and job record fields (their structs), the job
and health states, the notifications' fields and the error ``data`` keys (where the code
builds them, read from its syntax tree), and the error codes (the error family).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import trio

from llmd import errors
from llmd.config import parse_registry
from llmd.daemon import Daemon
from llmd.health.monitor import HealthState
from llmd.jobs.manager import JobManager
from llmd.jobs.records import JobRecord, RunResult
from llmd.jobs.state import ALL_STATES
from llmd.jobs.store import JobStore
from llmd.server import methods
from llmd.server.dispatch import CANCEL_REQUEST, Method
from tests.harness import DaemonFactory, RawClient, registry_toml

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "API.md").read_text()
LLMD = ROOT / "llmd"

# --- reading the document ------------------------------------------------------------------


def section(title: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", DOC, re.M)
    assert match, f"docs/API.md has no section {title!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(DOC, match.end())
    return DOC[match.end():end.start() if end else len(DOC)]


def method_rows() -> dict[str, tuple[str, str]]:
    """The methods table: ``{method: (params cell, result cell)}``."""
    rows: dict[str, tuple[str, str]] = {}
    for line in section("Methods").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([\w.$/]+)`", cells[0]) if len(cells) == 3 else None
        if name:
            rows[name.group(1)] = (cells[1], cells[2])
    return rows


def names_in(text: str) -> set[str]:
    """The identifiers in backticks (``prompt``, not ``"quick"`` or ``detach: true``)."""
    return set(re.findall(r"`([a-z_]+)`", text))


def keys_in(text: str, *, top: bool = False) -> set[str]:
    """The keys of the JSON shapes in ``text``: quoted names not in a value's place (with
    ``top``, only those of the outermost objects)."""
    found: set[str] = set()
    for shape in re.findall(r"`(\{.*?\})`|```\n(.*?)```", text, re.S):
        body = shape[0] or shape[1]
        if top:
            while re.search(r"\{[^{}]*\{", body):  # drop the innermost nested objects
                body = re.sub(r"(\{[^{}]*)\{[^{}]*\}", r"\1", body)
        found |= set(re.findall(r'(?<![:|\w] )(?<![:|])"(\w+)"(?=\s*[:,}\]])', body))
    return found


def codes_in(text: str) -> set[int]:
    """The error codes named in ``text``."""
    return {int(code) for code in re.findall(r"-32\d\d\d", text)}


def different(code: set[Any], doc: set[Any]) -> str:
    """A message naming what only one side has (empty when they agree)."""
    parts = []
    if code - doc:
        parts.append(f"in the code, not in docs/API.md: {sorted(code - doc)}")
    if doc - code:
        parts.append(f"in docs/API.md, not in the code: {sorted(doc - code)}")
    return "; ".join(parts)


# --- reading the code ------------------------------------------------------------------------


def method_table() -> list[Method]:
    """The daemon's methods (in trio: the parts they use are made as the daemon makes them)."""
    registry = parse_registry('[blueprints.a]\ncommand = ["a", "{prompt}"]\n')
    daemon = Daemon(registry, Path("/nonexistent/llmd.sock"))
    store = JobStore.disabled(Path("/nonexistent/jobs.db"), "a test")
    manager = JobManager(registry, health=daemon.health, store=store)
    return methods.build(methods.MethodContext(host=daemon, manager=manager, store=store,
                                               health=daemon.health))


def fields(struct: type[msgspec.Struct] | None) -> set[str]:
    return set() if struct is None else {f.encode_name for f in msgspec.structs.fields(struct)}


def syntax_trees() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(LLMD.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def _str_keys(node: ast.AST) -> set[str]:
    """The string keys of every dict display in ``node``."""
    return {key.value for sub in ast.walk(node) if isinstance(sub, ast.Dict)
            for key in sub.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else None)


def error_data_keys() -> set[str]:
    """Where the code builds an error's ``data``: the dict given to an error class, the
    dicts named ``data``, ``_error_data``'s keywords, ``data[...] =`` and
    ``error.data.setdefault(...)``."""
    classes = {name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, errors.LlmdError)}
    keys: set[str] = set()
    for path, tree in syntax_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _callee(node)
                given = node.args[1] if len(node.args) > 1 else None
                if (name in classes or (name == "__init__" and path.name == "errors.py")) \
                        and isinstance(given, ast.Dict):
                    keys |= _str_keys(given)
                if name == "_error_data":
                    keys |= {kw.arg for kw in node.keywords if kw.arg}
                if name == "update" and isinstance(node.func, ast.Attribute) \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "data":
                    keys |= {kw.arg for kw in node.keywords if kw.arg}
                if name == "setdefault" and isinstance(node.func, ast.Attribute) \
                        and isinstance(node.func.value, ast.Attribute) \
                        and node.func.value.attr == "data" and node.args \
                        and isinstance(node.args[0], ast.Constant):
                    keys.add(str(node.args[0].value))
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            for target in targets:
                if isinstance(target, ast.Name) and target.id == "data":
                    keys |= _str_keys(value)
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                        and target.value.id == "data" and isinstance(target.slice, ast.Constant):
                    keys.add(str(target.slice.value))
    return keys


def notification_keys() -> dict[str, set[str]]:
    """The fields of each notification the job manager publishes (``_publish(job,
    METHOD, payload)``), with what its ``**`` parts are given, and what every
    notification gets on its way out (``request``)."""
    found: dict[str, set[str]] = {}
    trees = dict(syntax_trees())
    manager = trees[LLMD / "jobs" / "manager.py"]
    functions = {f.name: f for f in ast.walk(manager) if isinstance(f, ast.AsyncFunctionDef)}
    for func in functions.values():
        for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
            if _callee(call) != "_publish" or not isinstance(call.args[1], ast.Constant):
                continue
            payload = call.args[2]
            if isinstance(payload, ast.Name):  # built earlier in the same function
                payload = next(a.value for a in ast.walk(func) if isinstance(a, ast.Assign)
                               and any(isinstance(t, ast.Name) and t.id == payload.id
                                       for t in a.targets))
            keys = _str_keys(payload)
            if func.args.kwarg is not None:  # **extra: what callers pass
                keys |= _keywords_given(manager, func.name)
            found.setdefault(str(call.args[1].value), set()).update(keys)
    forward = trees[LLMD / "server" / "methods.py"]
    added = {key for node in ast.walk(forward)
             if isinstance(node, ast.AsyncFunctionDef) and node.name == "forward"
             for key in _str_keys(node)}
    return {method: keys | added for method, keys in found.items()}


def _keywords_given(tree: ast.Module, name: str) -> set[str]:
    keys: set[str] = set()
    for func in (f for f in ast.walk(tree) if isinstance(f, ast.AsyncFunctionDef)):
        for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
            if _callee(call) != name:
                continue
            for kw in call.keywords:
                if kw.arg is not None:
                    keys.add(kw.arg)
                elif isinstance(kw.value, ast.Name):  # **moved: a dict built in the caller
                    keys |= {key for a in ast.walk(func) if isinstance(a, ast.Assign)
                             and any(isinstance(t, ast.Name) and t.id == kw.value.id
                                     for t in a.targets)
                             for key in _str_keys(a.value)}
    return keys


# --- the comparisons ----------------------------------------------------------------------------


async def test_methods_and_their_params() -> None:
    rows = method_rows()
    table = {method.name: method for method in method_table()}
    assert not different(set(table), set(rows)), different(set(table), set(rows))
    for name, method in table.items():
        params, _result = rows[name]
        documented = names_in(params)
        assert not different(fields(method.params), documented), \
            f"{name} params: {different(fields(method.params), documented)}"
    assert f"`{CANCEL_REQUEST}`" in section("Methods")
    # Params by position are matched to the fields in the documented order.
    assert "by position" in section("Methods")
    for name, method in table.items():
        order = [f.encode_name for f in msgspec.structs.fields(method.params)] \
            if method.params else []
        shown = list(dict.fromkeys(re.findall(r"`([a-z_]+)`", rows[name][0])))
        assert [n for n in shown if n in order] == order, f"{name}: params out of order"


def test_jobs_list_limit_bounds_are_documented() -> None:
    params, _ = method_rows()["jobs.list"]
    assert f"{methods.MAX_LIST_LIMIT:,}" in params, params


def test_run_result_and_job_record_fields() -> None:
    run = keys_in(section("Run result"), top=True)
    assert not different(fields(RunResult), run), different(fields(RunResult), run)
    record = keys_in(section("Job record"), top=True)
    assert not different(fields(JobRecord), record), different(fields(JobRecord), record)


def test_states() -> None:
    record = section("Job record")
    documented = set(re.findall(r"`(\w+)`", record[record.index("States:"):]))
    assert not different(set(ALL_STATES), documented), different(set(ALL_STATES), documented)
    health = re.search(r"Health `state` is one of (.*?)\.\n", DOC, re.S)
    assert health, "docs/API.md does not list the health states"
    # What a state means is said in parentheses.
    shown = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", health.group(1))))
    assert not different(set(get_args(HealthState)), shown), \
        different(set(get_args(HealthState)), shown)


def test_notification_fields() -> None:
    streaming = section("Streaming")
    code = notification_keys()
    assert set(code) == {"llm.state", "llm.output"}, code
    for method, keys in code.items():
        item = re.search(rf"^- `{re.escape(method)}` (.*?)(?=^- `|\Z)", streaming, re.S | re.M)
        assert item, f"docs/API.md does not describe {method}"
        documented = keys_in(item.group(1)) | set(re.findall(r'`"(\w+)"`', item.group(1)))
        assert not different(keys, documented), f"{method}: {different(keys, documented)}"


def test_error_codes() -> None:
    code = {value.code for value in vars(errors).values()
            if inspect.isclass(value) and issubclass(value, errors.LlmdError)}
    documented = codes_in(section("Errors")) | codes_in(section("Transport"))
    assert not different(code, documented), different(code, documented)


def test_error_data_keys() -> None:
    errors_text = section("Errors")
    paragraph = errors_text[errors_text.index("whatever is known"):errors_text.index("| code |")]
    # What a key holds is said in parentheses, values included.
    documented = names_in(re.sub(r"\([^)]*\)", "", paragraph))
    assert not different(error_data_keys(), documented), \
        different(error_data_keys(), documented)


def test_no_sentence_addressed_to_implementers() -> None:
    assert "closing note" not in DOC
    assert "yours to add" not in DOC


# --- every method's result, from a real daemon ------------------------------------------------


def result_keys(value: Any, depth: int = 2) -> set[str]:
    """The keys of a result and of the objects in it, ``depth`` levels down; a mapping
    keyed by blueprint names is looked through, not listed."""
    keys: set[str] = set()
    if isinstance(value, dict):
        named = all(isinstance(v, dict) for v in value.values()) and "a" in value
        for key, inner in value.items():
            if not named:
                keys.add(key)
            if depth:
                keys |= result_keys(inner, depth - (0 if named else 1))
    elif isinstance(value, list):
        for item in value:
            keys |= result_keys(item, depth)
    return keys


async def test_every_method_answers_the_documented_shape(
        daemon_factory: DaemonFactory, fake_bin: Path) -> None:
    d = await daemon_factory(registry_toml(fake_bin, {
        "a": {"command": ["@fakecli", "stdin"], "prompt": "stdin"},
        "b": {"command": ["@fakecli", "sleep", "30"], "prompt": "stdin"}},
        extra="[budget]\ndaily_usd = 100.0\ndaily_runs = 1000\n"))
    client: RawClient = await d.connect()
    rows = method_rows()
    results: dict[str, Any] = {}
    with trio.fail_after(30):
        run = await client.call("llm.run", {"blueprint": "a", "prompt": "x"})
        job = run["result"]["job"]
        calls: list[tuple[str, Any]] = [
            ("llm.cancel", {"job": job}), ("jobs.get", {"job": job}),
            ("jobs.list", {}), ("blueprints.list", None), ("health.status", None),
            ("health.check", {"blueprint": "a"}), ("daemon.info", None),
            ("daemon.reload", None), ("jobs.output", {"job": job}), ("jobs.watch", {}),
            ("jobs.unwatch", {"watch": 1}), ("budget.status", None), ("daemon.stats", None),
            ("daemon.metrics", None),
            ("usage.summary", {"by": ["blueprint", "model", "day", "cwd"]})]
        for n, (method, params) in enumerate(calls, start=2):
            reply = await client.call(method, params, id=n)
            assert "result" in reply, reply
            results[method] = reply["result"]
        detached = await client.call("llm.run", {"blueprint": "b", "prompt": "",
                                                 "detach": True}, id=20)
        await client.call("llm.cancel", {"job": detached["result"]["job"]}, id=21)
    assert set(results["jobs.get"]) == fields(JobRecord)
    assert set(run["result"]) == fields(RunResult)
    detach_doc = keys_in(rows["llm.run"][1])
    assert set(detached["result"]) == detach_doc, different(set(detached["result"]), detach_doc)
    results["jobs.list"] = {"jobs": []}  # its records are job records, compared above
    for method, result in results.items():
        if method == "jobs.get":
            continue
        documented = keys_in(rows[method][1])
        if method == "health.check":
            documented = keys_in(rows["health.status"][1])
        shape = result_keys(result)
        assert not different(shape, documented), f"{method}: {different(shape, documented)}"
