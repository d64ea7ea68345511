"""Fixtures of the reliability suite: the soak option, the shared daemon, the figures.

``--soak MINUTES`` (this conftest registers it, so give the suite's directory on the
command line: ``pytest tests/reliability --soak 30``) makes every test marked ``soak``
repeat its abuse or load loop for its share of MINUTES; without it each loop runs once.
``LLMD_RSS_TRACE=1`` prints the shared daemon's RSS growth at every round and check.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.reliability.support import (
    SharedDaemon,
    Soak,
    fd_count,
    flush_tallies,
    rss_kb,
    tally,
    warm_up,
)

# Descriptors for the test process (1,000 idle connections and more); the shared daemon,
# started from it, inherits the limit.
WANTED_FDS = 4096


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", type=float, default=0.0, metavar="MINUTES",
                     help="repeat the reliability suite's abuse and load loops for MINUTES "
                          "in all (shared among the tests marked soak)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: an abuse or load loop that --soak repeats")
    config.addinivalue_line("markers", "after_all: runs after every other test")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < WANTED_FDS:
        new = WANTED_FDS if hard == resource.RLIM_INFINITY else min(WANTED_FDS, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, new), hard))


def _soak_minutes(config: pytest.Config) -> float:
    # When this conftest was not loaded at start-up the option does not exist.
    value = config.getoption("soak", default=0.0)
    return float(value or 0.0)


_SOAK_SHARE = pytest.StashKey[float]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they do
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The check of the shared daemon's memory over the whole suite goes last.
    items.sort(key=lambda item: item.get_closest_marker("after_all") is not None)
    count = sum(1 for item in items if item.get_closest_marker("soak"))
    config.stash[_SOAK_SHARE] = (_soak_minutes(config) * 60 / count) if count else 0.0


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> Soak:
    """This test's share of the soak time (0 s without ``--soak``)."""
    share = request.config.stash.get(_SOAK_SHARE, 0.0)
    trace = None
    if os.environ.get("LLMD_RSS_TRACE") and "daemon" in request.fixturenames:
        shared = request.getfixturevalue("shared")

        def trace(n: int) -> None:
            print(f"\n{request.node.name} round {n}: RSS "
                  f"{rss_kb(shared.pid) - shared.rss_before_kb:+} KiB", file=sys.stderr)

    return Soak(share if request.node.get_closest_marker("soak") else 0.0, trace)


@pytest.fixture(autouse=True)
def _figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Append the test's counts to the figures file once it has run."""
    yield
    flush_tallies(request.node.nodeid)


@pytest.fixture(scope="session")
def shared() -> Iterator[SharedDaemon]:
    """One daemon for the abuse and load tests (checked by test_memory.py at the end)."""
    workdir = Path(tempfile.mkdtemp(prefix="llmd-r-", dir="/tmp"))
    daemon = SharedDaemon(workdir)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def daemon(shared: SharedDaemon) -> SharedDaemon:
    """The shared daemon, warmed up once so that its RSS before the suite means something."""
    if not shared.rss_before_kb:
        with trio.fail_after(60):
            await warm_up(shared)
        shared.rss_before_kb = rss_kb(shared.pid)
        shared.fds_before = fd_count(shared.pid)
        tally("rss_before_kb", shared.rss_before_kb)
    return shared
