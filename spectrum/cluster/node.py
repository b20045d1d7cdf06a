"""
The node's side of the store: the L{Cluster} service (see
L{spectrum.cluster}).
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from spectrum.cluster.figures import build_view, difference, flatten, merge_into, per_app
from spectrum.cluster.rate import ClusterRate
from spectrum.model import Config
from spectrum.record import CONNECT
from spectrum.store.interface import APPS, KINDS, RULES, IStoreListener, StoreUnavailable
from spectrum.store.memory import MemoryStore

#: Seconds between pushes of counters, events and health, and between
#: refreshes of the cluster view.
FLUSH_INTERVAL = 1.0
#: Minutes of counter differences kept while the store is out of reach.
MAX_PENDING_MINUTES = 60
#: Events kept while the store is out of reach.
MAX_PENDING_EVENTS = 1000
#: Events sent per push: the store keeps the newest 1,000 of the whole
#: cluster and the API shows 100, so a busy node sends its newest only
#: (every event is in the node's own event log, C{events.path}).
EVENTS_PER_PUSH = 100


#: The key under which a node publishes its egress with its origins' health.
EGRESS = "egress"


#: A worker's node name: the node's, then C{-wN}.
_WORKER = re.compile(r"^(.*)-w([0-9]+)$")


def node_name(config: Config, worker: Optional[int] = None) -> str:
    """
    This process's name in per-node figures: C{node} from the config (or
    the host name), with C{-wN} for worker N.
    """
    base = config.node or socket.gethostname().split(".")[0] or "node"
    return base if worker is None else f"{base}-w{worker}"


@implementer(IStoreListener)
class Cluster(Service):
    """
    Keeps this node and the store in step (see the module docstring).

    @ivar view: the cluster's analytics (an L{spectrum.analytics.Analytics}),
        or L{None} until the store has been read once.
    @ivar nodes: each node's figures per app, from the last refresh.
    """

    log = Logger()

    def __init__(self, store: Any, reactor: Any = None, interval: float = FLUSH_INTERVAL) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.store = store
        self.node = store.node
        self.interval = interval
        self.service: Any = None
        #: documents as last seen in the store, by kind and id
        self.known: Dict[str, Dict[str, Any]] = {kind: {} for kind in KINDS}
        #: ids changed here while the store was out of reach
        self.dirty: Dict[str, set] = {kind: set() for kind in KINDS}
        self.synced = False
        self.view: Any = None
        self.nodes: Dict[str, Dict[str, Any]] = {}
        self.health_view: Dict[str, Any] = {}
        #: each node's flat counters, from the last refresh
        self.totals_by_node: Dict[str, Dict[str, int]] = {}
        #: each node's egress networks, as it published them
        self.egress_view: Dict[str, List[str]] = {}
        self.recent_events: List[Dict[str, Any]] = []
        # counters: the last flattened snapshot, what waits, what went out
        self._last: Dict[str, int] = {}
        self.pending: Dict[int, Dict[str, int]] = {}
        self.pushed: Dict[str, int] = {}
        self._history: Dict[int, Dict[str, int]] = {}
        self.events_pending: List[Dict[str, Any]] = []
        self.events_dropped = 0
        self._health_sent: Dict[str, str] = {}
        # summed minute buckets of the cluster, and when all were last read
        self._minutes_cache: Dict[int, Dict[str, int]] = {}
        self._full_read = float("-inf")
        self._window_read = 0
        self._busy = False
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._finishing: Optional[Deferred[Any]] = None
        self._finish_waiters: List[Deferred[None]] = []
        self._done = False
        self.rate = ClusterRate(store, reactor)
        #: whether other processes share the store: only then does the API
        #: report the store's sums (a lone process's own figures are exact
        #: and have no lag)
        from spectrum.store.memory import MemoryStore

        self.shared = not isinstance(store, MemoryStore)

    # wiring ------------------------------------------------------------------

    def attach(self, service: Any) -> None:
        """
        Serve C{service} (a L{spectrum.service.SpectrumService}): become its
        child and a recorder of its events (the composition root hands this
        node to the admin).
        """
        self.service = service
        service.recorders.add(self._record)
        # A gate after the local limits: an address over the cluster's
        # per_ip_rate is refused.
        service.admission.gates.append(self.rate.check)
        # The rules made through the API here go to the store.
        service.rules.changed.append(lambda: self.local_change(RULES))
        self.setServiceParent(service)

    def startService(self) -> None:
        super().startService()
        self.store.listen(self)
        self.store.start()
        self._ticker.start(self.interval, now=False)
        self.rate.start()
        # At shutdown the service stops its children (this one) before it
        # drains its connections; the store stays up through the drain, so
        # the connections that close then are counted too. The reactor waits
        # for this before it stops.
        self.reactor.addSystemEventTrigger("before", "shutdown", self._finish)

    def stopService(self) -> Any:
        super().stopService()
        self.rate.stop()
        # Not waited for here: the service drains only after its children
        # have stopped.
        self._finish()
        return None

    def _finish(self) -> Deferred[None]:
        """
        Once the service has drained (or its drain time is over), push what
        is left and disconnect; a Deferred that fires when done.
        """
        if self._finishing is None:
            self._finishing = self._close()
            self._finishing.addBoth(self._closed)
        if self._done:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._finish_waiters.append(waiter)
        return waiter

    def _closed(self, result: Any) -> None:
        self._done = True
        waiters, self._finish_waiters = self._finish_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @inlineCallbacks
    def _close(self) -> Any:
        service = self.service
        if service is not None:
            deadline = self.reactor.seconds() + getattr(service, "drain_timeout", 0) + 1.0
            while (service.running or service.listeners or service.open_connections()) and (
                self.reactor.seconds() < deadline
            ):
                yield deferLater(self.reactor, 0.05, lambda: None)
        if self._ticker.running:
            self._ticker.stop()
        while self._busy:  # a push under way finishes first
            yield deferLater(self.reactor, 0.05, lambda: None)
        if service is not None and self.store.available and self.synced:
            try:
                self.collect()
                yield self._push()
            except Exception:
                self.log.failure("store: last push at stop failed")
        self.store.unlisten(self)
        yield self.store.stop()

    # documents: local -> store ----------------------------------------------------

    def local_docs(self, kind: str) -> Dict[str, Any]:
        """
        The documents of C{kind} as this node has them.
        """
        if kind == RULES:
            return self.service.rules.documents()
        state = getattr(self.service, "admin_state", None)
        if state is not None:
            return dict(state.apps)
        return dict(self.known[APPS])

    def local_change(self, kind: str) -> None:
        """
        The admin API changed C{kind} here: tell the store (now, or once it
        is back).
        """
        local = self.local_docs(kind)
        known = self.known[kind]
        for id, doc in local.items():
            if known.get(id) != doc:
                self._send(kind, id, doc)
        for id in list(known):
            if id not in local:
                self._send(kind, id, None)

    def _send(self, kind: str, id: str, doc: Optional[Dict[str, Any]]) -> None:
        if not self.store.available or not self.synced:
            self.dirty[kind].add(id)
            return
        if doc is None:
            self.known[kind].pop(id, None)
            d = self.store.delete(kind, id)
        else:
            self.known[kind][id] = doc
            d = self.store.put(kind, id, doc)

        def failed(failure: Any) -> None:
            failure.trap(StoreUnavailable)
            self.dirty[kind].add(id)

        d.addErrback(failed)
        d.addErrback(lambda f: self.log.failure("store: writing {kind} {id} failed", f, kind=kind, id=id))

    # documents: store -> local ----------------------------------------------------

    def changed(self, kind: str, id: str, doc: Optional[Dict[str, Any]]) -> None:
        if kind not in KINDS:
            return
        if doc is None:
            if id not in self.known[kind] and id not in self.local_docs(kind):
                return
            self.known[kind].pop(id, None)
        else:
            if self.known[kind].get(id) == doc and self.local_docs(kind).get(id) == doc:
                return  # our own write, echoed
            self.known[kind][id] = doc
        self.dirty[kind].discard(id)
        self._apply(kind, {id: doc})

    def _apply(self, kind: str, changes: Dict[str, Optional[Dict[str, Any]]]) -> None:
        try:
            if kind == RULES:
                self.service.rules.apply(changes)
            else:
                self._apply_apps(changes)
        except Exception:
            self.log.failure("store: could not apply {count} {kind} changes", count=len(changes), kind=kind)

    def _state(self) -> Any:
        from spectrum.admin.state import service_state

        return service_state(self.service)

    def _apply_apps(self, changes: Dict[str, Optional[Dict[str, Any]]]) -> None:
        import attr

        from spectrum.config import ConfigError
        from spectrum.errors import ListenError

        state = self._state()
        apps = dict(state.apps)
        for id, entry in changes.items():
            if entry is None:
                apps.pop(id, None)
            else:
                apps[id] = entry
        try:
            config = state.build(apps)
        except ConfigError as e:
            self.log.warn("store: apps not applied here: {error}", error=str(e))
            return
        if config.source is None and self.service.config.source is not None:
            config = attr.evolve(config, source=self.service.config.source)
        previous = state.apps
        state.apps = apps
        try:
            self.service.apply(config)
        except ListenError as e:
            state.apps = previous
            self.log.warn("store: apps not applied here: {error}", error=str(e))
            return
        self.log.info("apps: {count} in force ({changed} changed through the store)", count=len(config.apps),
                      changed=len(changes))  # fmt: skip
        self._save_state()

    def _save_state(self) -> None:
        from spectrum.admin.state import StateError

        state = getattr(self.service, "admin_state", None)
        if state is None or state.path is None:
            return
        try:
            state.save()
        except StateError as e:
            self.log.warn("store: {error}", error=str(e))

    # resync ------------------------------------------------------------------

    def resync(self) -> None:
        self.synced = False
        self._full_read = float("-inf")
        self._resync().addErrback(self._resync_failed)

    def _resync_failed(self, failure: Any) -> None:
        if failure.check(StoreUnavailable):
            return  # the next reconnect resyncs
        self.log.failure("store: resync failed", failure)

    @inlineCallbacks
    def _resync(self) -> Any:
        for kind in KINDS:
            stored = yield self.store.documents(kind)
            local = self.local_docs(kind)
            dirty, self.dirty[kind] = self.dirty[kind], set()
            if not stored and local:
                # A fresh store, or one that lost its data (a Redis restarted
                # without persistence): what this node has seeds it.
                dirty |= set(local)
            self.known[kind] = dict(stored)
            # What changed here while away wins over the store.
            for id in dirty:
                doc = local.get(id)
                if doc is None:
                    self.known[kind].pop(id, None)
                    yield self.store.delete(kind, id)
                else:
                    self.known[kind][id] = doc
                    yield self.store.put(kind, id, doc)
            changes: Dict[str, Optional[Dict[str, Any]]] = {
                id: doc for id, doc in self.known[kind].items() if local.get(id) != doc
            }
            changes.update({id: None for id in local if id not in self.known[kind]})
            if changes:
                self._apply(kind, changes)
        yield self._recover_counts()
        self.synced = True
        self.log.info("store: {node} in step ({rules} rules, {apps} apps from the store)", node=self.node,
                      rules=len(self.known[RULES]), apps=len(self.known[APPS]))  # fmt: skip

    @inlineCallbacks
    def _recover_counts(self) -> Any:
        """
        If the store lost this node's figures (a Redis restarted without
        persistence), push them again: the minutes remembered, and the rest
        into the totals.
        """
        if not self.pushed:
            return
        totals = yield self.store.totals()
        if totals.get(self.node):
            return
        self.log.warn("store: it lost this node's figures; pushing them again")
        rest = dict(self.pushed)
        for minute in sorted(self._history):
            counts = self._history[minute]
            yield self.store.add_counts(self.node, minute, counts)
            merge_into(rest, {name: -value for name, value in counts.items()})
        rest = {name: value for name, value in rest.items() if value}
        if rest:
            yield self.store.add_counts(self.node, None, rest)

    # counters, events, health: local -> store -----------------------------------------

    def _record(self, kind: str, record: Any) -> None:
        if kind == CONNECT:
            return
        event = record.as_event(kind)
        event["Node"] = self.node
        self.events_pending.append(event)
        if len(self.events_pending) > MAX_PENDING_EVENTS:
            drop = len(self.events_pending) - MAX_PENDING_EVENTS
            del self.events_pending[:drop]
            self.events_dropped += drop

    def collect(self) -> None:
        """
        File the counters' change since the last call under this minute.
        """
        analytics = getattr(self.service, "analytics", None)
        if analytics is None:
            return
        snapshot = flatten(analytics)
        delta = difference(snapshot, self._last)
        self._last = snapshot
        if not delta:
            return
        minute = int(self.reactor.seconds() // 60)
        merge_into(self.pending.setdefault(minute, {}), delta)
        while len(self.pending) > MAX_PENDING_MINUTES:
            # Keep the newest minutes; the oldest go into the next oldest,
            # so totals stay whole.
            oldest, second = sorted(self.pending)[:2]
            merge_into(self.pending[second], self.pending.pop(oldest))

    def _tick(self) -> Any:
        if self._busy:
            return None
        self.collect()
        if not (self.store.available and self.synced):
            return None
        self._busy = True
        d = self._push()
        d.addCallback(lambda _: self._refresh())
        d.addErrback(self._tick_failed)

        def done(result: Any) -> Any:
            self._busy = False
            return result

        return d.addBoth(done)

    def _tick_failed(self, failure: Any) -> None:
        if failure.check(StoreUnavailable):
            return
        self.log.failure("store: push or refresh failed", failure)

    @inlineCallbacks
    def _push(self) -> Any:
        for minute in sorted(self.pending):
            counts = self.pending[minute]
            yield self.store.add_counts(self.node, minute, counts)
            del self.pending[minute]
            merge_into(self.pushed, counts)
            merge_into(self._history.setdefault(minute, {}), counts)
        for old in sorted(self._history)[:-MAX_PENDING_MINUTES]:
            del self._history[old]
        if self.events_pending:
            events, self.events_pending = self.events_pending[-EVENTS_PER_PUSH:], []
            try:
                yield self.store.add_events(events)
            except Exception:
                self.events_pending[:0] = events
                raise
        yield self._push_health()

    def _push_health(self) -> Deferred[Any]:
        from twisted.internet.defer import gatherResults

        from spectrum.admin.apps import origin_health
        from spectrum.egress import node_networks

        # This node's egress, beside its origins' health (an origin's key
        # always holds a "/").
        writes = []
        egress = {"networks": sorted(node_networks(self.service.config))}
        text = json.dumps(egress, sort_keys=True)
        if self._health_sent.get(EGRESS) != text:
            writes.append(self.store.put_health(self.node, EGRESS, egress).addCallback(self._health_done, EGRESS, text))
        for app in self.service.config.apps:
            runtime = self.service.runtimes.get(app.name)
            for entry in origin_health(app, runtime):
                key = f"{app.name}/{entry.get('name')}"
                text = json.dumps(entry, sort_keys=True, default=str)
                if self._health_sent.get(key) == text:
                    continue
                state = json.loads(text)
                writes.append(self.store.put_health(self.node, key, state).addCallback(self._health_done, key, text))
        return gatherResults(writes, consumeErrors=True)

    def _health_done(self, _: Any, key: str, text: str) -> None:
        self._health_sent[key] = text

    @inlineCallbacks
    def _refresh(self) -> Any:
        """
        Read the cluster's figures back: the view the admin API reports.
        """
        window = self.service.analytics.window if getattr(self.service, "analytics", None) else 60
        if isinstance(self.store, MemoryStore):
            # Nothing reads a minute older than the window: keep no more
            # (the store's own default is a day).
            self.store.retention_minutes = window + 2
        now = self.reactor.seconds()
        newest = int(now // 60)
        totals = yield self.store.totals()
        # Past minutes change only when a node pushes late (after an
        # outage): read the whole window once a minute, the last three
        # minutes every time.
        full = now - self._full_read >= 60 or window != self._window_read
        first = newest - window + 1 if full else newest - 2
        minutes = yield self.store.minutes(first, newest)
        if full:
            self._full_read, self._window_read = now, window
        cache = self._minutes_cache
        for minute in [m for m in cache if m >= first or m <= newest - window]:
            del cache[minute]
        for buckets in minutes.values():
            for minute, counts in buckets.items():
                merge_into(cache.setdefault(minute, {}), counts)
        summed: Dict[str, int] = {}
        for counts in totals.values():
            merge_into(summed, counts)
        if self.shared:
            self.view = build_view(summed, cache, window, self.reactor)
        self.nodes = {node: per_app(counts) for node, counts in totals.items()}
        self.totals_by_node = totals
        health = yield self.store.health()
        self.egress_view = {
            node: list((origins.pop(EGRESS, None) or {}).get("networks") or []) for node, origins in health.items()
        }
        self.health_view = health
        self.recent_events = yield self.store.recent_events(100)

    def worker_index(self) -> Optional[str]:
        """
        This process's index among the workers of C{workers: N}, or None.
        """
        match = _WORKER.match(self.node)
        return match.group(2) if match else None

    def worker_totals(self) -> Dict[str, Dict[str, int]]:
        """
        With C{workers: N}: the flat counters each worker of this node
        published, by worker index; empty for a process that is no worker.
        """
        match = _WORKER.match(self.node)
        if match is None:
            return {}
        base = match.group(1)
        result = {}
        for node, counts in self.totals_by_node.items():
            other = _WORKER.match(node)
            if other is not None and other.group(1) == base:
                result[other.group(2)] = dict(counts)
        return result

    def status(self) -> Dict[str, Any]:
        """
        The cluster as the admin API shows it: this node, the store, and
        each node's figures and view of origin health.
        """
        return {
            "node": self.node,
            "store": {
                "kind": type(self.store).__name__,
                "available": bool(self.store.available),
                "in_step": self.synced,
                "pending_minutes": len(self.pending),
                "pending_events": len(self.events_pending),
                "events_dropped": self.events_dropped,
            },
            "nodes": self.nodes,
            "health": self.health_view,
            "events": self.recent_events,
        }
