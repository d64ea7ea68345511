"""The blueprint registry: TOML validated once into typed, frozen structs.

Invariants:
- Validation collects *every* problem, each prefixed with its dotted path
  (``blueprints.claude.command: expected an array of strings``), and raises one
  :class:`~llmd.errors.ConfigError`; a registry object only exists when it is valid.
- Unknown keys are errors.
- No I/O except :func:`load_file`; :func:`parse_registry` works on bytes.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from llmd.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]

PLACEHOLDERS = ("{prompt}", "{model}", "{session}", "{args}")
KNOWN_PARSERS = frozenset({
    "text", "claude-stream-json", "claude-json", "codex-jsonl", "gemini-stream-json",
    "gemini-json",
})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Rate-limit signals, matched on word boundaries so that "took 429ms", "took 429 ms",
# "line 429", a UUID holding 4290 or "quota: 12 files" do not count: a bare number
# never does, only a status word next to it ("status 429", "Error code: 429",
# "api_error_status":429). 529 is Anthropic's "overloaded", a transient overload.
DEFAULT_RATE_LIMIT_PATTERNS = (
    r"(?i)\brate[ _-]?limit(?:ed|s|_error|_?exceeded)?\b",
    r"(?i)\btoo many requests\b",
    r"(?i)(?<![a-z0-9])(?:status|code|http|error)\W{0,3}(?:code\W{0,3})?[45]29\b",
    r"(?i)\bHTTP/\d(?:\.\d)?\s+429\b",
    r"\bRESOURCE_EXHAUSTED\b",
    r"(?i)\bresource (?:has been )?exhausted\b",
    r"(?i)\bquota (?:exceeded|exhausted)\b",
    r"(?i)\busage limit (?:reached|exceeded)\b|\bhit your usage limit\b"
    r"|\b\d+-hour limit reached\b|\bweekly limit reached\b",
    r"(?i)\boverloaded_error\b|\b529 overloaded\b"
    r"|\b(?:server|service|api|model)s? (?:is |are )?(?:currently |temporarily )?overloaded\b",
)


class DaemonSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[daemon]``: limits that hold over all blueprints."""

    max_jobs: PositiveInt = 16
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 256
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stop_grace: NonNegative = 10.0
    warm_max: Annotated[int, msgspec.Meta(ge=0)] = 4


class StoreSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[store]``: the job records kept on disk."""

    enabled: bool = True
    path: str = ""            # default: $XDG_STATE_HOME/llmd/jobs.db
    output_cap: Annotated[int, msgspec.Meta(ge=0)] = 1024 * 1024
    max_age_days: Positive = 30.0
    max_jobs: PositiveInt = 10_000


class RetrySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[blueprints.NAME.retry]``: back-off after a rate limit."""

    max_attempts: PositiveInt = 3
    base_delay: NonNegative = 1.0
    max_delay: NonNegative = 60.0


class HealthSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[blueprints.NAME.health]``: how the scheduler probes a blueprint."""

    command: list[str] = msgspec.field(default_factory=list)
    interval: Positive = 300.0
    timeout: Positive = 30.0
    prompt: str | None = None
    expect: str | None = None
    cooldown: Positive = 60.0


# The one-shot parsers of the CLIs each agent protocol belongs to.
WARM_PARSERS: dict[str, tuple[str, ...]] = {
    "acp": ("gemini-stream-json", "gemini-json"), "codex-app": ("codex-jsonl",)}


class WarmSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[blueprints.NAME.warm]``: CLI processes started ahead of need."""

    enabled: bool = False
    idle_ttl: Positive = 600.0
    max_idle: Annotated[int, msgspec.Meta(ge=0)] = 2
    args: list[str] = msgspec.field(
        default_factory=lambda: ["--input-format", "stream-json"])
    # How the warm process is spoken to: claude's stream-json input, or an agent serving a
    # session per run for any cwd (gemini's ACP, codex's app server).
    protocol: Literal["stream-json", "acp", "codex-app"] = "stream-json"
    allow: list[str] = msgspec.field(default_factory=list)
    """Tool kinds an agent's permission requests are granted (default: none)."""
    max_turns: PositiveInt = 100
    """Turns an agent serves before another takes its place (gemini keeps every session's
    state in memory, about 3 MB each, until it exits)."""


class BudgetSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[budget]`` (all blueprints together) and ``[blueprints.NAME.budget]`` (one):
    hard limits per calendar day and month, in local time; unset means no limit."""

    daily_usd: Union[Positive, None] = None  # noqa: UP007 - msgspec needs the runtime Union on 3.10
    monthly_usd: Union[Positive, None] = None  # noqa: UP007
    daily_runs: Union[PositiveInt, None] = None  # noqa: UP007
    fallback: bool = True


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[prices."MODEL"]``: US dollars per million tokens, to estimate a run's cost."""

    input_per_mtok: NonNegative
    output_per_mtok: NonNegative


class MetricsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[metrics]``: a Prometheus text file for node_exporter's textfile collector."""

    textfile: str = ""
    interval: Positive = 60.0


class Blueprint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One CLI the daemon may run, and how."""

    command: list[str]
    description: str = ""
    prompt: Literal["arg", "stdin"] = "arg"
    parser: str = "text"
    timeout: Union[str, Positive] = "normal"  # noqa: UP007 - msgspec needs the runtime Union on 3.10
    max_concurrency: PositiveInt = 4
    env: dict[str, str] = msgspec.field(default_factory=dict)
    env_remove: list[str] = msgspec.field(default_factory=list)
    rate_limit_patterns: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_RATE_LIMIT_PATTERNS))
    model_args: list[str] = msgspec.field(default_factory=list)
    default_model: str | None = None
    resume_args: list[str] = msgspec.field(default_factory=list)
    allow_dash_prompt: bool = False
    max_output_bytes: Annotated[int, msgspec.Meta(ge=1)] = 16 * 1024 * 1024
    kill_grace: NonNegative = 5.0
    fallbacks: list[str] = msgspec.field(default_factory=list)
    isolate: Literal["none", "worktree"] = "none"
    edit_args: list[str] = msgspec.field(default_factory=list)
    stderr_ignore: list[str] = msgspec.field(default_factory=list)
    retry: RetrySection = msgspec.field(default_factory=RetrySection)
    health: HealthSection = msgspec.field(default_factory=HealthSection)
    warm: WarmSection = msgspec.field(default_factory=WarmSection)
    budget: BudgetSection = msgspec.field(default_factory=BudgetSection)


def _default_timeouts() -> dict[str, float]:
    return {"quick": 60.0, "normal": 300.0, "long": 600.0, "extended": 1800.0}


class RegistryFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole TOML document."""

    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    timeouts: dict[str, Positive] = msgspec.field(default_factory=_default_timeouts)
    blueprints: dict[str, Blueprint] = msgspec.field(default_factory=dict)
    budget: BudgetSection = msgspec.field(default_factory=BudgetSection)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)


class Registry:
    """A validated registry with its derived, ready-to-use forms.

    Args:
        doc: The validated document.
        source: Where it came from (a path, or ``"<default>"``).
    """

    def __init__(self, doc: RegistryFile, source: str) -> None:
        self.doc = doc
        self.source = source
        self.daemon = doc.daemon
        self.timeouts = {**_default_timeouts(), **doc.timeouts}
        self.blueprints = doc.blueprints
        self.rate_limit_res: dict[str, tuple[re.Pattern[str], ...]] = {
            name: tuple(re.compile(p) for p in bp.rate_limit_patterns)
            for name, bp in doc.blueprints.items()
        }

    def timeout_for(self, blueprint: Blueprint, requested: str | float | None) -> float:
        """Resolve a request's (or else the blueprint's) timeout to seconds.

        Raises:
            KeyError: ``requested`` names no category.
        """
        value = blueprint.timeout if requested is None else requested
        if isinstance(value, str):
            return self.timeouts[value]
        return float(value)


# --- validation ------------------------------------------------------------

_TOML_TYPE_NAMES: dict[type, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean",
    list: "an array", dict: "a table",
}


def _describe(tp: Any) -> str:
    """Say in words what a field expects."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *metas = get_args(tp)
        text = _describe(base)
        for meta in metas:
            if isinstance(meta, msgspec.Meta):
                for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    bound = getattr(meta, attr)
                    if bound is not None:
                        text += f" {op} {bound:g}"
        return text
    if origin is list:
        return f"an array of {_plural(get_args(tp)[0])}"
    if origin is dict:
        return f"a table of {_plural(get_args(tp)[1])}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in parts)
        return text + (" (or absent)" if len(parts) < len(get_args(tp)) else "")
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "a table"
    return _TOML_TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    text = _describe(tp)
    for article in ("an ", "a "):
        if text.startswith(article):
            noun, _, rest = text[len(article):].partition(" ")
            return f"{noun}s" + (f" {rest}" if rest else "")
    return text


def _got(value: Any) -> str:
    for tp, name in _TOML_TYPE_NAMES.items():
        if type(value) is tp:
            return name
    return type(value).__name__


def _check(value: Any, tp: Any, path: str, problems: list[str]) -> None:
    """Append a problem for ``value`` at ``path`` unless it converts to ``tp``."""
    base = get_args(tp)[0] if get_origin(tp) is Annotated else tp
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        _check_struct(value, base, path, problems)
        return
    if get_origin(base) is dict and isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            problems.append(f"{path}: keys must be strings")
            return
        item_tp = get_args(base)[1]
        for key, item in value.items():
            _check(item, item_tp, f"{path}.{key}", problems)
        return
    try:
        msgspec.convert(value, tp, strict=True)
    except msgspec.ValidationError as exc:
        where = ""
        match = re.search(r" - at `\$(.*)`$", str(exc))
        if match:
            where = match.group(1)
        if where:
            problems.append(f"{path}{where}: {_element_problem(exc)}")
        else:
            problems.append(f"{path}: expected {_describe(tp)}, got {_got(value)}"
                            + (f" {value!r}" if isinstance(value, (int, float, str))
                               and not isinstance(value, bool) else ""))


_MSGSPEC_NAMES = {"str": "a string", "int": "an integer", "float": "a number",
                  "bool": "a boolean", "array": "an array", "object": "a table"}


def _element_problem(exc: msgspec.ValidationError) -> str:
    text = str(exc).split(" - at ", 1)[0]
    text = re.sub(r"`(\w+)`", lambda m: _MSGSPEC_NAMES.get(m.group(1), m.group(1)), text)
    return text[:1].lower() + text[1:]


def _check_struct(value: Any, tp: type[msgspec.Struct], path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a table, got {_got(value)}")
        return
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    hints = typing.get_type_hints(tp, include_extras=True)
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{path}.{key}: unknown key (known keys: {known})")
    for name, field in fields.items():
        if name in value:
            _check(value[name], hints[field.name], f"{path}.{name}", problems)
        elif field.required:
            problems.append(f"{path}.{name}: required key is missing")


def _check_blueprint(name: str, bp: Blueprint, reg: RegistryFile, problems: list[str]) -> None:
    path = f"blueprints.{name}"
    if not _NAME_RE.match(name):
        problems.append(f"{path}: a blueprint name is letters, digits, '_', '.', '-' "
                        "(at most 64, starting with a letter or digit)")
    if not bp.command or not bp.command[0]:
        problems.append(f"{path}.command: must name a program as its first element")
    for key, template, allowed in (("command", bp.command, ("{prompt}", "{args}")),
                                   ("model_args", bp.model_args, ("{model}",)),
                                   ("resume_args", bp.resume_args, ("{session}",))):
        for i, element in enumerate(template):
            for ph in PLACEHOLDERS:
                if ph in element and element != ph:
                    problems.append(f"{path}.{key}[{i}]: placeholder {ph} must be a whole "
                                    f"element, not part of {element!r}")
                elif element == ph and ph not in allowed:
                    problems.append(f"{path}.{key}[{i}]: {ph} is not allowed here "
                                    f"(only {' and '.join(allowed)})")
    for i, element in enumerate(bp.edit_args):
        if element in PLACEHOLDERS:
            problems.append(f"{path}.edit_args[{i}]: {element} is not allowed here")
    if bp.command.count("{args}") > 1:
        problems.append(f"{path}.command: \"{{args}}\" may appear at most once")
    if bp.command[:1] == ["{args}"] or bp.command[:1] == ["{prompt}"]:
        problems.append(f"{path}.command: the first element must be the program")
    if bp.default_model is not None and not bp.model_args:
        problems.append(f"{path}.default_model: needs model_args to pass it")
    prompt_slots = bp.command.count("{prompt}")
    if bp.prompt == "arg" and prompt_slots != 1:
        problems.append(f"{path}.command: with prompt = \"arg\" it must hold exactly one "
                        f"\"{{prompt}}\" element (found {prompt_slots})")
    if bp.prompt == "stdin" and prompt_slots:
        problems.append(f"{path}.command: with prompt = \"stdin\" it must not hold \"{{prompt}}\"")
    if bp.model_args and "{model}" not in bp.model_args:
        problems.append(f"{path}.model_args: must hold a \"{{model}}\" element")
    if bp.resume_args and "{session}" not in bp.resume_args:
        problems.append(f"{path}.resume_args: must hold a \"{{session}}\" element")
    if bp.parser not in KNOWN_PARSERS:
        problems.append(f"{path}.parser: unknown parser {bp.parser!r} "
                        f"(known: {', '.join(sorted(KNOWN_PARSERS))})")
    if isinstance(bp.timeout, str) and bp.timeout not in {**_default_timeouts(), **reg.timeouts}:
        problems.append(f"{path}.timeout: unknown timeout category {bp.timeout!r}")
    for key, patterns in (("rate_limit_patterns", bp.rate_limit_patterns),
                          ("stderr_ignore", bp.stderr_ignore)):
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as exc:
                problems.append(f"{path}.{key}[{i}]: invalid regular expression: "
                                f"{exc or type(exc).__name__}")
    for i, other in enumerate(bp.fallbacks):
        if other == name or other not in reg.blueprints:
            problems.append(f"{path}.fallbacks[{i}]: {other!r} is not another blueprint")
    for key, values in (("command", bp.command), ("model_args", bp.model_args),
                        ("resume_args", bp.resume_args), ("health.command", bp.health.command),
                        ("edit_args", bp.edit_args)):
        for i, element in enumerate(values):
            if "\x00" in element:
                problems.append(f"{path}.{key}[{i}]: holds a NUL byte, which no argument can")
    for key, value in bp.env.items():
        if not key or "=" in key or "\x00" in key + value:
            problems.append(f"{path}.env.{key}: a variable's name must be non-empty without "
                            "'=' or NUL, and its value without NUL")
    if bp.default_model is not None and (not bp.default_model or "\x00" in bp.default_model
                                         or bp.default_model.startswith("-")):
        problems.append(f"{path}.default_model: must be non-empty, hold no NUL byte and not "
                        "start with '-'")
    if bp.retry.max_delay < bp.retry.base_delay:
        problems.append(f"{path}.retry.max_delay: must be >= base_delay")
    if bp.warm.enabled and bp.warm.protocol != "stream-json":
        wanted = WARM_PARSERS[bp.warm.protocol]
        if bp.parser not in wanted or bp.prompt != "stdin":
            problems.append(f"{path}.warm.protocol: {bp.warm.protocol!r} needs parser "
                            f"{' or '.join(map(repr, wanted))} and prompt = \"stdin\"")
    elif bp.warm.enabled and (bp.parser != "claude-stream-json" or bp.prompt != "stdin"):
        problems.append(f"{path}.warm.enabled: a warm process needs parser = "
                        "\"claude-stream-json\" and prompt = \"stdin\"")
    for i, element in enumerate(bp.warm.args):
        if "\x00" in element or element in PLACEHOLDERS:
            problems.append(f"{path}.warm.args[{i}]: must be a plain argument")
    if bp.health.expect is not None and bp.health.prompt is None:
        problems.append(f"{path}.health.expect: only meaningful with health.prompt")


def parse_registry(data: bytes | str | Mapping[str, Any], source: str = "") -> Registry:
    """Validate a registry document.

    Args:
        data: TOML text, or an already-decoded document.
        source: Where it came from, used in messages.

    Returns:
        The validated registry.

    Raises:
        ConfigError: With every problem found.
    """
    if isinstance(data, Mapping):
        doc: Any = dict(data)
    else:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"TOML syntax: {exc}"], source) from None
        except RecursionError:
            raise ConfigError(["TOML syntax: arrays or tables nested too deep"], source) from None
    problems: list[str] = []
    # Paths start at the top level, not "$", so the root gets its own wording.
    if not isinstance(doc, dict):
        raise ConfigError(["the document must be a table"], source)
    fields = [f.encode_name for f in msgspec.structs.fields(RegistryFile)]
    hints = typing.get_type_hints(RegistryFile, include_extras=True)
    for key in doc:
        if key not in fields:
            problems.append(f"{key}: unknown key (known keys: {', '.join(sorted(fields))})")
    for key in fields:
        if key in doc:
            _check(doc[key], hints[key], key, problems)
    if problems:
        raise ConfigError(problems, source)
    reg = msgspec.convert(doc, RegistryFile, strict=True)
    for name, bp in reg.blueprints.items():
        _check_blueprint(name, bp, reg, problems)
    if problems:
        raise ConfigError(problems, source)
    return Registry(reg, source)


def load_file(path: str | Path) -> Registry:
    """Read and validate a registry file.

    Raises:
        ConfigError: The file cannot be read or is invalid.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from None
    return parse_registry(data, str(path))
