"""
The embedded store: everything in this process's memory.

It is the default for one process. With C{workers: N} the supervising
process holds one and serves it to its workers (L{spectrum.store.shared}).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from spectrum.store.interface import KINDS, IStore, IStoreListener

#: Minute buckets kept (a day), and events kept.
RETENTION_MINUTES = 24 * 60
MAX_EVENTS = 1000


@implementer(IStore)
class MemoryStore:
    """
    An L{IStore} held in memory; changes are told to listeners at once.
    """

    log = Logger()
    available = True

    def __init__(
        self,
        node: str = "local",
        reactor: Any = None,
        retention_minutes: int = RETENTION_MINUTES,
        max_events: int = MAX_EVENTS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.node = node
        self.retention_minutes = retention_minutes
        self.max_events = max_events
        self._docs: Dict[str, Dict[str, Dict[str, Any]]] = {kind: {} for kind in KINDS}
        self._totals: Dict[str, Dict[str, int]] = {}
        self._minutes: Dict[str, Dict[int, Dict[str, int]]] = {}
        self._events: List[Dict[str, Any]] = []
        self._health: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self._rates: Dict[str, Dict[int, int]] = {}
        self._listeners: List[IStoreListener] = []
        self._sweep_at = 4096

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def listen(self, listener: IStoreListener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: IStoreListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _tell(self, kind: str, id: str, doc: Optional[Dict[str, Any]]) -> None:
        for listener in list(self._listeners):
            try:
                listener.changed(kind, id, copy.deepcopy(doc))
            except Exception:
                self.log.failure("store listener {listener!r} failed", listener=listener)

    # documents -----------------------------------------------------------

    def _kind(self, kind: str) -> Dict[str, Dict[str, Any]]:
        if kind not in self._docs:
            raise ValueError(f"no documents of kind {kind!r}")
        return self._docs[kind]

    def documents(self, kind: str) -> Deferred[Dict[str, Dict[str, Any]]]:
        return succeed(copy.deepcopy(self._kind(kind)))

    def put(self, kind: str, id: str, doc: Dict[str, Any]) -> Deferred[None]:
        self._kind(kind)[id] = copy.deepcopy(doc)
        self._tell(kind, id, doc)
        return succeed(None)

    def delete(self, kind: str, id: str) -> Deferred[bool]:
        existed = self._kind(kind).pop(id, None) is not None
        if existed:
            self._tell(kind, id, None)
        return succeed(existed)

    # analytics -----------------------------------------------------------

    def add_counts(self, node: str, minute: Optional[int], counts: Dict[str, int]) -> Deferred[None]:
        totals = self._totals.setdefault(node, {})
        buckets = self._minutes.setdefault(node, {})
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value
        if minute is not None:
            bucket = buckets.setdefault(minute, {})
            for name, value in counts.items():
                bucket[name] = bucket.get(name, 0) + value
        oldest = int(self.reactor.seconds() // 60) - self.retention_minutes
        for old in [m for m in buckets if m < oldest]:
            del buckets[old]
        return succeed(None)

    def totals(self) -> Deferred[Dict[str, Dict[str, int]]]:
        return succeed(copy.deepcopy(self._totals))

    def minutes(self, first: int, last: int) -> Deferred[Dict[str, Dict[int, Dict[str, int]]]]:
        result: Dict[str, Dict[int, Dict[str, int]]] = {}
        for node, buckets in self._minutes.items():
            chosen = {m: dict(c) for m, c in buckets.items() if first <= m <= last}
            if chosen:
                result[node] = chosen
        return succeed(result)

    def add_events(self, events: List[Dict[str, Any]]) -> Deferred[None]:
        self._events.extend(copy.deepcopy(events))
        del self._events[: -self.max_events]
        return succeed(None)

    def recent_events(self, limit: int) -> Deferred[List[Dict[str, Any]]]:
        return succeed(copy.deepcopy(self._events[::-1][:limit]))

    # health --------------------------------------------------------------

    def put_health(self, node: str, origin: str, state: Dict[str, Any]) -> Deferred[None]:
        self._health.setdefault(node, {})[origin] = copy.deepcopy(state)
        return succeed(None)

    def health(self) -> Deferred[Dict[str, Dict[str, Dict[str, Any]]]]:
        return succeed(copy.deepcopy(self._health))

    # rates ---------------------------------------------------------------

    def hit(self, key: str, window: int, amount: int) -> Deferred[int]:
        number = int(self.reactor.seconds() // window)
        windows = self._rates.setdefault(f"{window}:{key}", {})
        for old in [n for n in windows if n < number]:
            del windows[old]
        windows[number] = windows.get(number, 0) + amount
        if len(self._rates) > self._sweep_at:
            # Forget keys whose window is over (clients that went quiet).
            now = self.reactor.seconds()
            for name in list(self._rates):
                span = int(name.split(":", 1)[0])
                if all(n < int(now // span) for n in self._rates[name]):
                    del self._rates[name]
            self._sweep_at = max(4096, 2 * len(self._rates))
        return succeed(windows[number])
