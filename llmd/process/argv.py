"""Turn a blueprint and a request into the exact argv, stdin and environment of a child.

Invariants:
- A placeholder is substituted only where a template element *is* that placeholder;
  the prompt becomes exactly one element (or the stdin bytes), is never split, never
  scanned for placeholders and never passed through a shell.
- A prompt passed as an argument that would be read as an option is refused unless
  the template ends options with ``--`` before it or the blueprint allows it.
- The child's environment is the daemon's minus what must not leak (systemd's
  activation variables, Claude Code's nesting markers, ``env_remove``), plus ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmd.config import Blueprint
from llmd.errors import InvalidParams

# Linux refuses a single argv element longer than MAX_ARG_STRLEN (32 pages).
MAX_ARG_BYTES = 131072 - 1

_ALWAYS_REMOVED_PREFIXES = ("LISTEN_", "WATCHDOG_")
_ALWAYS_REMOVED = frozenset({
    "NOTIFY_SOCKET", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "LLMD_SOCKET",
})
FORCED_ENV = {"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Invocation:
    """What one attempt executes."""

    argv: list[str]
    stdin: bytes | None
    """Bytes to write to the child's stdin and then close; ``None`` means /dev/null."""


def render(bp: Blueprint, name: str, prompt: str, *, model: str | None = None,
           session: str | None = None, edit: bool = False) -> Invocation:
    """Render the argv (and stdin) for one run.

    Args:
        bp: The blueprint.
        name: Its name, for messages.
        prompt: The prompt, passed whole.
        model: Optional model, rendered through ``model_args``.
        session: Optional session to resume, rendered through ``resume_args``.
        edit: Add the blueprint's ``edit_args`` (the run is isolated in a worktree).

    Returns:
        The invocation.

    Raises:
        InvalidParams: The request cannot be rendered safely for this blueprint.
    """
    extra: list[str] = list(bp.edit_args) if edit else []
    model = model if model is not None else bp.default_model
    for key, value, template, what in (
            ("model", model, bp.model_args, "does not take a model (it has no model_args)"),
            ("session", session, bp.resume_args,
             "cannot resume a session (it has no resume_args)")):
        if value is None:
            continue
        if not template:
            raise InvalidParams(f"blueprint {name!r} {what}", {"blueprint": name})
        _check_value(key, value, name)
        extra += [value if e == f"{{{key}}}" else e for e in template]

    if bp.prompt == "stdin":
        return Invocation(argv=_place(bp.command, extra, None),
                          stdin=prompt.encode("utf-8", "surrogatepass"))

    if "\x00" in prompt:
        raise InvalidParams(f"the prompt holds a NUL byte, which cannot be passed as an "
                            f"argument to {name!r}", {"blueprint": name})
    slot = bp.command.index("{prompt}")
    if prompt.startswith("-") and not bp.allow_dash_prompt and "--" not in bp.command[:slot]:
        raise InvalidParams(f"the prompt starts with '-' and {name!r} would read it as an "
                            "option; send it on stdin or start it with another character",
                            {"blueprint": name})
    if len(prompt.encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES:
        raise InvalidParams(f"the prompt is longer than the {MAX_ARG_BYTES + 1} bytes the "
                            f"kernel allows in one argument; {name!r} needs prompt = \"stdin\"",
                            {"blueprint": name})
    return Invocation(argv=_place(bp.command, extra, prompt), stdin=None)


def _place(command: list[str], extra: list[str], prompt: str | None) -> list[str]:
    """Substitute the template: options where ``{args}`` stands, else before the prompt
    (where option parsers expect them), else at the end."""
    argv: list[str] = []
    placed = False
    for element in command:
        if element == "{args}":
            argv += extra
            placed = True
        elif element == "{prompt}":
            if not placed and "{args}" not in command:
                argv += extra
                placed = True
            argv.append(prompt if prompt is not None else element)
        else:
            argv.append(element)
    if not placed:
        argv += extra
    return argv


def _check_value(key: str, value: str, name: str) -> None:
    if not value or "\x00" in value or value.startswith("-"):
        raise InvalidParams(f"invalid {key} {value!r} for {name!r}: it must be non-empty, "
                            "hold no NUL byte and not start with '-'",
                            {"blueprint": name, "param": key})


def child_env(base: Mapping[str, str], bp: Blueprint) -> dict[str, str]:
    """Build the child's environment.

    Args:
        base: The daemon's environment.
        bp: The blueprint, for ``env_remove`` and ``env``.

    Returns:
        A new mapping; ``base`` is untouched.
    """
    removed = set(bp.env_remove)
    env = {k: v for k, v in base.items()
           if k not in _ALWAYS_REMOVED and k not in removed
           and not k.startswith(_ALWAYS_REMOVED_PREFIXES)}
    env.update(bp.env)
    env.update(FORCED_ENV)
    return env


def search_path(env: Mapping[str, str]) -> Sequence[str]:
    """The directories a bare program name is looked up in."""
    return [p for p in env.get("PATH", "").split(":") if p]
