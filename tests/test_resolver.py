"""
Origin hostnames through spectrum's resolver, against a real name server
started by the test: a name that is never answered holds up no other app,
a lookup waits no longer than the connect timeout, answers are kept for
their TTL, and TCP and UDP resolve the same way (IPv6-only names too).
"""

from __future__ import annotations

import time
from typing import Any, List

import attr
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web import resource, server

from spectrum import status as S
from spectrum.model import Config, Monitor, Origin, Timeouts
from spectrum.service import SpectrumService

from dnskit import name_server
from relaykit import OriginFactory, connect_client, listen_origin, make_app, sleep
from udpkit import UDPOrigin, bind_client, listen_udp_origin, udp_app


class Service:
    """
    A started service whose origin names are asked of C{server}.
    """

    def __init__(self, server: Any, *apps: Any) -> None:
        from twisted.internet import reactor

        config = Config(apps=apps, resolvers=(("127.0.0.1", server.port),))
        self.service = SpectrumService(config, reactor=reactor)
        self.events: List[Any] = []
        self.service.recorders.add(lambda kind, record: self.events.append((kind, record.as_event(kind))))
        self.service.startService()

    def port(self, name: str) -> int:
        for listener in self.service.listeners.values():
            if any(runtime.app.name == name for runtime in listener.runtimes):
                return int(listener.bound_port())
        raise KeyError(name)

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.service.stopService)


async def _exchange(port: int) -> bytes:
    client = await connect_client(port)
    client.transport.write(b"x")
    client.transport.loseWriteConnection()
    return bytes(await client.done)


@pytest_twisted.ensureDeferred
async def test_a_silent_name_holds_up_no_other_app(tmp_path: Any) -> None:
    """
    Twenty clients of an app whose origin's name is never answered wait at
    most the connect timeout (then 523), and meanwhile another app's
    hostname origin serves at once.
    """
    origin = listen_origin(OriginFactory(greeting=b"F\n"))
    number = origin.getHost().port
    with name_server(tmp_path, {"fast.test": {"A": ["127.0.0.1"]}, "slow.test": "silent"}) as server:
        slow = make_app("slow", [Origin(name="s", address="slow.test", port=number)], timeouts=Timeouts(connect=1.5))
        fast = make_app("fast", [Origin(name="f", address="fast.test", port=number)])
        service = Service(server, slow, fast)
        try:
            started = time.monotonic()
            waiting = [await connect_client(service.port("slow")) for _ in range(20)]
            assert await _exchange(service.port("fast")) == b"F\nx"
            assert time.monotonic() - started < 0.5
            answers = [await client.done for client in waiting]
            took = time.monotonic() - started
            assert answers == [b""] * 20
            assert 1.4 < took < 2.5
            statuses = [e["Status"] for kind, e in service.events if e["Application"] == "slow"]
            assert statuses == [S.ORIGIN_UNREACHABLE] * 20
            # One lookup for the twenty (its retransmissions aside).
            assert 1 <= server.questions("A", "slow.test") <= 2
        finally:
            await service.stop()
            await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_answers_are_kept_for_their_ttl(tmp_path: Any) -> None:
    """
    Clients within the answer's TTL cost no question; the first after it
    asks again.
    """
    origin = listen_origin(OriginFactory(greeting=b"T\n"))
    app = make_app("ttl", [Origin(name="t", address="ttl.test", port=origin.getHost().port)])
    with name_server(tmp_path, {"ttl.test": {"A": ["127.0.0.1"], "ttl": 1}}) as server:
        service = Service(server, app)
        try:
            for _ in range(5):
                assert await _exchange(service.port("ttl")) == b"T\nx"
            assert server.questions("A", "ttl.test") == 1
            await sleep(1.1)
            assert await _exchange(service.port("ttl")) == b"T\nx"
            assert server.questions("A", "ttl.test") == 2
        finally:
            await service.stop()
            await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_name_with_no_address_is_refused_at_once(tmp_path: Any) -> None:
    """
    A name that does not exist fails the connect without waiting (523), and
    the next origin of the pool serves.
    """
    origin = listen_origin(OriginFactory(greeting=b"N\n"))
    number = origin.getHost().port
    origins = [Origin(name="gone", address="gone.test", port=number), Origin(name="ok", address="ok.test", port=number)]
    app = make_app("nx", origins)
    with name_server(tmp_path, {"ok.test": {"A": ["127.0.0.1"]}}) as server:
        service = Service(server, app)
        try:
            started = time.monotonic()
            assert await _exchange(service.port("nx")) == b"N\nx"
            assert time.monotonic() - started < 0.5
        finally:
            await service.stop()
            await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_name_with_only_an_ipv6_address_serves_tcp_and_udp(tmp_path: Any) -> None:
    """
    A name with an AAAA record and no A record: TCP and UDP apps reach
    their origins on it alike.
    """
    tcp_origin = listen_origin(OriginFactory(greeting=b"6\n"), host="::1")
    udp_origin = UDPOrigin(lambda data, addr: b"six:" + data)
    udp_port = listen_udp_origin(udp_origin, host="::1")
    tcp_app = make_app("tcp6", [Origin(name="t", address="six.test", port=tcp_origin.getHost().port)])
    udp = udp_app("udp6", [Origin(name="u", address="six.test", port=udp_port.getHost().port)])
    client, client_port = bind_client()
    with name_server(tmp_path, {"six.test": {"AAAA": ["::1"]}}) as server:
        service = Service(server, tcp_app, udp)
        try:
            assert await _exchange(service.port("tcp6")) == b"6\nx"
            for i in range(3):
                client.send(b"%d" % i, service.port("udp6"))
            assert sorted(await client.wait_for(3)) == [b"six:0", b"six:1", b"six:2"]
        finally:
            await service.stop()
            for port in (client_port, udp_port, tcp_origin):
                await port.stopListening()
    ends = {e["Application"]: e for kind, e in service.events if kind == "disconnect"}
    assert ends["tcp6"]["OriginIP"] == ends["udp6"]["OriginIP"] == "::1"


@pytest_twisted.ensureDeferred
async def test_probes_resolve_names_as_the_relay_does(tmp_path: Any) -> None:
    """
    Health probes of origins given by name go through the same resolver: a
    UDP probe and a TCP probe of an IPv6-only name pass, so the origins
    stay up and serve.
    """
    udp_origin = UDPOrigin(lambda data, addr: b"six:" + data)
    udp_port = listen_udp_origin(udp_origin, host="::1")
    tcp_origin = listen_origin(OriginFactory(greeting=b"6\n"), host="::1")
    web = reactor.listenTCP(0, server.Site(_Host()), interface="::1")
    web_port = web.getHost().port
    udp_monitor = Monitor(type="udp", interval=0.2, timeout=0.5, retries=0, send=b"ping", expect=b"six:ping")
    tcp_monitor = Monitor(type="tcp", interval=0.2, timeout=0.5, retries=0)
    http_monitor = Monitor(type="http", interval=0.2, timeout=0.5, retries=0, expected_body=f"six.test:{web_port}")
    udp = udp_app("udp6", [Origin(name="u", address="six.test", port=udp_port.getHost().port)])
    udp = attr.evolve(udp, pool=attr.evolve(udp.pool, monitor=udp_monitor))
    tcp = make_app("tcp6", [Origin(name="t", address="six.test", port=tcp_origin.getHost().port)])
    tcp = attr.evolve(tcp, pool=attr.evolve(tcp.pool, monitor=tcp_monitor))
    http = make_app("http6", [Origin(name="h", address="six.test", port=web_port)])
    http = attr.evolve(http, pool=attr.evolve(http.pool, monitor=http_monitor))
    with name_server(tmp_path, {"six.test": {"AAAA": ["::1"]}}) as names:
        service = Service(names, udp, tcp, http)
        try:
            await sleep(1.0)
            for name in ("udp6", "tcp6", "http6"):
                health = service.service.runtimes[name].health
                assert health.status()[0]["probes"] >= 2, name
                assert [e.healthy for e in health.history] == [], (name, health.history)
            assert udp_origin.received and udp_origin.received[0][0] == b"ping"
        finally:
            await service.stop()
            await udp_port.stopListening()
            await tcp_origin.stopListening()
            await web.stopListening()


class _Host(resource.Resource):
    """
    Answers with the Host header it was sent.
    """

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return request.getHeader(b"host") or b""


@pytest_twisted.ensureDeferred
async def test_a_reload_that_changes_the_resolvers_asks_the_new_ones(tmp_path: Any) -> None:
    """
    A reload naming other name servers forgets the answers kept: the next
    client's origin is looked up anew, at the new servers.
    """
    first = listen_origin(OriginFactory(greeting=b"1\n"))
    second = listen_origin(OriginFactory(greeting=b"2\n"), host="::1")
    port = first.getHost().port
    second_port = second.getHost().port
    origin = Origin(name="o", address="moved.test", port=port)
    app = make_app("moving", [origin])
    with name_server(tmp_path, {"moved.test": {"A": ["127.0.0.1"]}}) as old:
        with name_server(tmp_path, {"moved.test": {"AAAA": ["::1"]}}) as new:
            service = Service(old, app)
            try:
                assert await _exchange(service.port("moving")) == b"1\nx"
                moved = attr.evolve(app, pool=attr.evolve(app.pool, origins=(attr.evolve(origin, port=second_port),)))
                service.service.apply(Config(apps=(moved,), resolvers=(("127.0.0.1", new.port),)))
                assert await _exchange(service.port("moving")) == b"2\nx"
                assert new.questions("AAAA", "moved.test") == 1
            finally:
                await service.stop()
                await first.stopListening()
                await second.stopListening()
