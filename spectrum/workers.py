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
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

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

#: The descriptor on which a worker tells the supervisor that it started
#: (C{ready}) or why it could not (C{failed <the one line>}).
READY_FD = 3

#: twistd, run by this Python (C{python -m twisted} is C{twist}, not twistd).
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


class _WorkerProtocol(ProcessProtocol):
    """
    One worker process. Its output goes straight to the supervisor's own
    stdout and stderr (inherited descriptors): relaying every log line
    through the supervisor would cost it a core under load.
    """

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        #: it said it started (on L{READY_FD})
        self.ready = False
        self._report = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != READY_FD:
            return
        self._report = (self._report + data)[:4096]
        if not self.ready and self._report.startswith(b"ready\n"):
            self.ready = True
            self.supervisor._ready(self)

    def failure(self) -> Optional[str]:
        """
        The line the worker reported when it could not start, if it did.
        """
        text = self._report.decode("utf-8", "replace")
        if not text.startswith("failed "):
            return None
        return text[len("failed ") :].strip() or None

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Runs C{count} copies of C{argv} (a list, to which C{--worker INDEX} is
    appended, or a function of the index)
    and restarts one that exits, with backoff.

    With C{ready_reports}, each worker tells on L{READY_FD} that it started
    or why it could not. Until every worker has started once, a worker that
    ends without having started (a port it cannot bind, a config error) is
    fatal: C{on_start_failure} is called with its line and nothing is
    restarted. After that, only a worker that dies is restarted.
    """

    log = Logger()

    def __init__(
        self,
        count: int,
        argv: Union[List[str], Callable[[int], List[str]]],
        reactor: Any = None,
        stop_timeout: float = 15.0,
        env: Optional[Dict[str, str]] = None,
        ready_reports: bool = False,
        on_start_failure: Optional[Callable[[str], None]] = None,
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
        self.ready_reports = ready_reports
        self.on_start_failure = on_start_failure
        #: every worker has started once (with C{ready_reports})
        self.started = False
        #: why the service could not start, if it could not
        self.start_failure: Optional[str] = None

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
        argv = self.argv(index) if callable(self.argv) else [*self.argv, "--worker", str(index)]
        fds: Dict[int, Union[int, str]] = {0: "w", 1: 1, 2: 2}
        if self.ready_reports:
            fds[READY_FD] = "r"
        process = self.reactor.spawnProcess(protocol, argv[0], argv, env=self.env, childFDs=fds)
        self.workers[index] = protocol
        self.started_at[index] = self.reactor.seconds()
        self.log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def _ready(self, protocol: _WorkerProtocol) -> None:
        if self.started or self._stopping:
            return
        if len(self.workers) == self.count and all(w.ready for w in self.workers.values()):
            self.started = True
            self.log.info("all {count} workers started", count=self.count)

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        index = protocol.index
        if self.workers.get(index) is protocol:
            del self.workers[index]
        if self._stopping:
            return
        if self.ready_reports and not protocol.ready:
            why = protocol.failure() or f"worker {index} exited ({reason.getErrorMessage()}) before it started"
            if not self.started:
                # At start a worker that cannot start is a config or bind
                # error that a restart will not fix: stop, do not loop.
                self.start_failure = why
                self.log.error("worker {index} could not start; stopping: {why}", index=index, why=why)
                if self.on_start_failure is not None:
                    self.on_start_failure(why)
                return
            self.log.warn("worker {index} could not start: {why}", index=index, why=why)
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
    transport = worker.transport
    if transport is None:
        return
    try:
        transport.signalProcess(signum)
    except Exception:  # already gone
        pass


def worker_argv(
    source: str,
    drain_timeout: float,
    store_socket: Optional[str],
    argv: Optional[List[str]] = None,
    extra: Sequence[str] = (),
    ready_fd: Optional[int] = None,
) -> Callable[[int], List[str]]:
    """
    The command line of worker N: this Python running C{twistd -n
    spectrum}. When the supervisor's twistd was given C{--logfile FILE},
    worker N logs to C{FILE.wN} (twistd rotates its log file, which
    several processes cannot share); otherwise (and for /dev/null, which
    twistd would rename when it rotates) to the supervisor's stdout.
    """
    logfile = _logfile(sys.argv if argv is None else argv)

    def build(index: int) -> List[str]:
        command = [*TWISTD, "-n", "--pidfile="]
        if logfile and logfile not in ("-", os.devnull):
            command.append(f"--logfile={logfile}.w{index}")
        command += ["spectrum", "--config", source, "--drain-timeout", str(drain_timeout)]
        if store_socket:
            command += ["--store-socket", store_socket]
        if ready_fd is not None:
            command += ["--ready-fd", str(ready_fd)]
        return [*command, *extra, "--worker", str(index)]

    return build


def _logfile(argv: List[str]) -> Optional[str]:
    # twistd's options come before the plugin name.
    for i, arg in enumerate(argv):
        if arg == "spectrum":
            break
        if arg.startswith("--logfile="):
            return arg.split("=", 1)[1]
        if arg in ("--logfile", "-l") and i + 1 < len(argv):
            return argv[i + 1]
    return None


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


class ReadyReport(Service):
    """
    In a worker: tell the supervisor on C{fd} that the worker started, once
    the reactor runs (every service has started by then).
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(report, self.fd, "ready")


def report(fd: int, text: str) -> None:
    """
    Write C{text} as one line to the supervisor on C{fd}, and close it.
    """
    try:
        os.write(fd, (" ".join(text.split()) + "\n").encode("utf-8", "replace")[:4000])
        os.close(fd)
    except OSError:
        pass  # the supervisor is gone: ParentWatch stops this worker
