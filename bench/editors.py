"""First-output latency in each editor plugin against a raw socket client.

    python bench/editors.py [--runs N]

For each client, N streamed ``llm.run`` calls of ``/bin/echo`` one after another on one
connection; the time from the request's send to the first ``llm.output`` as the client's
own code sees it (Neovim: the plugin's ``on_output`` callback, run through ``vim.schedule``;
Emacs: ``:on-output``, run from the process filter; raw: the line read from the socket).
Rounds of the three clients alternate so that drift hits them alike. Figures: p50 and p90
in milliseconds, and each editor's p50 minus the raw client's   [<= 5 ms].
An editor that is not installed is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import start_daemon

ROOT = Path(__file__).parent.parent
ROUND = 10

NVIM_SCRIPT = """
local llmd = require("llmd")
local uv = vim.loop
llmd.setup({ socket = os.getenv("LLMD_SOCKET") })
local times = {}
for i = 0, tonumber(os.getenv("BENCH_RUNS")) do
  local t0, first, done = uv.hrtime(), nil, false
  llmd.run({ blueprint = "echo", prompt = "hi",
    on_output = function() first = first or uv.hrtime() end,
    on_done = function() done = true end })
  vim.wait(10000, function() return done end, 1)
  if i > 0 then times[#times + 1] = (first - t0) / 1e6 end
end
local f = io.open(os.getenv("BENCH_OUT"), "w")
f:write(vim.json.encode(times))
f:close()
vim.cmd("qall!")
"""

EMACS_SCRIPT = """
(require 'llmd)
(let ((times nil))
  (dotimes (i (1+ (string-to-number (getenv "BENCH_RUNS"))))
    (let ((t0 (float-time)) (first nil) (done nil))
      (llmd-run-async "echo" "hi"
                      :on-output (lambda (_text) (unless first (setq first (float-time))))
                      :on-done (lambda (_result _error) (setq done t)))
      (while (not done) (accept-process-output nil 0.001))
      (when (> i 0) (push (* 1000 (- first t0)) times))))
  (with-temp-file (getenv "BENCH_OUT")
    (insert (json-serialize (vconcat (nreverse times))))))
"""


def raw_client(sock: str, runs: int) -> list[float]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    buf = b""
    times = []
    for i in range(runs + 1):
        message = {"jsonrpc": "2.0", "id": i, "method": "llm.run",
                   "params": {"blueprint": "echo", "prompt": "hi", "stream": True}}
        t0 = time.perf_counter()
        conn.sendall(json.dumps(message).encode() + b"\n")
        first = None
        while True:
            while b"\n" not in buf:
                buf += conn.recv(1 << 16)
            line, _, buf = buf.partition(b"\n")
            reply = json.loads(line)
            if first is None and reply.get("method") == "llm.output":
                first = time.perf_counter()
            if reply.get("id") == i:
                break
        if i > 0 and first is not None:
            times.append((first - t0) * 1000)
    conn.close()
    return times


def editor(argv: list[str], sock: str, runs: int, workdir: Path) -> list[float]:
    out = workdir / "bench-out.json"
    env = {**os.environ, "LLMD_SOCKET": sock, "BENCH_RUNS": str(runs), "BENCH_OUT": str(out)}
    subprocess.run(argv, env=env, check=True, timeout=300, stdin=subprocess.DEVNULL,
                   capture_output=True)
    times: list[float] = json.loads(out.read_text())
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    nvim_script = workdir / "bench.lua"
    nvim_script.write_text(NVIM_SCRIPT)
    emacs_script = workdir / "bench.el"
    emacs_script.write_text(EMACS_SCRIPT)
    clients: dict[str, list[str] | None] = {"raw socket": None}
    if shutil.which("nvim"):
        clients["neovim"] = ["nvim", "--headless", "-u", "NONE", "-i", "NONE", "--cmd",
                             f"set rtp^={ROOT / 'editors' / 'nvim'}", "-c",
                             f"luafile {nvim_script}"]
    if shutil.which("emacs"):
        clients["emacs"] = ["emacs", "--batch", "-Q", "-L", str(ROOT / "editors" / "emacs"),
                            "-l", str(emacs_script)]
    daemon = start_daemon(workdir, store=False)
    sock = str(daemon.socket)
    times: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for _ in range(max(1, args.runs // ROUND)):
            for name, argv in clients.items():
                if argv is None:
                    times[name] += raw_client(sock, ROUND)
                else:
                    times[name] += editor(argv, sock, ROUND, workdir)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    raw_p50 = statistics.median(times["raw socket"])
    print(f"first-output latency, {len(times['raw socket'])} runs of /bin/echo per client (ms)")
    for name, values in times.items():
        p50 = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        extra = "" if name == "raw socket" else f"  p50 vs raw: {p50 - raw_p50:+.2f}"
        print(f"  {name:<11} p50 {p50:6.2f}  p90 {p90:6.2f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
