"""The ``llmd`` command: ``serve`` and ``check-config``.

Exit status: 0 success; 1 the daemon could not start (already running, unsafe path,
invalid configuration) or the configuration is invalid; 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import ClassVar

from llmd import __version__
from llmd.errors import ConfigError
from llmd.paths import config_path, socket_path


class _JournalFormatter(logging.Formatter):
    """syslog priority prefixes so ``journalctl -p`` can filter; the journal adds time."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
        logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def setup_logging(level: str) -> None:
    """Log to stderr, in the journal's format when stderr is the journal."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``llmd``."""
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)
    return _serve(args)


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


def _serve(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from llmd.daemon import Daemon, load_registry  # noqa: PLC0415
    from llmd.paths import PathError  # noqa: PLC0415
    from llmd.server import AlreadyRunning  # noqa: PLC0415

    source = config_path(args.config)
    try:
        registry = load_registry(source)
    except ConfigError as exc:
        print(f"llmd: {exc.source or source}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    setup_logging(args.log_level or registry.daemon.log_level)
    explicit = args.socket or os.environ.get("LLMD_SOCKET")
    path = socket_path(args.socket)
    daemon = Daemon(registry, path, default_socket=not explicit)
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
