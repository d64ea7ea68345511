"""The bundled blueprints against the real CLIs, through the real daemon and client.

Each test builds its registry from the repository's ``llmd.toml`` and changes only what
points a CLI at the local mock endpoint (:mod:`tests.mockllm`) and at a private home:
the executable's absolute path, and environment variables (base URLs, ``dummy`` API
keys, ``HOME``, ``CODEX_HOME``, ``LLM_USER_PATH``, ...). Files that a CLI reads from its
home (codex's provider, gemini's auth choice, llm's extra model) are written there.
Everything else -- argv, prompt mode, parser, retry policy -- is the bundled blueprint.

Every CLI gets its own namespace on the one mock (``http://127.0.0.1:PORT/NAME``), so a
test runs all the CLIs at once and gives each its own failure mode; a test fails with
the list of every CLI that did not behave.

The CLIs come from ``scripts/install-real-clis``; ``LLMD_REAL_CLIS`` names the directory
it prints. Without it these tests are skipped.

``ollama`` needs a model server that no package registry ships, so only its argv and
stdin are checked, with a stand-in executable that records them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from llmd.config import parse_registry
from tests.conftest import DaemonHandle, RawClient, llmc, toml_value
from tests.mockllm import ANSWER, MockLLM, Request

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
BUNDLED_TEXT = (REPO / "llmd.toml").read_text()
BUNDLED: dict[str, Any] = tomllib.loads(BUNDLED_TEXT)
BUNDLED_REGISTRY = parse_registry(BUNDLED_TEXT, "llmd.toml")

REAL_CLIS = os.environ.get("LLMD_REAL_CLIS", "")
pytestmark = pytest.mark.skipif(
    not REAL_CLIS,
    reason="LLMD_REAL_CLIS is unset: run scripts/install-real-clis and set LLMD_REAL_CLIS "
           "to the directory it prints to test the bundled blueprints on the real CLIs")

CLIS = ("claude", "codex", "gemini", "llm", "openai")
STDIN_CLIS = tuple(n for n in CLIS if BUNDLED["blueprints"][n].get("prompt") == "stdin")
ARG_CLIS = tuple(n for n in CLIS if n not in STDIN_CLIS)

# The developer's own keys, endpoints and config homes must not steer a CLI elsewhere.
FOREIGN_ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_",
                        "LLM_", "OLLAMA_", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                        "XDG_CACHE_HOME")

# A request's own deadline, far below the bundled categories, so a stuck CLI shows.
RUN_TIMEOUT = 60.0
# A bound on any one test's runs; CI shares two cores between several Node programs.
TEST_LIMIT = 120.0
# What "at once" means for a run that fails: far below the minutes that claude (182 s)
# and gemini (205 s) spend on their own retries, with room for a loaded machine (three
# attempts of gemini, each starting Node anew, take 35-40 s on two busy cores).
FAST = 60.0
PROMPT = "Say hello to the test suite."
# gemini's default model first asks a router model, whose requests retry on their own
# schedule; an explicit model goes straight to the answer.
GEMINI_MODEL = "gemini-2.5-flash"


@dataclass(frozen=True)
class Expect:
    """What each real CLI does, as the tests rely on it."""

    text: str
    """The run's ``text`` on success (plain-text blueprints keep the CLI's newline)."""
    session: bool
    """The CLI reports a session id."""
    usage: bool
    """The CLI reports token usage."""
    deltas: bool
    """The answer streams in several pieces."""
    api: str
    """The API it speaks to the mock (see :attr:`tests.mockllm.Request.api`)."""
    answer_path: str
    """Part of the path of its answering request (gemini may ask a router first)."""
    requests_per_attempt: int
    """Model requests one attempt makes against a 429 before the run ends: 1 where the
    daemon stops the CLI at its first rate-limit signal, more where the CLI's own HTTP
    client retries before it says anything."""
    params: tuple[tuple[str, str], ...] = ()
    """Run parameters the failure tests add (gemini: a model, to skip the router)."""


EXPECT = {
    "claude": Expect(ANSWER, True, True, True, "anthropic", "/v1/messages", 1),
    "codex": Expect(ANSWER, True, True, False, "responses", "/v1/responses", 1),
    "gemini": Expect(ANSWER, True, True, True, "gemini", ":streamGenerateContent", 1,
                     (("model", GEMINI_MODEL),)),
    # llm's default model speaks the Responses API; the openai client retries twice.
    "llm": Expect(ANSWER + "\n", False, False, True, "responses", "/v1/responses", 3),
    "openai": Expect(ANSWER + "\n", False, False, True, "chat", "/v1/chat/completions", 3),
}

# gemini's own auth choice; in most tests one attempt per request instead of ten.
GEMINI_AUTH = {"security": {"auth": {"selectedType": "gemini-api-key"}}}
GEMINI_FAST = {**GEMINI_AUTH, "general": {"maxAttempts": 1}}

FAKE_OLLAMA = """\
import json, os, sys
data = sys.stdin.buffer.read()
with open(os.environ["FAKE_OLLAMA_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "stdin": data.decode("utf-8", "surrogateescape"),
                          "nohistory": os.environ.get("OLLAMA_NOHISTORY")}) + "\\n")
sys.stdout.write("ollama ran " + " ".join(sys.argv[1:]) + "\\n")
"""


# --- the world a test runs in -------------------------------------------------------

@dataclass
class World:
    """Private homes for every CLI, a project directory, and the mock endpoint."""

    root: Path
    bindir: Path
    project: Path
    mock: MockLLM

    def home(self, name: str) -> Path:
        """The private home of one CLI."""
        return self.root / "homes" / name

    def codex_home(self, url: str) -> Path:
        """codex's provider lives in its home's config: one home per endpoint."""
        return self.home("codex") / f"codex-{urlsplit(url).port}"

    def env(self, name: str, url: str) -> dict[str, str]:
        """What blueprint ``name``'s environment gains to use the endpoint at ``url``."""
        home = self.home(name)
        base = f"{url}/{name}"
        common = {"HOME": str(home), "TMPDIR": str(home / "tmp"),
                  "XDG_CONFIG_HOME": str(home / ".config"),
                  "XDG_CACHE_HOME": str(home / ".cache")}
        extra = {
            "claude": {"ANTHROPIC_BASE_URL": base, "ANTHROPIC_API_KEY": "dummy",
                       "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
            "codex": {"CODEX_HOME": str(self.codex_home(url)), "MOCK_API_KEY": "dummy"},
            "gemini": {"GOOGLE_GEMINI_BASE_URL": base, "GEMINI_API_KEY": "dummy",
                       "GEMINI_CLI_TRUST_WORKSPACE": "true"},
            "llm": {"LLM_USER_PATH": str(home / "llm"), "OPENAI_API_KEY": "dummy",
                    "OPENAI_BASE_URL": f"{base}/v1"},
            "openai": {"OPENAI_API_KEY": "dummy", "OPENAI_BASE_URL": f"{base}/v1"},
            "ollama": {"FAKE_OLLAMA_LOG": str(home / "calls.jsonl")},
        }[name]
        return {**common, **extra}

    def write_homes(self, url: str) -> None:
        """Write what each CLI reads from its home to find the endpoint at ``url``."""
        for name in (*CLIS, "ollama"):
            (self.home(name) / "tmp").mkdir(parents=True, exist_ok=True)
        codex = self.codex_home(url)
        codex.mkdir(exist_ok=True)
        # codex ignores OPENAI_BASE_URL: a provider of its own is the way in. Its own
        # retries are off (by default a 500 costs 30 requests over 25 s); llmd acts on
        # the first rate-limit sign either way.
        (codex / "config.toml").write_text(textwrap.dedent(f"""\
            model_provider = "mock"
            [model_providers.mock]
            name = "Mock"
            base_url = "{url}/codex/v1"
            env_key = "MOCK_API_KEY"
            wire_api = "responses"
            request_max_retries = 0
            stream_max_retries = 0
            """))
        settings = self.home("gemini") / ".gemini" / "settings.json"
        if not settings.exists():
            self.gemini_settings(GEMINI_FAST)
        llm = self.home("llm") / "llm"
        llm.mkdir(exist_ok=True)
        # A second model for `model = "local"`: the Chat Completions API on the mock.
        (llm / "extra-openai-models.yaml").write_text(
            f'- model_id: local\n  model_name: mock-chat\n  api_base: "{url}/llm/v1"\n'
            f"  api_key_name: local\n")
        (llm / "keys.json").write_text(json.dumps({"local": "dummy"}))

    def gemini_settings(self, settings: dict[str, Any]) -> None:
        """Replace gemini's user settings."""
        path = self.home("gemini") / ".gemini" / "settings.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))

    def registry(self, url: str, fallbacks: bool = True) -> str:
        """The bundled registry, pointed at ``url`` and at the private homes (without
        ``fallbacks`` when told, so that a rate-limited run stays where it is)."""
        doc = json.loads(json.dumps(BUNDLED))
        for name, bp in doc["blueprints"].items():
            if not fallbacks:
                bp.pop("fallbacks", None)
            program = (self.bindir / "ollama" if name == "ollama"
                       else Path(REAL_CLIS) / bp["command"][0])
            bp["command"] = [str(program), *bp["command"][1:]]
            bp["env"] = {**bp.get("env", {}), **self.env(name, url)}
        return dump_toml(doc)

    def requests(self, name: str) -> list[Request]:
        """The model requests of CLI ``name``."""
        return self.mock.model_requests(client=name)

    def answering(self, name: str) -> list[Request]:
        """The requests of CLI ``name`` that asked for the answer itself."""
        expect = EXPECT[name]
        return [r for r in self.mock.model_requests(expect.api, client=name)
                if expect.answer_path in r.path]


def dump_toml(doc: dict[str, Any]) -> str:
    """A registry document as TOML (nested tables as [dotted.headers], env inline)."""
    lines: list[str] = []

    def table(path: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) or k == "env"}
        if scalars:
            lines.append(f"[{path}]")
            lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in scalars.items())
        for key, sub in values.items():
            if key not in scalars:
                table(f"{path}.{json.dumps(key)}", sub)

    for key, value in doc.items():
        table(json.dumps(key), value)
    return "\n".join(lines) + "\n"


@pytest.fixture
def mock() -> Iterator[MockLLM]:
    """The mock endpoint, for one test."""
    with MockLLM() as server:
        yield server


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A local URL where nothing listens: the port is held, bound but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def world(short_tmp: Path, mock: MockLLM, monkeypatch: pytest.MonkeyPatch) -> World:
    """Homes, a project directory and the stand-in ``ollama``; the real CLIs checked."""
    for key in list(os.environ):
        if key.startswith(FOREIGN_ENV_PREFIXES):
            monkeypatch.delenv(key)
    missing = [n for n in CLIS if not os.access(Path(REAL_CLIS) / n, os.X_OK)]
    if missing:
        pytest.fail(f"LLMD_REAL_CLIS={REAL_CLIS} lacks {', '.join(missing)}; "
                    "run scripts/install-real-clis")
    bindir = short_tmp / "bin"
    bindir.mkdir()
    fake = bindir / "ollama"
    fake.write_text(f"#!{sys.executable} -S\n{FAKE_OLLAMA}")
    fake.chmod(0o755)
    project = short_tmp / "project"
    project.mkdir()
    return World(short_tmp, bindir, project, mock)


async def start(daemon_factory: Any, world: World, url: str | None = None,
                fallbacks: bool = True) -> DaemonHandle:
    """The real daemon on the bundled registry, pointed at ``url`` (the mock's by default)."""
    url = url or world.mock.url
    world.write_homes(url)
    handle: DaemonHandle = await daemon_factory(world.registry(url, fallbacks))
    return handle


# --- talking to the daemon ----------------------------------------------------------

@dataclass
class Outcome:
    """One ``llm.run`` as the client saw it."""

    name: str
    reply: dict[str, Any]
    notes: list[dict[str, Any]]
    elapsed: float

    @property
    def result(self) -> dict[str, Any]:
        assert "result" in self.reply, f"the run failed: {json.dumps(self.reply)[:3000]}"
        result: dict[str, Any] = self.reply["result"]
        return result

    @property
    def error(self) -> dict[str, Any]:
        assert "error" in self.reply, f"the run succeeded: {json.dumps(self.reply)[:3000]}"
        error: dict[str, Any] = self.reply["error"]
        return error

    def fails_with(self, code: int) -> dict[str, Any]:
        """The error, checked to carry ``code``."""
        error = self.error
        assert error["code"] == code, f"expected {code}, got {json.dumps(error)[:3000]}"
        return error

    def stdout_deltas(self) -> list[str]:
        return [n["params"]["text"] for n in self.notes
                if n["method"] == "llm.output" and n["params"]["stream"] == "stdout"]


async def run(d: DaemonHandle, world: World, name: str, prompt: str = PROMPT, *,
              release: bool = False, **params: Any) -> Outcome:
    """Send one ``llm.run`` on a connection of its own and wait for its reply.

    With ``release``, the mock's gate for ``name`` opens once the first piece of the
    answer has reached this client.
    """
    client: RawClient = await d.connect()
    request = {"blueprint": name, "prompt": prompt, "cwd": str(world.project),
               "timeout": RUN_TIMEOUT, **params}
    notes: list[dict[str, Any]] = []
    started = trio.current_time()
    await client.send({"jsonrpc": "2.0", "id": 1, "method": "llm.run", "params": request})
    while True:
        message = await client.recv()
        if "method" in message:
            notes.append(message)
            if release and message["method"] == "llm.output":
                world.mock.release(name)
        elif message.get("id") == 1:
            return Outcome(name, message, notes, trio.current_time() - started)


async def for_each(names: Sequence[str], check: Callable[[str], Awaitable[None]]) -> None:
    """Run ``check`` for every CLI at once; fail with the failures of all of them."""
    failures: dict[str, str] = {}

    async def one(name: str) -> None:
        try:
            await check(name)
        except Exception:
            failures[name] = traceback.format_exc(limit=-3)

    with trio.fail_after(TEST_LIMIT):
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
    assert not failures, "\n".join(f"--- {name} ---\n{text}"
                                   for name, text in sorted(failures.items()))


async def assert_processes_gone(world: World, name: str, limit: float = 5.0) -> None:
    """No process of ``name``'s runs is left (each carries its private HOME; the
    daemon's health probes, ``NAME --version``, and its warm agents, which a run starts
    for the runs after it, are not runs)."""
    marker = f"\0HOME={world.home(name)}\0".encode()
    not_runs = {b"--version", b"--acp", b"app-server"}
    left: list[tuple[int, int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = b"\0" + Path(entry.path, "environ").read_bytes()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if marker in environ and not not_runs.intersection(argv):
                left.append((int(entry.name), os.pidfd_open(int(entry.name))))
        except OSError:
            continue
    try:
        # A process killed a moment ago may still be exiting: wait for each to end.
        with trio.fail_after(limit):
            for _pid, fd in left:
                await trio.lowlevel.wait_readable(fd)
    except trio.TooSlowError:
        alive = [pid for pid, _ in left if Path(f"/proc/{pid}").exists()]
        raise AssertionError(f"processes of {name} outlived the run: {alive}") from None
    finally:
        for _pid, fd in left:
            os.close(fd)


def failure_params(name: str) -> dict[str, Any]:
    return dict(EXPECT[name].params)


# --- answers -------------------------------------------------------------------------

async def test_answer_through_the_client(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        args = ["run", "--raw", "--no-stream", "--cwd", str(world.project),
                "--timeout", str(RUN_TIMEOUT), name]
        proc = await llmc(d, *args, PROMPT) if name in ARG_CLIS else \
            await llmc(d, *args, stdin=PROMPT.encode())
        assert proc.returncode == 0, proc.stderr.decode()
        result = json.loads(proc.stdout)
        expect = EXPECT[name]
        assert result["state"] == "succeeded"
        assert result["text"] == expect.text
        assert (result["exit_code"], result["attempts"]) == (0, 1)
        if expect.session:
            assert isinstance(result["session"], str) and result["session"]
        else:
            assert result["session"] is None
        if expect.usage:
            assert result["usage"]["input_tokens"] > 0
            assert result["usage"]["output_tokens"] > 0
        asked = world.answering(name)
        assert len(asked) == 1
        assert asked[0].has_text(PROMPT)

    await for_each(CLIS, check)


async def test_streamed_pieces_make_the_answer(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        expect = EXPECT[name]
        if expect.deltas:
            world.mock.gate(name)
        outcome = await run(d, world, name, stream=True, release=expect.deltas)
        deltas = outcome.stdout_deltas()
        assert "".join(deltas) == outcome.result["text"] == expect.text
        if expect.deltas:
            assert len(deltas) > 1, deltas
        seqs = [n["params"]["seq"] for n in outcome.notes if n["method"] == "llm.output"]
        assert seqs == list(range(len(seqs)))

    await for_each(CLIS, check)


MODELS = {"claude": "claude-mock-1", "codex": "gpt-5.5", "gemini": GEMINI_MODEL,
          "llm": "local", "openai": "gpt-mock-2"}
ASKED_MODEL = {**MODELS, "llm": "mock-chat"}


async def test_model_reaches_the_provider(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        outcome = await run(d, world, name, model=MODELS[name])
        assert outcome.result["text"] == EXPECT[name].text
        asked = [r for r in world.requests(name) if r.has_text(PROMPT)]
        assert asked, world.mock.requests
        # gemini asks no router when told the model: every request is for that model.
        assert {r.model for r in asked} == {ASKED_MODEL[name]}

    async def default_model() -> None:
        outcome = await run(d, world, "openai", "the default")
        assert outcome.result["text"] == EXPECT["openai"].text
        asked = [r for r in world.requests("openai") if r.has_text("the default")]
        assert [r.model for r in asked] == [BUNDLED["blueprints"]["openai"]["default_model"]]

    async def either(what: str) -> None:
        await (default_model() if what == "openai default" else check(what))

    await for_each([*CLIS, "openai default"], either)


# --- rate limits, dead and hanging endpoints ---------------------------------------------

async def test_rate_limit_is_acted_on_at_once_then_retried(
        daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        expect = EXPECT[name]
        world.mock.fail(429, times=expect.requests_per_attempt, retry_after=1,
                        only=expect.answer_path, client=name)
        outcome = await run(d, world, name, stream=True, **failure_params(name))
        assert outcome.result["text"] == expect.text
        assert outcome.result["attempts"] == 2
        assert len(world.answering(name)) == expect.requests_per_attempt + 1
        retrying = [n["params"] for n in outcome.notes
                    if n["method"] == "llm.state" and n["params"]["state"] == "retrying"]
        assert len(retrying) == 1 and retrying[0]["retry_in_s"] > 0
        assert outcome.elapsed < FAST

    await for_each(CLIS, check)


async def test_rate_limit_that_persists_is_reported(daemon_factory: Any, world: World) -> None:
    # Without fallbacks: with them the run would move on (test_rate_limited_run_moves_on).
    d = await start(daemon_factory, world, fallbacks=False)

    async def check(name: str) -> None:
        expect = EXPECT[name]
        world.mock.fail(429, retry_after=1, only=expect.answer_path, client=name)
        outcome = await run(d, world, name, **failure_params(name))
        error = outcome.fails_with(-32004)
        attempts = BUNDLED_REGISTRY.blueprints[name].retry.max_attempts
        assert error["data"]["attempts"] == attempts
        # Each attempt ended at the CLI's first sign of the 429, not after its own retries.
        assert len(world.answering(name)) == attempts * expect.requests_per_attempt
        assert outcome.elapsed < FAST + attempts * 2
        client = await d.connect()
        health = await client.call("health.status", {"blueprint": name})
        assert health["result"]["blueprints"][name]["state"] == "cooling_down"

    await for_each(CLIS, check)


async def test_rate_limited_run_moves_on(daemon_factory: Any, world: World) -> None:
    """claude answers 429 every time: the same run goes on at its first fallback, codex."""
    d = await start(daemon_factory, world)
    world.mock.fail(429, retry_after=1, only=EXPECT["claude"].answer_path, client="claude")
    outcome = await run(d, world, "claude", **{**failure_params("claude"), "stream": True})
    result = outcome.result
    assert (result["blueprint"], result["requested_blueprint"]) == ("codex", "claude")
    assert result["text"].strip()
    attempts = BUNDLED_REGISTRY.blueprints["claude"].retry.max_attempts
    assert result["attempts"] == attempts + 1
    assert len(world.answering("claude")) == attempts * EXPECT["claude"].requests_per_attempt
    moved = [n["params"] for n in outcome.notes if n["method"] == "llm.state"
             and n["params"].get("requested_blueprint") == "claude"
             and n["params"]["state"] == "retrying"]
    assert [m["blueprint"] for m in moved] == ["codex"]


async def test_server_error_fails_without_a_retry(daemon_factory: Any, world: World) -> None:
    """A 500 is no rate limit: the CLI's own retries are all it gets."""
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        world.mock.fail(500, only=EXPECT[name].answer_path, client=name)
        outcome = await run(d, world, name, **failure_params(name))
        error = outcome.fails_with(-32005)
        assert error["data"]["attempts"] == 1
        assert world.answering(name)
        assert outcome.elapsed < FAST

    await for_each(CLIS, check)


async def test_unreachable_endpoint(daemon_factory: Any, world: World, dead_url: str) -> None:
    """Every CLI fails at once, except codex, which waits for the network forever: the
    run's deadline ends it, its whole process group killed."""
    d = await start(daemon_factory, world, dead_url)
    codex_timeout = 3.0

    async def check(name: str) -> None:
        if name == "codex":
            outcome = await run(d, world, name, timeout=codex_timeout)
            outcome.fails_with(-32003)
            grace = BUNDLED_REGISTRY.blueprints[name].kill_grace
            assert outcome.elapsed < codex_timeout + grace + 1
            await assert_processes_gone(world, name)
        else:
            outcome = await run(d, world, name, **failure_params(name))
            outcome.fails_with(-32005)
            assert outcome.elapsed < FAST

    await for_each(CLIS, check)


async def test_hanging_endpoint_is_ended_by_the_timeout(
        daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)
    # Long enough for every CLI to start and send its request on a loaded machine.
    timeout = 10.0

    async def check(name: str) -> None:
        world.mock.hang(client=name)
        outcome = await run(d, world, name, timeout=timeout, **failure_params(name))
        outcome.fails_with(-32003)
        grace = BUNDLED_REGISTRY.blueprints[name].kill_grace
        # The daemon's bound is timeout + grace; the rest is the client's side of a loaded
        # machine, far below what a CLI left running would take.
        assert outcome.elapsed < timeout + grace + 5
        assert world.requests(name)
        await assert_processes_gone(world, name)

    await for_each(CLIS, check)


async def test_gemini_own_retries_are_cut_short(
        daemon_factory: Any, world: World, dead_url: str) -> None:
    """With its default settings and model, gemini retries a 429 or an unreachable
    endpoint for minutes (its router's requests too) and says so only on stderr."""
    world.gemini_settings(GEMINI_AUTH)
    live = await start(daemon_factory, world)
    dead = await start(daemon_factory, world, dead_url)
    # Two attempts of a few seconds each (gemini alone starts in 3-8 s on a loaded
    # 2-core machine), or one that fails at once; far less than gemini's own 205 s of
    # retries.
    limit = 60.0

    async def rate_limited() -> None:
        world.mock.fail(429, times=1, client="gemini")
        outcome = await run(live, world, "gemini", timeout=limit)
        assert outcome.result["text"] == ANSWER
        assert outcome.result["attempts"] == 2

    async def unreachable() -> None:
        outcome = await run(dead, world, "gemini", timeout=limit)
        outcome.fails_with(-32005)

    checks = {"gemini 429": rate_limited, "gemini unreachable": unreachable}
    await for_each(list(checks), lambda what: checks[what]())


# --- sessions -----------------------------------------------------------------------

async def test_resumed_session_carries_the_earlier_turn(
        daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)
    first_prompt, second_prompt = "Remember the word periwinkle.", "Which word was it?"

    async def session_of(name: str, first: Outcome) -> str:
        if name != "llm":
            session = first.result["session"]
            assert isinstance(session, str) and session
            return session
        # llm prints no conversation id; its log has it (and --cid resumes it).
        env = {**os.environ, **world.env("llm", world.mock.url)}
        logs = await trio.run_process(
            [str(Path(REAL_CLIS) / "llm"), "logs", "list", "-n", "1", "--json"],
            capture_stdout=True, env=env)
        conversation: str = json.loads(logs.stdout)[0]["conversation_id"]
        return conversation

    async def check(name: str) -> None:
        first = await run(d, world, name, first_prompt)
        session = await session_of(name, first)
        second = await run(d, world, name, second_prompt, session=session)
        assert second.result["text"] == EXPECT[name].text
        if EXPECT[name].session:
            assert second.result["session"] == session
        last = world.answering(name)[-1]
        assert last.has_text(first_prompt) and last.has_text(ANSWER)
        assert last.has_text(second_prompt)

    async def refused(name: str) -> None:
        outcome = await run(d, world, name, session="abc")
        outcome.fails_with(-32602)

    resumable = [n for n in CLIS if BUNDLED["blueprints"][n].get("resume_args")]
    await for_each(resumable, check)
    await for_each([n for n in CLIS if n not in resumable], refused)


# --- prompts that could be misread -------------------------------------------------------

DASH_PROMPT = "--version --help -p"
NUL_PROMPT = "before\0after"


def big_prompt() -> str:
    line = "The quick brown fox jumps over the lazy dog; 0123456789 ünïcödé.\n"
    return "BEGIN\n" + line * (300_000 // len(line)) + "END"


async def test_prompt_starting_with_a_dash(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        outcome = await run(d, world, name, DASH_PROMPT)
        if name in STDIN_CLIS:
            assert outcome.result["text"] == EXPECT[name].text
            assert world.mock.saw_text(DASH_PROMPT, client=name)
        else:
            outcome.fails_with(-32602)
            assert world.requests(name) == []

    await for_each(CLIS, check)


async def test_prompt_with_a_nul_byte(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)

    async def check(name: str) -> None:
        outcome = await run(d, world, name, NUL_PROMPT)
        if name in ARG_CLIS:
            outcome.fails_with(-32602)
        elif "result" in outcome.reply:
            assert outcome.result["text"] == EXPECT[name].text
            assert world.mock.saw_text(NUL_PROMPT, client=name)
        else:
            outcome.fails_with(-32005)

    await for_each(CLIS, check)


async def test_large_prompt(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)
    prompt = big_prompt()
    assert len(prompt.encode()) > 300_000

    async def check(name: str) -> None:
        outcome = await run(d, world, name, prompt)
        if name in STDIN_CLIS:
            assert outcome.result["text"] == EXPECT[name].text
            assert world.mock.saw_text(prompt, client=name)
        else:
            outcome.fails_with(-32602)

    await for_each(CLIS, check)


# --- ollama: argv and stdin only ---------------------------------------------------

async def test_ollama_renders_its_argv(daemon_factory: Any, world: World) -> None:
    d = await start(daemon_factory, world)
    default = BUNDLED["blueprints"]["ollama"]["default_model"]
    with trio.fail_after(TEST_LIMIT):
        plain = await run(d, world, "ollama", "why is the sky blue?")
        chosen = await run(d, world, "ollama", "hi", model="qwen2.5:0.5b")
        dash = await run(d, world, "ollama", DASH_PROMPT)
        nul = await run(d, world, "ollama", NUL_PROMPT)
        refused = await run(d, world, "ollama", "hi", session="abc")
    assert plain.result["text"] == f"ollama ran run {default}\n"
    assert chosen.result["text"] == "ollama ran run qwen2.5:0.5b\n"
    assert dash.result["exit_code"] == nul.result["exit_code"] == 0
    refused.fails_with(-32602)
    log = world.home("ollama") / "calls.jsonl"
    # The daemon's health probe (`ollama --version`) may have come in between.
    calls = [c for c in map(json.loads, log.read_text().splitlines()) if c["argv"][:1] == ["run"]]
    assert [c["argv"] for c in calls] == [["run", default], ["run", "qwen2.5:0.5b"],
                                          ["run", default], ["run", default]]
    assert [c["stdin"] for c in calls] == ["why is the sky blue?", "hi", DASH_PROMPT,
                                           NUL_PROMPT]
    assert {c["nohistory"] for c in calls} == {"1"}


async def test_claude_edits_its_worktree_only_when_let(
        daemon_factory: Any, world: World) -> None:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ.get("PATH", "")}
    for argv in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "0"]):
        await trio.run_process(argv, cwd=str(world.project), env=env, capture_stdout=True)
    d = await start(daemon_factory, world)
    prompt = "MOCK-WRITE made.txt written-by-claude"
    with trio.fail_after(TEST_LIMIT):
        shared = await run(d, world, "claude", prompt, edit=True)
        assert "worktree" in shared.fails_with(-32602)["message"]
        asked = await run(d, world, "claude", prompt, isolate="worktree")
        edited = await run(d, world, "claude", prompt, isolate="worktree", edit=True)
    # Without edit the print mode refuses the write; with it, the file is in the worktree.
    assert asked.result["worktree"]["changed_files"] == 0
    tree = edited.result["worktree"]
    assert tree["files"] == ["made.txt"], json.dumps(edited.result)[:3000]
    assert Path(tree["path"], "made.txt").read_text() == "written-by-claude\n"
    assert not (world.project / "made.txt").exists()
