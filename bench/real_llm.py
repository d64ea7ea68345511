"""The cost of llmd around a real CLI: ``llm -m echo`` direct vs through the daemon.

    LLMD_REAL_CLIS="$(scripts/install-real-clis)" python bench/real_llm.py [-n 40]

Target: through llmd at most 2 ms more than direct (p50, same run). Direct and daemon runs
alternate so that drift in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness import Client, launch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=40)
    args = parser.parse_args()
    bindir = os.environ.get("LLMD_REAL_CLIS")
    if not bindir:
        raise SystemExit("set LLMD_REAL_CLIS (see scripts/install-real-clis)")
    llm = str(Path(bindir) / "llm")
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    env = {**os.environ, "LLM_USER_PATH": str(workdir / "llm"), "NO_COLOR": "1",
           "PYTHONUNBUFFERED": "1"}
    toml = (f'[blueprints.llm]\ncommand = ["{llm}", "prompt", "-m", "echo"]\n'
            'prompt = "stdin"\n')
    daemon = launch(workdir, toml, env=env)
    sock = str(daemon.socket)
    try:
        client = Client(sock)
        direct, via = [], []
        for _ in range(args.n):
            t = time.perf_counter()
            subprocess.run([llm, "prompt", "-m", "echo"], input=b"hi", capture_output=True,
                           env=env, check=True)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.call("llm.run", {"blueprint": "llm", "prompt": "hi"})
            via.append(time.perf_counter() - t)
    finally:
        daemon.stop(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    d, v = statistics.median(direct), statistics.median(via)
    print(f"llm -m echo, p50 of {args.n}: direct {d * 1e3:.1f} ms, through llmd "
          f"{v * 1e3:.1f} ms, added {(v - d) * 1e3:.1f} ms [<= 2 ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
