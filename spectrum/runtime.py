"""
The live state of one app: its current model, its balancer, its open
connections, and its place in admission (its limit state).

A listener holds the runtime, not the model, so a reload that changes the
pool applies to the next connection without touching the listener.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

from twisted.internet.defer import Deferred, succeed

from spectrum.admission import Admission
from spectrum.balancer import Balancer
from spectrum.descriptors import Descriptors
from spectrum.health import HealthChecker
from spectrum.limits import ClientLimits
from spectrum.model import App, Egress, PortMapping
from spectrum.record import Recorders
from spectrum.refusals import Refusals
from spectrum.resolver import Resolver, shared_resolver


class AppRuntime:
    """
    One app's live state, shared by all its listeners.
    """

    def __init__(
        self,
        app: App,
        recorders: Recorders,
        reactor: Any = None,
        admission: Optional[Admission] = None,
        refusals: Optional[Refusals] = None,
        resolver: Optional[Resolver] = None,
        descriptors: Optional[Descriptors] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        #: who gets in (shared by every app of the service)
        self.admission = admission if admission is not None else Admission(None, reactor)
        #: how refused clients are counted and sampled
        self.refusals = refusals if refusals is not None else Refusals(recorders, reactor)
        #: origin names to addresses (shared by every app of the service)
        self.resolver = resolver if resolver is not None else shared_resolver(reactor)
        #: the clients' share of the process's descriptors (shared by every app)
        self.descriptors = descriptors if descriptors is not None else Descriptors()
        #: what this app's admitted clients hold open
        self.limits = ClientLimits()
        self.app = app
        self.balancer = Balancer(app.pool)
        #: probes the pool's origins; started and stopped by the service
        self.health = HealthChecker(self.balancer, app.pool, _probe_port(app), reactor, resolver=self.resolver)
        self.recorders = recorders
        #: where origin connections leave from (the config's C{egress})
        self.egress = Egress()
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

    def opened(self, connection: Any) -> None:
        self.connections.add(connection)
        self.descriptors.opened(connection.descriptors)

    def closed(self, connection: Any) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
            self.descriptors.closed(connection.descriptors)
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
