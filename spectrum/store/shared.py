"""
One store for the worker processes of one machine, when C{store: memory}.

The supervising process holds the L{MemoryStore} and serves it on a Unix
socket; each worker talks to it through L{SharedStore}, an L{IStore} like
any other. The wire format is one JSON object per netstring:

    worker -> supervisor   {"id": 7, "call": "put", "args": [...]}
    supervisor -> worker   {"id": 7, "result": ...} or {"id": 7, "error": "..."}
                           {"changed": [kind, id, doc]}   (any time)

Like Redis, a SharedStore fails calls at once while the supervisor is out of
reach and tells its listeners to resync once it is back.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import NetstringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from spectrum.store.interface import KINDS, IStore, IStoreListener, StoreUnavailable

#: What a worker may call.
CALLS = frozenset(
    (
        "documents",
        "put",
        "delete",
        "add_counts",
        "totals",
        "minutes",
        "add_events",
        "recent_events",
        "put_health",
        "health",
        "hit",
    )
)
MAX_MESSAGE = 64 * 1024 * 1024


@implementer(IStoreListener)
class _StoreConnection(NetstringReceiver):
    """
    The supervisor's end of one worker's connection.
    """

    MAX_LENGTH = MAX_MESSAGE
    log = Logger()

    def connectionMade(self) -> None:
        self.factory.store.listen(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.store.unlisten(self)

    def changed(self, kind: str, id: str, doc: Optional[Dict[str, Any]]) -> None:
        self.sendString(json.dumps({"changed": [kind, id, doc]}).encode())

    def resync(self) -> None:
        pass

    def stringReceived(self, data: bytes) -> None:
        try:
            request = json.loads(data)
            number, call, args = request["id"], request["call"], request["args"]
            if call not in CALLS:
                raise ValueError(f"no call {call!r}")
        except (ValueError, KeyError, TypeError) as e:
            self.log.warn("shared store: bad request from a worker: {error}", error=str(e))
            if self.transport is not None:
                self.transport.loseConnection()
            return
        d = maybeDeferred(getattr(self.factory.store, call), *args)
        d.addCallbacks(self._result, self._error, callbackArgs=(number,), errbackArgs=(number,))

    def _result(self, result: Any, number: int) -> None:
        self.sendString(json.dumps({"id": number, "result": result}).encode())

    def _error(self, failure: Failure, number: int) -> None:
        self.sendString(json.dumps({"id": number, "error": failure.getErrorMessage()}).encode())


class StoreServerFactory(Factory):
    """
    Serves C{store} to worker processes.
    """

    protocol = _StoreConnection
    noisy = False

    def __init__(self, store: Any) -> None:
        self.store = store


class _Client(NetstringReceiver):
    MAX_LENGTH = MAX_MESSAGE

    def connectionMade(self) -> None:
        self.factory.owner._connected(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.owner._lost(self)

    def stringReceived(self, data: bytes) -> None:
        self.factory.owner._received(json.loads(data))


@implementer(IStore)
class SharedStore:
    """
    A worker's handle on the supervisor's store.
    """

    log = Logger()

    def __init__(self, path: str, node: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.path = path
        self.node = node
        self.available = False
        self._protocol: Optional[_Client] = None
        self._pending: Dict[int, Deferred[Any]] = {}
        self._next = 0
        self._listeners: List[IStoreListener] = []
        factory = Factory.forProtocol(_Client)
        factory.noisy = False
        factory.owner = self  # type: ignore[attr-defined]
        self._service = ClientService(
            UNIXClientEndpoint(reactor, path),
            factory,
            retryPolicy=lambda attempt: min(0.1 * 2**attempt, 2.0),
            clock=reactor,
        )

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> Any:
        return self._service.stopService()

    def listen(self, listener: IStoreListener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: IStoreListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _connected(self, protocol: _Client) -> None:
        self._protocol = protocol
        self.available = True
        for listener in list(self._listeners):
            try:
                listener.resync()
            except Exception:
                self.log.failure("store listener {listener!r} failed to resync", listener=listener)

    def _lost(self, protocol: _Client) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.available = False
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(StoreUnavailable("the supervisor's store connection was lost"))

    def _received(self, message: Dict[str, Any]) -> None:
        if "changed" in message:
            kind, id, doc = message["changed"]
            for listener in list(self._listeners):
                try:
                    listener.changed(kind, id, doc)
                except Exception:
                    self.log.failure("store listener {listener!r} failed", listener=listener)
            return
        d = self._pending.pop(message.get("id", -1), None)
        if d is None:
            return
        if "error" in message:
            d.errback(RuntimeError(message["error"]))
        else:
            d.callback(message.get("result"))

    def _call(self, call: str, *args: Any) -> Deferred[Any]:
        if self._protocol is None:
            return fail(StoreUnavailable("the supervisor's store is not reachable"))
        self._next += 1
        d: Deferred[Any] = Deferred()
        self._pending[self._next] = d
        self._protocol.sendString(json.dumps({"id": self._next, "call": call, "args": list(args)}).encode())
        return d

    def documents(self, kind: str) -> Deferred[Any]:
        return self._call("documents", _kind(kind))

    def put(self, kind: str, id: str, doc: Dict[str, Any]) -> Deferred[Any]:
        return self._call("put", _kind(kind), id, doc)

    def delete(self, kind: str, id: str) -> Deferred[Any]:
        return self._call("delete", _kind(kind), id)

    def add_counts(self, node: str, minute: Optional[int], counts: Dict[str, int]) -> Deferred[Any]:
        return self._call("add_counts", node, minute, counts)

    def totals(self) -> Deferred[Any]:
        return self._call("totals")

    def minutes(self, first: int, last: int) -> Deferred[Any]:
        # JSON object keys are strings; minutes are numbers.
        return self._call("minutes", first, last).addCallback(
            lambda r: {node: {int(m): c for m, c in buckets.items()} for node, buckets in r.items()}
        )

    def add_events(self, events: List[Dict[str, Any]]) -> Deferred[Any]:
        return self._call("add_events", events)

    def recent_events(self, limit: int) -> Deferred[Any]:
        return self._call("recent_events", limit)

    def put_health(self, node: str, origin: str, state: Dict[str, Any]) -> Deferred[Any]:
        return self._call("put_health", node, origin, state)

    def health(self) -> Deferred[Any]:
        return self._call("health")

    def hit(self, key: str, window: int, amount: int) -> Deferred[Any]:
        return self._call("hit", key, window, amount)


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"no documents of kind {kind!r}")
    return kind
