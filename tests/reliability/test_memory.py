"""After everything else: the shared daemon's memory over the whole suite, and its exit.

The conftest runs this last (marker ``after_all``). Run alone, it checks a daemon that
did nothing but warm up.
"""

from __future__ import annotations

import pytest
import trio

from tests.reliability.support import SharedDaemon, peak_rss_kb, rss_kb, tally

MAX_GROWTH_KB = 20 * 1024


@pytest.mark.after_all
async def test_the_shared_daemon_held_steady_over_the_whole_suite(
        daemon: SharedDaemon) -> None:
    after = rss_kb(daemon.pid)
    tally("rss_after_kb", after)
    tally("peak_rss_kb", peak_rss_kb(daemon.pid))
    growth = after - daemon.rss_before_kb
    assert growth <= MAX_GROWTH_KB, (
        f"the shared llmd grew from {daemon.rss_before_kb} KiB to {after} KiB")
    log = daemon.log()
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 1500):at + 3000]
    # It stops cleanly after all it went through.
    with trio.fail_after(40):
        status = await trio.to_thread.run_sync(daemon.stop)
    assert status == 0, daemon.log()[-3000:]
