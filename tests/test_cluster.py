"""
Several spectrum nodes sharing one real redis-server: an access rule POSTed
to one node's admin API refuses clients on the other within a second; the
analytics API of either node reports the sum of both nodes' traffic; and
when Redis is killed while traffic flows, no connection fails, rules stay
in force, and the figures catch up once Redis is back.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from conftest import free_port
from nodekit import EchoOrigin, Node, app_config, echo_once, wait_port
from rediskit import RedisServer

TOKEN = "cluster-test-token-0123456789"


@pytest.fixture
def origin():
    server = EchoOrigin()
    yield server
    server.close()


@pytest.fixture
def redis():
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def pair(tmp_path: Path, redis: RedisServer, origin: EchoOrigin) -> Iterator[Tuple[ClusterNode, ClusterNode]]:
    """
    Nodes A and B on one Redis, both in step; each stops cleanly at the end.
    """
    store = redis.url("cluster")
    a = ClusterNode(tmp_path, "a", store, origin).start()
    b = ClusterNode(tmp_path, "b", store, origin).start()
    try:
        a.ready()
        b.ready()
        yield a, b
    finally:
        statuses = [a.stop(), b.stop()]
    assert all(s in (0, -signal.SIGTERM) for s in statuses), a.process.log() + b.process.log()


class ClusterNode:
    def __init__(self, tmp: Path, name: str, store: str, origin: EchoOrigin) -> None:
        self.edge = free_port()
        self.admin = free_port()
        config = {
            "node": name,
            "store": store,
            "admin": {
                "listen": f"tcp:{self.admin}:interface=127.0.0.1",
                "tokens": [{"name": "ops", "token": TOKEN, "permissions": "edit"}],
            },
            "apps": [app_config("echo", self.edge, origin.port)],
        }
        self.process = Node(tmp, name, config)

    def start(self) -> ClusterNode:
        self.process.start()
        return self

    def ready(self) -> None:
        wait_port(self.edge)
        wait_port(self.admin)
        self.process.wait_log(r"store: \S+ in step")

    def api(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/client/v4{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.load(response)
        assert answer["success"], answer
        return answer["result"]

    def summary(self) -> Dict[str, int]:
        result = self.api("GET", "/zones/local/spectrum/analytics/events/summary?metrics=count,bytesIngress")
        return result["totals"]

    def stop(self) -> int:
        return self.process.stop()


def settled(node: ClusterNode) -> Dict[str, int]:
    """
    The node's analytics once they stopped moving (pushes and refreshes
    are once a second).
    """
    last = node.summary()
    while True:
        time.sleep(2.2)
        now = node.summary()
        if now == last:
            return now
        last = now


def admitted(port: int) -> bool:
    """
    Whether the edge relays: echoed bytes come back (a refused client sees
    the connection closed with nothing).
    """
    try:
        return echo_once(port, b"knock") == b"knock"
    except OSError:  # reset, or closed before the half-close
        return False


def wait_until(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_rule_on_a_refuses_on_b_and_analytics_are_summed(pair: Tuple[ClusterNode, ClusterNode]) -> None:
    a, b = pair
    assert admitted(b.edge)

    rule = a.api(
        "POST",
        "/user/firewall/access_rules/rules",
        {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.1"}, "notes": "from a"},
    )
    took = wait_until(lambda: not admitted(b.edge), 1.0, "a block rule POSTed to A refusing clients on B")
    assert not admitted(a.edge)
    # B's API knows the rule as one made through the API: it lists it
    # and can delete it, and A lets clients in again.
    listed = b.api("GET", "/user/firewall/access_rules/rules")
    assert [r["id"] for r in listed] == [rule["id"]]
    assert listed[0]["notes"] == "from a"
    b.api("DELETE", f"/user/firewall/access_rules/rules/{rule['id']}")
    wait_until(lambda: admitted(a.edge), 1.0, "a rule deleted on B no longer refusing on A")
    print(f"rule propagation A -> B: {took * 1000:.0f} ms")

    # Traffic on both nodes; either API reports the sum.
    before = settled(a)["count"]
    for _ in range(7):
        assert echo_once(a.edge, b"x" * 10) == b"x" * 10
    for _ in range(5):
        assert echo_once(b.edge, b"y" * 100) == b"y" * 100
    # Each connection is two events (connect and disconnect).
    expected = before + 2 * 12
    wait_until(lambda: a.summary()["count"] >= expected, 5.0, "A's analytics counting B's traffic")
    wait_until(lambda: b.summary()["count"] >= expected, 5.0, "B's analytics counting A's traffic")
    assert a.summary() == b.summary()
    assert a.summary()["count"] == expected

    # Each node's own figures are there too (each node publishes its
    # own on its own schedule: wait for B's to reach A).
    seen: Dict[str, Any] = {}

    def own_figures() -> bool:
        seen.update(a.api("GET", "/zones/local/spectrum/cluster"))
        nodes = seen["nodes"]
        return nodes["a"]["echo"]["bytesIngress"] >= 70 and nodes["b"]["echo"]["bytesIngress"] >= 500

    wait_until(own_figures, 5.0, "each node's own figures on A")
    assert seen["node"] == "a" and seen["store"]["available"]
    assert set(seen["health"]) == {"a", "b"}


def test_redis_killed_while_traffic_flows(tmp_path: Path, redis: RedisServer, origin: EchoOrigin) -> None:
    store = redis.url("outage")
    a = ClusterNode(tmp_path, "a", store, origin).start()
    b = ClusterNode(tmp_path, "b", store, origin).start()
    results: List[bool] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            results.append(echo_once(a.edge, b"flow") == b"flow")
            results.append(echo_once(b.edge, b"flow") == b"flow")

    try:
        a.ready()
        b.ready()
        # A rule that blocks a range nobody here uses, and one for a client
        # we can be: 127.0.0.2.
        rule = a.api(
            "POST",
            "/user/firewall/access_rules/rules",
            {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.2"}},
        )
        wait_until(lambda: len(b.api("GET", "/user/firewall/access_rules/rules")) == 1, 2.0, "the rule on B")
        before = settled(a)["count"]
        flow = threading.Thread(target=traffic)
        flow.start()
        time.sleep(0.5)
        redis.kill()
        a.process.wait_log(r"store redis://.*: connection lost")
        b.process.wait_log(r"store redis://.*: connection lost")
        time.sleep(2.0)  # traffic during the outage
        # Rules stay in force on both nodes.
        for node in (a, b):
            with pytest.raises(ConnectionError):
                blocked_client(node.edge)
        served_during = len(results)
        # The API still changes the node it is asked; the change reaches the
        # others once Redis is back.
        during = a.api(
            "POST",
            "/user/firewall/access_rules/rules",
            {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.3"}, "notes": "during the outage"},
        )
        redis.start()  # empty: it kept nothing
        a.process.wait_log(r"reachable again")
        b.process.wait_log(r"reachable again")
        a.process.wait_log(r"store: \S+ in step", count=2)
        b.process.wait_log(r"store: \S+ in step", count=2)
        time.sleep(0.5)
        stop.set()
        flow.join()
        assert results and all(results), f"{results.count(False)} of {len(results)} connections failed"
        assert served_during > 20
        # Figures: every connection, before, during and after the outage
        # (two events each), and the two refusals.
        expected = before + 2 * len(results) + 2
        wait_until(lambda: a.summary()["count"] >= expected, 5.0, "figures after Redis returned")
        assert a.summary()["count"] == expected
        wait_until(lambda: b.summary() == a.summary(), 3.0, "B's figures agreeing with A's")
        # Both rules are in the (restarted, empty) Redis: seeded back, and B
        # has the one made during the outage.
        stored = redis.command("HKEYS", "outage:docs:rules").decode()
        assert rule["id"] in stored and during["id"] in stored
        wait_until(lambda: len(b.api("GET", "/user/firewall/access_rules/rules")) == 2, 2.0, "B's rules")
        with pytest.raises(ConnectionError):
            blocked_client(b.edge, "127.0.0.3")
        # Logged once per outage, not per reconnect attempt.
        assert a.process.log().count("connection lost") == 1
    finally:
        stop.set()
        statuses = [a.stop(), b.stop()]
    assert all(s in (0, -signal.SIGTERM) for s in statuses)


def test_nodes_reconnect_after_redis_stalls_for_8_seconds(tmp_path: Path, origin: EchoOrigin) -> None:
    """
    Issue 16, fault 1: Redis stops answering for 8 s (C{DEBUG SLEEP 8}),
    longer than a heartbeat's reply timeout plus the reconnection's
    C{SELECT} timeout (2 s each). Both nodes come back, rules flow between
    them again, and a later empty restart of Redis is seeded again.
    """
    redis = RedisServer(debug=True).start()
    store = redis.url("stall")
    a = ClusterNode(tmp_path, "a", store, origin).start()
    b = ClusterNode(tmp_path, "b", store, origin).start()
    rules = "/user/firewall/access_rules/rules"
    try:
        a.ready()
        b.ready()
        first = a.api("POST", rules, {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.2"}})
        wait_until(lambda: len(b.api("GET", rules)) == 1, 2.0, "A's rule on B")
        redis.stall(8)
        for node in (a, b):
            node.process.wait_log(r"store redis://.*: connection lost", timeout=5)
        for node in (a, b):
            node.process.wait_log(r"reachable again", timeout=20)
            node.process.wait_log(r"store: \S+ in step", count=2, timeout=5)
        assert a.api("GET", "/zones/local/spectrum/cluster")["store"]["available"]
        # Rules made on one node reach the other again.
        second = b.api("POST", rules, {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.3"}})
        wait_until(lambda: len(a.api("GET", rules)) == 2, 2.0, "B's rule on A after the stall")
        with pytest.raises(ConnectionError):
            blocked_client(a.edge, "127.0.0.3")
        # Redis restarted empty: the nodes notice and seed it again.
        redis.kill()
        redis.start()
        for node in (a, b):
            node.process.wait_log(r"reachable again", count=2, timeout=15)
        wait_until(
            lambda: all(r["id"].encode() in redis.command("HKEYS", "stall:docs:rules") for r in (first, second)),
            5.0,
            "the rules seeded into the empty Redis",
        )
    finally:
        statuses = [a.stop(), b.stop()]
        redis.kill()
    assert all(s in (0, -signal.SIGTERM) for s in statuses)


def blocked_client(port: int, source: str = "127.0.0.2") -> None:
    """
    Connect from C{source} (blocked); raises ConnectionError when refused.
    """
    import socket

    with socket.socket() as s:
        s.settimeout(3)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(b"knock")
            s.shutdown(socket.SHUT_WR)
            data = s.recv(100)
        except OSError as e:
            raise ConnectionError(f"refused: {e}") from None
        if not data:
            raise ConnectionError("closed at once: refused")


def test_per_ip_rate_across_the_cluster(tmp_path: Path, redis: RedisServer, origin: EchoOrigin) -> None:
    """
    C{per_ip_rate_scope: cluster}: an address's new connections count on
    every node together, in one-second windows.
    """
    store = redis.url("rate")
    a = ClusterNode(tmp_path, "a", store, origin)
    b = ClusterNode(tmp_path, "b", store, origin)
    for node in (a, b):
        config = yaml.safe_load(node.process.config_path.read_text())
        config["apps"][0]["limits"] = {"per_ip_rate": 4, "per_ip_rate_scope": "cluster"}
        node.process.config_path.write_text(yaml.safe_dump(config))
        node.start()
    try:
        a.ready()
        b.ready()
        time.sleep(1.0)  # the readiness probes' second is over
        for _attempt in range(5):
            # Start early in a second, so the whole sequence fits in one.
            while time.time() % 1.0 > 0.05:
                time.sleep(0.01)
            second = int(time.time())
            on_a = [admitted(a.edge) for _ in range(3)]
            time.sleep(0.3)  # A's count reaches the store
            on_b = []
            for _ in range(3):
                on_b.append(admitted(b.edge))
                time.sleep(0.15)  # B hears the cluster's count
            if int(time.time()) == second:
                break
        else:
            pytest.fail("never fitted the sequence into one second")
        # A admitted its three; B one more (the fourth), then refused: 429s.
        assert on_a == [True, True, True]
        assert on_b == [True, False, False]
        assert "per_ip_rate 4/s exceeded across the cluster" in b.process.log()
    finally:
        statuses = [a.stop(), b.stop()]
    assert all(s in (0, -signal.SIGTERM) for s in statuses)


def test_connections_closing_during_the_drain_are_counted(
    tmp_path: Path, redis: RedisServer, origin: EchoOrigin
) -> None:
    """
    A node stopped with SIGTERM drains its connections; those that close
    then still reach the store before the node exits.
    """
    import socket

    store = redis.url("drain")
    a = ClusterNode(tmp_path, "a", store, origin).start()
    b = ClusterNode(tmp_path, "b", store, origin).start()
    try:
        a.ready()
        b.ready()
        held = socket.create_connection(("127.0.0.1", a.edge), timeout=5)
        held.sendall(b"held")
        assert held.recv(4) == b"held"
        time.sleep(2.5)  # the connect is pushed; the close is to come
        connects_before = b.api("GET", "/zones/local/spectrum/cluster")["nodes"]["a"]["echo"]["events"]
        assert connects_before.get("disconnect", 0) < connects_before["connect"]
        a.process.process.send_signal(signal.SIGTERM)
        a.process.wait_log(r"draining 1 open connections")
        time.sleep(0.5)
        held.sendall(b"bye")
        held.shutdown(socket.SHUT_WR)
        assert held.recv(10) == b"bye"
        held.close()
        a.process.process.wait(15)

        def a_closed_all() -> bool:
            events = b.api("GET", "/zones/local/spectrum/cluster")["nodes"]["a"]["echo"]["events"]
            return events.get("disconnect", 0) == events["connect"]

        wait_until(a_closed_all, 3.0, "A's last close, during its drain, in the store")
    finally:
        statuses = [a.stop(), b.stop()]
    assert all(s in (0, -signal.SIGTERM) for s in statuses)


def test_an_app_deleted_on_a_takes_its_rules_from_b(
    tmp_path: Path, pair: Tuple[ClusterNode, ClusterNode], origin: EchoOrigin
) -> None:
    a, b = pair
    port = free_port()
    made = a.api("POST", "/zones/local/spectrum/apps", app_config("gone", port, origin.port))
    a.api(
        "POST",
        f"/zones/local/spectrum/apps/{made['id']}/firewall/access_rules/rules",
        {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.1"}},
    )

    def b_state() -> Dict[str, Any]:
        path = tmp_path / "b.state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # B holds the rule (its edge cannot take the app: A has the port).
    wait_until(lambda: len(b_state().get("access_rules", [])) == 1, 5.0, "the app's rule reaching B")
    a.api("DELETE", f"/zones/local/spectrum/apps/{made['id']}")
    wait_until(lambda: b_state().get("access_rules") == [], 5.0, "the app's rule leaving B")

    # An app of that name made again starts with no rules, and none
    # comes back from the store.
    again = a.api("POST", "/zones/local/spectrum/apps", app_config("gone", port, origin.port))
    wait_until(lambda: admitted(port), 5.0, "the new app relaying")
    assert a.api("GET", f"/zones/local/spectrum/apps/{again['id']}/firewall/access_rules/rules") == []
    assert b.api("GET", "/user/firewall/access_rules/rules") == []
