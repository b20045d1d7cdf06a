"""
The TCP relay on real loopback sockets: bytes, backpressure, half-close,
failover, balancing, port ranges, timeouts, reload and drain.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from spectrum import status as S
from spectrum.model import Config, Origin, Timeouts
from spectrum.proxy import splice

from conftest import free_port, free_port_range
from relaykit import (
    OriginFactory,
    Proxy,
    black_hole,
    connect_client,
    listen_origin,
    make_app,
    sha,
    sleep,
)

MB = 1024 * 1024
#: The most the proxy may hold for one connection while a reader is paused:
#: two transport buffers' worth of Twisted's 64 KiB high-water mark, plus one
#: read, both ways.
BUFFER_BOUND = 256 * 1024


@pytest.fixture(autouse=True, params=["twisted", "splice"])
def relay_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    Every test here runs twice: on the normal path (Twisted transports copy
    the bytes through Python) and on the zero-copy path (os.splice).
    """
    if request.param == "splice" and not splice.available():
        pytest.skip("no os.splice here (Linux with Python 3.10 or later; PyPy is 3.9)")
    monkeypatch.setattr(splice, "ENABLED", request.param == "splice")
    return request.param


def origin_at(port: int, name: str = "o", host: str = "127.0.0.1", weight: float = 1.0) -> Origin:
    return Origin(name=name, address=host, port=port, weight=weight)


def edge_protocols(proxy: Proxy) -> list:
    # Each open connection's relay: the leg that holds it now.
    return [c.leg for runtime in proxy.service.all_runtimes() for c in runtime.connections if c.leg is not None]


@pytest_twisted.ensureDeferred
async def test_echo_and_record() -> None:
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("echo", [origin_at(port.getHost().port, "one")]))
    try:
        client = await connect_client(proxy.port())
        client.transport.write(b"hello spectrum")
        await sleep(0.2)
        client.transport.loseWriteConnection()
        received = await client.done
        assert received == b"hello spectrum"
        await sleep(0.1)
        assert proxy.kinds() == ["connect", "disconnect"]
        event = proxy.events[-1][1]
        assert event["Status"] == S.NORMAL
        assert event["ClientBytes"] == 14 and event["OriginBytes"] == 14
        assert event["OriginName"] == "one" and event["ClientIP"] == "127.0.0.1"
        assert event["EdgePort"] == proxy.port()
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_10mb_each_way_with_paused_reader_bounded_buffers() -> None:
    upload = bytes(range(256)) * (10 * MB // 256)
    download = bytes(reversed(range(256))) * (10 * MB // 256)
    origin = OriginFactory(echo=False, greeting=download)
    port = listen_origin(origin)
    proxy = Proxy(make_app("bulk", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        # The client reads nothing for a while: the origin's 10 MB must wait
        # in the origin's own socket, not in the proxy.
        client.transport.pauseProducing()
        await sleep(0.3)
        server = origin.connections[0]
        # And the origin reads nothing while the client uploads.
        server.transport.pauseProducing()
        client.transport.write(upload)
        client.transport.loseWriteConnection()
        peaks = []
        for _ in range(10):
            await sleep(0.1)
            peaks.append(sum(edge.buffered() for edge in edge_protocols(proxy)))
        assert peaks and max(peaks) > 0, "nothing was in flight; the test did not load the proxy"
        assert max(peaks) < BUFFER_BOUND, f"proxy buffered {max(peaks)} bytes"
        assert len(server.received) < 10 * MB
        server.transport.resumeProducing()
        client.transport.resumeProducing()
        # The origin saw the client's EOF and closes once its 10 MB are
        # sent; the client gets everything.
        received = await client.done
        assert sha(received) == sha(download)
        await sleep(0.2)
        assert sha(origin.closed[0]) == sha(upload)
        event = proxy.events[-1][1]
        assert event["ClientBytes"] == len(upload)
        assert event["OriginBytes"] == len(download)
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_half_close_reply_after_eof() -> None:
    reply = b"the answer " * 5000
    origin = OriginFactory(echo=False, reply_after_eof=reply)
    port = listen_origin(origin)
    proxy = Proxy(make_app("half", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        client.transport.write(b"question")
        client.transport.loseWriteConnection()
        received = await client.done
        assert received == reply
        assert origin.eofs == 1
        assert origin.closed == [b"question"]
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refusing_origin_is_skipped() -> None:
    dead = free_port()
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("failover", [origin_at(dead, "dead"), origin_at(port.getHost().port, "live")]))
    try:
        for _ in range(4):
            client = await connect_client(proxy.port())
            client.transport.write(b"ping")
            client.transport.loseWriteConnection()
            assert await client.done == b"ping"
        connects = [event for kind, event in proxy.events if kind == "connect"]
        assert [event["OriginName"] for event in connects] == ["live"] * 4
        assert origin.accepted == 4
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_all_origins_refuse() -> None:
    proxy = Proxy(make_app("down", [origin_at(free_port(), "a"), origin_at(free_port(), "b")]))
    try:
        client = await connect_client(proxy.port())
        started = time.monotonic()
        assert await client.done == b""
        assert time.monotonic() - started < 1.0
        await sleep(0.05)
        kind, event = proxy.events[-1]
        assert kind == "originError"
        assert event["Status"] == S.ORIGIN_REFUSED
        assert "refused" in event["Reason"].lower()
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_connect_timeout_then_next_origin() -> None:
    # An origin that never answers: the connect times out and the next
    # origin is tried.
    origin = OriginFactory()
    port = listen_origin(origin)
    with black_hole() as hole:
        app = make_app(
            "slow",
            [origin_at(hole[1], "hole"), origin_at(port.getHost().port, "live")],
            timeouts=Timeouts(connect=0.5),
        )
        proxy = Proxy(app)
        try:
            started = time.monotonic()
            client = await connect_client(proxy.port())
            client.transport.write(b"x")
            client.transport.loseWriteConnection()
            assert await client.done == b"x"
            elapsed = time.monotonic() - started
            assert 0.4 < elapsed < 2.0, elapsed
        finally:
            await proxy.stop()
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_client_is_not_read_before_its_origin_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An accepted client is registered for reading only once its origin
    accepts (not at accept, to be dropped while the origin is dialled: an
    epoll_ctl each way per connection).
    """
    added = []
    add_reader = reactor.addReader
    monkeypatch.setattr(reactor, "addReader", lambda reader: (added.append(reader), add_reader(reader))[1])
    with black_hole() as hole:
        proxy = Proxy(make_app("held", [origin_at(hole[1], "hole")], timeouts=Timeouts(connect=5)))
        try:
            client = await connect_client(proxy.port())
            while not edge_protocols(proxy):
                await sleep(0.01)
            edge = edge_protocols(proxy)[0]
            await sleep(0.05)
            assert edge.transport not in added
            assert edge.transport not in reactor.getReaders()
            client.transport.loseConnection()
            await client.done
        finally:
            await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_weighted_round_robin_3000_connections() -> None:
    factories = [OriginFactory() for _ in range(3)]
    ports = [listen_origin(f) for f in factories]
    weights = [1, 2, 3]
    origins = [origin_at(p.getHost().port, f"o{i}", weight=w) for i, (p, w) in enumerate(zip(ports, weights))]
    proxy = Proxy(make_app("rr", origins))
    try:
        total = 3000
        for _ in range(total // 100):
            clients = await defer.gatherResults(
                [defer.Deferred.fromCoroutine(connect_client(proxy.port())) for _ in range(100)]
            )
            for c in clients:
                c.transport.loseConnection()
            await defer.gatherResults([c.done for c in clients])
        # The edge may still be dialling the last ones (it accepts a bounded
        # batch per reactor turn, which this process's clients share).
        for _ in range(500):
            if sum(f.accepted for f in factories) == total:
                break
            await sleep(0.01)
        counts = [f.accepted for f in factories]
        assert sum(counts) == total
        for count, weight in zip(counts, weights):
            expected = total * weight / sum(weights)
            assert abs(count - expected) <= 0.02 * expected, counts
    finally:
        await proxy.stop()
        for p in ports:
            await p.stopListening()


@pytest_twisted.ensureDeferred
async def test_hash_keeps_a_client_on_one_origin() -> None:
    factories = [OriginFactory() for _ in range(4)]
    ports = [listen_origin(f) for f in factories]
    origins = [origin_at(p.getHost().port, f"o{i}") for i, p in enumerate(ports)]
    proxy = Proxy(make_app("hash", origins, load_balancing="hash"))
    try:
        seen = collections.defaultdict(set)
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"):
            for _ in range(5):
                client = await connect_client(proxy.port(), bind=address)
                client.transport.loseConnection()
                await client.done
        await sleep(0.1)
        for kind, event in proxy.events:
            if kind == "connect":
                seen[event["ClientIP"]].add(event["OriginName"])
        assert len(seen) == 6
        assert all(len(names) == 1 for names in seen.values()), seen
        assert len({next(iter(names)) for names in seen.values()}) > 1, "every client on one origin"
    finally:
        await proxy.stop()
        for p in ports:
            await p.stopListening()


@pytest_twisted.ensureDeferred
async def test_port_range_maps_offset_by_offset() -> None:
    edge = free_port_range(20)
    first_origin = free_port_range(20)
    factories = {}
    ports = []
    for offset in range(20):
        factory = OriginFactory(echo=False, greeting=str(first_origin + offset).encode())
        factories[offset] = factory
        ports.append(listen_origin(factory, first_origin + offset))
    app = make_app(
        "range",
        [Origin(name="o", address="127.0.0.1")],
        edge_port=edge,
        edge_last=edge + 19,
        origin_first=first_origin,
    )
    proxy = Proxy(app)
    try:
        assert len(proxy.service.listeners) == 20
        for offset in range(20):
            client = await connect_client(edge + offset)
            # Until the origin's greeting came (not a fixed wait: a loaded
            # machine may take longer than one to dial).
            for _ in range(500):
                if client.received:
                    break
                await sleep(0.01)
            client.transport.loseConnection()
            assert await client.done == str(first_origin + offset).encode()
    finally:
        await proxy.stop()
        for p in ports:
            await p.stopListening()


@pytest_twisted.ensureDeferred
async def test_idle_timeout_closes_quiet_connection() -> None:
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("idle", [origin_at(port.getHost().port)], timeouts=Timeouts(connect=2, idle=0.4)))
    try:
        client = await connect_client(proxy.port())
        # Activity keeps it open past the idle period.
        for _ in range(4):
            client.transport.write(b".")
            await sleep(0.15)
        started = time.monotonic()
        assert await client.done == b"...."
        quiet = time.monotonic() - started
        assert 0.25 <= quiet <= 0.8, quiet
        await sleep(0.05)
        assert proxy.events[-1][1]["Status"] == S.IDLE_TIMEOUT
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_idle_connections_share_one_timer() -> None:
    """
    The idle timeout of relayed connections runs on one timer per length,
    not a timer per connection: opening twenty adds at most one delayed call.
    """
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("idle", [origin_at(port.getHost().port)], timeouts=Timeouts(connect=2, idle=30)))
    clients = []
    try:
        first = await connect_client(proxy.port())
        first.transport.write(b".")
        while origin.accepted < 1:
            await sleep(0.01)
        before = len(reactor.getDelayedCalls())
        for _ in range(20):
            clients.append(await connect_client(proxy.port()))
        while origin.accepted < 21:
            await sleep(0.01)
        assert len(reactor.getDelayedCalls()) <= before + 1
    finally:
        for client in [first] + clients:
            client.transport.loseConnection()
            await client.done
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_origin_by_hostname_and_ipv6() -> None:
    origin4 = OriginFactory(echo=False, greeting=b"v4")
    port4 = listen_origin(origin4)
    try:
        origin6 = OriginFactory(echo=False, greeting=b"v6")
        port6 = listen_origin(origin6, host="::1")
    except Exception:
        pytest.skip("no IPv6 loopback on this machine")
    proxy = Proxy(
        make_app("byname", [Origin(name="n", address="localhost", port=port4.getHost().port)]),
        make_app("v6", [Origin(name="six", address="::1", port=port6.getHost().port)], ips=("::1",)),
    )
    try:
        client = await connect_client(proxy.port("byname"))
        await sleep(0.1)
        client.transport.loseConnection()
        assert await client.done == b"v4"
        client = await connect_client(proxy.port("v6"), host="::1")
        await sleep(0.1)
        client.transport.loseConnection()
        assert await client.done == b"v6"
        connect = [e for k, e in proxy.events if k == "connect" and e["Application"] == "v6"][0]
        assert connect["ClientIP"] == "::1" and connect["OriginIP"] == "::1"
    finally:
        await proxy.stop()
        await port4.stopListening()
        await port6.stopListening()


@pytest_twisted.ensureDeferred
async def test_reconcile_add_remove_change_keeps_open_connection() -> None:
    a, b = OriginFactory(greeting=b"A"), OriginFactory(greeting=b"B")
    pa, pb = listen_origin(a), listen_origin(b)
    keep = make_app("keep", [origin_at(pa.getHost().port, "a")])
    gone = make_app("gone", [origin_at(pa.getHost().port, "a")])
    proxy = Proxy(keep, gone)
    try:
        keep_port, gone_port = proxy.port("keep"), proxy.port("gone")
        open_client = await connect_client(gone_port)
        await sleep(0.1)
        # keep's pool changes to origin b; gone is removed; fresh is added.
        keep2 = make_app("keep", [origin_at(pb.getHost().port, "b")], edge_port=keep_port)
        fresh = make_app("fresh", [origin_at(pb.getHost().port, "b")])
        proxy.service.apply(Config(apps=(keep2, fresh)))
        assert proxy.port("keep") == keep_port
        await sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gone_port), timeout=1).close()
        # The connection to the removed app still works.
        open_client.transport.write(b"still here")
        await sleep(0.1)
        assert bytes(open_client.received) == b"Astill here"
        client = await connect_client(keep_port)
        await sleep(0.1)
        client.transport.loseConnection()
        assert await client.done == b"B"
        client = await connect_client(proxy.port("fresh"))
        await sleep(0.1)
        client.transport.loseConnection()
        assert await client.done == b"B"
        open_client.transport.loseConnection()
        await open_client.done
    finally:
        await proxy.stop()
        await pa.stopListening()
        await pb.stopListening()


@pytest_twisted.ensureDeferred
async def test_stop_drains_then_closes_at_deadline() -> None:
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("drain", [origin_at(port.getHost().port)]), drain_timeout=0.5)
    try:
        client = await connect_client(proxy.port())
        await sleep(0.1)
        started = time.monotonic()
        stopping = proxy.stop()
        # Still relaying during the drain.
        client.transport.write(b"during drain")
        await sleep(0.1)
        assert bytes(client.received) == b"during drain"
        await stopping
        assert 0.4 <= time.monotonic() - started < 2.0
        await client.done
        await sleep(0.05)
        assert proxy.events[-1][1]["Status"] == S.SHUTDOWN
    finally:
        await port.stopListening()


def test_apply_rolls_back_when_a_port_is_taken() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        proxy = Proxy(make_app("first", [origin_at(1)]))
        try:
            before = dict(proxy.service.listeners)
            clash = make_app("clash", [origin_at(1)], edge_port=taken.getsockname()[1])
            other = make_app("other", [origin_at(1)], edge_port=free_port())
            from spectrum.service import ListenError

            with pytest.raises(ListenError, match=r"apps\[\d\] \(clash\): cannot listen on 127.0.0.1:\d+"):
                proxy.service.apply(Config(apps=(other, clash)))
            assert proxy.service.listeners == before
            assert set(proxy.service.runtimes) == {"first"}
        finally:
            proxy.service.stopService()
    finally:
        taken.close()


@pytest_twisted.ensureDeferred
async def test_ipv4_and_ipv6_wildcards_share_a_port() -> None:
    from spectrum.config import parse

    port = free_port()
    config = parse(
        {
            "apps": [
                {
                    "name": "dual",
                    "protocol": "tcp",
                    "ips": ["0.0.0.0", "::"],
                    "ports": [{"destination_port": port}],
                    "origin_direct": ["tcp://127.0.0.1:9"],
                }
            ]
        }
    )
    proxy = Proxy(*config.apps)
    try:
        assert sorted(key[1] for key in proxy.service.listeners) == ["0.0.0.0", "::"]
        assert {listener.bound_port() for listener in proxy.service.listeners.values()} == {port}
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_the_path_in_use_moves_a_megabyte_each_way(relay_path: str) -> None:
    data = bytes(range(256)) * (MB // 256)
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("path", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        await sleep(0.05)
        (edge,) = edge_protocols(proxy)
        assert (edge.splice is not None) == (relay_path == "splice")
        assert (type(edge.transport).__name__ == "_SplicingServer") == (relay_path == "splice")
        client.transport.write(data)
        client.transport.loseWriteConnection()
        assert sha(await client.done) == sha(data)
        await sleep(0.05)
        event = proxy.events[-1][1]
        assert event["ClientBytes"] == MB and event["OriginBytes"] == MB
        assert event["Status"] == S.NORMAL
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_zero_copy_falls_back_where_splice_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "ENABLED", True)
    monkeypatch.setattr(splice, "_splice", None)
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("fallback", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        client.transport.write(b"still relayed")
        await sleep(0.05)
        (edge,) = edge_protocols(proxy)
        assert edge.splice is None
        client.transport.loseWriteConnection()
        assert await client.done == b"still relayed"
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_zero_copy_frees_its_pipes(relay_path: str) -> None:
    if relay_path != "splice":
        pytest.skip("pipes exist on the zero-copy path only")
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("pipes", [origin_at(port.getHost().port)]))
    try:
        splice.close_pool()
        before = open_fds()
        for _ in range(5):
            client = await connect_client(proxy.port())
            client.transport.write(b"x" * 100000)
            client.transport.loseWriteConnection()
            assert len(await client.done) == 100000
        await sleep(0.1)
        # Sockets are closed, and pipes (two per direction that carried
        # bytes) closed or kept for the next connections, a bounded few.
        assert open_fds() <= before + 2 * splice.POOL_SIZE
        splice.close_pool()
        assert open_fds() <= before
    finally:
        await proxy.stop()
        await port.stopListening()


class _PingPong(protocol.Protocol):
    """
    Writes a message, waits for its echo, and again, C{rounds} times.
    """

    def __init__(self, rounds: int, message: bytes) -> None:
        self.rounds = rounds
        self.message = message
        self.buffer = b""
        self.done_rounds = 0
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= len(self.message):
            assert self.buffer[: len(self.message)] == self.message
            self.buffer = self.buffer[len(self.message) :]
            self.done_rounds += 1
            if self.done_rounds == self.rounds:
                self.transport.loseConnection()
                return
            self.transport.write(self.message)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.done_rounds)


@pytest_twisted.ensureDeferred
async def test_fifty_connections_ping_pong_concurrently() -> None:
    # Many small request/response exchanges at once, as a load generator
    # does: every exchange completes, none stalls, every byte is counted.
    rounds, message = 100, b"q" * 100
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("pingpong", [origin_at(port.getHost().port)]))
    try:
        clients = [_PingPong(rounds, message) for _ in range(50)]
        for client in clients:
            factory = protocol.ClientFactory.forProtocol(lambda c=client: c)
            reactor.connectTCP("127.0.0.1", proxy.port(), factory)
        finished = defer.gatherResults([c.done for c in clients])
        timeout = reactor.callLater(20, finished.cancel)
        assert await finished == [rounds] * 50
        timeout.cancel()
        # Each close is recorded once both legs are down: wait for them.
        deadline = time.monotonic() + 10
        while proxy.kinds().count("disconnect") < 50 and time.monotonic() < deadline:
            await sleep(0.02)
        closes = [event for kind, event in proxy.events if kind == "disconnect"]
        assert len(closes) == 50
        assert {event["ClientBytes"] for event in closes} == {rounds * len(message)}
        assert {event["OriginBytes"] for event in closes} == {rounds * len(message)}
    finally:
        await proxy.stop()
        await port.stopListening()


def _options(transport: Any) -> tuple:
    handle = transport.getHandle()
    return (
        handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
        handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
    )


@pytest_twisted.ensureDeferred
async def test_both_legs_have_nodelay_and_keepalive() -> None:
    # Set on the listening socket (inherited by each accepted one) and on the
    # dialled origin socket before its connect, or after the connect for an
    # origin by hostname: never missing on either leg.
    origin = OriginFactory(echo=False)
    port = listen_origin(origin)
    origin_port = port.getHost().port
    proxy = Proxy(
        make_app("literal", [origin_at(origin_port, "ip")]),
        make_app("named", [Origin(name="n", address="localhost", port=origin_port)]),
    )
    try:
        for name in ("literal", "named"):
            client = await connect_client(proxy.port(name))
            await sleep(0.1)
            [edge] = edge_protocols(proxy)
            assert edge.origin_leg is not None
            assert _options(edge.transport) == (True, True), name
            assert _options(edge.origin_leg.transport) == (True, True), name
            client.transport.loseConnection()
            await client.done
            await sleep(0.1)
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_origin_connect_timeout_closes_its_socket_and_timer() -> None:
    # The origin never completes the handshake (its accept queue is full):
    # each attempt times out, its socket is closed and its timer gone, the
    # client is closed with the connect-timeout status.
    with black_hole() as hole:
        proxy = Proxy(make_app("slow", [origin_at(hole[1], "hole")], timeouts=Timeouts(connect=0.5)))
        try:
            await sleep(0.1)
            before = len(os.listdir("/proc/self/fd"))
            timers = len(reactor.getDelayedCalls())
            clients = [await connect_client(proxy.port()) for _ in range(5)]
            await sleep(0.2)
            assert len(edge_protocols(proxy)) == 5 and proxy.events == []
            assert len(os.listdir("/proc/self/fd")) >= before + 15
            assert [await c.done for c in clients] == [b""] * 5
            await sleep(0.2)
            assert edge_protocols(proxy) == []
            assert proxy.kinds() == ["originError"] * 5
            assert {e["Status"] for _, e in proxy.events} == {S.ORIGIN_CONNECT_TIMEOUT}
            assert len(os.listdir("/proc/self/fd")) <= before
            assert len(reactor.getDelayedCalls()) <= timers
        finally:
            await proxy.stop()
