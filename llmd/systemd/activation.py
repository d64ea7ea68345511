"""systemd integration without libsystemd: socket activation, watchdog, status, unit files.

Invariants:
- A passed socket is used only when ``LISTEN_PID`` is our pid. ``LISTEN_PID``,
  ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` leave ``os.environ`` as soon as they are read,
  ours or not, so no child can take them for its own.
- Only a listening ``AF_UNIX``/``SOCK_STREAM`` socket is served: peers are authenticated
  with ``SO_PEERCRED``, which no other kind of socket offers. Anything else is refused
  with a message naming the fd, never served.
- A passed socket is never bound or unlinked by us: its file belongs to systemd.
- The watchdog pings from the event loop itself, so a loop that stops turning stops the
  pings; it pings only when ``WATCHDOG_PID`` is unset or ours.
- ``STATUS=`` goes out at most once per interval and always says the latest state.
- Nothing here sends anything when ``$NOTIFY_SOCKET`` is unset.
- The rendered units hide none of the CLIs' own state (``~/.claude``, ``~/.gemini``,
  ``~/.codex``): in a user manager no option is used that needs a mount or user namespace
  (``ProtectHome=``, ``ProtectSystem=``, ``PrivateTmp=`` imply ``PrivateUsers=``), and none
  that forbids a JIT (``MemoryDenyWriteExecute=`` breaks Node).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import IO, Any

import trio

from llmd.systemd.notify import Notifier

# sd_listen_fds(3): passed descriptors start at 3.
LISTEN_FDS_START = 3
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# The name llmd.socket gives its socket (FileDescriptorName=), a short form of it, and the
# name systemd gives a socket of llmd.socket when FileDescriptorName= is unset.
PREFERRED_NAMES = ("llmd.sock", "llmd", "llmd.socket")

SOCKET_UNIT = "llmd.socket"
SERVICE_UNIT = "llmd.service"


class ActivationError(Exception):
    """The environment says sockets were passed, but they cannot be served."""


# --- socket activation -------------------------------------------------------


def parse_listen_env(env: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The descriptors systemd passed to process ``pid``, with their names.

    Args:
        env: The environment holding ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``.
        pid: Our pid; variables meant for another process are ignored.

    Returns:
        ``[(fd, name), ...]`` from fd 3 up; empty when nothing was passed to us. A
        descriptor without a name is called ``"unknown"``, as systemd does.

    Raises:
        ActivationError: The variables are meant for us but malformed.
    """
    listen_pid = env.get("LISTEN_PID")
    if not listen_pid:
        return []
    try:
        if int(listen_pid) != pid:
            # Inherited from a parent that was activated itself: not ours.
            return []
    except ValueError:
        raise ActivationError(f"LISTEN_PID={listen_pid!r} is not a pid") from None
    raw = env.get("LISTEN_FDS", "")
    try:
        count = int(raw)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={raw!r} is not a number") from None
    if count < 0:
        raise ActivationError(f"LISTEN_FDS={raw!r} is negative")
    names_raw = env.get("LISTEN_FDNAMES")
    if names_raw is None:
        names = ["unknown"] * count
    else:
        names = names_raw.split(":")
        if len(names) != count:
            raise ActivationError(f"LISTEN_FDNAMES names {len(names)} descriptor"
                                  f"{'s' if len(names) != 1 else ''} but LISTEN_FDS={count}")
    return [(LISTEN_FDS_START + i, name) for i, name in enumerate(names)]


def choose_fd(fds: Sequence[tuple[int, str]]) -> tuple[int, str]:
    """Pick the socket to serve: the one named for llmd, else the first.

    Raises:
        ValueError: ``fds`` is empty.
    """
    if not fds:
        raise ValueError("no descriptors to choose from")
    for wanted in PREFERRED_NAMES:
        for fd, name in fds:
            if name == wanted:
                return fd, name
    return fds[0]


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "of an unknown kind"


def socket_from_fd(fd: int, name: str) -> socket.socket:
    """Wrap a passed descriptor, after checking it is a listening Unix stream socket.

    Args:
        fd: The descriptor.
        name: Its ``LISTEN_FDNAMES`` name, for messages.

    Returns:
        The socket, owning ``fd``.

    Raises:
        ActivationError: ``fd`` is closed or not such a socket; ``fd`` is left open.
    """
    label = f"fd {fd} ({name})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ActivationError(f"{label} is not open: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"{label} is {_kind(mode)}, not a socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            # Unknown families and types come back as plain ints, without a name.
            family = getattr(sock.family, "name", sock.family)
            kind = getattr(sock.type, "name", sock.type)
            raise ActivationError(
                f"{label} is a {family}/{kind} socket; llmd serves only "
                "AF_UNIX/SOCK_STREAM sockets, whose peers it can identify (SO_PEERCRED): "
                "use ListenStream=%t/llmd/llmd.sock")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"{label} is a Unix stream socket that is not listening "
                                  "(was Accept=yes set? llmd wants Accept=no)")
    except BaseException:
        # The descriptor is the caller's until we accept it: do not close it on the way out.
        sock.detach()
        raise
    return sock


def listen_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The socket systemd passed us, or None when we were not socket-activated.

    ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed from ``env``
    (``os.environ`` by default) whatever they held. Every passed descriptor is made
    close-on-exec, so none leaks into a CLI.

    Raises:
        ActivationError: Descriptors were passed to us, but the chosen one cannot be served.
    """
    env = os.environ if env is None else env
    try:
        fds = parse_listen_env(env, os.getpid())
    finally:
        for key in LISTEN_VARS:
            env.pop(key, None)
    if not fds:
        return None
    for fd, _name in fds:
        # A closed one is reported below if it is the one we chose.
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    fd, name = choose_fd(fds)
    return socket_from_fd(fd, name)


def socket_path_of(sock: socket.socket) -> Path | None:
    """The filesystem path a Unix socket is bound to, or None (abstract or unnamed)."""
    name = sock.getsockname()
    if isinstance(name, str) and name.startswith("/"):
        return Path(name)
    return None


# --- notify: watchdog and status ---------------------------------------------


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

    None when no watchdog is set, when it is meant for another pid, or when the values
    are malformed (a watchdog we cannot read is one we cannot serve).
    """
    usec = env.get("WATCHDOG_USEC", "")
    watched = env.get("WATCHDOG_PID", "")
    try:
        if watched and int(watched) != pid:
            return None
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2_000_000


async def watchdog(notifier: Notifier, env: Mapping[str, str] | None = None) -> None:
    """Ping systemd's watchdog every half ``WATCHDOG_USEC`` until cancelled.

    Returns at once when there is no watchdog for us or no notify socket; start it in the
    daemon's nursery either way.
    """
    env = os.environ if env is None else env
    interval = watchdog_interval(env, os.getpid())
    if interval is None or not notifier.enabled:
        return
    while True:
        notifier.send("WATCHDOG=1")
        await trio.sleep(interval)


class StatusReporter:
    """Keeps systemd's ``STATUS=`` line current without flooding the notify socket.

    Call :meth:`update` whenever what ``describe`` reports may have changed (it is cheap
    and never blocks); :meth:`run`, started in the daemon's nursery, sends the latest
    text at most once per ``interval`` and only when it differs from the last one sent.

    Args:
        notifier: Where to send.
        describe: Returns the status text (one line) at the moment it is called.
        interval: Least time between two datagrams, in seconds.
        poll: Also look at ``describe`` this often without :meth:`update` (None: never).
    """

    def __init__(self, notifier: Notifier, describe: Callable[[], str], *,
                 interval: float = 1.0, poll: float | None = None) -> None:
        self.notifier = notifier
        self.describe = describe
        self.interval = interval
        self.poll = poll
        self.last: str | None = None
        self._wake = trio.Event()

    def update(self) -> None:
        """Say that the status may have changed."""
        self._wake.set()

    async def run(self) -> None:
        """Send status changes until cancelled (returns at once without a notify socket)."""
        if not self.notifier.enabled:
            return
        poll = math.inf if self.poll is None else self.poll
        next_look = trio.current_time() + poll
        while True:
            with trio.move_on_at(next_look):
                await self._wake.wait()
            next_look = trio.current_time() + poll
            # A fresh event before reading: an update() from here on wakes the next round.
            self._wake = trio.Event()
            # One line: a newline would start another field of the notify message.
            text = " ".join(self.describe().split())
            if text == self.last:
                continue
            self.notifier.send(f"STATUS={text}")
            self.last = text
            # Updates meanwhile are coalesced: the next round reads describe() afresh.
            await trio.sleep(self.interval)


# --- the journal ---------------------------------------------------------------


def is_journal_stream(stream: IO[Any] | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to the journal (``$JOURNAL_STREAM`` names it).

    Comparing device and inode, as systemd.exec(5) advises, keeps a process whose stderr
    was redirected elsewhere from writing journal prefixes into a file.
    """
    env = os.environ if env is None else env
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or stream is None:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        # No real descriptor (a StringIO, a closed stream) or a malformed variable.
        return False


# --- unit files --------------------------------------------------------------

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
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                # systemd warns about executable or world-writable unit files.
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
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
