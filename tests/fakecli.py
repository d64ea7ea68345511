"""A stand-in for an LLM CLI, installed by the tests as a real executable.

Usage: fakecli MODE [ARGS...] [-- PROMPT...]

Modes:
  argv              print the arguments after ``--`` as a JSON array
  stdin             copy stdin to stdout byte for byte
  stdin-sha         print the length and sha256 of stdin
  text TEXT         print TEXT
  sleep SECONDS     sleep, then print "done"
  ignore-term       ignore SIGTERM, write the pid to $FAKE_PIDFILE, sleep forever
  grandchild        fork a grandchild that holds the pipes; both write their pids to
                    $FAKE_PIDFILE; then sleep forever (or exit at once with --exit)
  ratelimit N FILE  fail with a rate-limit message (stderr, exit 1) for the first N calls
                    counted in FILE, then print "ok after N"
  fail CODE         print "boom" on stderr and exit CODE
  flood BYTES       write BYTES bytes of "x" (in 64 KiB lines) to stdout
  lines N           print N numbered lines, flushing each
  handshake PATH    print "before", wait until PATH exists, print "after"
  env               print the environment as JSON
  cwd               print the working directory
  version           print "fakecli 1.2.3"
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time


def _pidfile(pid: int) -> None:
    path = os.environ.get("FAKE_PIDFILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def main() -> int:
    args = sys.argv[1:]
    prompt: list[str] = []
    if "--" in args:
        i = args.index("--")
        args, prompt = args[:i], args[i + 1:]
    mode, rest = args[0], args[1:]
    if "--version" in args:  # how llmd's health probe asks, whatever the mode
        mode = "version"
    out = sys.stdout
    if mode == "argv":
        out.write(json.dumps(prompt))
    elif mode == "stdin":
        sys.stdout.buffer.write(sys.stdin.buffer.read())
    elif mode == "stdin-sha":
        data = sys.stdin.buffer.read()
        out.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}")
    elif mode == "text":
        out.write(rest[0])
    elif mode == "sleep":
        time.sleep(float(rest[0]))
        out.write("done")
    elif mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _pidfile(os.getpid())
        out.write("ignoring SIGTERM\n")
        out.flush()
        _sleep_forever()
    elif mode == "grandchild":
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _pidfile(os.getpid())
            _sleep_forever()
        _pidfile(os.getpid())
        out.write("parent\n")
        out.flush()
        if "--exit" in rest:
            return 0
        _sleep_forever()
    elif mode == "ratelimit":
        count, path = int(rest[0]), rest[1]
        try:
            with open(path) as f:
                seen = int(f.read() or 0)
        except FileNotFoundError:
            seen = 0
        with open(path, "w") as f:
            f.write(str(seen + 1))
        if seen < count:
            sys.stderr.write("Error: 429 Too Many Requests (rate limit reached); "
                             "retry after 1s\n")
            return 1
        out.write(f"ok after {seen}")
    elif mode == "fail":
        sys.stderr.write("boom\n")
        return int(rest[0])
    elif mode == "flood":
        left = int(rest[0])
        line = b"x" * 65535 + b"\n"
        while left > 0:
            chunk = line[:left]
            sys.stdout.buffer.write(chunk)
            left -= len(chunk)
    elif mode == "lines":
        for i in range(int(rest[0])):
            out.write(f"line {i}\n")
            out.flush()
    elif mode == "handshake":
        out.write("before\n")
        out.flush()
        while not os.path.exists(rest[0]):
            time.sleep(0.005)
        out.write("after\n")
    elif mode == "env":
        out.write(json.dumps(dict(os.environ)))
    elif mode == "cwd":
        out.write(os.getcwd())
    elif mode == "version":
        out.write("fakecli 1.2.3\n")
    else:
        sys.stderr.write(f"fakecli: unknown mode {mode}\n")
        return 2
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
