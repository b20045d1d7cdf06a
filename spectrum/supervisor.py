"""
The supervising process of C{workers: N}: the store server (for the memory
store), the worker processes, and what runs once (the admin site).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any, Optional, Sequence

from twisted.application.internet import UNIXServer
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from spectrum.cluster import node_name
from spectrum.model import Config
from spectrum.store import make_store
from spectrum.store.shared import StoreServerFactory
from spectrum.workers import WorkerSupervisor, worker_argv


class StoreService(Service):
    """
    Starts and stops the supervisor's store handle.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.store.stop()


class Supervisor(MultiService):
    """
    Everything the supervising process runs; SIGHUP is passed on to the
    workers (each reloads the config file).
    """

    log = Logger()

    def __init__(
        self, config: Config, workers: WorkerSupervisor, store: Optional[StoreService], tmpdir: Optional[str]
    ) -> None:
        super().__init__()
        self.config = config
        self.workers = workers
        self.store = store
        self.tmpdir = tmpdir
        self._previous_sighup: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)

    def _sighup(self, signum: int, frame: Any) -> None:
        self.workers.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        self.log.info("reload: passing SIGHUP to {count} workers", count=len(self.workers.workers))
        for pid in self.workers.pids().values():
            try:
                os.kill(pid, signal.SIGHUP)
            except OSError:
                pass

    def stopService(self) -> Any:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        d = super().stopService()

        def cleanup(result: Any) -> Any:
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            return result

        return d.addBoth(cleanup)


def make_supervisor(
    config: Config, count: int, drain_timeout: float, reactor: Any = None, extra: Sequence[str] = ()
) -> Supervisor:
    """
    The supervising process's service for C{count} workers of C{config};
    C{extra} are more C{twistd spectrum} options for the workers.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if config.source is None:
        raise SystemExit("spectrum: workers need a config file (--config)")
    # With Redis the workers connect to it themselves; the supervisor holds
    # the store only for the memory store, which it serves to them.
    holder: Optional[StoreService] = None
    tmpdir = None
    socket_path = None
    if config.store == "memory":
        store = make_store("memory", node=node_name(config), reactor=reactor)
        # Minutes older than the analytics window are never read.
        store.retention_minutes = config.analytics.window_minutes + 2
        holder = StoreService(store)
        tmpdir = tempfile.mkdtemp(prefix="spectrum-store-")
        socket_path = os.path.join(tmpdir, "store.sock")
    workers = WorkerSupervisor(
        count,
        worker_argv(os.path.abspath(config.source), drain_timeout, socket_path, extra=extra),
        reactor=reactor,
        stop_timeout=drain_timeout + 5,
    )
    service = Supervisor(config, workers, holder, tmpdir)
    if holder is not None and socket_path is not None:
        holder.setServiceParent(service)
        # Before the workers, so their first connection attempt finds it.
        UNIXServer(socket_path, StoreServerFactory(holder.store), mode=0o600).setServiceParent(service)
    workers.setServiceParent(service)
    return service
