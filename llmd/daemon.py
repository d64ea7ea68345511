"""The daemon: wire the registry, job manager, dispatcher and socket together.

Invariants:
- Everything runs in one trio nursery; detached jobs live in the job manager's, which runs
  in it, not in a connection's.
- What serving needs is made in :meth:`Daemon.serve`, each part whole from the start: the
  store is opened under the socket's lock, then the job manager is made with it, then the
  methods with their :class:`~llmd.server.methods.MethodContext`, the dispatcher and the
  server. Nothing is handed to a part after it is made.
- Shutdown: stop accepting and remove the socket; cancel the queued jobs (none starts
  any more); on SIGTERM let running jobs finish for ``daemon.stop_grace`` seconds
  (SIGINT or a second signal: no wait); then cancel every unfinished job (groups
  killed, callers answered, detached ones recorded ``interrupted``) and return.
- A reload that fails validation leaves the registry in force untouched.
- Warm processes die with the daemon: idle ones when shutdown begins, the rest with
  their runs; those a crashed daemon left are killed at start, under the socket's lock.
- The budgets count this month's runs from the ledger before the first request; with
  ``[metrics] textfile`` the figures are written there from start to stop; a reload that
  changes ``[metrics]`` moves, re-times or stops the writer. A reload puts every setting in
  force but ``[store]`` (the store stays open) and a ``log_level`` given on the command line.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from llmd import metrics
from llmd.budget import BudgetBook
from llmd.config import Registry, load_file, parse_registry
from llmd.drivers.warm import WarmPool
from llmd.health.monitor import HealthMonitor
from llmd.jobs import ledger
from llmd.jobs.manager import JobManager
from llmd.jobs.store import JobStore, default_path
from llmd.jobs.worktree import Worktrees, tend
from llmd.paths import PACKAGED_CONFIG, packaged_config, prepare_socket_dir
from llmd.process.groups import OwnedGroups, kill_leftovers
from llmd.server import methods
from llmd.server.connections import Server
from llmd.server.dispatch import Dispatcher
from llmd.server.listener import Listener
from llmd.stats import RunStats
from llmd.systemd import runtime
from llmd.systemd.notify import Notifier

log = logging.getLogger("llmd")

# Longest we wait for cancelled jobs' groups to die before leaving anyway.
SHUTDOWN_LIMIT = 15.0


def load_registry(source: str) -> Registry:
    """Load the registry from a path, or the packaged default.

    Raises:
        ConfigError: It is invalid or unreadable.
    """
    if source == PACKAGED_CONFIG:
        return parse_registry(packaged_config(), PACKAGED_CONFIG)
    return load_file(source)


async def seed_budget(manager: JobManager, store: JobStore) -> None:
    """Count this month's runs already in the ledger towards the budgets."""
    book = manager.budget
    if book is None:
        return
    month = book.clock().date().replace(day=1).isoformat()
    days, ranges = ledger.window(month, None)
    rows = await store.usage_rows(days, ranges, ("day", "blueprint"))
    book.seed((day, blueprint, runs, cost)
              for day, blueprint, runs, _ok, _failed, _in, _out, cost, _s in rows)


@dataclass(frozen=True)
class _Serving:
    """The parts that exist while the daemon serves."""

    store: JobStore
    manager: JobManager
    server: Server


class Daemon:
    """One serving daemon.

    Args:
        registry: The validated registry.
        socket_path: Where to listen.
        default_socket: Whether the path is the default one (its directory is then secured).
    """

    def __init__(self, registry: Registry, socket_path: Path, *,
                 default_socket: bool = False) -> None:
        self.registry = registry
        self.socket_path = socket_path
        self.default_socket = default_socket
        self.started = time.monotonic()
        self.health = HealthMonitor(registry, os.environ)
        self.stats = RunStats(trio.current_time)
        self.store_path = (Path(registry.doc.store.path).expanduser()
                           if registry.doc.store.path else default_path())
        self.listener = Listener(socket_path)
        self._serving: _Serving | None = None
        self._nursery: trio.Nursery | None = None
        self._metrics_writer = trio.CancelScope()
        # ``llmd serve --log-level`` outranks the registry's, on reloads too.
        self.log_level_given: str | None = None
        self._stop = trio.Event()
        self._grace = trio.CancelScope()
        self.notifier = Notifier()
        # STATUS= for `systemctl status`: looked at once a second and sent only when it
        # changed (call self.status.update() where job counts change to send it sooner).
        self.status = runtime.StatusReporter(self.notifier, self._status_text, poll=1.0)

    def _parts(self) -> _Serving:
        if self._serving is None:
            raise RuntimeError("llmd is not serving (see Daemon.serve)")
        return self._serving

    @property
    def store(self) -> JobStore:
        """The job store (while serving)."""
        return self._parts().store

    @property
    def manager(self) -> JobManager:
        """The job manager (while serving)."""
        return self._parts().manager

    @property
    def uptime_s(self) -> float:
        """Seconds since the daemon was made."""
        return time.monotonic() - self.started

    @property
    def connections(self) -> int:
        """Connections open now."""
        return 0 if self._serving is None else len(self._serving.server.connections)

    def _status_text(self) -> str:
        """The one line systemd shows for us."""
        if self._serving is None:
            return "starting"
        jobs = self._serving.manager
        state = "stopping" if self._stop.is_set() else f"serving {self.socket_path}"
        return (f"{state}: {jobs.running} running, {jobs.queued} queued, "
                f"{jobs.finished_count} finished")

    @property
    def warm_groups_file(self) -> Path:
        """Where the warm processes' and agents' groups are listed, for a restart after a
        crash."""
        return self.socket_path.with_name(self.socket_path.name + ".warm")

    def reload(self) -> Registry:
        """Re-read the registry from its source.

        Raises:
            ConfigError: The new file is invalid; the old registry stays.
        """
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            registry = load_registry(self.registry.source)
        finally:
            self.notifier.send("READY=1")
        old, self.registry = self.registry, registry
        self.health.set_registry(registry)
        if registry.doc.metrics != old.doc.metrics:
            self._write_metrics()
        if self.log_level_given is None:
            logging.getLogger("llmd").setLevel(registry.daemon.log_level.upper())
        if self._serving is not None:
            self._serving.manager.set_registry(registry)
            self._serving.server.max_message = registry.daemon.max_message_bytes
        log.info("registry reloaded from %s: %d blueprints", registry.source,
                 len(registry.blueprints))
        return registry

    async def _open_store(self) -> JobStore:
        cfg = self.registry.doc.store
        if cfg.enabled:
            store = await JobStore.open(self.store_path, output_cap=cfg.output_cap,
                                        max_age_days=cfg.max_age_days, max_jobs=cfg.max_jobs)
        else:
            store = JobStore.disabled(self.store_path, "switched off in [store]")
        if store.available:
            # The store logs what it recovered (and, when it cannot be used, why): once.
            await store.recover()
        return store

    def _make_parts(self, store: JobStore) -> _Serving:
        """The job manager, the methods and the server, around an open store."""
        manager = JobManager(self.registry, health=self.health, store=store,
                             warm=WarmPool(self.registry, OwnedGroups(self.warm_groups_file)),
                             worktrees=Worktrees(self.store_path.parent / "worktrees"),
                             budget=BudgetBook(self.registry),
                             on_finish=[metrics.observe(self.stats)])
        context = methods.MethodContext(host=self, manager=manager, store=store,
                                        health=self.health, stats=self.stats)
        dispatcher = Dispatcher(methods.build(context), log=logging.getLogger("llmd.rpc"))
        return _Serving(store, manager,
                        Server(dispatcher, self.registry.daemon.max_message_bytes))

    def _write_metrics(self) -> None:
        """(Re)start the ``[metrics] textfile`` writer as the registry now says, or stop it."""
        self._metrics_writer.cancel()
        self._metrics_writer = trio.CancelScope()
        cfg = self.registry.doc.metrics
        if not cfg.textfile or self._nursery is None or self._serving is None:
            return
        manager, scope = self._serving.manager, self._metrics_writer

        async def write() -> None:
            with scope:
                await metrics.write_textfile(
                    Path(cfg.textfile).expanduser(), cfg.interval,
                    lambda: metrics.exposition(self.stats, manager, self.health,
                                               self.uptime_s))

        self._nursery.start_soon(write)

    def request_stop(self, *, graceful: bool = False) -> None:
        """Begin shutting down.

        Args:
            graceful: Let running jobs finish for ``daemon.stop_grace`` seconds first.
                A second request, or a non-graceful one, cuts the grace short.
        """
        if self._stop.is_set() or not graceful:
            self._grace.cancel()
        self._stop.set()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind and serve until asked to stop.

        Raises:
            AlreadyRunning: Another daemon serves this socket.
            PathError: The socket's directory is unsafe.
        """
        if not self.listener.activated:
            # A socket systemd passed us lives in a directory systemd made.
            prepare_socket_dir(self.socket_path, default=self.default_socket)
        sock = await self.listener.bind()
        store: JobStore | None = None
        try:
            # Under the single-instance lock: recovery may kill what a crashed daemon left.
            store = await self._open_store()
            kill_leftovers(self.warm_groups_file)  # warm processes and agents
            parts = self._serving = self._make_parts(store)
            await seed_budget(parts.manager, store)
            manager, server = parts.manager, parts.server
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                await nursery.start(manager.serve)
                if store.available and manager.worktrees is not None:

                    async def kept(job: str) -> bool:
                        # A job in memory may have its worktree before its record is saved.
                        return job in manager.jobs or await store.has(job)

                    await nursery.start(partial(tend, manager.worktrees, kept,
                                                interval=store.prune_interval))
                await nursery.start(manager.events.serve)
                accepting = trio.CancelScope()

                async def accept(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    with accepting:
                        # Connections live in the outer nursery, so they outlast accepting.
                        await trio.serve_listeners(server.handle,
                                                   [trio.SocketListener(sock)],
                                                   handler_nursery=nursery,
                                                   task_status=task_status)

                await nursery.start(accept)
                await nursery.start(self.health.run)
                self._nursery = nursery
                self._write_metrics()
                # Before READY=1: a reload or stop sent at once must find its handler.
                await nursery.start(self._watch_signals)
                # Both return at once outside systemd (no NOTIFY_SOCKET, no WATCHDOG_USEC).
                nursery.start_soon(runtime.watchdog, self.notifier, os.environ)
                nursery.start_soon(self.status.run)
                log.info("llmd serving %s with %d blueprints from %s", self.socket_path,
                         len(self.registry.blueprints), self.registry.source)
                task_status.started(self)
                self.notifier.send("READY=1", f"STATUS=serving {self.socket_path}",
                                   f"MAINPID={os.getpid()}")
                await self._stop.wait()
                log.info("shutting down")
                self.notifier.send("STOPPING=1", "STATUS=stopping")
                # Stop accepting: new clients find no socket rather than a dead one (or,
                # under socket activation, wait in systemd's for the next start).
                accepting.cancel()
                self.listener.release()
                manager.draining = True
                manager.warm.close()
                manager.agents.close()
                # Queued jobs never start now: they end cancelled and their callers learn
                # it at once.
                manager.cancel_queued("cancelled: llmd is shutting down")
                grace = self.registry.daemon.stop_grace
                if manager.running or manager.queued:
                    log.info("letting running jobs finish for up to %g s", grace)
                with self._grace:
                    self._grace.deadline = trio.current_time() + grace
                    await manager.wait_all_finished()
                manager.shutting_down = True
                manager.cancel_all("cancelled: llmd is shutting down")
                with trio.move_on_after(SHUTDOWN_LIMIT):
                    await manager.wait_all_finished()
                    # Give the answers to the cancelled runs a moment to reach their clients.
                    with trio.move_on_after(1.0):
                        await server.wait_idle()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if store is not None:
                with trio.CancelScope(shield=True):
                    await store.aclose()
            self.listener.release()
            self.notifier.close()
        log.info("stopped")

    async def _watch_signals(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload_logged()
                else:
                    log.info("received %s", signal.Signals(signum).name)
                    # SIGTERM (systemd's stop) lets jobs finish; Ctrl-C does not wait.
                    self.request_stop(graceful=signum == signal.SIGTERM)

    def _reload_logged(self) -> None:
        from llmd.errors import ConfigError  # noqa: PLC0415

        try:
            self.reload()
        except ConfigError as exc:
            log.error("reload failed, keeping the old registry: %s", exc.message)
        except Exception:  # a signal must never take the daemon down
            log.exception("reload failed, keeping the old registry")
