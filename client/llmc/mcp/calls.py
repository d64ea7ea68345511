"""How ``llmc mcp`` carries out tool calls: llmd's connections, the tools, progress, cancel.

Invariants:
- A call runs in a thread of its own and holds a daemon connection of its own for as long as
  it waits; idle connections are kept (a few) and reused, so a quick call pays no connect.
  A reused connection found dead (llmd restarted since) is replaced once, as long as
  nothing came back on it.
- A ``run`` starts its job detached and waits for it at most the inline cap (``max_wait``:
  50 s without a progress token, 300 s with one); then it answers with the job's handle and
  the job goes on, whatever becomes of the client or of this process.
- A call the client cancels stops at once. A ``run``'s job is cancelled in llmd with
  ``llm.cancel`` (until its handle has been returned; then only ``cancel`` ends it): at
  once when its id is known, else as soon as ``llm.run`` answers with it (a detached job
  outlives the connection, so shutting that down would leave it running). Any other call's
  connection is shut down. Nothing else is cancelled: a ``result`` or ``wait`` call only
  stops waiting, a ``start``ed job goes on.
- When the client asked for progress (a progress token), a waiting run watches llmd's job
  events (``jobs.watch``, on a connection of its own) and reports progress on every state
  change of its job and at least every ``progress_s`` seconds (the connection's
  ``on_tick``). Without a token the wait is one ``jobs.get``: the quickest way.
- Every way a call can fail ends in a tool result (:mod:`llmc.mcp.tools`), or in None when
  the client cancelled it; nothing escapes to the protocol layer but bugs.
"""

from __future__ import annotations

import socket
import threading
import time

from llmc.connection import (
    ClientError,
    Connection,
    ConnectionLost,
    DaemonUnavailable,
    MessageTooLarge,
    ProtocolError,
    RpcError,
)
from llmc.mcp import longwork, tools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Progress = Callable[["Call", str], None]

CONNECT_TIMEOUT = 5.0
QUICK_TIMEOUT = 30.0
# health.check runs every blueprint's probe.
CHECK_TIMEOUT = 120.0
# `result` with wait and no progress token: answer before a client without progress gives up
# (60 s for the shortest-tempered ones).
UNWATCHED_WAIT_S = 50.0
# A call with a progress token: Claude Code waited 200 s with progress every 5 s; others give
# up sooner, with or without progress, so past this the job's handle is returned.
WATCHED_WAIT_S = 300.0
MAX_IDLE_CONNECTIONS = 4


class Abandoned(Exception):
    """The client cancelled the call: stop waiting and answer nothing."""


class Call:
    """A tools/call in flight: what cancellation and progress need to know about it.

    Args:
        request_id: The JSON-RPC id of the tools/call.
        token: The client's progress token, or None when it asked for no progress.
        version: The protocol version the call is served in.
    """

    def __init__(self, request_id: object, token: object, version: str) -> None:
        self.id = request_id
        self.token = token
        self.version = version
        self.started = time.monotonic()
        self.progress = 0.0
        self.cancelled = False
        # Set for `run`, whose job the client's cancellation cancels.
        self.owns_job = False
        self.job: str | None = None
        self._link: _Link | None = None
        self._lock = threading.Lock()

    def cancel(self) -> str | None:
        """Mark cancelled and stop the call; the job to ``llm.cancel``, if that is the way.

        Returns:
            The job id when the call runs a job whose id is known (the caller cancels it in
            llmd); None otherwise: a run still waiting for its id is left to :meth:`adopt`,
            any other call's connection, if any, has been shut down.
        """
        with self._lock:
            if self.cancelled:
                return None
            self.cancelled = True
            if self.owns_job:
                return self.job
            if self._link is not None:
                self._link.interrupt()
            return None

    def adopt(self, job: str) -> bool:
        """Note the job the call runs (a cancel from now on cancels it); False when the call
        was cancelled before (the caller cancels the job then)."""
        with self._lock:
            self.job = job
            return not self.cancelled

    def attach(self, link: _Link) -> None:
        """Note the connection the call waits on (for :meth:`cancel`).

        Raises:
            Abandoned: The call has been cancelled already.
        """
        with self._lock:
            if self.cancelled:
                raise Abandoned
            self._link = link

    def detach(self) -> None:
        """Forget the connection (before it is closed or reused)."""
        # Under the lock, so that a cancel never shuts down a socket being closed.
        with self._lock:
            self._link = None


class _Link(Connection):
    """A connection whose call in flight another thread can end (by shutting the socket)."""

    def __init__(self, sock: socket.socket, path: str = "", **kwargs: Any) -> None:
        super().__init__(sock, path, **kwargs)
        self._socket = sock

    def interrupt(self) -> None:
        """End the call in flight: its ``recv`` sees the end, and llmd sees the client go."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            return


class Daemon:
    """llmd, reached through a small pool of connections.

    Args:
        path: The socket path.
        log: Where to report what only the log should hear.
    """

    def __init__(self, path: str, log: Callable[[str], None]) -> None:
        self.path = path
        self.log = log
        self._idle: list[_Link] = []
        self._idle_lock = threading.Lock()

    def call(self, method: str, params: dict[str, Any] | None, *, timeout: float | None,
             call: Call | None = None,
             on_notification: Callable[[str, dict[str, Any]], None] | None = None,
             on_tick: Callable[[], None] | None = None, tick: float = 1.0) -> Any:
        """One call, as :meth:`llmc.connection.Connection.call`.

        Args:
            method: The JSON-RPC method.
            params: Its parameters.
            timeout: Seconds to wait for the answer (None: as long as it takes).
            call: The tools/call this is for, which a cancellation ends.
            on_notification: Hears this call's notifications (and no other's).
            on_tick: Called every ``tick`` seconds while the call waits.
            tick: See ``on_tick``.

        Raises:
            Abandoned: ``call`` was cancelled.
            ClientError: As :meth:`llmc.connection.Connection.call`.
        """
        for attempt in (0, 1):
            conn, reused = self._connection(fresh=attempt > 0)
            heard = [False]

            def notified(name: str, payload: Any, conn: _Link = conn,
                         heard: list[bool] = heard) -> None:
                heard[0] = True
                # `request` names the llm.run a notification belongs to.
                if on_notification is not None and isinstance(payload, dict) and \
                        payload.get("request", conn.pending_id) == conn.pending_id:
                    on_notification(name, payload)

            if call is not None:
                try:
                    call.attach(conn)
                except Abandoned:
                    self._release(conn, None, keep=True)
                    raise
            try:
                result = conn.call(method, params, on_notification=notified, timeout=timeout,
                                   on_tick=on_tick, tick=tick)
            except RpcError:
                self._release(conn, call, keep=True)
                raise
            except ConnectionLost:
                self._release(conn, call, keep=False)
                if call is not None and call.cancelled:
                    raise Abandoned from None
                if reused and not heard[0]:
                    continue
                raise
            except BaseException:
                self._release(conn, call, keep=False)
                raise
            self._release(conn, call, keep=True)
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the second attempt raises

    def watching(self, call: Call | None) -> _Link:
        """A connection of its own for a ``jobs.watch`` (never pooled: the watch ends with
        it); close it when done. A cancellation of ``call`` shuts it down.

        Raises:
            Abandoned: ``call`` was cancelled.
        """
        conn, _ = self._connection(fresh=True)
        if call is not None:
            try:
                call.attach(conn)
            except Abandoned:
                conn.close()
                raise
        return conn

    def cancel_job(self, job: str) -> None:
        """Cancel a job (its process group is killed); failures only go to the log."""
        try:
            with Connection.connect(self.path, CONNECT_TIMEOUT) as conn:
                conn.call("llm.cancel", {"job": job}, timeout=QUICK_TIMEOUT)
        except ClientError as exc:
            self.log(f"could not cancel llmd job {job}: {exc}")

    def _connection(self, fresh: bool) -> tuple[_Link, bool]:
        if not fresh:
            with self._idle_lock:
                if self._idle:
                    return self._idle.pop(), True
        conn = _Link.connect(self.path, CONNECT_TIMEOUT)
        if not isinstance(conn, _Link):  # connect() makes a `cls`; this tells the checker
            raise TypeError("Connection.connect made no _Link")
        return conn, False

    def _release(self, conn: _Link, call: Call | None, keep: bool) -> None:
        if call is not None:
            call.detach()  # first: a cancellation must not shut a socket being closed
        # A call that timed out leaves its request pending, and a cancellation may have shut
        # the socket down: such connections are not reused.
        if keep and conn.pending_id is None and not conn.closed and \
                not (call is not None and call.cancelled):
            with self._idle_lock:
                if len(self._idle) < MAX_IDLE_CONNECTIONS:
                    self._idle.append(conn)
                    return
        conn.close()


class Runner:
    """Carries out the tools against llmd (the long-work ones: :mod:`llmc.mcp.longwork`).

    Args:
        daemon: llmd.
        max_chars: The answer size per tool result.
        progress_s: Seconds between progress reports while a call waits.
        cwd: The default working directory of runs (None when it no longer exists).
        progress: Sends a progress notification for a call (when it asked for them).
        max_wait: The inline cap of every call (None: 50 s, 300 s with a progress token).
    """

    def __init__(self, daemon: Daemon, max_chars: int, progress_s: float, cwd: str | None,
                 progress: Progress, *, max_wait: float | None = None) -> None:
        self.daemon = daemon
        self.max_chars = max_chars
        self.progress_s = progress_s
        self.cwd = cwd
        self.progress = progress
        # The longest inline wait, without and with a progress token.
        self.max_wait = (UNWATCHED_WAIT_S, WATCHED_WAIT_S) if max_wait is None \
            else (max_wait, max_wait)
        self.tools: dict[str, Callable[[Call, dict[str, Any]], dict[str, Any]]] = {
            "run": self._run, "result": self._result,
            "cancel": self._cancel, "status": self._status}
        longwork.add_tools(self)

    def cap(self, call: Call) -> float:
        """How long ``call`` may wait inline."""
        return self.max_wait[call.token is not None]

    def blueprints(self, timeout: float) -> list[dict[str, Any]] | None:
        """``blueprints.list``'s entries, or None when llmd cannot say (for tools/list)."""
        try:
            reply = self.daemon.call("blueprints.list", None, timeout=timeout)
        except ClientError as exc:
            self.daemon.log(f"listing the tools without blueprint names: {exc}")
            return None
        entries = reply.get("blueprints") if isinstance(reply, dict) else None
        if not isinstance(entries, list):
            return None
        return [entry for entry in entries if isinstance(entry, dict)]

    def outcome(self, call: Call, name: str, arguments: object) -> dict[str, Any] | None:
        """The tool result of a call (None: the client cancelled it)."""
        try:
            if not isinstance(arguments, dict):
                raise tools.ArgumentError("the arguments must be a JSON object")
            return self.tools[name](call, arguments)
        except tools.ArgumentError as exc:
            return tools.error_result(f"Invalid arguments for `{name}`: {exc}.")
        except Abandoned:
            return None
        except DaemonUnavailable as exc:
            return tools.unavailable_result(str(exc), exc.reason)
        except RpcError as exc:
            if exc.code == -32601:
                return tools.error_result(f"This llmd does not support {exc.method}; update "
                                          "llmd to match llmc.")
            return tools.rpc_error_result(exc.code, exc.message, exc.data)
        except MessageTooLarge as exc:
            return tools.error_result(f"{exc}. Send a shorter prompt: put the bulk in a file "
                                      "and ask for it to be read.")
        except ConnectionLost as exc:
            return tools.error_result(
                f"{exc}. A `run` in flight ends with its connection; jobs from `start` "
                "survive a restart of llmd (ask `result` for them).")
        except ClientError as exc:
            return tools.error_result(f"{exc}.")
        except UnicodeEncodeError:
            return tools.error_result("The arguments hold text that is not valid Unicode "
                                      "(a lone surrogate); send it as UTF-8 text.")

    def _run(self, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
        params = tools.run_params(arguments, self.cwd, "run")
        # Detached: the job outlives this call (and this process) once its handle is out.
        job = self.submit(call, params)
        record = self.wait_for(call, job, str(params["blueprint"]), self.cap(call))
        if record.get("state") in tools.FINAL_STATES:
            return tools.job_result(record, self.max_chars, 0, None)
        return tools.still_running_result(record, time.monotonic() - call.started)

    def submit(self, call: Call, params: dict[str, Any]) -> str:
        """Start ``params`` as a detached job that a cancel of ``call`` cancels; its id.

        Raises:
            Abandoned: The call was cancelled (the job, if started, is cancelled too).
        """
        call.owns_job = True
        reply = _object(self.daemon.call("llm.run", {**params, "detach": True},
                                         timeout=QUICK_TIMEOUT, call=call), "llm.run")
        job = str(reply.get("job") or "")
        if not call.adopt(job):
            self.daemon.cancel_job(job)
            raise Abandoned
        return job

    def wait_for(self, call: Call, job: str, blueprint: str, limit: float) -> dict[str, Any]:
        """The job's record once it has ended, or after ``limit`` seconds; with a progress
        token, progress on every state change and every ``progress_s`` meanwhile."""
        if call.token is None:
            return _object(self.daemon.call(
                "jobs.get", {"job": job, "wait": True, "timeout": limit},
                timeout=limit + QUICK_TIMEOUT, call=call), "jobs.get")
        follower = _Follower(self, call, blueprint)

        def heard(method: str, params: dict[str, Any]) -> None:
            if method == "jobs.event" and params.get("job") == job:
                follower.notify("llm.state", params)

        conn = self.daemon.watching(call)
        try:
            conn.call("jobs.watch", {}, timeout=QUICK_TIMEOUT)
            # Changes before the watch began are not told: the record says where it is.
            now = _object(conn.call("jobs.get", {"job": job}, timeout=QUICK_TIMEOUT,
                                    on_notification=heard), "jobs.get")
            if now.get("state") in tools.FINAL_STATES:
                return now
            if follower.state == "submitted":
                follower.notify("llm.state", {"job": job, "state": now.get("state"),
                                              "attempt": now.get("attempts")})
            return _object(conn.call("jobs.get", {"job": job, "wait": True, "timeout": limit},
                                     timeout=limit + QUICK_TIMEOUT, on_notification=heard,
                                     on_tick=follower.tick, tick=self.progress_s), "jobs.get")
        except ConnectionLost:
            if call.cancelled:
                raise Abandoned from None
            raise
        finally:
            call.detach()
            conn.close()

    def _result(self, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
        job = tools.job_params(arguments, "result", ("job", "wait", "timeout", "offset"))
        wait, limit, offset = tools.result_options(arguments)
        params: dict[str, Any] = {"job": job}
        if wait:
            limit = self.cap(call) if limit is None else min(limit, self.cap(call))
            params["wait"] = True
            if limit is not None:
                params["timeout"] = limit
        reply = self.daemon.call(
            "jobs.get", params, timeout=None if limit is None else limit + QUICK_TIMEOUT,
            call=call, on_tick=self._ticker(call, f"waiting for llmd job {job}", wait),
            tick=self.progress_s)
        return tools.job_result(_object(reply, "jobs.get"), self.max_chars, offset,
                                limit if wait else None)

    def _cancel(self, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
        job = tools.job_params(arguments, "cancel")
        reply = self.daemon.call("llm.cancel", {"job": job}, timeout=QUICK_TIMEOUT, call=call)
        return tools.cancel_result(_object(reply, "llm.cancel"), job)

    def _status(self, call: Call, arguments: dict[str, Any]) -> dict[str, Any]:
        check = tools.status_options(arguments)
        listed = _object(self.daemon.call("blueprints.list", None, timeout=QUICK_TIMEOUT,
                                          call=call), "blueprints.list")
        method = "health.check" if check else "health.status"
        health = _object(self.daemon.call(
            method, None, timeout=CHECK_TIMEOUT, call=call,
            on_tick=self._ticker(call, "probing the blueprints", check),
            tick=self.progress_s), method)
        try:
            info: dict[str, Any] | None = _object(self.daemon.call(
                "daemon.info", None, timeout=QUICK_TIMEOUT, call=call), "daemon.info")
        except RpcError:
            info = None
        try:  # today's totals, from the usage ledger (an older llmd has none)
            ledger = _object(self.daemon.call(
                "usage.summary", {"since": time.strftime("%Y-%m-%d")}, timeout=QUICK_TIMEOUT,
                call=call), "usage.summary")
            today = ledger.get("total") if isinstance(ledger.get("total"), dict) else None
        except RpcError:
            today = None
        entries = listed.get("blueprints")
        states = health.get("blueprints")
        return tools.status_result(
            [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else [],
            states if isinstance(states, dict) else {}, info, today)

    def _ticker(self, call: Call, doing: str, waits: bool) -> Callable[[], None] | None:
        # Progress while a call may wait long, for a client that asked for it.
        if not waits or call.token is None:
            return None

        def tick() -> None:
            self.progress(call, f"{doing}: {int(time.monotonic() - call.started)} s")

        return tick


class _Follower:
    """Follows a run's job: learns its job id and reports its states as progress."""

    def __init__(self, runner: Runner, call: Call, blueprint: str) -> None:
        self.runner = runner
        self.call = call
        self.blueprint = blueprint
        self.state = "submitted"
        self.attempt = 1
        self.since = time.monotonic()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """The ``on_notification`` callback."""
        if method != "llm.state":
            return
        job = params.get("job")
        if isinstance(job, str):
            self.call.job = job
        state = params.get("state")
        if isinstance(state, str):
            self.state = state
            self.since = time.monotonic()
        attempt = params.get("attempt")
        if isinstance(attempt, int) and not isinstance(attempt, bool):
            self.attempt = attempt
        message = self.describe()
        delay = params.get("retry_in_s")
        if self.state == "retrying" and isinstance(delay, int | float):
            message += f"; next attempt in {delay:g} s"
        self.runner.progress(self.call, message)

    def tick(self) -> None:
        """The ``on_tick`` callback: progress while nothing else happens."""
        self.runner.progress(self.call, self.describe())

    def describe(self) -> str:
        """What the run is doing, for a progress message."""
        job = f"llmd job {self.call.job}" if self.call.job else "llmd job"
        text = f"{self.blueprint}: {job} {self.state.replace('_', ' ')}"
        if self.state == "running":
            text += f" for {int(time.monotonic() - self.since)} s"
            if self.attempt > 1:
                text += f" (attempt {self.attempt})"
        return text


def _object(value: object, method: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"llmd answered {method} with {type(value).__name__}, not an "
                            "object")
    return value
