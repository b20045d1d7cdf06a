"""
The live state of one app: its current model, its balancer, its open
connections and the checks a new connection passes at the edge.

A listener holds the runtime, not the model, so a reload that changes the
pool applies to the next connection without touching the listener.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Set

from twisted.internet.defer import Deferred, succeed

from spectrum.balancer import Balancer
from spectrum.health import HealthChecker
from spectrum.model import App, PortMapping
from spectrum.record import ConnectionRecord, Recorders

#: An edge check returns L{None} to admit a connection, or a Spectrum status
#: code (and sets C{record.reason}/C{record.firewall}) to refuse it. Checks are
#: local and synchronous: the data plane never waits on the network.
EdgeCheck = Callable[["AppRuntime", ConnectionRecord], Optional[int]]


class AppRuntime:
    """
    One app's live state, shared by all its listeners.
    """

    def __init__(self, app: App, recorders: Recorders, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.app = app
        self.balancer = Balancer(app.pool)
        #: probes the pool's origins; started and stopped by the service
        self.health = HealthChecker(self.balancer, app.pool, _probe_port(app), reactor)
        self.recorders = recorders
        self.checks: List[EdgeCheck] = []
        self.connections: Set[Any] = set()
        self._idle_waiters: List[Deferred[None]] = []

    def update(self, app: App) -> None:
        """
        Take a changed model: new connections use it, open ones carry on.
        """
        self.app = app
        self.balancer.update(app.pool)
        self.health.update(app.pool, _probe_port(app))

    def origin_failed(self, origin: Any, reason: Any) -> None:
        """
        A real connection to C{origin} failed before any byte came back
        (passive health; counted, never waited on).
        """
        self.health.passive_failure(origin, reason)

    def origin_worked(self, origin: Any) -> None:
        """
        A real connection to C{origin} exchanged bytes.
        """
        self.health.passive_success(origin)

    def check(self, record: ConnectionRecord) -> Optional[int]:
        """
        Run the edge checks; the first refusal wins.
        """
        for check in self.checks:
            refusal = check(self, record)
            if refusal is not None:
                return refusal
        return None

    def opened(self, connection: Any) -> None:
        self.connections.add(connection)

    def closed(self, connection: Any) -> None:
        self.connections.discard(connection)
        if not self.connections and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        """
        A Deferred that fires once no connection of this app is open.
        """
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def abort_all(self, status: int, reason: str) -> None:
        """
        Close every open connection now (at the end of a drain).
        """
        for connection in list(self.connections):
            connection.abort(status, reason)


def _probe_port(app: App) -> int:
    """
    The port probed for origins that have none of their own: the first
    mapping's origin port, or its edge port.
    """
    mapping: PortMapping = app.ports[0]
    return (mapping.origin or mapping.edge).first
