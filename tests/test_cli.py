"""llmd's command line pieces that need no daemon."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

# Three 16 MiB answers, freed in turn, each followed by a small block that stays.
_CHURN = textwrap.dedent("""
    import sys
    from pathlib import Path

    def rss_kb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    if sys.argv[1] == "tuned":
        from llmd.cli import tune_malloc
        assert tune_malloc()
    base = rss_kb()
    kept = []
    for _ in range(3):
        answer = bytearray(16 << 20)
        kept.append(bytearray(1024))
        del answer
    print(rss_kb() - base)
""")


def _growth_kb(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_large_blocks_go_back_to_the_system_once_freed() -> None:
    # glibc's own rule serves the later answers from the heap, where they stay.
    assert _growth_kb("default") >= 12 * 1024
    assert _growth_kb("tuned") < 4 * 1024
