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
                    counted in FILE, then print "ok after N"; with --partial, each failing
                    call prints "partial answer" on stdout first
  fail CODE         print "boom" on stderr and exit CODE
  flood BYTES       write BYTES bytes of "x" (in 64 KiB lines) to stdout
  lines N           print N numbered lines, flushing each
  handshake PATH    print "before", wait until PATH exists, print "after"
  env               print the environment as JSON
  cwd               print the working directory
  edit FILE [GATE]  write stdin to FILE (relative to the working directory) and print
                    "edited"; with GATE, then wait until the path GATE exists
  version           print "fakecli 1.2.3"
  signal NAME       print "partial", then kill itself with signal NAME (KILL, SEGV...)
  close-stdout SEC  print "early", close stdout, keep running SEC seconds ("inf": for
                    ever; the pid goes to $FAKE_PIDFILE), then exit 0
  bad-utf8          write invalid UTF-8 (and valid characters split between writes)
  one-line BYTES    write BYTES bytes of "x" on one line, in 1 MiB writes, no newline
  escape            fork a grandchild that starts a session of its own (a daemon) and
                    sleeps for ever holding the pipes; its pid goes to $FAKE_PIDFILE
                    before the parent prints "parent" and exits 0; with --close-stdio
                    the grandchild points its stdio at /dev/null, as daemons do
  echo-fail         print "error: cannot answer: PROMPT" on stderr and exit 1 (PROMPT:
                    the arguments after ``--``, else stdin)
  noisy TEXT [CODE]  print "Warning: colour banner" and "a real complaint" on stderr (the
                    banner's end in a later write than its start), then TEXT on stdout;
                    exit CODE (default 0)
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


def _escape(close_stdio: bool) -> None:
    """Double-fork a daemon into a session of its own; return once its pid is recorded."""
    ready_r, ready_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(ready_r)
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if close_stdio:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
            _pidfile(os.getpid())
            os.write(ready_w, b"x")
            os.close(ready_w)
            _sleep_forever()
        os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)  # the grandchild has written its pid
    os.close(ready_r)
    os.waitpid(middle, 0)


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
            if "--partial" in rest:
                out.write("partial answer\n")
                out.flush()
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
    elif mode == "edit":
        with open(rest[0], "wb") as f:
            f.write(sys.stdin.buffer.read())
        out.write("edited\n")
        out.flush()
        while len(rest) > 1 and not os.path.exists(rest[1]):
            time.sleep(0.005)
    elif mode == "version":
        out.write("fakecli 1.2.3\n")
    elif mode == "signal":
        out.write("partial\n")
        out.flush()
        os.kill(os.getpid(), getattr(signal, f"SIG{rest[0]}"))
        _sleep_forever()  # a signal whose default is to stop, not end, is not for this mode
    elif mode == "close-stdout":
        out.write("early\n")
        out.flush()
        os.close(1)
        _pidfile(os.getpid())
        if rest[0] == "inf":
            _sleep_forever()
        time.sleep(float(rest[0]))
        return 0
    elif mode == "bad-utf8":
        raw = sys.stdout.buffer
        for piece in (b"ok \xff\xfe|", b"\xc3(|", b"\xc0\xaf|", b"\xed\xa0\x80|",
                      b"euro \xe2\x82", b"\xac|", b"cut \xf0\x9f", b"\x98", b"\x80|",
                      b"lone \x80\xbf|", b"end \xe2\x82"):
            raw.write(piece)
            raw.flush()
    elif mode == "one-line":
        left = int(rest[0])
        block = b"x" * (1 << 20)
        while left > 0:
            chunk = block[:left]
            sys.stdout.buffer.write(chunk)
            left -= len(chunk)
    elif mode == "escape":
        _escape("--close-stdio" in rest)
        out.write("parent\n")
    elif mode == "echo-fail":
        text = " ".join(prompt) if prompt else sys.stdin.read()
        sys.stderr.write(f"error: cannot answer: {text}\n")
        return 1
    elif mode == "noisy":
        for said in ("Warning: colour ", "banner\na real complaint\n"):
            sys.stderr.write(said)
            sys.stderr.flush()
        out.write(rest[0])
        out.flush()
        return int(rest[1]) if len(rest) > 1 else 0
    else:
        sys.stderr.write(f"fakecli: unknown mode {mode}\n")
        return 2
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
