"""The listening socket: bind safely, one daemon per path, or serve what systemd passed.

Invariants:
- One daemon per socket path: an exclusive ``flock`` on ``PATH.lock`` is taken *before*
  an old socket file is removed, so a live daemon's socket is never unlinked. An old
  socket that still accepts connections is not ours to remove either: systemd's
  ``llmd.socket`` listens there without holding the lock.
- A socket passed by systemd (:meth:`Listener.adopt`) is served as it is: never bound,
  never unlinked. Its daemon takes the lock too when it can, so a second ``llmd serve``
  on the same path stops rather than replace systemd's socket.
- The socket is created 0600 (umask at bind) in a private directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket as stdsocket
import stat
from pathlib import Path

import trio

log = logging.getLogger("llmd.server")


class AlreadyRunning(Exception):
    """Another daemon holds the socket's lock."""


def _accepts_connections(path: Path) -> bool:
    """Whether something listens on the Unix socket at ``path`` (a non-blocking probe).

    A socket unit starts its service on this connection: that is the daemon the caller
    would otherwise have duplicated.
    """
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM | stdsocket.SOCK_CLOEXEC)
    try:
        probe.setblocking(False)
        probe.connect(os.fspath(path))
    except (BlockingIOError, InterruptedError):
        return True  # A full backlog: it listens, it is merely busy.
    except OSError:
        return False  # ECONNREFUSED (nobody listens), ENOENT, EACCES...
    else:
        return True
    finally:
        probe.close()


class Listener:
    """A bound, listening Unix socket with its single-instance lock.

    Args:
        path: The socket path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = Path(f"{path}.lock")
        self._lock_fd = -1
        self.sock: trio.socket.SocketType | None = None
        self._inode: tuple[int, int] | None = None
        self.activated = False

    async def bind(self, backlog: int = 512) -> trio.socket.SocketType:
        """Take the lock, replace a stale socket, bind and listen.

        After :meth:`adopt`, nothing is bound or removed: the adopted socket is returned.

        Raises:
            AlreadyRunning: Another daemon serves this path, or something listens on it.
            OSError: Binding failed.
        """
        if self.activated and self.sock is not None:
            self._lock_adopted()
            return self.sock
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {other})" if other else ""
                raise AlreadyRunning(f"another llmd is already serving {self.path}{who}") from None
            raise
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                self.release()
                raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
            # We hold the lock, so no llmd that binds for itself serves this socket; but
            # systemd's llmd.socket may listen there while its service is not running.
            if _accepts_connections(self.path):
                self.release()
                raise AlreadyRunning(
                    f"{self.path} accepts connections but no llmd holds {self.lock_path.name}"
                    ": systemd's llmd.socket (systemctl --user status llmd.socket) or another "
                    "program listens there; leaving it alone")
            log.info("replacing a stale socket at %s", self.path)
            os.unlink(self.path)
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(os.fspath(self.path))
        except OSError:
            sock.close()
            self.release()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(backlog)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self.sock = sock
        return sock

    def adopt(self, sock: stdsocket.socket) -> trio.socket.SocketType:
        """Serve a listening socket passed by systemd instead of binding one.

        Call it before :meth:`bind`, which then returns this socket. Its file is systemd's:
        :meth:`release` closes our descriptor and never unlinks the path.
        """
        self.activated = True
        self.sock = trio.socket.from_stdlib_socket(sock)
        return self.sock

    def _lock_adopted(self) -> None:
        """Hold the path's lock while serving an adopted socket, if that can be done.

        Not fatal when it cannot: the socket was passed to us to serve, and refusing would
        only make systemd start us again and again.
        """
        assert self.sock is not None
        if self._lock_fd >= 0 or self.sock.getsockname() != os.fspath(self.path):
            return  # Already held, or an abstract/other socket: no file beside it to lock.
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("cannot open %s (%s); serving without the single-instance lock",
                        self.lock_path, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            log.warning("another llmd%s holds %s; serving the socket systemd passed anyway",
                        f" (pid {other})" if other else "", self.lock_path)
            return
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Close the socket, remove its file if it is still ours, drop the lock."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._inode is not None and not self.activated:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
