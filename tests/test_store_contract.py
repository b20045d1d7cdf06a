"""
The store contract: one suite, run against the embedded memory store, the
workers' shared view of it over a Unix socket, and a real redis-server on
loopback.

Each test gets C{make}, which opens another handle on the same shared state
(another node, for Redis; the same object, for memory).
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable, List

import pytest
import pytest_twisted
from twisted.internet import reactor

from spectrum.store.interface import APPS, RULES, IStore, StoreUnavailable
from spectrum.store.memory import MAX_EVENTS, MemoryStore
from spectrum.store.shared import SharedStore, StoreServerFactory

from rediskit import Recorder, RedisServer, until_available
from relaykit import sleep


@pytest.fixture(scope="module")
def redis_server() -> Any:
    server = RedisServer().start()
    yield server
    server.kill()


@pytest_twisted.async_yield_fixture(params=["memory", "shared", "redis"])
async def make(request: Any) -> AsyncIterator[Callable[[str], Any]]:
    stores: List[Any] = []
    served = None
    if request.param == "memory":
        shared = MemoryStore(node="a", reactor=reactor)

        def factory(node: str) -> Any:
            return shared

    elif request.param == "shared":
        # The workers' view of the supervisor's memory store.
        path = str(request.getfixturevalue("tmp_path") / "store.sock")
        served = reactor.listenUNIX(path, StoreServerFactory(MemoryStore(node="supervisor", reactor=reactor)))

        def factory(node: str) -> Any:
            store = SharedStore(path, node=node, reactor=reactor)
            stores.append(store)
            return store

    else:
        from spectrum.store.redis import RedisStore

        url = request.getfixturevalue("redis_server").url()

        def factory(node: str) -> Any:
            store = RedisStore(url, node=node, reactor=reactor)
            stores.append(store)
            return store

    opened: List[Any] = []

    async def open_(node: str = "a") -> Any:
        store = factory(node)
        store.start()
        await until_available(store)
        opened.append(store)
        return store

    yield open_
    for store in stores:
        await store.stop()
    if served is not None:
        await served.stopListening()


@pytest_twisted.ensureDeferred
async def test_provides_interface(make: Any) -> None:
    store = await make("a")
    assert IStore.providedBy(store)


@pytest_twisted.ensureDeferred
async def test_documents_put_read_delete(make: Any) -> None:
    a = await make("a")
    rule = {"mode": "block", "configuration": {"target": "ip", "value": "192.0.2.1"}, "notes": "n"}
    await a.put(RULES, "r1", rule)
    await a.put(APPS, "app1", {"name": "game"})
    b = await make("b")
    assert await b.documents(RULES) == {"r1": rule}
    assert await b.documents(APPS) == {"app1": {"name": "game"}}
    assert await b.delete(RULES, "r1") is True
    assert await b.delete(RULES, "r1") is False
    assert await a.documents(RULES) == {}


@pytest_twisted.ensureDeferred
async def test_changes_reach_every_listener(make: Any) -> None:
    a = await make("a")
    b = await make("b")
    seen = Recorder()
    b.listen(seen)
    doc = {"mode": "block", "configuration": {"target": "ip", "value": "198.51.100.7"}}
    started = time.monotonic()
    await a.put(RULES, "r2", doc)
    await seen.wait_for(1)
    await a.delete(RULES, "r2")
    await seen.wait_for(2)
    assert time.monotonic() - started < 1.0
    assert seen.changes == [(RULES, "r2", doc), (RULES, "r2", None)]
    b.unlisten(seen)
    await a.put(RULES, "r3", doc)
    await sleep(0.1)
    assert len(seen.changes) == 2


@pytest_twisted.ensureDeferred
async def test_unknown_kind_is_an_error(make: Any) -> None:
    a = await make("a")
    with pytest.raises(ValueError):
        a.put("widgets", "x", {})


@pytest_twisted.ensureDeferred
async def test_counts_per_node_and_minute(make: Any) -> None:
    a = await make("a")
    b = await make("b")
    minute = int(time.time() // 60)
    await a.add_counts("a", minute - 1, {"game/connect": 2, "game/bytes": 100})
    await a.add_counts("a", minute, {"game/connect": 1})
    await b.add_counts("b", minute, {"game/connect": 5, "game/bytes": 7})
    totals = await b.totals()
    assert totals["a"] == {"game/connect": 3, "game/bytes": 100}
    assert totals["b"] == {"game/connect": 5, "game/bytes": 7}
    buckets = await a.minutes(minute - 1, minute)
    assert buckets["a"] == {minute - 1: {"game/connect": 2, "game/bytes": 100}, minute: {"game/connect": 1}}
    assert buckets["b"] == {minute: {"game/connect": 5, "game/bytes": 7}}
    assert await a.minutes(minute + 1, minute + 5) == {}
    # Totals only (a correction with no minute to file it under).
    await b.add_counts("b", None, {"game/connect": 10})
    assert (await a.totals())["b"] == {"game/connect": 15, "game/bytes": 7}
    assert (await a.minutes(minute - 1, minute))["b"] == {minute: {"game/connect": 5, "game/bytes": 7}}


@pytest_twisted.ensureDeferred
async def test_recent_events_bounded_newest_first(make: Any) -> None:
    a = await make("a")
    await a.add_events([{"n": i} for i in range(600)])
    await a.add_events([{"n": i} for i in range(600, MAX_EVENTS + 5)])
    b = await make("b")
    assert await b.recent_events(3) == [{"n": MAX_EVENTS + 4}, {"n": MAX_EVENTS + 3}, {"n": MAX_EVENTS + 2}]
    kept = await b.recent_events(MAX_EVENTS * 2)
    assert kept == [{"n": i} for i in range(MAX_EVENTS + 4, 4, -1)]


@pytest_twisted.ensureDeferred
async def test_health_as_each_node_sees_it(make: Any) -> None:
    a = await make("a")
    b = await make("b")
    await a.put_health("a", "pool/one", {"healthy": True})
    await b.put_health("b", "pool/one", {"healthy": False, "failure_reason": "refused"})
    await b.put_health("b", "pool/one", {"healthy": True})
    view = await a.health()
    assert view["a"] == {"pool/one": {"healthy": True}}
    assert view["b"] == {"pool/one": {"healthy": True}}


@pytest_twisted.ensureDeferred
async def test_rate_hits_are_cluster_wide(make: Any) -> None:
    a = await make("a")
    b = await make("b")
    # A long window, so the test does not straddle two.
    assert await a.hit("game/192.0.2.1", 3600, 3) == 3
    assert await b.hit("game/192.0.2.1", 3600, 2) == 5
    assert await b.hit("game/192.0.2.2", 3600, 1) == 1
    assert await a.hit("game/192.0.2.1", 7200, 1) == 1


def test_store_unavailable_is_an_exception() -> None:
    assert issubclass(StoreUnavailable, Exception)
