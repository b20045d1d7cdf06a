"""
The supervising process of C{workers: N}: the store server (for the memory
store), the worker processes, and what runs once (the admin site).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, Optional, Sequence

from twisted.application.internet import UNIXServer
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from spectrum.cluster.node import node_name
from spectrum.kernel.shield import pin_directory, remove_pins, remove_stale_pins
from spectrum.model import Config
from spectrum.store import make_store
from spectrum.store.shared import StoreServerFactory
from spectrum.workers import READY_FD, WorkerSupervisor, worker_argv


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

    def privilegedStartService(self) -> None:
        # Before any worker starts (and, under twistd, before it forks or
        # writes its pidfile): a port that no worker could bind is the same
        # one line as without workers.
        check_edge_ports(self.config)
        # The workers' shared kernel maps are pinned under this pid; a
        # supervisor killed before it could unpin them left them behind.
        for pid in remove_stale_pins():
            self.log.info("kernel filter: removed the maps pinned by spectrum {pid}, which is gone", pid=pid)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)

    def _start_failed(self, line: str) -> None:
        """
        A worker could not start: stop the service (the other workers
        too), and exit with status 1 once twistd has cleaned up.
        """
        atexit.register(_exit, 1)
        reactor = self.workers.reactor
        if reactor.running:
            reactor.stop()

    def _sighup(self, signum: int, frame: Any) -> None:
        self.workers.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        # Checked here first, so a bad file is said in this (the main) log
        # and no worker is asked to read it.
        from spectrum.config import ConfigError, load
        from spectrum.config_files import check_files

        source = self.config.source
        try:
            if source is not None:
                check_files(load(source))
        except ConfigError as e:
            self.log.error("reload of {source} refused, old config kept: {error}", source=source, error=str(e))
            return
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
            remove_pins(pin_directory(os.getpid()))
            return result

        return d.addBoth(cleanup)


def _exit(status: int) -> None:
    # twistd ends with status 0 after its reactor stops, and has no way to
    # say otherwise; this runs at interpreter exit, after its pidfile and
    # log are closed.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


def check_edge_ports(config: Config) -> None:
    """
    Bind every edge address and port of C{config} as the workers will
    (C{SO_REUSEPORT}), and let go at once.

    @raise SystemExit: one of them cannot be bound; the message is the line
        a single process gives.
    """
    for index, app in enumerate(config.apps):
        kind = socket.SOCK_DGRAM if app.protocol == "udp" else socket.SOCK_STREAM
        for ip in app.ips:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            for port in app.edge_ports():
                with socket.socket(family, kind) as probe:
                    if kind == socket.SOCK_STREAM:
                        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        probe.bind((ip, port))
                    except OSError as e:
                        why = e.strerror or str(e)
                        raise SystemExit(f"spectrum: apps[{index}] ({app.name}): cannot listen on {ip}:{port}: {why}")


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
        worker_argv(os.path.abspath(config.source), drain_timeout, socket_path, extra=extra, ready_fd=READY_FD),
        reactor=reactor,
        stop_timeout=drain_timeout + 5,
        ready_reports=True,
    )
    service = Supervisor(config, workers, holder, tmpdir)
    workers.on_start_failure = service._start_failed
    if holder is not None and socket_path is not None:
        holder.setServiceParent(service)
        # Before the workers, so their first connection attempt finds it.
        UNIXServer(socket_path, StoreServerFactory(holder.store), mode=0o600).setServiceParent(service)
    workers.setServiceParent(service)
    return service
