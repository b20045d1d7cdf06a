"""
The UDP relay on real loopback sockets: whole datagrams, a session per
client, balancing per session, idle expiry, session caps, PROXY v2 on the
first datagram, the Simple Proxy Protocol both ways, and sessions ending on
reload and stop.
"""

from __future__ import annotations

import collections
import socket
from typing import Any, List

import attr
import pytest_twisted
from twisted.internet import reactor, task

from spectrum import status as S
from spectrum.model import Config, Origin
from spectrum.proxy import proxyproto as pp
from spectrum.proxy.udp import listen_udp
from spectrum.record import Recorders
from spectrum.runtime import AppRuntime

from conftest import free_port, free_port_range
from relaykit import Proxy, sleep
from udpkit import UDPOrigin, bind_client, listen_udp_origin, udp_app


def origin_at(port: int, name: str = "o", host: str = "127.0.0.1") -> Origin:
    return Origin(name=name, address=host, port=port)


def events(proxy: Proxy, kind: str) -> List[dict]:
    return [event for k, event in proxy.events if k == kind]


@pytest_twisted.ensureDeferred
async def test_datagrams_pass_whole_up_to_the_udp_maximum() -> None:
    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    proxy = Proxy(udp_app("whole", [origin_at(oport.getHost().port)]))
    client, cport = bind_client()
    client_port = cport.getHost().port
    sizes = [1, 64, 1400, 8192, 8193, 8900, 32768, 65507]
    try:
        for i, size in enumerate(sizes):
            client.send(bytes([i]) * size, proxy.port())
            await client.wait_for(i + 1)
        assert [len(d) for d in client.received] == sizes
        assert [d == bytes([i]) * len(d) for i, d in enumerate(client.received)] == [True] * len(sizes)
        assert [len(d) for d, _ in origin.received] == sizes
        # One session for the client, one socket to the origin.
        assert len({addr for _, addr in origin.received}) == 1
    finally:
        await proxy.stop()
        await cport.stopListening()
        await oport.stopListening()
    (event,) = events(proxy, "disconnect")
    assert event["ClientProto"] == "udp" and event["ProxyProtocol"] == "off"
    assert event["ClientDatagrams"] == event["OriginDatagrams"] == len(sizes)
    assert event["ClientBytes"] == event["OriginBytes"] == sum(sizes)
    assert event["ClientPort"] == client_port
    assert event["Duration"] >= 0 and event["Status"] == S.NORMAL


@pytest_twisted.ensureDeferred
async def test_200_clients_across_loopback_get_only_their_own_replies() -> None:
    # The origin answers with what it got, tagged with the source it saw:
    # a reply that crossed sessions would carry another client's token.
    origin = UDPOrigin(lambda data, addr: data + b"|" + f"{addr[1]}".encode())
    oport = listen_udp_origin(origin)
    proxy = Proxy(udp_app("many", [origin_at(oport.getHost().port)]))
    clients = []
    try:
        for i in range(200):
            clients.append(bind_client(f"127.0.{i % 5}.{1 + i % 40}"))
        for rounds in range(3):
            for i, (client, _) in enumerate(clients):
                client.send(f"client-{i}-round-{rounds}".encode(), proxy.port())
            for client, _ in clients:
                await client.wait_for(rounds + 1)
        seen_sources = set()
        for i, (client, _) in enumerate(clients):
            tokens = [d.split(b"|")[0] for d in client.received]
            assert tokens == [f"client-{i}-round-{r}".encode() for r in range(3)], i
            sources = {d.split(b"|")[1] for d in client.received}
            assert len(sources) == 1, "one session socket per client"
            seen_sources |= sources
        assert len(seen_sources) == 200
        assert len(proxy.service.runtimes["many"].connections) == 200
        assert len({e["ClientIP"] for e in events(proxy, "connect")}) == 40
        assert len({(e["ClientIP"], e["ClientPort"]) for e in events(proxy, "connect")}) == 200
    finally:
        await proxy.stop()
        for _, port in clients:
            await port.stopListening()
        await oport.stopListening()
    assert len(events(proxy, "disconnect")) == 200


@pytest_twisted.ensureDeferred
async def test_hash_keeps_a_client_address_on_one_origin() -> None:
    origins, ports = [], []
    for name in ("a", "b", "c"):
        origin = UDPOrigin(lambda data, addr, name=name: name.encode())
        ports.append(listen_udp_origin(origin))
        origins.append(origin_at(ports[-1].getHost().port, name))
    proxy = Proxy(udp_app("hash", origins, load_balancing="hash"))
    clients = []
    try:
        for i in range(30):
            # Two sockets (two sessions) from each address.
            for _ in range(2):
                clients.append((f"127.0.1.{i + 1}", *bind_client(f"127.0.1.{i + 1}")))
        for _, client, _ in clients:
            client.send(b"who", proxy.port())
        picked = collections.defaultdict(set)
        for ip, client, _ in clients:
            (answer,) = await client.wait_for(1)
            picked[ip].add(answer)
        assert all(len(names) == 1 for names in picked.values())
        used = collections.Counter(next(iter(names)) for names in picked.values())
        assert len(used) == 3, used
    finally:
        await proxy.stop()
        for _, _, port in clients:
            await port.stopListening()
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_round_robin_spreads_sessions_and_port_ranges_map() -> None:
    base = free_port_range(3)
    obase = free_port_range(3)
    names = []
    ports = []
    for i in range(3):
        ports.append(listen_udp_origin(UDPOrigin(lambda d, a, i=i: f"port{i}".encode()), port=obase + i))
    app = udp_app(
        "range",
        [Origin(name="one", address="127.0.0.1"), Origin(name="two", address="127.0.0.1")],
        edge_port=base,
        edge_last=base + 2,
        origin_first=obase,
    )
    proxy = Proxy(app)
    clients = []
    try:
        for i in range(3):
            client, port = bind_client()
            clients.append(port)
            client.send(b"x", base + i)
            (answer,) = await client.wait_for(1)
            names.append(answer)
        assert names == [b"port0", b"port1", b"port2"]
        assert [e["OriginName"] for e in events(proxy, "connect")] == ["one", "two", "one"]
    finally:
        await proxy.stop()
        for port in clients + ports:
            await port.stopListening()


class _ClockReactor:
    """
    The real reactor's sockets with a Clock's time: sessions on real
    loopback sockets, idle timers driven by the test.
    """

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.callLater = clock.callLater
        self.seconds = clock.seconds
        self.listenUDP = reactor.listenUDP
        self.resolve = reactor.resolve


@pytest_twisted.ensureDeferred
async def test_idle_sessions_expire_on_time_clock_driven() -> None:
    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    clock = task.Clock()
    clock.advance(1000)
    recorded: List[tuple] = []
    recorders = Recorders()
    recorders.add(lambda kind, record: recorded.append((kind, record.as_event(kind))))
    app = udp_app("idle", [origin_at(oport.getHost().port)], idle=30.0)
    runtime = AppRuntime(app, recorders, reactor=_ClockReactor(clock))
    edge, listening = listen_udp(runtime.reactor, "127.0.0.1", 0, runtime)
    port = listening.getHost().port
    quiet, qport = bind_client()
    chatty, cport = bind_client()
    try:
        quiet.send(b"once", port)
        chatty.send(b"0", port)
        await quiet.wait_for(1)
        await chatty.wait_for(1)
        assert len(edge.sessions) == 2
        # The chatty client keeps talking every 10 s; the quiet one never again.
        for step in range(1, 7):
            clock.advance(5)
            if step % 2 == 0:
                chatty.send(str(step).encode(), port)
                await chatty.wait_for(1 + step // 2)
        # 30 s after its only datagram, within one sweep (30/4 s).
        assert clock.seconds() == 1030
        clock.advance(7.5)
        assert [e["ClientPort"] for k, e in recorded if k == "disconnect"] == [qport.getHost().port]
        (gone,) = [e for k, e in recorded if k == "disconnect"]
        # A UDP session has no close: its idle timeout is its normal end.
        assert gone["Status"] == S.NORMAL and gone["Reason"] == "idle timeout" and gone["ClientDatagrams"] == 1
        assert 30 <= gone["Duration"] <= 37.5
        assert len(edge.sessions) == 1 and len(runtime.connections) == 1
        # Not a moment too early: the chatty one lasts until 30 s after its last.
        last = clock.seconds() - 7.5
        clock.advance(last + 29.9 - clock.seconds())
        assert len(edge.sessions) == 1
        clock.advance(8)
        assert len(edge.sessions) == 0 and not runtime.connections
        # A new datagram after expiry starts a new session.
        quiet.send(b"again", port)
        await quiet.wait_for(2)
        assert len(edge.sessions) == 1
    finally:
        await listening.stopListening()
        for p in (qport, cport, oport):
            await p.stopListening()
    assert not runtime.connections


@pytest_twisted.ensureDeferred
async def test_session_caps_refuse_the_next_client_cleanly() -> None:
    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    proxy = Proxy(udp_app("capped", [origin_at(oport.getHost().port)], max_sessions=3, per_ip_sessions=2))
    bound = []
    try:
        a1, a2, a3 = (bind_client("127.0.0.2") for _ in range(3))
        b1, b2 = (bind_client("127.0.0.3") for _ in range(2))
        bound = [a1, a2, a3, b1, b2]
        for client, _ in (a1, a2):
            client.send(b"hi", proxy.port())
            assert await client.wait_for(1) == [b"hi"]
        # A third from 127.0.0.2: over the per-address cap.
        a3[0].send(b"hi", proxy.port())
        a3[0].send(b"hi again", proxy.port())
        assert await a3[0].wait_for(1, timeout=0.3) == []
        # Another address still gets in, up to the app's cap of 3.
        b1[0].send(b"hi", proxy.port())
        assert await b1[0].wait_for(1) == [b"hi"]
        b2[0].send(b"hi", proxy.port())
        assert await b2[0].wait_for(1, timeout=0.3) == []
        # Those admitted carry on.
        a1[0].send(b"still", proxy.port())
        assert await a1[0].wait_for(2) == [b"hi", b"still"]
        # Each refused datagram is a refusal (records are sampled per app
        # and second, well above these few).
        refused = events(proxy, "clientFiltered")
        assert [(e["ClientPort"], e["Status"]) for e in refused] == [
            (a3[1].getHost().port, S.SESSION_LIMIT),
            (a3[1].getHost().port, S.SESSION_LIMIT),
            (b2[1].getHost().port, S.SESSION_LIMIT),
        ]
        assert "127.0.0.2 has 2 sessions open" in refused[0]["Reason"]
        assert "app has 3 sessions open" in refused[2]["Reason"]
        edge = next(iter(proxy.service.listeners.values())).factory
        assert edge.refused == 3
        assert len(origin.received) == 4
    finally:
        await proxy.stop()
        for _, port in bound:
            await port.stopListening()
        await oport.stopListening()


@pytest_twisted.ensureDeferred
async def test_v2_header_on_the_first_datagram_of_a_session() -> None:
    origin = UDPOrigin(lambda data, addr: b"ok")
    oport = listen_udp_origin(origin)
    proxy = Proxy(udp_app("v2", [origin_at(oport.getHost().port)], proxy_protocol="v2"))
    client, cport = bind_client("127.0.0.7")
    try:
        for payload in (b"first", b"second", b"third"):
            client.send(payload, proxy.port())
            await client.wait_for(len(origin.received) + 1)
        first, second, third = (data for data, _ in origin.received)
        info, rest = pp.HeaderDecoder().feed(first)
        assert info.source == ("127.0.0.7", cport.getHost().port)
        assert info.dest == ("127.0.0.1", proxy.port()) and info.transport == "udp"
        assert rest == b"first" and second == b"second" and third == b"third"
    finally:
        await proxy.stop()
        await cport.stopListening()
        await oport.stopListening()
    (event,) = events(proxy, "disconnect")
    assert event["ProxyProtocol"] == "v2" and event["ClientBytes"] == len(b"firstsecondthird")


@pytest_twisted.ensureDeferred
async def test_simple_proxy_protocol_round_trip_and_bad_reply_dropped() -> None:
    def answer(data: bytes, addr: Any) -> bytes:
        (client, proxy_addr, payload) = pp.decode_simple(data)
        header = pp.reverse_simple(data[: pp.SPP_LENGTH])
        if payload == b"spoof":
            # A reply naming another client: must not reach anyone.
            return pp.encode_simple(proxy_addr, ("127.0.0.99", client[1])) + b"spoofed"
        if payload == b"bare":
            return b"no header at all, long enough to look like one......"
        return header + payload[::-1] + f"|{client[0]}:{client[1]}".encode()

    origin = UDPOrigin(answer)
    oport = listen_udp_origin(origin)
    proxy = Proxy(udp_app("spp", [origin_at(oport.getHost().port)], proxy_protocol="simple"))
    c1, p1 = bind_client("127.0.0.7")
    c2, p2 = bind_client("127.0.0.8")
    try:
        c1.send(b"hello", proxy.port())
        c2.send(b"world", proxy.port())
        assert await c1.wait_for(1) == [f"olleh|127.0.0.7:{p1.getHost().port}".encode()]
        assert await c2.wait_for(1) == [f"dlrow|127.0.0.8:{p2.getHost().port}".encode()]
        c1.send(b"spoof", proxy.port())
        c1.send(b"bare", proxy.port())
        c1.send(b"abc", proxy.port())
        received = await c1.wait_for(2)
        assert received[1:] == [f"cba|127.0.0.7:{p1.getHost().port}".encode()]
        assert len(c2.received) == 1
        # Every datagram to the origin carried the header.
        assert all(data[:2] == b"\x56\xec" for data, _ in origin.received)
        header = origin.received[0][0][: pp.SPP_LENGTH]
        assert pp.decode_simple(header)[1] == ("127.0.0.1", proxy.port())
    finally:
        await proxy.stop()
        for port in (p1, p2, oport):
            await port.stopListening()
    ends = {e["ClientIP"]: e for e in events(proxy, "disconnect")}
    assert ends["127.0.0.7"]["OriginDroppedDatagrams"] == 2
    assert ends["127.0.0.7"]["OriginDatagrams"] == 2
    assert ends["127.0.0.8"]["OriginDroppedDatagrams"] == 0
    assert ends["127.0.0.7"]["ProxyProtocol"] == "simple"


@pytest_twisted.ensureDeferred
async def test_refusing_origin_ends_the_session() -> None:
    # Nothing listens there: the kernel answers ICMP port unreachable.
    dead = free_port(kind=socket.SOCK_DGRAM)
    proxy = Proxy(udp_app("dead", [origin_at(dead)]))
    client, cport = bind_client()
    try:
        client.send(b"anyone?", proxy.port())
        await sleep(0.2)
        client.send(b"anyone?", proxy.port())
        await sleep(0.2)
        ends = events(proxy, "disconnect")
        assert ends and ends[0]["Status"] == S.ORIGIN_REFUSED
        assert client.received == []
    finally:
        await proxy.stop()
        await cport.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_refusing_origin_costs_one_session_not_one_per_datagram() -> None:
    """
    3,000 datagrams from one client to an origin that answers ICMP port
    unreachable: one session and its two events; the datagrams after its
    end are refused for a moment, counted without a record each.
    """
    dead = free_port(kind=socket.SOCK_DGRAM)
    proxy = Proxy(udp_app("dead", [origin_at(dead)]))
    client, cport = bind_client()
    try:
        for _burst in range(30):
            for _ in range(100):
                client.send(b"anyone?", proxy.port())
            await sleep(0.01)
        await sleep(0.2)
        kinds = [kind for kind, e in proxy.events if e["Application"] == "dead"]
        assert kinds == ["connect", "disconnect"]
        (end,) = events(proxy, "disconnect")
        assert end["Status"] == S.ORIGIN_REFUSED
        refusals = proxy.service.refusals.totals
        held = refusals.get(("dead", "originError", S.ORIGIN_REFUSED, ""), 0)
        assert end["ClientDatagrams"] + held == 3000 and held > 0
    finally:
        await proxy.stop()
        await cport.stopListening()


@pytest_twisted.ensureDeferred
async def test_sessions_end_cleanly_on_reload_and_stop() -> None:
    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    keep = udp_app("keep", [origin_at(oport.getHost().port)])
    drop = udp_app("drop", [origin_at(oport.getHost().port)])
    proxy = Proxy(keep, drop)
    client, cport = bind_client()
    keep_port, drop_port = proxy.port("keep"), proxy.port("drop")
    try:
        client.send(b"k", keep_port)
        client.send(b"d", drop_port)
        await client.wait_for(2)
        assert len(origin.received) == 2
        # Reload without "drop": its port closes, its session ends now.
        proxy.service.apply(Config(apps=(keep,)))
        (ended,) = events(proxy, "disconnect")
        assert ended["Application"] == "drop" and ended["Status"] == S.NORMAL
        assert ended["ClientDatagrams"] == 1 and ended["OriginDatagrams"] == 1
        assert proxy.service.open_connections() == 1
        # The kept app's session carries on through the reload.
        client.send(b"k2", keep_port)
        assert (await client.wait_for(3))[2] == b"k2"
    finally:
        await proxy.stop()
        await cport.stopListening()
        await oport.stopListening()
    assert [e["Application"] for e in events(proxy, "disconnect")] == ["drop", "keep"]
    assert proxy.service.open_connections() == 0


@pytest_twisted.ensureDeferred
async def test_origin_by_hostname_and_ipv6_edge() -> None:
    origin4 = UDPOrigin(lambda data, addr: b"v4:" + data)
    oport4 = listen_udp_origin(origin4)
    origin6 = UDPOrigin(lambda data, addr: b"v6:" + data)
    oport6 = listen_udp_origin(origin6, host="::1")
    by_name = udp_app("named", [Origin(name="local", address="localhost", port=oport4.getHost().port)])
    v6 = udp_app("six", [origin_at(oport6.getHost().port, host="::1")], ips=("::1",), proxy_protocol="simple")
    proxy = Proxy(by_name, v6)
    c4, p4 = bind_client()
    c6, p6 = bind_client("::1")
    try:
        # Datagrams that come while the name resolves wait in the session.
        for i in range(3):
            c4.send(f"{i}".encode(), proxy.port("named"))
        assert sorted(await c4.wait_for(3)) == [b"v4:0", b"v4:1", b"v4:2"]
        c6.send(b"hello", proxy.port("six"), host="::1")
        (reply,) = await c6.wait_for(1, timeout=0.3) or [None]
        # The origin answered without the header: dropped.
        assert reply is None
        client, edge, payload = pp.decode_simple(origin6.received[0][0])
        assert client == ("::1", p6.getHost().port) and edge == ("::1", proxy.port("six")) and payload == b"hello"
    finally:
        await proxy.stop()
        for port in (p4, p6, oport4, oport6):
            await port.stopListening()
    ends = {e["Application"]: e for e in events(proxy, "disconnect")}
    assert ends["named"]["OriginIP"] == "127.0.0.1" and ends["named"]["ClientDatagrams"] == 3
    assert ends["named"]["OriginDatagrams"] == 3
    assert ends["six"]["ClientIP"] == "::1" and ends["six"]["OriginDroppedDatagrams"] == 1


@pytest_twisted.ensureDeferred
async def test_edge_checks_refuse_a_source_without_a_session() -> None:
    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    proxy = Proxy(udp_app("checked", [origin_at(oport.getHost().port)]))

    def block(app: Any, ip: str) -> Any:
        if ip == "127.0.0.9":
            return S.FIREWALL, "blocked by test rule"
        return None

    proxy.service.admission.gates.append(block)
    bad, bport = bind_client("127.0.0.9")
    good, gport = bind_client("127.0.0.10")
    try:
        for _ in range(5):
            bad.send(b"let me in", proxy.port())
        good.send(b"hello", proxy.port())
        assert await good.wait_for(1) == [b"hello"]
        assert await bad.wait_for(1, timeout=0.2) == []
        assert [data for data, _ in origin.received] == [b"hello"]
        refused = events(proxy, "clientFiltered")
        assert len(refused) == 5
        for event in refused:
            assert event["ClientIP"] == "127.0.0.9" and event["Status"] == S.FIREWALL
            assert event["Reason"] == "blocked by test rule"
    finally:
        await proxy.stop()
        for port in (bport, gport, oport):
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_udp_upstream_v2_declares_the_client_through_two_edges() -> None:
    """
    client 127.0.0.7 -> edge A (proxy_protocol v2) -> edge B (accepts it
    from 127.0.0.1, sends simple on) -> origin: the origin sees 127.0.0.7.
    """

    def answer(data: bytes, addr: Any) -> bytes:
        client, _, payload = pp.decode_simple(data)
        return pp.reverse_simple(data[: pp.SPP_LENGTH]) + payload + f"|{client[0]}:{client[1]}".encode()

    origin = UDPOrigin(answer)
    oport = listen_udp_origin(origin)
    inner = attr.evolve(
        udp_app("inner", [origin_at(oport.getHost().port)], proxy_protocol="simple", per_ip_sessions=1),
        accept_proxy_protocol=("127.0.0.1/32",),
    )
    outer = udp_app("outer", [origin_at(inner.ports[0].edge.first)], proxy_protocol="v2")
    proxy = Proxy(inner, outer)
    client, cport = bind_client("127.0.0.7")
    untrusted, uport = bind_client("127.0.0.3")
    bare, bport = bind_client("127.0.0.1")
    second, sport = bind_client("127.0.0.1")
    second2, s2port = bind_client("127.0.0.1")
    try:
        me = f"127.0.0.7:{cport.getHost().port}".encode()
        client.send(b"one", proxy.port("outer"))
        client.send(b"two", proxy.port("outer"))
        assert await client.wait_for(2) == [b"one|" + me, b"two|" + me]
        # Straight to the inner edge from an untrusted address, header or not.
        untrusted.send(pp.encode_v2(("203.0.113.1", 1), ("127.0.0.1", 2), "udp") + b"x", proxy.port("inner"))
        assert await untrusted.wait_for(1, timeout=0.2) == []
        # A trusted source without a header: refused.
        bare.send(b"no header", proxy.port("inner"))
        assert await bare.wait_for(1, timeout=0.2) == []
        # The per-address cap counts the declared address: a second session
        # declaring 127.0.0.7 is refused, another address is not.
        second.send(pp.encode_v2(("127.0.0.7", 9), ("127.0.0.1", 2), "udp") + b"dup", proxy.port("inner"))
        assert await second.wait_for(1, timeout=0.2) == []
        second2.send(pp.encode_v2(("127.0.0.8", 9), ("127.0.0.1", 2), "udp") + b"ok", proxy.port("inner"))
        assert await second2.wait_for(1) == [b"ok|127.0.0.8:9"]
        assert len(origin.received) == 3
    finally:
        await proxy.stop()
        for port in (cport, uport, bport, sport, s2port, oport):
            await port.stopListening()
    inner_events = [(k, e) for k, e in proxy.events if e["Application"] == "inner"]
    refused = [(e["ClientIP"], e["Status"]) for k, e in inner_events if k == "clientFiltered"]
    assert refused == [("127.0.0.3", S.FIREWALL), ("127.0.0.1", S.BAD_PROXY_HEADER), ("127.0.0.7", S.SESSION_LIMIT)]
    ends = [e for k, e in inner_events if k == "disconnect"]
    assert {(e["ClientIP"], e["UpstreamIP"]) for e in ends} == {("127.0.0.7", "127.0.0.1"), ("127.0.0.8", "127.0.0.1")}
