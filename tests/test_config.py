"""Registry validation: every problem, each with its dotted path; lookup order; check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmd.config import parse_registry
from llmd.errors import ConfigError
from llmd.paths import PACKAGED_CONFIG, config_path, packaged_config

REPO = Path(__file__).parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_registry(text, "t.toml")
    assert info.value.code == -32008
    return info.value.problems


def test_every_problem_is_reported_with_its_path() -> None:
    found = problems("""
[daemon]
max_jobs = 0
bogus = 1
[timeouts]
quick = "soon"
[blueprints.claude]
command = "claude -p"
retry = { max_attempts = "3", jitter = true }
[blueprints.other]
command = ["echo", 3]
env = { A = 1 }
timeout = -1
prompt = "pipe"
""")
    assert sorted(found) == sorted([
        "daemon.max_jobs: expected an integer >= 1, got an integer 0",
        "daemon.bogus: unknown key (known keys: log_level, max_jobs, max_message_bytes, "
        "max_queue, stop_grace, warm_max)",
        "timeouts.quick: expected a number > 0, got a string 'soon'",
        "blueprints.claude.command: expected an array of strings, got a string 'claude -p'",
        "blueprints.claude.retry.jitter: unknown key (known keys: base_delay, max_attempts, "
        "max_delay)",
        "blueprints.claude.retry.max_attempts: expected an integer >= 1, got a string '3'",
        "blueprints.other.command[1]: expected a string, got an integer",
        "blueprints.other.env.A: expected a string, got an integer 1",
        "blueprints.other.timeout: expected a string or a number > 0, got an integer -1",
        "blueprints.other.prompt: expected one of 'arg', 'stdin', got a string 'pipe'",
    ])


def test_semantic_problems() -> None:
    found = problems("""
[blueprints.a]
command = ["echo", "--x={prompt}"]
timeout = "someday"
rate_limit_patterns = ["("]
fallbacks = ["a", "zz"]
model_args = ["-m"]
parser = "yaml"
[blueprints."bad name"]
command = ["x", "{prompt}"]
[blueprints.s]
command = ["x", "{prompt}"]
prompt = "stdin"
[blueprints.n]
command = ["x", "{model}"]
prompt = "stdin"
""")
    text = "\n".join(found)
    assert "blueprints.a.command[1]: placeholder {prompt} must be a whole element" in text
    assert "blueprints.a.timeout: unknown timeout category 'someday'" in text
    assert "blueprints.a.rate_limit_patterns[0]: invalid regular expression" in text
    assert "blueprints.a.fallbacks[0]: 'a' is not another blueprint" in text
    assert "blueprints.a.fallbacks[1]: 'zz' is not another blueprint" in text
    assert "blueprints.a.model_args: must hold a \"{model}\" element" in text
    assert "blueprints.a.parser: unknown parser 'yaml'" in text
    assert "blueprints.bad name: a blueprint name is" in text
    assert "blueprints.s.command: with prompt = \"stdin\" it must not hold" in text
    assert "blueprints.n.command[1]: {model} is not allowed here" in text


def test_toml_syntax_error_is_one_problem() -> None:
    [problem] = problems("[blueprints.x\ncommand = [")
    assert problem.startswith("TOML syntax:")


def test_valid_registry_and_defaults() -> None:
    reg = parse_registry("""
[timeouts]
tiny = 2
[blueprints.x]
command = ["x", "--", "{prompt}"]
timeout = "tiny"
model_args = ["--model", "{model}"]
""")
    bp = reg.blueprints["x"]
    assert reg.timeout_for(bp, None) == 2.0
    assert reg.timeout_for(bp, "long") == 600.0
    assert reg.timeout_for(bp, 7) == 7.0
    assert bp.retry.max_attempts == 3 and bp.kill_grace == 5.0
    assert reg.daemon.max_jobs == 16 and reg.daemon.max_queue == 256


def test_the_packaged_default_is_the_top_level_file_and_valid() -> None:
    assert packaged_config() == (REPO / "llmd.toml").read_bytes()
    reg = parse_registry(packaged_config(), PACKAGED_CONFIG)
    assert {"claude", "codex", "gemini", "llm", "openai", "ollama"} <= set(reg.blueprints)
    assert all(bp.description for bp in reg.blueprints.values())


def test_config_lookup_order(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "llmd").mkdir(parents=True)
    env = {"XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path)}
    assert config_path(None, env) == PACKAGED_CONFIG
    (xdg / "llmd" / "llmd.toml").write_text("")
    assert config_path(None, env) == str(xdg / "llmd" / "llmd.toml")
    assert config_path(None, {**env, "LLMD_CONFIG": "/e.toml"}) == "/e.toml"
    assert config_path("/flag.toml", {**env, "LLMD_CONFIG": "/e.toml"}) == "/flag.toml"


def test_check_config_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[blueprints.claude]\ncommand = "claude"\nfoo = 1\n')
    proc = subprocess.run([sys.executable, "-m", "llmd", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "blueprints.claude.command: expected an array of strings" in proc.stderr
    assert "blueprints.claude.foo: unknown key" in proc.stderr
    good = tmp_path / "good.toml"
    good.write_text('[blueprints.e]\ncommand = ["echo", "{prompt}"]\n')
    proc = subprocess.run([sys.executable, "-m", "llmd", "check-config", str(good)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "1 blueprint" in proc.stdout and "echo {prompt}" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "llmd", "check-config", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "cannot read the file" in proc.stderr


def test_serve_refuses_an_invalid_registry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[blueprints.x]\n")
    proc = subprocess.run([sys.executable, "-m", "llmd", "serve", "--config", str(bad),
                           "--socket", str(tmp_path / "s.sock")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "blueprints.x.command: required key is missing" in proc.stderr
    assert not (tmp_path / "s.sock").exists()
