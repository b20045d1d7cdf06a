"""
The cluster layer without sockets: analytics as flat counters and back,
counter buffering while the store is away, and cluster-wide per_ip_rate,
on a Clock with the memory store.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List

import attr
from twisted.internet.task import Clock

from spectrum import status as S
from spectrum.analytics import Analytics
from spectrum.cluster.figures import build_view, difference, flatten, per_app
from spectrum.cluster.node import MAX_PENDING_MINUTES, Cluster
from spectrum.cluster.rate import ClusterRate
from spectrum.model import Egress, Limits, Origin
from spectrum.record import CLIENT_FILTERED, CONNECT, DISCONNECT, ConnectionRecord
from spectrum.store.memory import MemoryStore

from relaykit import make_app


def record(app: str = "game", ip: str = "192.0.2.1", origin: str = "o1", sent: int = 10, got: int = 20) -> Any:
    r = ConnectionRecord(app, app, ip, 40000, "127.0.0.1", 27015, 0.0)
    r.origin_name = origin
    r.client_bytes = sent
    r.origin_bytes = got
    return r


def traffic(analytics: Analytics, clock: Clock, count: int, app: str = "game", origin: str = "o1") -> None:
    for _ in range(count):
        r = record(app, origin=origin)
        analytics(CONNECT, r)
        clock.advance(0.5)
        r.disconnect_time = 0.5
        analytics(DISCONNECT, r)


def test_flatten_then_build_view_keeps_the_figures() -> None:
    clock = Clock()
    clock.advance(600)
    node_a, node_b = Analytics(clock, 60), Analytics(clock, 60)
    traffic(node_a, clock, 3)
    traffic(node_b, clock, 2, origin="o2")
    open_one = record()
    node_b(CONNECT, open_one)
    refused = record(ip="198.51.100.9")
    refused.origin_name = None
    node_a(CLIENT_FILTERED, refused)
    summed: dict = {}
    for node in (node_a, node_b):
        for name, value in flatten(node).items():
            summed[name] = summed.get(name, 0) + value
    minute = int(clock.seconds() // 60)
    view = build_view(summed, {minute: summed}, 60, clock)
    totals = view.app_totals("game")
    assert totals["events"] == {"connect": 6, "disconnect": 5, CLIENT_FILTERED: 1}
    assert totals["current"] == 1
    assert totals["bytes_ingress"] == 10 * 6  # five closed, plus the refused one's
    assert totals["duration"]["count"] == 5
    assert abs(totals["duration"]["avg"] - 0.5) < 1e-6
    assert set(view.snapshot()["game"]["origins"]) == {"o1", "o2", ""}
    minutes = view.snapshot()["game"]["minutes"]
    assert [m["events"] for m in minutes] == [{"connect": 6, "disconnect": 5, CLIENT_FILTERED: 1}]
    assert per_app(summed)["game"]["connections"] == 1


def test_difference() -> None:
    assert difference({"a": 5, "b": 2}, {"a": 3, "c": 4}) == {"a": 2, "b": 2, "c": -4}
    assert difference({"a": 1}, {"a": 1}) == {}


class Unavailable(MemoryStore):
    """
    A memory store that can be switched off, as Redis goes away.
    """

    up = True

    @property  # type: ignore[override]
    def available(self) -> bool:
        return self.up


def service_for(analytics: Analytics) -> Any:
    return SimpleNamespace(
        analytics=analytics,
        config=SimpleNamespace(apps=(), source=None, egress=Egress()),
        runtimes={},
        recorders=SimpleNamespace(add=lambda r: None),
        admission=SimpleNamespace(gates=[], firewall=None),
        admin=None,
        admin_state=None,
    )


def test_counters_wait_while_the_store_is_away_and_none_are_lost() -> None:
    clock = Clock()
    clock.advance(6000)
    store = Unavailable(node="a", reactor=clock)
    analytics = Analytics(clock, 60)
    cluster = Cluster(store, reactor=clock)
    cluster.service = service_for(analytics)
    cluster.synced = True
    traffic(analytics, clock, 2)
    cluster._tick()
    assert store._totals["a"][flat_name("e:connect")] == 2
    store.up = False
    # An outage longer than the buffer: one batch a minute for 70 minutes.
    for _ in range(MAX_PENDING_MINUTES + 10):
        traffic(analytics, clock, 1)
        clock.advance(59)
        cluster._tick()
    assert len(cluster.pending) == MAX_PENDING_MINUTES
    store.up = True
    cluster._tick()
    assert not cluster.pending
    assert store._totals["a"][flat_name("e:connect")] == 2 + MAX_PENDING_MINUTES + 10
    # The oldest ten minutes were filed under the oldest one kept, which is
    # by now older than the analytics window (60 + 2 minutes): the totals
    # keep it, the store's per-minute buckets only what the window can show.
    newest = int(clock.seconds() // 60)
    assert sorted(store._minutes["a"]) == list(range(newest - MAX_PENDING_MINUTES + 1, newest + 1))


def flat_name(field: str) -> str:
    return "\x1f".join(["s", "game", "o1", field])


def app_with(limits: Limits) -> Any:
    return attr.evolve(make_app("game", [Origin("o", "127.0.0.1", 1)], edge_port=27015), limits=limits)


def status_of(outcome: Any) -> Any:
    """
    The status of a gate's refusal ((status, reason)), or None.
    """
    return None if outcome is None else outcome[0]


def test_cluster_rate_counts_the_other_nodes() -> None:
    clock = Clock()
    clock.advance(1000.05)
    store = MemoryStore(node="shared", reactor=clock)
    a, b = ClusterRate(store, clock), ClusterRate(store, clock)
    app = app_with(Limits(per_ip_rate=5, per_ip_rate_scope="cluster"))
    outcomes: List[Any] = [status_of(a.check(app, "192.0.2.1")) for _ in range(3)]
    assert outcomes == [None, None, None]
    a.sync()
    # B admits its first from the address before it has heard of A's three
    # (the lag of one sync interval); once synced, A's three count.
    assert status_of(b.check(app, "192.0.2.1")) is None
    b.sync()
    outcomes = [status_of(b.check(app, "192.0.2.1")) for _ in range(2)]
    assert outcomes == [None, S.PER_IP_RATE]
    b.sync()
    a.sync()
    assert status_of(a.check(app, "192.0.2.1")) == S.PER_IP_RATE
    # Another address, and the next second, start afresh.
    assert status_of(b.check(app, "192.0.2.2")) is None
    clock.advance(1.0)
    assert status_of(b.check(app, "192.0.2.1")) is None


def test_cluster_rate_leaves_node_scoped_apps_alone() -> None:
    clock = Clock()
    store = MemoryStore(node="shared", reactor=clock)
    rate = ClusterRate(store, clock)
    app = app_with(Limits(per_ip_rate=1))
    assert [status_of(rate.check(app, "192.0.2.1")) for _ in range(3)] == [None, None, None]


def test_view_reads_past_minutes_once_a_minute() -> None:
    clock = Clock()
    clock.advance(60 * 1000 + 1)
    store = MemoryStore(node="a", reactor=clock)
    analytics = Analytics(clock, 60)
    cluster = Cluster(store, reactor=clock)
    cluster.shared = True  # as with Redis, or the workers' shared store
    cluster.service = service_for(analytics)
    cluster.synced = True
    minute = int(clock.seconds() // 60)
    store.add_counts("b", minute - 10, {flat_name("e:connect"): 4})
    store.add_counts("a", minute, {flat_name("e:connect"): 1})
    cluster._tick()

    def minutes() -> dict:
        return {m["minute"] // 60: m["events"]["connect"] for m in cluster.view.snapshot()["game"]["minutes"]}

    assert minutes() == {minute - 10: 4, minute: 1}
    # A node pushes late into a past minute: seen within a minute, while
    # the last minutes are read every second.
    store.add_counts("b", minute - 10, {flat_name("e:connect"): 1})
    store.add_counts("b", minute, {flat_name("e:connect"): 2})
    clock.advance(1)
    cluster._tick()
    assert minutes() == {minute - 10: 4, minute: 3}
    clock.advance(60)
    cluster._tick()
    assert minutes() == {minute - 10: 5, minute: 3}
    assert cluster.view.app_totals("game")["events"]["connect"] == 8


def test_memory_store_keeps_only_the_analytics_window() -> None:
    # The store's default is a day of per-minute buckets; nothing reads
    # past the window, so the cluster bounds it to the window (+2 minutes):
    # an hour of memory, not a day.
    clock = Clock()
    clock.advance(60 * 1000)
    store = MemoryStore(node="a", reactor=clock)
    analytics = Analytics(clock, 5)
    cluster = Cluster(store, reactor=clock)
    cluster.service = service_for(analytics)
    cluster.synced = True
    cluster._tick()
    assert store.retention_minutes == 7
    for _ in range(30):
        clock.advance(60)
        store.add_counts("a", int(clock.seconds() // 60), {flat_name("e:connect"): 1})
    assert len(store._minutes["a"]) == 8


def test_each_node_publishes_its_egress_and_sees_the_others() -> None:
    """
    What C{/client/v4/ips} lists on any node: every node's egress, each
    published through the store beside its origins' health (and kept out
    of the health view).
    """
    clock = Clock()
    clock.advance(6000)
    store = MemoryStore(node="a", reactor=clock)
    clusters = []
    for node, address in (("a", "203.0.113.1"), ("b", "2001:db8::2")):
        cluster = Cluster(store, reactor=clock)
        cluster.node = node
        service = service_for(Analytics(clock, 60))
        service.config = SimpleNamespace(apps=(), source=None, egress=Egress(networks=(address,)))
        cluster.service = service
        cluster.synced = True
        clusters.append(cluster)
    for cluster in clusters + clusters:
        cluster._tick()
    for cluster in clusters:
        assert cluster.egress_view == {"a": ["203.0.113.1"], "b": ["2001:db8::2"]}
        assert cluster.health_view == {"a": {}, "b": {}}
