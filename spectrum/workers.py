"""
C{workers: N}: N processes share every edge port; a supervisor keeps them
running.

Each worker is a whole spectrum (its own reactor, listeners, firewall,
analytics) that binds its edge ports with C{SO_REUSEPORT}, so the kernel
spreads new connections across the workers. They share state through the
store: Redis when configured, otherwise the supervisor's memory store,
served to them on a Unix socket (L{spectrum.store.shared}). The supervisor
itself binds no edge port; it runs what must run once (the store server,
the admin site) and restarts a worker that dies.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Restart delays: the first, the cap, and how long a worker must have run
#: for its next death to count as a fresh one.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0

_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^ ]* ")

#: twistd, run by this Python (C{python -m twisted} is C{twist}, not twistd).
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


class _WorkerProtocol(ProcessProtocol):
    """
    One worker process: its output goes to the supervisor's log, its end to
    the supervisor.
    """

    log = Logger()

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            if line.strip():
                # The worker's own timestamp is one too many.
                text = _STAMP.sub("", line.decode("utf-8", "replace").rstrip())
                self.log.info("[worker {index}] {line}", index=self.index, line=text)

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Runs C{count} copies of C{argv} (each with C{--worker INDEX} appended)
    and restarts one that exits, with backoff.
    """

    log = Logger()

    def __init__(
        self,
        count: int,
        argv: List[str],
        reactor: Any = None,
        stop_timeout: float = 15.0,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.count = count
        self.argv = argv
        self.stop_timeout = stop_timeout
        self.env = dict(os.environ if env is None else env)
        self.workers: Dict[int, _WorkerProtocol] = {}
        self.started_at: Dict[int, float] = {}
        self.failures: Dict[int, int] = {}
        self.restarts = 0
        self._pending: Dict[int, Any] = {}
        self._stopping = False

    def pids(self) -> Dict[int, int]:
        """
        The process id of each running worker, by index.
        """
        return {i: w.transport.pid for i, w in self.workers.items() if w.transport and w.transport.pid}

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if self._stopping:
            return
        protocol = _WorkerProtocol(self, index)
        argv = [*self.argv, "--worker", str(index)]
        self.reactor.spawnProcess(protocol, argv[0], argv, env=self.env, childFDs={0: "w", 1: "r", 2: "r"})
        self.workers[index] = protocol
        self.started_at[index] = self.reactor.seconds()
        self.log.info("worker {index} started (pid {pid})", index=index, pid=protocol.transport.pid)

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        index = protocol.index
        if self.workers.get(index) is protocol:
            del self.workers[index]
        if self._stopping:
            return
        ran = self.reactor.seconds() - self.started_at.get(index, 0)
        failures = 0 if ran >= STABLE_AFTER else self.failures.get(index, 0) + 1
        self.failures[index] = failures
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** max(0, failures - 1))
        self.log.warn(
            "worker {index} exited ({why}) after {ran:.1f}s; restarting in {delay:.1f}s",
            index=index,
            why=reason.getErrorMessage(),
            ran=ran,
            delay=delay,
        )
        self.restarts += 1
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for index in range(self.count):
            self._spawn(index)

    def stopService(self) -> Deferred[Any]:
        """
        SIGTERM every worker (each drains like a single process does), then
        SIGKILL what is left after C{stop_timeout} seconds.
        """
        super().stopService()
        self._stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.workers.values())
        if not workers:
            return succeed(None)
        for worker in workers:
            _signal(worker, signal.SIGTERM)
        done = DeferredList([w.ended for w in workers])

        def kill() -> None:
            for worker in workers:
                if not worker.ended.called:
                    self.log.warn("worker {index} did not stop in time; killing it", index=worker.index)
                    _signal(worker, signal.SIGKILL)

        deadline = self.reactor.callLater(self.stop_timeout, kill)

        def finished(result: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            return result

        return done.addBoth(finished)


def _signal(worker: _WorkerProtocol, signum: int) -> None:
    try:
        worker.transport.signalProcess(signum)
    except Exception:  # already gone
        pass


def worker_argv(source: str, drain_timeout: float, store_socket: Optional[str]) -> List[str]:
    """
    The command line of a worker: this Python running C{twistd spectrum}.
    """
    argv = [*TWISTD, "-n", "--pidfile=", "spectrum", "--config", source]
    argv += ["--drain-timeout", str(drain_timeout)]
    if store_socket:
        argv += ["--store-socket", store_socket]
    return argv


class ParentWatch(Service):
    """
    In a worker: stop when the supervisor is gone (it was killed), so no
    orphan keeps the edge ports.
    """

    def __init__(self, reactor: Any, interval: float = 1.0) -> None:
        self.reactor = reactor
        self.interval = interval
        self.parent_pid = os.getppid()
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        self._call = self.reactor.callLater(self.interval, self._check)

    def _check(self) -> None:
        if os.getppid() != self.parent_pid:
            Logger().warn("the supervisor is gone; stopping")
            self.reactor.stop()
            return
        self._call = self.reactor.callLater(self.interval, self._check)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
