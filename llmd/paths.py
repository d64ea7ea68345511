"""Where things live: the socket, its directory, the configuration file.

Invariants:
- The default socket directory is ours alone: created 0700, refused when it is a
  symlink or belongs to another user (the ``/tmp`` fallback is shared ground).
- Configuration lookup order: ``--config``, ``$LLMD_CONFIG``,
  ``$XDG_CONFIG_HOME/llmd/llmd.toml``, then the default shipped in the package.
- A file written with :func:`write_atomically` is the old one or the new one, never half:
  written under a fresh name in the same directory, then renamed over it; the temporary
  file is removed when anything fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

PACKAGED_CONFIG = "<default>"
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class PathError(Exception):
    """A path cannot be used safely; the message says why."""


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """The socket path API.md defines when none is given."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "llmd" / "llmd.sock"
    return Path(f"/tmp/llmd-{os.getuid()}") / "llmd.sock"  # noqa: S108 - checked below


def socket_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    """Resolve the socket path: the flag, then ``$LLMD_SOCKET``, then the default."""
    env = os.environ if env is None else env
    chosen = explicit or env.get("LLMD_SOCKET")
    return Path(chosen).absolute() if chosen else default_socket_path(env)


def ensure_private_dir(path: Path, *, create_parents: bool) -> None:
    """Make sure ``path`` is a directory of ours that only we can enter.

    Raises:
        PathError: It is a symlink, not a directory, or owned by another user.
    """
    try:
        path.mkdir(mode=0o700, parents=create_parents)
    except FileExistsError:
        pass
    except OSError as exc:
        raise PathError(f"cannot create {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PathError(f"{path} is a symbolic link; refusing to put the socket there")
    if not stat.S_ISDIR(st.st_mode):
        raise PathError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise PathError(f"{path} belongs to uid {st.st_uid}, not to us (uid {os.getuid()}); "
                        "refusing to put the socket there")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def prepare_socket_dir(sock: Path, *, default: bool) -> None:
    """Create (and, for the default location, secure) the socket's directory.

    Raises:
        PathError: The path is too long or the directory is unsafe.
    """
    if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
        raise PathError(f"socket path {sock} is longer than the {MAX_SOCKET_PATH} bytes "
                        "a Unix socket address can hold")
    parent = sock.parent
    if default or not parent.exists():
        ensure_private_dir(parent, create_parents=True)


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """Choose the registry file: a path, or :data:`PACKAGED_CONFIG`."""
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("LLMD_CONFIG"):
        return env["LLMD_CONFIG"]
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    candidate = Path(base) / "llmd" / "llmd.toml"
    if candidate.is_file():
        return str(candidate)
    return PACKAGED_CONFIG


def packaged_config() -> bytes:
    """The default registry shipped inside the package."""
    return resources.files("llmd").joinpath("default.toml").read_bytes()


def write_atomically(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8), never leaving half a file behind.

    Args:
        mode: The file's permission bits; None gives what a new file gets (0666 less the
            umask).

    Raises:
        OSError: The directory cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # A fresh name, made exclusively: a writer at the same time has its own, and a
    # symlink planted under this one is refused.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            if mode is not None:
                os.fchmod(out.fileno(), mode)  # the umask may have taken bits away
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
