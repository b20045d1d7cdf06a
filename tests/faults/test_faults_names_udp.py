"""
Faults of origins' reachability, names and UDP crowds against a real
C{twistd spectrum}: an origin that drops the handshake, a name server that
never answers, datagrams piling up behind a slow name, an origin answering
ICMP port unreachable, and a crowd of UDP clients under Debian's stock
descriptor limit. As in C{test_faults.py}, bystander traffic through the
same process is checked byte for byte, and memory, descriptors and service
come back.
"""

from __future__ import annotations

import resource
import socket
import time
from typing import Any, Iterator, List

import pytest

from conftest import free_port
from dnskit import name_server
from faultkit import Bystanders, Origins, Proxy, app, fault_fixture  # noqa: F401
from procs import Client, wait_until
from relaykit import black_hole
from test_faults import MB, back_to_baseline, no_errors_logged, still_serves, warm

pytestmark = pytest.mark.faults


@pytest.fixture
def origins() -> Iterator[Origins]:
    o = Origins("echo")
    yield o
    o.stop()


def _udp_app(name: str, edge: int, origin: str, **extra: Any) -> Any:
    document = {"name": name, "protocol": f"udp/{edge}", "ips": ["127.0.0.1"], "origin_direct": [origin]}
    document.update(extra)
    return document


def _of(p: Proxy, name: str, count: int) -> Any:
    """
    The records of app C{name} that end something (not C{connect}) once
    there are C{count} of them.
    """
    records = [e for e in p.events() if e.get("Application") == name and e.get("Event") != "connect"]
    return records if len(records) >= count else None


def _ports(p: Proxy, **ports: int) -> Proxy:
    p.ports = ports  # type: ignore[attr-defined]
    return p


def test_origin_drops_the_handshake(tmp_path: Any, origins: Origins, fault: Any) -> None:
    (echo,) = origins.ports
    fault.describe(
        "an origin of a pool drops every SYN (accept queue full; connect timeout 0.5 s, passive_down 2)",
        "4 echo threads; 20 clients of the pool, one at a time",
    )
    with black_hole() as (host, silent):
        pool = {
            "name": "pool",
            "protocol": f"tcp/{free_port()}",
            "ips": ["127.0.0.1"],
            "timeouts": {"connect": 0.5},
            "origin_pool": {
                "origins": [
                    {"name": "live", "address": "127.0.0.1", "port": echo},
                    {"name": "silent", "address": host, "port": silent},
                ],
                "monitor": {"type": "tcp", "interval": 60, "consecutive_down": 100, "passive_down": 2},
            },
        }
        proxy = Proxy(tmp_path, [app("echo", free_port(), echo), pool])
        try:
            _ports(proxy, echo=int(proxy_port(proxy, 0)), pool=int(proxy_port(proxy, 1)))
            rss0, fds0 = warm(proxy)
            with Bystanders(proxy.ports["echo"]) as others:
                waits = []
                for _ in range(20):
                    started = time.monotonic()
                    client = Client(proxy.ports["pool"])
                    assert client.exchange(b"ping") == b"ping"
                    client.close()
                    waits.append(time.monotonic() - started)
                fault.check(f"all 20 served by the live origin; {sum(w > 0.4 for w in waits)} waited a connect timeout")
                line = proxy.twistd.wait_for_log("2 connections failed in a row")
                assert "silent" in line
                fault.check("the silent origin marked down after 2 timed-out connects")
                assert max(waits[-10:]) < 0.4, waits
                fault.check(f"the last 10 clients waited at most {max(waits[-10:]) * 1000:.0f} ms")
                fault.check(others.check())
            back_to_baseline(proxy, fault, rss0, fds0)
            still_serves(proxy, fault)
            no_errors_logged(proxy, fault)
        finally:
            proxy.kill()


def proxy_port(p: Proxy, index: int) -> int:
    import json

    with open(p.config) as f:
        return int(json.load(f)["apps"][index]["protocol"].split("/")[1])


def test_name_server_never_answers(tmp_path: Any, origins: Origins, fault: Any) -> None:
    (echo,) = origins.ports
    fault.describe(
        "the name server never answers one app's origin name (connect timeout 1 s)",
        "4 echo threads; 50 clients of that app at once; clients of another app whose origin is a name",
    )
    zone = {"slow.test": "silent", "fast.test": {"A": ["127.0.0.1"], "ttl": 60}}
    with name_server(tmp_path, zone) as server:
        slow = app("slow", free_port(), echo, origin_direct=[f"tcp://slow.test:{echo}"], timeouts={"connect": 1})
        fast = app("fast", free_port(), echo, origin_direct=[f"tcp://fast.test:{echo}"])
        proxy = Proxy(
            tmp_path, [app("echo", free_port(), echo), slow, fast], extra={"resolvers": [f"127.0.0.1:{server.port}"]}
        )
        try:
            _ports(proxy, echo=proxy_port(proxy, 0), slow=proxy_port(proxy, 1), fast=proxy_port(proxy, 2))
            rss0, fds0 = warm(proxy)
            with Bystanders(proxy.ports["echo"]) as others:
                started = time.monotonic()
                waiting: List[socket.socket] = [
                    socket.create_connection(("127.0.0.1", proxy.ports["slow"]), timeout=5) for _ in range(50)
                ]
                took = []
                for _ in range(20):
                    t = time.monotonic()
                    client = Client(proxy.ports["fast"])
                    assert client.exchange(b"ping") == b"ping"
                    client.close()
                    took.append(time.monotonic() - t)
                assert max(took) < 0.5
                fault.check(f"20 clients of the other app served meanwhile, the slowest in {max(took) * 1000:.0f} ms")
                for s in waiting:
                    assert s.recv(1) == b""
                    s.close()
                waited = time.monotonic() - started
                assert waited < 2.5
                fault.check(f"all 50 waiting clients closed after {waited:.1f}s (connect timeout 1 s)")
                # (and the start's readiness probe, which connected and left)
                ends = wait_until(lambda: _of(proxy, "slow", 51))
                assert {e["Status"] for e in ends} == {523}
                fault.check("events say 523 (no origin could be resolved)")
                questions = server.questions("A", "fast.test")
                assert questions == 1
                fault.check("the answered name asked once (kept for its TTL)")
                fault.check(others.check())
            back_to_baseline(proxy, fault, rss0, fds0)
            still_serves(proxy, fault)
            no_errors_logged(proxy, fault)
        finally:
            proxy.kill()


def test_udp_datagrams_pile_up_behind_a_silent_name(tmp_path: Any, origins: Origins, fault: Any) -> None:
    (echo,) = origins.ports
    fault.describe(
        "UDP: the origin's name is never answered while 40 clients send 64 datagrams of 65,000 bytes each",
        "4 echo threads",
    )
    with name_server(tmp_path, {"slow.test": "silent"}) as server:
        udp_edge = free_port(kind=socket.SOCK_DGRAM)
        proxy = Proxy(
            tmp_path,
            [app("echo", free_port(), echo), _udp_app("slow", udp_edge, "udp://slow.test:9", timeouts={"connect": 3})],
            extra={"resolvers": [f"127.0.0.1:{server.port}"]},
        )
        clients: List[socket.socket] = []
        try:
            _ports(proxy, echo=proxy_port(proxy, 0))
            rss0, fds0 = warm(proxy)
            with Bystanders(proxy.ports["echo"]) as others:
                payload = b"x" * 65000
                for _ in range(40):
                    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    client.bind(("127.0.0.1", 0))
                    clients.append(client)
                    for _ in range(64):
                        client.sendto(payload, ("127.0.0.1", udp_edge))
                    time.sleep(0.05)
                time.sleep(0.3)
                grown = proxy.rss() - rss0
                fault.figures.update(rss_growth_mb=round(grown / MB, 1))
                assert grown < 24 * MB
                fault.check(f"RSS grew {grown / MB:.1f} MiB while 40 x 4 MiB waited (64 KiB kept per session)")
                # (a client's burst may overflow the edge's socket buffer on a busy machine)
                time.sleep(3)
                ends = wait_until(lambda: _of(proxy, "slow", 35), 10)
                assert {e["Status"] for e in ends} == {523}
                dropped = sum(e["DroppedDatagrams"] for e in ends)
                fault.check(
                    f"{len(ends)} sessions ended at the connect timeout (523), {dropped} datagrams counted as dropped"
                )
                fault.check(others.check())
            back_to_baseline(proxy, fault, rss0, fds0)
            still_serves(proxy, fault)
            no_errors_logged(proxy, fault)
        finally:
            for client in clients:
                client.close()
            proxy.kill()


def test_udp_origin_answers_port_unreachable(tmp_path: Any, origins: Origins, fault: Any) -> None:
    (echo,) = origins.ports
    fault.describe("UDP: the origin answers ICMP port unreachable to 3,000 datagrams of one client", "4 echo threads")
    udp_edge, dead = free_port(kind=socket.SOCK_DGRAM), free_port(kind=socket.SOCK_DGRAM)
    proxy = Proxy(tmp_path, [app("echo", free_port(), echo), _udp_app("dead", udp_edge, f"udp://127.0.0.1:{dead}")])
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _ports(proxy, echo=proxy_port(proxy, 0))
        rss0, fds0 = warm(proxy)
        with Bystanders(proxy.ports["echo"]) as others:
            for _ in range(30):
                for _ in range(100):
                    client.sendto(b"anyone?", ("127.0.0.1", udp_edge))
                time.sleep(0.01)
            time.sleep(0.5)
            records = [e for e in proxy.events() if e.get("Application") == "dead"]
            assert len(records) <= 4, len(records)
            fault.check(f"{len(records)} event records for 3,000 datagrams (one session, then a second's hold)")
            fault.check(others.check())
        back_to_baseline(proxy, fault, rss0, fds0)
        still_serves(proxy, fault)
        no_errors_logged(proxy, fault)
    finally:
        client.close()
        proxy.kill()


def _stock_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_udp_crowd_under_the_stock_descriptor_limit(tmp_path: Any, origins: Origins, fault: Any) -> None:
    (echo,) = origins.ports
    fault.describe(
        "1,500 UDP clients (one datagram each from its own port) under RLIMIT_NOFILE 1024",
        "4 echo threads; 20 TCP connections held open",
    )
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    udp_edge = free_port(kind=socket.SOCK_DGRAM)
    crowd = _udp_app("crowd", udp_edge, f"udp://127.0.0.1:{sink.getsockname()[1]}", timeouts={"idle": 2})
    proxy = Proxy(tmp_path, [app("echo", free_port(), echo), crowd], preexec_fn=_stock_limit)
    clients: List[socket.socket] = []
    try:
        _ports(proxy, echo=proxy_port(proxy, 0))
        line = proxy.twistd.wait_for_log("file descriptors:")
        fault.check("at start: " + line.split("file descriptors: ", 1)[1])
        rss0, fds0 = warm(proxy)
        held = [Client(proxy.ports["echo"]) for _ in range(20)]
        with Bystanders(proxy.ports["echo"]) as others:
            for _ in range(1500):
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                client.sendto(b"hello", ("127.0.0.1", udp_edge))
                clients.append(client)
            time.sleep(1.0)
            fds = proxy.fds()
            assert fds < 1024 - 32, fds
            fault.check(f"the proxy held {fds} descriptors at the peak, below its limit")
            assert [c.exchange(b"held") for c in held] == [b"held"] * 20
            fault.check("20 TCP connections opened before still echo")
            fault.check(others.check())
        for c in held:
            c.close()
        back_to_baseline(proxy, fault, rss0, fds0)
        still_serves(proxy, fault)
        no_errors_logged(proxy, fault)
    finally:
        for client in clients:
            client.close()
        sink.close()
        proxy.kill()
