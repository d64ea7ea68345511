"""The ``llmd`` command: ``serve``, ``check-config`` and ``install-service``.

Exit status: 0 success; 1 the daemon could not start (already running, unsafe path,
invalid configuration, an unusable socket passed by systemd), the configuration is
invalid, or the units could not be written; 2 usage error.

Invariants:
- ``serve`` reads (and removes) systemd's ``LISTEN_*`` variables before anything else can
  copy the environment; a passed socket is served instead of the configured path.
- Logs carry syslog priority prefixes and no timestamps of ours exactly when stderr is
  the journal (``$JOURNAL_STREAM`` names stderr's device and inode).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from collections.abc import Mapping
from typing import ClassVar, TextIO

from llmd import __version__
from llmd.errors import ConfigError
from llmd.paths import config_path, socket_path

log = logging.getLogger("llmd")


class _JournalFormatter(logging.Formatter):
    """syslog priority prefixes so ``journalctl -p`` can filter; the journal adds time.

    The journal stores each line of a stream as its own entry, so every line of a
    multi-line record (a traceback) carries the prefix, or it would be logged at info.
    """

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
        logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def setup_logging(level: str, *, stream: TextIO | None = None,
                  env: Mapping[str, str] | None = None) -> None:
    """Log to ``stream`` (stderr), in the journal's format when it is the journal.

    Args:
        level: A level name (``"info"``...).
        stream: Where to write (default ``sys.stderr``).
        env: Where to read ``JOURNAL_STREAM`` (default ``os.environ``).
    """
    from llmd.systemd.runtime import is_journal_stream  # noqa: PLC0415 - keeps check-config light

    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if is_journal_stream(stream, env):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("llmd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmd", description="Run LLM command-line agents as one supervised local service.")
    parser.add_argument("--version", action="version", version=f"llmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve in the foreground")
    serve.add_argument("--config", help="registry file (default: $LLMD_CONFIG, "
                       "$XDG_CONFIG_HOME/llmd/llmd.toml, then the packaged default)")
    serve.add_argument("--socket", help="socket path (default: $LLMD_SOCKET, "
                       "$XDG_RUNTIME_DIR/llmd/llmd.sock, or /tmp/llmd-$UID/llmd.sock)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="default: the registry's daemon.log_level")
    check = sub.add_parser("check-config", help="validate a registry file and list it")
    check.add_argument("path", nargs="?", help="the file (default: the one serve would use)")
    install = sub.add_parser(
        "install-service", help="write systemd user units for this llmd",
        description="Write llmd.socket and llmd.service to $XDG_CONFIG_HOME/systemd/user "
        "(~/.config/systemd/user), running this llmd, and print the systemctl commands "
        "that start it.")
    install.add_argument("--print", action="store_true", dest="print_only",
                         help="show the units and the commands; write nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``llmd``."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        if args.command == "check-config":
            return _check_config(args.path)
        return _install_service(print_only=args.print_only)
    except BrokenPipeError:
        # `llmd check-config | head`: the reader had enough; no traceback for that.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _check_config(path: str | None) -> int:
    from llmd.daemon import load_registry  # noqa: PLC0415 - keeps trio out of check-config

    source = config_path(path)
    try:
        registry = load_registry(source)
    except ConfigError as exc:
        print(f"{exc.source or source}: {len(exc.problems)} problem"
              f"{'s' if len(exc.problems) != 1 else ''}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{registry.source}: OK, {len(registry.blueprints)} blueprint"
          f"{'s' if len(registry.blueprints) != 1 else ''}")
    for name, bp in registry.blueprints.items():
        timeout = registry.timeout_for(bp, None)
        print(f"  {name:<12} {bp.parser:<20} prompt={bp.prompt:<5} timeout={timeout:g}s  "
              f"{' '.join(bp.command)}")
    return 0


def _install_service(*, print_only: bool) -> int:
    from llmd.systemd import units as unit_files  # noqa: PLC0415

    try:
        units = unit_files.render_units(unit_files.llmd_command())
    except (RuntimeError, ValueError) as exc:
        print(f"llmd: cannot write the units: {exc}", file=sys.stderr)
        return 1
    directory = unit_files.user_unit_dir()
    steps = unit_files.next_steps(os.environ.get("PATH"))
    if print_only:
        for name, text in units.items():
            print(f"# {directory / name}\n{text}")
        print(steps, end="")
        return 0
    try:
        written = unit_files.write_units(units, directory)
    except OSError as exc:
        print(f"llmd: cannot write the units to {directory}: {exc}", file=sys.stderr)
        return 1
    for path, changed in written:
        print(f"{'wrote' if changed else 'unchanged'} {path}")
    print()
    print(steps, end="")
    return 0


# mallopt(3) parameters of glibc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 4 << 20
SWITCH_INTERVAL = 0.0002


def tune_malloc() -> bool:
    """Give large blocks back to the system at once, and keep the small ones' pages.

    glibc raises its mmap threshold after each large free, up to 32 MiB; from then on a
    run's 16 MiB answer and its 32 MiB reply come from the heap, whose holes a long-lived
    daemon never gives back. With the threshold fixed at 4 MiB they are mapped apart and
    unmapped the moment they are freed. Fixing it also fixes the trim threshold, at a
    128 KiB default that would unmap and fault in again the 1 MiB buffers each chunk of a
    stream goes through: 4 MiB keeps them. glibc only; a no-op elsewhere.

    Returns:
        Whether both were set.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc, not musl or another libc
    except (AttributeError, OSError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _serve(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from llmd.daemon import Daemon, load_registry  # noqa: PLC0415
    from llmd.paths import PathError  # noqa: PLC0415
    from llmd.server.listener import AlreadyRunning  # noqa: PLC0415
    from llmd.systemd import activation  # noqa: PLC0415

    # First, before the environment is copied for any child.
    try:
        activated = activation.listen_socket()
    except activation.ActivationError as exc:
        print(f"llmd: socket activation: {exc}", file=sys.stderr)
        return 1
    source = config_path(args.config)
    try:
        registry = load_registry(source)
    except ConfigError as exc:
        print(f"llmd: {exc.source or source}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    setup_logging(args.log_level or registry.daemon.log_level)
    tune_malloc()
    # A thread wanting the GIL (the job store's, with a record to commit before a run is
    # answered) waits at most this long behind a busy event loop, not Python's 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    explicit = args.socket or os.environ.get("LLMD_SOCKET")
    path = socket_path(args.socket)
    if activated is None:
        daemon = Daemon(registry, path, default_socket=not explicit)
    else:
        passed = activation.socket_path_of(activated)
        if explicit and passed is not None and passed != path:
            log.warning("serving %s, the socket systemd passed; %s is ignored", passed, path)
        # systemd made the socket's directory; nothing of ours is created or secured.
        daemon = Daemon(registry, passed or path, default_socket=False)
        daemon.listener.adopt(activated)
        log.info("socket-activated: serving %s passed by systemd", passed or "a socket")
    daemon.log_level_given = args.log_level
    try:
        trio.run(daemon.serve)
    except AlreadyRunning as exc:
        print(f"llmd: {exc}", file=sys.stderr)
        return 1
    except (PathError, OSError) as exc:
        print(f"llmd: cannot serve {path}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
