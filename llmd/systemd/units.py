"""The install-time side of systemd: the user units that start llmd on its socket.

Invariants:
- The rendered units hide none of the CLIs' own state (``~/.claude``, ``~/.gemini``,
  ``~/.codex``): in a user manager no option is used that needs a mount or user namespace
  (``ProtectHome=``, ``ProtectSystem=``, ``PrivateTmp=`` imply ``PrivateUsers=``), and none
  that forbids a JIT (``MemoryDenyWriteExecute=`` breaks Node).
- ``ExecStart=`` names the llmd that rendered the units, quoted so systemd reads it back
  unchanged.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from llmd.paths import write_atomically

SOCKET_UNIT = "llmd.socket"
SERVICE_UNIT = "llmd.service"

SOCKET_TEMPLATE = """\
# llmd's socket for the systemd user manager. With
#   systemctl --user enable --now llmd.socket
# systemd listens here, and the first client to connect starts llmd.service,
# which serves this very socket; it is never unlinked by llmd.

[Unit]
Description=llmd socket (LLM command-line agents behind JSON-RPC)

[Socket]
# The path clients use by default: $XDG_RUNTIME_DIR/llmd/llmd.sock.
ListenStream=%t/llmd/llmd.sock
# The name llmd looks for among the sockets it is passed (LISTEN_FDNAMES).
FileDescriptorName=llmd.sock
# Ours alone, like a socket llmd binds itself (it also checks every peer's uid).
SocketMode=0600
DirectoryMode=0700
# Once stopped, a missing file tells clients "not running" at once.
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

SERVICE_TEMPLATE = """\
# llmd, started by llmd.socket on the first connection.
# Change it with a drop-in (systemctl --user edit llmd.service), not here:
# `llmd install-service` rewrites this file.

[Unit]
Description=llmd: LLM command-line agents as one supervised local service
Requires=llmd.socket
After=llmd.socket

[Service]
Type=notify
ExecStart={exec_start} serve
# SIGHUP re-reads the registry; llmd says RELOADING=1, then READY=1.
ExecReload=kill -HUP $MAINPID
Restart=on-failure
RestartSec=1s
# SIGTERM goes to llmd alone: it cancels its jobs and kills their process groups
# itself. Whatever escaped a group is SIGKILLed with the cgroup once llmd has exited.
KillMode=mixed
# On SIGTERM llmd lets running jobs finish for [daemon] stop_grace (10 s by default),
# then cancels them and waits at most 15 s for their groups to die (TERM, a 5 s kill
# grace by default, then KILL) and for the answers to go out: 25 s at worst. 40 s
# leaves room for a loaded machine and is still short at logout; raise it in a
# drop-in together with a larger stop_grace.
TimeoutStopSec=40s
# llmd pings from its event loop every 15 s: a loop stuck for 30 s is restarted.
WatchdogSec=30s
SyslogIdentifier=llmd
# Hardening that needs no namespace, so the CLIs still see $HOME, /tmp and their own
# state (~/.claude, ~/.gemini, ~/.codex), and Node keeps its JIT. In a user manager
# these imply no_new_privs: the agents cannot use sudo or other setuid helpers.
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native

[Install]
# Enabling the service enables the socket; llmd starts when first used.
Also=llmd.socket
"""

# Options that, in a user manager, need a mount or user namespace (and so hide or remap
# $HOME, /tmp or the user's files from the CLIs), or forbid the writable+executable
# memory a JIT needs. Rendered units must never carry them.
UNSAFE_OPTIONS = (
    "ProtectHome", "ProtectSystem", "PrivateTmp", "PrivateUsers", "PrivateDevices",
    "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectHostname", "ProtectClock", "ProtectProc",
    "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "RootDirectory",
    "MemoryDenyWriteExecute", "RestrictNamespaces", "DynamicUser",
)


def exec_quote(arg: str, *, executable: bool = False) -> str:
    """Quote one ``ExecStart=`` word so systemd reads it back unchanged.

    ``%`` starts a specifier everywhere, so it is doubled; ``$`` starts a variable in the
    arguments only, so it is doubled there. Words with blanks, quotes, backslashes or
    ``;`` are double-quoted with C escapes.

    Args:
        arg: The word.
        executable: Whether it is the program (the first word).

    Raises:
        ValueError: ``arg`` holds a control character, which a unit line cannot carry,
            or it is the program and holds a quote or backslash, which systemd refuses
            in a program's path.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in arg):
        raise ValueError(f"{arg!r} holds a control character")
    if executable and any(c in "\"'\\" for c in arg):
        raise ValueError(f"systemd refuses quotes and backslashes in a program's path: {arg!r}")
    escaped = arg.replace("%", "%%")
    if not executable:
        escaped = escaped.replace("$", "$$")
    if arg and not any(c.isspace() or c in "\"'\\;" for c in arg):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def llmd_command(argv0: str | None = None, *, scripts: str | None = None,
                 which: Callable[[str], str | None] = shutil.which,
                 executable: str | None = None) -> list[str]:
    """The absolute command that runs this ``llmd``, for ``ExecStart=``.

    In order: ``argv0`` when it is the ``llmd`` script itself; the ``llmd`` script of the
    running interpreter's environment (``python -m llmd`` from a venv); ``llmd`` on
    ``PATH``; else ``EXECUTABLE -m llmd``. Paths are made absolute but symlinks are kept:
    ``~/.local/bin/llmd`` pointing into a tool's venv survives a reinstall of that venv,
    and resolving a venv's ``python`` link would leave the venv.

    Args:
        argv0: The program name as run (default ``sys.argv[0]``).
        scripts: The environment's scripts directory (default from ``sysconfig``).
        which: Looks a command up on ``PATH``.
        executable: The interpreter (default ``sys.executable``).

    Raises:
        RuntimeError: None of these is available.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0:
        candidate = Path(argv0)
        if candidate.name == "llmd" and _is_executable_file(candidate):
            return [os.path.abspath(candidate)]
    scripts = sysconfig.get_path("scripts") if scripts is None else scripts
    if scripts:
        candidate = Path(scripts) / "llmd"
        if _is_executable_file(candidate):
            return [os.path.abspath(candidate)]
    found = which("llmd")
    if found:
        return [os.path.abspath(found)]
    executable = sys.executable if executable is None else executable
    if not executable:
        raise RuntimeError("cannot tell how to run llmd: no llmd on PATH and no interpreter")
    return [os.path.abspath(executable), "-m", "llmd"]


def render_units(command: Sequence[str]) -> dict[str, str]:
    """The unit files, by name, for an ``llmd`` started as ``command``.

    Args:
        command: The absolute argv that runs ``llmd`` (``serve`` is appended).

    Raises:
        ValueError: ``command`` is empty, relative, or cannot be written in a unit.
    """
    if not command or not os.path.isabs(command[0]):
        raise ValueError(f"ExecStart needs an absolute path, not {list(command)!r}")
    exec_start = " ".join(exec_quote(arg, executable=i == 0) for i, arg in enumerate(command))
    return {SOCKET_UNIT: SOCKET_TEMPLATE,
            SERVICE_UNIT: SERVICE_TEMPLATE.format(exec_start=exec_start)}


def user_unit_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the user manager looks for the user's own units.

    ``$XDG_CONFIG_HOME/systemd/user``, or ``~/.config/systemd/user`` when that is unset
    or relative (the XDG specification says to ignore relative values).
    """
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        home = env.get("HOME") or str(Path.home())
        base = os.path.join(home, ".config")
    return Path(base) / "systemd" / "user"


def write_units(units: Mapping[str, str], directory: Path) -> list[tuple[Path, bool]]:
    """Write unit files atomically, mode 0644.

    Returns:
        ``[(path, changed), ...]``; ``changed`` is False when the file already said this.

    Raises:
        OSError: The directory or a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, bool]] = []
    for name, text in units.items():
        path = directory / name
        try:
            same = path.read_text() == text and stat.S_IMODE(path.stat().st_mode) == 0o644
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            # A rename never leaves a half-written unit for a concurrent daemon-reload.
            # systemd warns about executable or world-writable unit files.
            write_atomically(path, text, 0o644)
        written.append((path, not same))
    return written


def env_assignment(name: str, value: str) -> str:
    """An ``Environment=`` value that systemd reads back as ``name=value``.

    Raises:
        ValueError: ``value`` holds a control character.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} holds a control character")
    # Environment= expands specifiers (%) but not variables ($).
    text = f"{name}={value}".replace("%", "%%")
    if not any(c.isspace() or c in "\"'\\" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def next_steps(path: str | None = None) -> str:
    """What to run after the units are in place, as shown by ``llmd install-service``.

    Args:
        path: The ``PATH`` to suggest for the service (the caller's, usually).
    """
    try:
        assignment = env_assignment("PATH", path) if path else "PATH=..."
    except ValueError:
        assignment = "PATH=..."
    return f"""\
Next, start it (the first connection then starts llmd):
  systemctl --user daemon-reload
  systemctl --user enable --now llmd.socket

Check it:
  systemctl --user status llmd.socket llmd.service
  llmc info
  journalctl --user -u llmd -f         # follow the log; add -p warning for problems only

The service gets the user manager's PATH, not your shell's. If a CLI lives elsewhere
(e.g. ~/.local/bin), give the service your PATH, either until you log out:
  systemctl --user import-environment PATH
or for good, with a drop-in: run `systemctl --user edit llmd.service` and add
  [Service]
  Environment={assignment}
then: systemctl --user restart llmd.service
"""
