"""``llmc completion bash|zsh|fish``: shell completion scripts, and the names they ask for.

The scripts hold llmc's commands and options, taken from its own argument parser when the
script is printed; blueprint names and job ids are asked of the daemon at completion time
through the hidden ``llmc __complete blueprints|jobs``, which prints one name a line and
nothing at all when llmd does not answer quickly.

Invariants:
- A script never runs anything but ``llmc __complete``, and completing never fails or
  prints an error: a daemon that is down completes nothing.
- What a positional argument completes follows its metavar: ``NAME`` a blueprint, ``ID``
  a job, ``SHELL`` a shell; a command added later completes the same way.
"""

from __future__ import annotations

import argparse

from llmc import exitcodes
from llmc.output import write

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SHELLS = ("bash", "zsh", "fish")
# How long completion waits for llmd: a shell must not hang on a Tab.
COMPLETE_TIMEOUT = 1.0
# The metavars of positionals that complete from something known.
KINDS = {"NAME": "blueprints", "ID": "jobs", "SHELL": "shells"}


class _Spec:
    """What one command takes: its options, those that take a value, what its first
    positional completes."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.options: list[str] = []
        self.valued: list[str] = []
        self.positional: str = ""
        # argparse has no public listing of a parser's arguments.
        for action in parser._actions:
            if action.option_strings:
                self.options.extend(action.option_strings)
                if action.nargs != 0:
                    self.valued.extend(action.option_strings)
            elif not self.positional and not isinstance(action, argparse._SubParsersAction):
                self.positional = KINDS.get(str(action.metavar), "")


def _specs(build: Callable[..., argparse.ArgumentParser],
           commands: list[str]) -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {"": _Spec(build(only="__none__"))}
    for name in commands:
        parser = build(only=name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                specs[name] = _Spec(action.choices[name])
    return specs


def script(shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    from llmc.cli import COMMANDS, build_parser  # noqa: PLC0415 - cli imports this lazily

    commands = list(COMMANDS)
    specs = _specs(build_parser, commands)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](commands, specs)


def _words(items: list[str]) -> str:
    return " ".join(items)


def _bash(commands: list[str], specs: dict[str, _Spec]) -> str:
    options = "\n".join(f"        {name}) opts={_words(spec.options)!r};;"
                        for name, spec in specs.items() if name)
    valued = _words(sorted({o for spec in specs.values() for o in spec.valued}))
    kinds = "\n".join(f"        {name}) kind={spec.positional!r};;"
                      for name, spec in specs.items() if name and spec.positional)
    return f'''# llmc completion for bash. Add to ~/.bashrc:  eval "$(llmc completion bash)"
_llmc() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local cmd="" npos=0 i w skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        if ((skip)); then skip=0; continue; fi
        case " {valued} " in *" $w "*) skip=1; continue;; esac
        case $w in
            -*) ;;
            *) if [[ -z $cmd ]]; then cmd=$w; else npos=$((npos + 1)); fi;;
        esac
    done
    COMPREPLY=()
    case $prev in
        --cwd) COMPREPLY=($(compgen -d -- "$cur")); return;;
        --socket) COMPREPLY=($(compgen -f -- "$cur")); return;;
        --timeout) COMPREPLY=($(compgen -W "quick normal long extended" -- "$cur")); return;;
        --state) COMPREPLY=($(compgen -W "{_words(_STATES)}" -- "$cur")); return;;
    esac
    case " {valued} " in *" $prev "*) return;; esac
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "{_words(specs[''].options)}" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{_words(commands)}" -- "$cur"))
        fi
        return
    fi
    local opts="" kind=""
    case $cmd in
{options}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    ((npos == 0)) || return
    case $cmd in
{kinds}
    esac
    case $kind in
        shells) COMPREPLY=($(compgen -W "{_words(list(SHELLS))}" -- "$cur"));;
        blueprints|jobs)
            COMPREPLY=($(compgen -W "$(llmc __complete "$kind" 2>/dev/null)" -- "$cur"));;
    esac
}}
complete -F _llmc llmc
'''


def _zsh(commands: list[str], specs: dict[str, _Spec]) -> str:
    options = "\n".join(f"        ({name}) opts=({_words(spec.options)});;"
                        for name, spec in specs.items() if name)
    valued = _words(sorted({o for spec in specs.values() for o in spec.valued}))
    kinds = "\n".join(f"        ({name}) kind={spec.positional};;"
                      for name, spec in specs.items() if name and spec.positional)
    return f'''#compdef llmc
# llmc completion for zsh. Add to ~/.zshrc (after compinit):  eval "$(llmc completion zsh)"
_llmc() {{
    local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}}
    local cmd="" kind="" w
    local -i npos=0 skip=0 i
    local -a valued opts
    valued=({valued})
    for ((i = 2; i < CURRENT; i++)); do
        w=${{words[i]}}
        if ((skip)); then skip=0; continue; fi
        if ((${{valued[(Ie)$w]}})); then skip=1; continue; fi
        case $w in
            (-*) ;;
            (*) if [[ -z $cmd ]]; then cmd=$w; else npos=$((npos + 1)); fi;;
        esac
    done
    case $prev in
        (--cwd) _directories; return;;
        (--socket) _files; return;;
        (--timeout) compadd -- quick normal long extended; return;;
        (--state) compadd -- {_words(_STATES)}; return;;
    esac
    if ((${{valued[(Ie)$prev]}})); then return; fi
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            compadd -- {_words(specs[''].options)}
        else
            compadd -- {_words(commands)}
        fi
        return
    fi
    case $cmd in
{options}
    esac
    if [[ $cur == -* ]]; then
        compadd -- $opts
        return
    fi
    ((npos == 0)) || return
    case $cmd in
{kinds}
    esac
    case $kind in
        (shells) compadd -- {_words(list(SHELLS))};;
        (blueprints|jobs) compadd -- ${{(f)"$(llmc __complete $kind 2>/dev/null)"}};;
    esac
}}
if (( $+functions[compdef] )); then
    compdef _llmc llmc
fi
'''


def _fish(commands: list[str], specs: dict[str, _Spec]) -> str:
    lines = ["# llmc completion for fish. Add to ~/.config/fish/config.fish:",
             "#   llmc completion fish | source",
             "complete -c llmc -f",
             f"complete -c llmc -n __fish_use_subcommand -a '{_words(commands)}'"]
    sources = {"blueprints": "(llmc __complete blueprints 2>/dev/null)",
               "jobs": "(llmc __complete jobs 2>/dev/null)",
               "shells": _words(list(SHELLS))}
    for name, spec in specs.items():
        if not name:
            continue
        cond = f"__fish_seen_subcommand_from {name}"
        if spec.positional:
            lines.append(f"complete -c llmc -n '{cond}' -a '{sources[spec.positional]}'")
        for option in spec.options:
            flag = f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}"
            value = " -r" if option in spec.valued else ""
            lines.append(f"complete -c llmc -n '{cond}' {flag}{value}")
    return "\n".join(lines) + "\n"


_STATES = list(exitcodes.JOB_STATES)


def cmd_completion(args: argparse.Namespace) -> int:
    """``llmc completion SHELL``: print the script."""
    write(script(args.shell))
    return exitcodes.OK


def complete_names(kind: str, socket: str | None) -> int:
    """``llmc __complete blueprints|jobs``: one name a line; nothing when llmd is away.

    Returns:
        Always 0: a completion that fails must not disturb the shell.
    """
    from llmc.calling import connect  # noqa: PLC0415
    from llmc.connection import ClientError  # noqa: PLC0415

    names: list[str] = []
    try:
        with connect(argparse.Namespace(socket=socket)) as conn:
            if kind == "blueprints":
                reply = conn.call("blueprints.list", timeout=COMPLETE_TIMEOUT)
                entries = reply.get("blueprints") if isinstance(reply, dict) else None
                names = [e["name"] for e in entries or []
                         if isinstance(e, dict) and isinstance(e.get("name"), str)]
            elif kind == "jobs":
                reply = conn.call("jobs.list", {"limit": 100}, timeout=COMPLETE_TIMEOUT)
                entries = reply.get("jobs") if isinstance(reply, dict) else None
                names = [e["job"] for e in entries or []
                         if isinstance(e, dict) and isinstance(e.get("job"), str)]
    except (ClientError, OSError):
        return exitcodes.OK
    if names:
        write("\n".join(names) + "\n")
    return exitcodes.OK
