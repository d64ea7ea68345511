"""argv rendering and the child environment: pure, so every prompt can be tried."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmd.config import parse_registry
from llmd.errors import InvalidParams
from llmd.process.argv import MAX_ARG_BYTES, child_env, render

REG = parse_registry("""
[blueprints.arg]
command = ["cli", "-p", "{prompt}", "--tail"]
model_args = ["--model", "{model}"]
resume_args = ["--resume", "{session}"]
[blueprints.dashdash]
command = ["cli", "--", "{prompt}"]
[blueprints.stdin]
command = ["cli", "exec", "{args}", "-"]
prompt = "stdin"
model_args = ["-m", "{model}"]
resume_args = ["resume", "{session}"]
default_model = "small"
[blueprints.plain]
command = ["cli"]
prompt = "stdin"
env = { ADDED = "1", NO_COLOR = "0" }
env_remove = ["SECRET"]
""")
BP = REG.blueprints


@given(st.text())
def test_any_prompt_is_one_whole_argument_or_refused(prompt: str) -> None:
    try:
        inv = render(BP["arg"], "arg", prompt)
    except InvalidParams as exc:
        assert exc.code == -32602
        assert ("\x00" in prompt or prompt.startswith("-")
                or len(prompt.encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES)
        return
    assert inv.argv == ["cli", "-p", prompt, "--tail"]
    assert inv.stdin is None


@given(st.text())
def test_any_prompt_goes_to_stdin_byte_exact(prompt: str) -> None:
    inv = render(BP["stdin"], "stdin", prompt)
    assert inv.stdin == prompt.encode("utf-8", "surrogatepass")
    assert inv.argv == ["cli", "exec", "-m", "small", "-"]


def test_options_go_where_args_stands_or_before_the_prompt() -> None:
    inv = render(BP["stdin"], "stdin", "p", model="big", session="s-1")
    assert inv.argv == ["cli", "exec", "-m", "big", "resume", "s-1", "-"]
    inv = render(BP["arg"], "arg", "p", model="m", session="s")
    assert inv.argv == ["cli", "-p", "--model", "m", "--resume", "s", "p", "--tail"]
    inv = render(BP["dashdash"], "dashdash", "--version")
    assert inv.argv == ["cli", "--", "--version"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"model": "x"}, "does not take a model"),
    ({"session": "x"}, "cannot resume a session"),
])
def test_model_and_session_need_their_templates(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidParams, match=needle):
        render(BP["dashdash"], "dashdash", "p", **kwargs)


@pytest.mark.parametrize("value", ["", "-rf", "a\x00b"])
def test_model_and_session_values_cannot_be_options(value: str) -> None:
    with pytest.raises(InvalidParams):
        render(BP["arg"], "arg", "p", model=value)
    with pytest.raises(InvalidParams):
        render(BP["arg"], "arg", "p", session=value)


def test_argument_prompts_over_the_kernel_limit_are_refused() -> None:
    render(BP["arg"], "arg", "x" * MAX_ARG_BYTES)
    with pytest.raises(InvalidParams, match="stdin"):
        render(BP["arg"], "arg", "x" * (MAX_ARG_BYTES + 1))


def test_child_environment_is_scrubbed() -> None:
    base = {"PATH": "/bin", "SECRET": "s", "LISTEN_FDS": "1", "LISTEN_PID": "2",
            "LISTEN_FDNAMES": "x", "NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "1",
            "WATCHDOG_PID": "1", "CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli",
            "LLMD_SOCKET": "/s", "HOME": "/home/u"}
    env = child_env(base, BP["plain"])
    assert env == {"PATH": "/bin", "HOME": "/home/u", "ADDED": "1", "NO_COLOR": "1",
                   "PYTHONUNBUFFERED": "1"}
    assert base["SECRET"] == "s"  # the daemon's own environment is untouched
