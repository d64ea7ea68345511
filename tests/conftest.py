"""Shared fixtures: fake CLIs as real executables, a real daemon on a private socket.

The daemon is the real ``python -m llmd serve`` in a subprocess; readiness is learnt
from its ``READY=1`` datagram on a notify socket the test binds, never by sleeping.
Everything the fixtures are made of is in :mod:`tests.harness`; its names are also
importable from here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness import (
    FAKECLI,
    DaemonFactory,
    DaemonHandle,
    RawClient,
    alive,
    assert_all_die,
    install_fakecli,
    llmc,
    read_pids,
    registry_toml,
    start_daemon,
    toml_value,
)

__all__ = [
    "FAKECLI",
    "DaemonFactory",
    "DaemonHandle",
    "RawClient",
    "alive",
    "assert_all_die",
    "llmc",
    "read_pids",
    "registry_toml",
    "start_daemon",
    "toml_value",
]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private directory: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="llmd-t-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_bin(short_tmp: Path) -> Path:
    """A directory holding ``fakecli`` as an executable with its own shebang."""
    bindir = short_tmp / "bin"
    install_fakecli(bindir)
    return bindir


@pytest.fixture
async def daemon_factory(short_tmp: Path) -> AsyncIterator[DaemonFactory]:
    """Start daemons on demand; all are stopped (SIGKILL if they hang) at the end."""
    started: list[DaemonHandle] = []

    async def factory(toml: str, *, env: dict[str, str] | None = None,
                      args: list[str] | None = None) -> DaemonHandle:
        workdir = short_tmp / f"d{len(started)}"
        workdir.mkdir()
        handle = await start_daemon(workdir, toml, env=env, args=args)
        started.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in started:
            await handle.aclose()


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children (each leading its own process group) to kill and reap after the test."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
