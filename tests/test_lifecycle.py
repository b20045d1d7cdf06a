"""
One connection lifecycle and one admission path for every port kind: the
cases where each port kind used to decide (and release) differently.

Real sockets on loopback throughout; each test names the path it covers.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Any, Dict, List

import attr
import pytest_twisted
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from spectrum import status as S
from spectrum.model import AccessRule, Config, Limits
from spectrum.proxy import proxyproto as pp
from spectrum.service import SpectrumService

from conftest import free_port
from edgekit import EdgeProxy, origin_at, wait_until
from relaykit import OriginFactory, listen_origin, make_app, sleep
from tlskit import client_hello, make_certs
from udpkit import UDPOrigin, bind_client, listen_udp_origin, udp_app


def block(value: str, target: str = "ip") -> AccessRule:
    return AccessRule(mode="block", target=target, value=value, id=f"rule-{value}")


def raw_connect(port: int, bind: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((bind, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def finished(proxy: Any) -> List[Dict[str, Any]]:
    return [event for kind, event in proxy.events if kind != "connect"]


# 1. UDP refusals release what admission took ---------------------------------


@pytest_twisted.ensureDeferred
async def test_udp_refusals_after_admission_give_their_place_back() -> None:
    origin = UDPOrigin()
    origin_port = listen_udp_origin(origin)
    app = udp_app("game", [origin_at(origin_port.getHost().port)], idle=0.4, per_ip_sessions=1)
    app = attr.evolve(app, limits=Limits(max_connections=5))
    proxy = EdgeProxy(Config(apps=(app,)))
    port = proxy.port()
    clients = []
    try:
        first, first_port = bind_client()
        clients.append(first_port)
        first.send(b"hello", port)
        assert await first.wait_for(1) == [b"hello"]
        # A second source port of the same address: refused with 432, twenty
        # times over.
        second, second_port = bind_client()
        clients.append(second_port)
        for _ in range(20):
            second.send(b"again", port)
        await wait_until(lambda: proxy.service.listeners and _refused_udp(proxy) >= 20, what="20 refusals")
        assert second.received == []
        # The first session goes quiet and is swept.
        await wait_until(lambda: not _sessions(proxy), timeout=5, what="the sweep")
        # Five new clients from five addresses: max_connections is 5, and
        # every one of them gets in.
        answered = []
        for n in range(2, 7):
            client, client_port = bind_client(f"127.0.0.{n}")
            clients.append(client_port)
            client.send(b"new", port)
            answered.append(client.wait_for(1, timeout=2))
        results = await defer.gatherResults(answered)
        assert results == [[b"new"]] * 5
        statuses = [e["Status"] for e in proxy.of_kind("clientFiltered")]
        assert S.MAX_CONNECTIONS not in statuses
    finally:
        for client_port in clients:
            await client_port.stopListening()
        await proxy.stop()
        await origin_port.stopListening()


def _listener(proxy: Any) -> Any:
    (listener,) = proxy.service.listeners.values()
    return listener


def _sessions(proxy: Any) -> Dict[Any, Any]:
    return _listener(proxy).factory.sessions


def _refused_udp(proxy: Any) -> int:
    return int(_listener(proxy).factory.refused)


@pytest_twisted.ensureDeferred
async def test_udp_no_origin_refusals_give_their_place_back() -> None:
    # Every origin refused (530) for a while, then one comes back: the
    # refusals during the outage hold no place in max_connections.
    origin = UDPOrigin()
    origin_port = listen_udp_origin(origin)
    app = udp_app("game", [origin_at(origin_port.getHost().port)], idle=5)
    app = attr.evolve(app, limits=Limits(max_connections=3))
    proxy = EdgeProxy(Config(apps=(app,)))
    port = proxy.port()
    runtime = _listener(proxy).runtimes[0]
    clients = []
    try:
        (only,) = app.pool.origins
        runtime.balancer.set_up(only.name, False)
        # Ten datagrams from one client during the outage.
        client, client_port = bind_client("127.0.0.2")
        clients.append(client_port)
        for _ in range(10):
            client.send(b"during the outage", port)
        await wait_until(lambda: _refused_udp(proxy) >= 10, what="10 refusals")
        runtime.balancer.set_up(only.name, True)
        answered = []
        for n in range(20, 23):
            client, client_port = bind_client(f"127.0.0.{n}")
            clients.append(client_port)
            client.send(b"after", port)
            answered.append(client.wait_for(1, timeout=2))
        assert await defer.gatherResults(answered) == [[b"after"]] * 3
    finally:
        for client_port in clients:
            await client_port.stopListening()
        await proxy.stop()
        await origin_port.stopListening()


# 2. A declared IPv4-mapped address is the IPv4 address ------------------------


@pytest_twisted.ensureDeferred
async def test_proxy_v1_mapped_ipv6_meets_ipv4_rules_and_limits() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = make_app("behind", [origin_at(listening)])
    app = attr.evolve(app, accept_proxy_protocol=("127.0.0.0/8",), limits=Limits(per_ip_connections=1))
    proxy = EdgeProxy(Config(apps=(app,), access_rules=(block("198.51.100.7"),)))
    port = proxy.port()
    held = []
    try:
        for spelling in ("::ffff:198.51.100.7", "0:0:0:0:0:FFFF:c633:6407", "::ffff:c633:6407"):
            s = raw_connect(port)
            s.sendall(f"PROXY TCP6 {spelling} ::ffff:127.0.0.1 40000 {port}\r\nping".encode())
            s.shutdown(socket.SHUT_WR)
            assert await threads.deferToThread(read_all, s) == b""
            s.close()
        assert origin.accepted == 0
        refused = proxy.of_kind("clientFiltered")
        assert [(e["ClientIP"], e["Status"]) for e in refused] == [("198.51.100.7", S.FIREWALL)] * 3
        # per_ip_connections counts the mapped and the plain spelling as one.
        for spelling in ("203.0.113.5", "::ffff:203.0.113.5"):
            family = "TCP6" if ":" in spelling else "TCP4"
            dest = "::ffff:127.0.0.1" if family == "TCP6" else "127.0.0.1"
            s = raw_connect(port)
            s.sendall(f"PROXY {family} {spelling} {dest} 40000 {port}\r\n".encode())
            held.append(s)
        await wait_until(lambda: len(proxy.of_kind("clientFiltered")) == 4, what="the second refused")
        assert proxy.of_kind("clientFiltered")[-1]["Status"] == S.PER_IP_CONNECTIONS
        assert proxy.of_kind("clientFiltered")[-1]["ClientIP"] == "203.0.113.5"
    finally:
        for s in held:
            s.close()
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_udp_proxy_header_mapped_ipv6_meets_ipv4_rules() -> None:
    origin = UDPOrigin()
    origin_port = listen_udp_origin(origin)
    app = udp_app("game", [origin_at(origin_port.getHost().port)])
    app = attr.evolve(app, accept_proxy_protocol=("127.0.0.0/8",))
    proxy = EdgeProxy(Config(apps=(app,), access_rules=(block("198.51.100.0/24", "ip_range"),)))
    port = proxy.port()
    client, client_port = bind_client()
    try:
        # An IPv6 (AF_INET6, DGRAM) header whose source is IPv4-mapped.
        source = socket.inet_pton(socket.AF_INET6, "::ffff:198.51.100.7")
        dest = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
        header = pp.V2_SIGNATURE + b"\x21\x22" + struct.pack("!H", 36) + source + dest + struct.pack("!HH", 40000, port)
        client.send(header + b"hello", port)
        # The same in a v1 line, from another source port.
        other, other_port = bind_client()
        try:
            line = f"PROXY TCP6 ::ffff:198.51.100.8 ::ffff:127.0.0.1 40000 {port}\r\n".encode()
            other.send(line + b"hello", port)
            await wait_until(lambda: len(proxy.of_kind("clientFiltered")) == 2, what="the refusals")
        finally:
            await other_port.stopListening()
        refused = proxy.of_kind("clientFiltered")
        assert sorted(e["ClientIP"] for e in refused) == ["198.51.100.7", "198.51.100.8"]
        assert [e["Status"] for e in refused] == [S.FIREWALL] * 2
        assert origin.received == []
    finally:
        await client_port.stopListening()
        await proxy.stop()
        await origin_port.stopListening()


# 3. accept_proxy_protocol on every port kind ---------------------------------


@implementer(IHalfCloseableProtocol)
class _TlsAfterHeader(protocol.Protocol):
    """
    Sends a PROXY header in the clear, then speaks TLS on the same
    connection, and collects what it reads.
    """

    def __init__(self, header: bytes, server_name: str) -> None:
        self.header = header
        self.server_name = server_name
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.header)
        self.transport.startTLS(_NoVerify(self.server_name))
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"ping" in self.received:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


class _NoVerify:
    def __init__(self, server_name: str) -> None:
        from OpenSSL import SSL

        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.server_name = server_name.encode()

    def getContext(self) -> Any:
        return self.context

    def clientConnectionForTLS(self, tls_protocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self.context, None)
        connection.set_tlsext_host_name(self.server_name)
        connection.set_connect_state()
        return connection


def _implements_creator() -> None:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from zope.interface import classImplements

    classImplements(_NoVerify, IOpenSSLClientConnectionCreator)


_implements_creator()


async def _tls_after_header(port: int, header: bytes, server_name: str) -> bytes:
    client = _TlsAfterHeader(header, server_name)
    factory = protocol.ClientFactory.forProtocol(lambda: client)
    reactor.connectTCP("127.0.0.1", port, factory)
    return await client.done


def _tls_edge_config(tmp_path: Any, origin_port: int, shared: bool) -> Dict[str, Any]:
    certs = make_certs(str(tmp_path))
    edge_port = free_port()

    def app(name: str, host: str) -> Dict[str, Any]:
        return {
            "name": name,
            "protocol": "tcp",
            "ips": ["127.0.0.1"],
            "ports": [{"destination_port": edge_port}],
            "dns": {"name": host},
            "tls": "flexible",
            "origin_direct": [f"tcp://127.0.0.1:{origin_port}"],
            "accept_proxy_protocol": {"trusted": ["127.0.0.0/8"]},
        }

    apps = [app("a", "a.example")]
    if shared:
        apps.append(app("b", "b.example"))
    return {
        "certificates": [
            {"certificate": f"{certs}/{base}.crt", "private_key": f"{certs}/{base}.key"}
            for base in ("localhost", "b.example")
        ],
        "apps": apps,
    }


@pytest_twisted.ensureDeferred
async def test_accept_proxy_protocol_on_tls_and_sni_ports(tmp_path: Any) -> None:
    from tlskit import Edge

    origin = OriginFactory()
    listening = listen_origin(origin)
    origin_port = listening.getHost().port
    for shared in (False, True):
        directory = tmp_path / str(shared)
        directory.mkdir()
        edge = Edge(str(directory), _tls_edge_config(directory, origin_port, shared))
        port = edge.port()
        try:
            header = f"PROXY TCP4 203.0.113.9 127.0.0.1 40000 {port}\r\n".encode()
            assert await _tls_after_header(port, header, "a.example") == b"ping"
            await wait_until(lambda edge=edge: edge.finished(), what="the end")
            (event,) = edge.finished()
            assert event["ClientIP"] == "203.0.113.9"
            assert event["UpstreamIP"] == "127.0.0.1"
            assert event["Application"] == "a"
        finally:
            await edge.stop()
    await listening.stopListening()


# 4. Reloads that rename an app or add an SNI app ----------------------------


@pytest_twisted.ensureDeferred
async def test_reload_renames_an_app_and_adds_a_rule_at_once() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = make_app("old-name", [origin_at(listening)])
    proxy = EdgeProxy(Config(apps=(app,)))
    port = proxy.port()
    try:
        renamed = attr.evolve(app, name="new-name", id="new-name")
        proxy.service.apply(Config(apps=(renamed,), access_rules=(block("127.0.0.9"),)))
        from edgekit import exchange

        assert await exchange(port, "127.0.0.2") == b"ping"
        assert await exchange(port, "127.0.0.9") == b""
        await sleep(0.05)
        assert [e["Application"] for e in finished(proxy)] == ["new-name", "new-name"]
        assert [e["Status"] for e in finished(proxy)] == [S.NORMAL, S.FIREWALL]
        assert set(proxy.service.runtimes) == {"new-name"}
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_reload_adds_a_second_sni_app_to_a_bound_port(tmp_path: Any) -> None:
    from spectrum.config import parse

    origin = OriginFactory()
    listening = listen_origin(origin)
    data = _tls_edge_config(tmp_path, listening.getHost().port, shared=False)
    for item in data["apps"]:
        del item["accept_proxy_protocol"]
    service = SpectrumService(parse(data), reactor=reactor, drain_timeout=1)
    service.certificate_check_interval = 0
    service.startService()
    try:
        second = dict(data["apps"][0], name="b", dns={"name": "b.example"})
        service.apply(parse(dict(data, apps=data["apps"] + [second])))
        (listener,) = service.listeners.values()
        port = listener.bound_port()
        for name in ("a.example", "b.example"):
            assert await _tls_after_header(port, b"", name) == b"ping"
        assert set(service.runtimes) == {"a", "b"}
    finally:
        await defer.ensureDeferred(_await(service.stopService()))
        await listening.stopListening()


async def _await(d: Any) -> Any:
    return await d


# 5. A reset before the whole PROXY header ------------------------------------


@pytest_twisted.ensureDeferred
async def test_reset_before_a_whole_proxy_header_is_one_clean_refusal() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = attr.evolve(make_app("behind", [origin_at(listening)]), accept_proxy_protocol=("127.0.0.0/8",))
    proxy = EdgeProxy(Config(apps=(app,)), drain_timeout=5)
    port = proxy.port()
    try:
        for ending in (reset, socket.socket.close):
            s = raw_connect(port)
            s.sendall(b"PROXY TCP4 203.0.")
            await sleep(0.05)
            ending(s)
        await wait_until(lambda: len(finished(proxy)) == 2, what="both recorded")
        assert [e["Status"] for e in finished(proxy)] == [S.BAD_PROXY_HEADER] * 2
        assert _listener(proxy).runtimes[0].connections == set()
    finally:
        started = reactor.seconds()
        await proxy.stop()
        assert reactor.seconds() - started < 2
        await listening.stopListening()


# 6. Admission before the TLS handshake ---------------------------------------


def _tls_app_config(tmp_path: Any, origin_port: int, **extra: Any) -> Dict[str, Any]:
    data = _tls_edge_config(tmp_path, origin_port, shared=extra.pop("shared", False))
    for item in data["apps"]:
        del item["accept_proxy_protocol"]
        item.update(extra)
    return data


@pytest_twisted.ensureDeferred
async def test_blocked_address_gets_no_tls_handshake(tmp_path: Any) -> None:
    from tlskit import Edge

    origin = OriginFactory()
    listening = listen_origin(origin)
    for shared in (False, True):
        directory = tmp_path / str(shared)
        directory.mkdir()
        data = _tls_app_config(directory, listening.getHost().port, shared=shared)
        data["access_rules"] = [{"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.9"}}]
        edge = Edge(str(directory), data)
        port = edge.port()
        try:
            s = raw_connect(port, bind="127.0.0.9")
            try:
                s.sendall(client_hello("a.example"))
            except OSError:
                pass
            assert await threads.deferToThread(read_all, s) == b""
            s.close()
            await wait_until(lambda edge=edge: edge.finished(), what="the refusal")
            (event,) = edge.finished()
            assert event["Status"] == S.FIREWALL
        finally:
            await edge.stop()
    await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_handshakes_in_progress_count_against_per_ip_connections(tmp_path: Any) -> None:
    from tlskit import Edge

    origin = OriginFactory()
    listening = listen_origin(origin)
    for shared in (False, True):
        directory = tmp_path / str(shared)
        directory.mkdir()
        data = _tls_app_config(directory, listening.getHost().port, shared=shared)
        for item in data["apps"]:
            item["limits"] = {"per_ip_connections": 2}
        edge = Edge(str(directory), data)
        port = edge.port()
        hello = client_hello("a.example")
        held = []
        try:
            for _ in range(30):
                s = raw_connect(port, bind="127.0.0.5")
                s.sendall(hello[: len(hello) // 2])
                held.append(s)
            # Refused before the app is known on a shared port (app ""),
            # by the app's own limit on a port of its own. Counted each;
            # records are sampled, so the count is what is asserted.
            app = "" if shared else "a"
            analytics = edge.service.analytics

            def refused(app: str = app, analytics: Any = analytics) -> Dict[int, int]:
                return dict(analytics.app_totals(app)["statuses"])

            await wait_until(lambda: sum(refused().values()) >= 28, what="the refusals")
            await sleep(0.1)
            assert refused() == {S.PER_IP_CONNECTIONS: 28}
            assert all(e["Status"] == S.PER_IP_CONNECTIONS for e in edge.finished())
        finally:
            for s in held:
                s.close()
            await edge.stop()
    await listening.stopListening()


# 7. A TLS client that closes without close_notify ----------------------------


@pytest_twisted.ensureDeferred
async def test_tls_close_without_close_notify_is_normal(tmp_path: Any) -> None:
    from tlskit import Edge

    origin = OriginFactory()
    listening = listen_origin(origin)
    edge = Edge(str(tmp_path), _tls_app_config(tmp_path, listening.getHost().port))
    port = edge.port()

    def talk() -> bytes:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        tls = context.wrap_socket(raw, server_hostname="a.example")
        tls.sendall(b"ping")
        answer = tls.recv(4)
        # Close the TCP connection under TLS: no close_notify.
        raw.detach()
        os.close(tls.detach())
        return answer

    try:
        assert await threads.deferToThread(talk) == b"ping"
        await wait_until(lambda edge=edge: edge.finished(), what="the end")
        (event,) = edge.finished()
        assert event["Status"] == S.NORMAL
        assert event["Event"] == "disconnect"
    finally:
        await edge.stop()
        await listening.stopListening()


# 8. An origin reset while the client half-closes ------------------------------


def _answer_then_reset(listening: socket.socket) -> None:
    """
    An origin outside the reactor: answers each connection's first bytes,
    then resets it.
    """
    while True:
        try:
            connection, _ = listening.accept()
        except OSError:
            return
        try:
            connection.sendall(connection.recv(100))
        except OSError:
            pass
        reset(connection)


def test_origin_reset_during_client_half_close_is_logged_cleanly(tmp_path: Any) -> None:
    import threading

    from procs import start_twistd, tcp_app, write_config

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(512)
    threading.Thread(target=_answer_then_reset, args=(listening,), daemon=True).start()
    port = free_port()
    config = write_config(tmp_path / "spectrum.yaml", {"apps": [tcp_app("resets", port, [listening.getsockname()[1]])]})
    proxy = start_twistd(config, tmp_path / "twistd.log", [port])

    def clients(read_first: bool) -> None:
        for _ in range(40):
            s = raw_connect(port)
            s.sendall(b"x" * 100)
            if read_first:
                try:
                    s.recv(100)
                except OSError:
                    pass
            s.shutdown(socket.SHUT_WR)
            read_all(s)
            s.close()

    try:
        workers = [threading.Thread(target=clients, args=(n % 2 == 0,)) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        from procs import wait_until as wait

        wait(lambda: proxy.log().count(" status ") >= 320, timeout=10, what="every end logged")
    finally:
        proxy.stop()
        listening.close()
    log = proxy.log()
    assert "Unhandled Error" not in log and "Traceback" not in log, log[-3000:]
