"""
Health checks on real loopback sockets: failover between origin processes,
passive health through the relay, HTTP(S) through treq against twisted.web,
TLS, SMTP, UDP, Redis PING/PONG against a real redis-server, and twistd
with a monitored pool from a YAML file.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import subprocess
import sys
import time
from typing import Any, List, Optional, Tuple

import attr
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, ssl
from twisted.python.failure import Failure
from twisted.web import resource, server

from spectrum import status as S
from spectrum.balancer import Balancer
from spectrum.health import HealthChecker, describe, probe_http, probe_smtp, probe_tcp, probe_tls, probe_udp
from spectrum.model import Config, Monitor, Origin, Pool, Timeouts
from spectrum.record import ORIGIN_ERROR
from spectrum.resolver import Resolver
from spectrum.runtime import AppRuntime

from conftest import free_port, require_program
from relaykit import OriginFactory, Proxy, black_hole, connect_client, listen_origin, make_app, sleep

ORIGIN_SCRIPT = r"""
import socket, sys, threading

name, port = sys.argv[1].encode(), int(sys.argv[2])

def serve(conn):
    try:
        conn.sendall(name + b"\n")
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(256)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class OriginProcess:
    """
    An origin in its own process: greets with its name, then echoes.
    """

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ORIGIN_SCRIPT, self.name, str(self.port)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout.readline() == b"ready\n"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process.stdout.close()
            self.process = None


def runtime_of(proxy: Proxy, name: str) -> AppRuntime:
    return proxy.service.runtimes[name]


def with_monitor(app: Any, monitor: Monitor, **pool: Any) -> Any:
    return attr.evolve(app, pool=attr.evolve(app.pool, monitor=monitor, **pool))


class Traffic:
    """
    Clients opened one after another through the proxy; each must be greeted
    by an origin and get its bytes echoed.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.served: List[Tuple[float, str]] = []
        self.errors: List[str] = []
        self.running = True
        self.done = defer.ensureDeferred(self._run())

    async def _run(self) -> None:
        while self.running:
            client = await connect_client(self.port)
            client.transport.write(b"ping")
            await sleep(0.02)
            client.transport.loseWriteConnection()
            received = await client.done
            lines = received.split(b"\n", 1)
            if len(lines) == 2 and lines[1] == b"ping":
                self.served.append((time.monotonic(), lines[0].decode()))
            else:
                self.errors.append(repr(received))
            await sleep(0.02)

    def since(self, moment: float) -> List[str]:
        return [name for t, name in self.served if t >= moment]

    async def stop(self) -> None:
        self.running = False
        await self.done


async def wait_for(predicate: Any, limit: float, step: float = 0.02) -> float:
    """
    Poll C{predicate} until it holds; the seconds it took. Fails after
    C{limit} seconds.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not true within {limit}s")
        await sleep(step)
    return time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_failover_between_origin_processes() -> None:
    """
    Two origin processes; one is killed: within interval * consecutive_down
    + timeout (plus a margin) it is down and no new connection goes to it,
    and no client ever sees an error. Started again, it takes traffic after
    consecutive_up passing probes.
    """
    monitor = Monitor(
        type="tcp", interval=0.5, timeout=0.3, retries=1, consecutive_up=2, consecutive_down=2, passive_down=0
    )
    a, b = OriginProcess("A", free_port()), OriginProcess("B", free_port())
    a.start()
    b.start()
    origins = [Origin(name="A", address="127.0.0.1", port=a.port), Origin(name="B", address="127.0.0.1", port=b.port)]
    app = with_monitor(make_app("pair", origins), monitor)
    proxy = Proxy(app)
    health = runtime_of(proxy, "pair").health
    traffic = Traffic(proxy.port())
    try:
        await wait_for(lambda: {"A", "B"} <= set(traffic.since(0)), 3)
        stopped = time.monotonic()
        b.stop()
        bound = monitor.interval * monitor.consecutive_down + monitor.timeout
        took = await wait_for(lambda: not health.is_up("B"), bound + 0.5)
        down = health.history[-1]
        assert (down.origin, down.healthy, down.reason) == ("B", False, "2 probes failed")
        assert "refused" in down.error
        # From the moment it is down, no new connection tries it.
        tried = health.status()[1]["passive_failures"]
        marked = time.monotonic()
        await sleep(1.0)
        assert health.status()[1]["passive_failures"] == tried
        assert set(traffic.since(marked)) == {"A"} and len(traffic.since(marked)) >= 5
        print(f"B down {took:.2f}s after it stopped (bound {bound}s)")

        b.start()
        restarted = time.monotonic()
        took = await wait_for(lambda: health.is_up("B"), monitor.interval * monitor.consecutive_up + 0.5)
        up = health.history[-1]
        assert (up.origin, up.healthy, up.reason) == ("B", True, "2 probes passed")
        await wait_for(lambda: "B" in traffic.since(restarted), 2)
        print(f"B up {took:.2f}s after it started")
        assert stopped < restarted
    finally:
        await traffic.stop()
        await proxy.stop()
        a.stop()
        b.stop()
    assert traffic.errors == []
    assert len(traffic.served) > 20


@pytest_twisted.ensureDeferred
async def test_passive_health_through_the_relay() -> None:
    """
    Real refused connections mark an origin down (before any probe could);
    clients never notice; a passing probe brings it back.
    """
    monitor = Monitor(type="tcp", interval=0.5, timeout=0.3, retries=0, consecutive_down=100, passive_down=3)
    live, flaky = OriginFactory(greeting=b"L\n"), OriginFactory(greeting=b"F\n")
    live_port, flaky_port = listen_origin(live), listen_origin(flaky)
    flaky_number = flaky_port.getHost().port
    origins = [
        Origin(name="live", address="127.0.0.1", port=live_port.getHost().port),
        Origin(name="flaky", address="127.0.0.1", port=flaky_number),
    ]
    proxy = Proxy(with_monitor(make_app("passive", origins), monitor))
    health = runtime_of(proxy, "passive").health
    try:
        await flaky_port.stopListening()
        answers = []
        for _ in range(8):
            client = await connect_client(proxy.port())
            client.transport.write(b"x")
            client.transport.loseWriteConnection()
            answers.append(await client.done)
        assert set(answers) == {b"L\nx"}
        assert not health.is_up("flaky")
        event = health.history[-1]
        assert event.reason == "3 connections failed in a row"
        assert "refused" in event.error
        flaky_port = listen_origin(flaky, port=flaky_number)
        await wait_for(lambda: health.is_up("flaky"), 1.5)
        assert health.history[-1].reason == "probe passed after failed connections"
    finally:
        await proxy.stop()
        await live_port.stopListening()
        await defer.maybeDeferred(flaky_port.stopListening)


@pytest_twisted.ensureDeferred
async def test_passive_health_counts_connect_timeouts() -> None:
    """
    An origin that drops the handshake (its accept queue full) times real
    connections out: those count as failures like refusals, so it is marked
    down and later clients stop waiting the connect timeout for it.
    """
    monitor = Monitor(type="tcp", interval=30, timeout=0.3, retries=0, consecutive_down=100, passive_down=2)
    live = OriginFactory(greeting=b"L\n")
    live_port = listen_origin(live)
    with black_hole() as (host, port):
        origins = [
            Origin(name="live", address="127.0.0.1", port=live_port.getHost().port),
            Origin(name="silent", address=host, port=port),
        ]
        app = make_app("timeouts", origins, timeouts=Timeouts(connect=0.3))
        proxy = Proxy(with_monitor(app, monitor))
        health = runtime_of(proxy, "timeouts").health
        try:
            for _ in range(6):
                client = await connect_client(proxy.port())
                client.transport.write(b"x")
                client.transport.loseWriteConnection()
                assert await client.done == b"L\nx"
            assert not health.is_up("silent")
            event = health.history[-1]
            assert event.reason == "2 connections failed in a row"
            assert "timed out" in event.error.lower() or "timeout" in event.error.lower()
            # Once down, no client waits for it.
            started = time.monotonic()
            for _ in range(4):
                client = await connect_client(proxy.port())
                client.transport.loseWriteConnection()
                assert await client.done == b"L\n"
            assert time.monotonic() - started < 0.3
        finally:
            await proxy.stop()
            await live_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_service_starts_reconciles_and_stops_checkers() -> None:
    """
    The service starts a checker with each pool, keeps an unchanged pool's
    checker and state on reload, and stops it with the pool.
    """
    monitor = Monitor(type="tcp", interval=0.3, timeout=0.2, retries=0, consecutive_down=1)
    live = listen_origin(OriginFactory())
    dead = free_port()
    origins = [
        Origin(name="live", address="127.0.0.1", port=live.getHost().port),
        Origin(name="dead", address="127.0.0.1", port=dead),
    ]
    app = with_monitor(make_app("svc", origins), monitor)
    other = make_app("other", [origins[0]])
    proxy = Proxy(app)
    try:
        runtime = runtime_of(proxy, "svc")
        await wait_for(lambda: not runtime.health.is_up("dead"), 1.5)
        probes = runtime.health.status()[0]["probes"]
        proxy.service.apply(Config(apps=(attr.evolve(app), other)))
        assert runtime_of(proxy, "svc") is runtime and not runtime.health.is_up("dead")
        await sleep(0.7)
        assert runtime.health.status()[0]["probes"] > probes
        proxy.service.apply(Config(apps=(other,)))
        assert not runtime.health.running
        frozen = runtime.health.status()[0]["probes"]
        await sleep(0.5)
        assert runtime.health.status()[0]["probes"] == frozen
    finally:
        await proxy.stop()
        await live.stopListening()


# Probes against real servers


async def probe(kind: Any, port: int, monitor: Monitor, address: str = "127.0.0.1") -> Tuple[bool, str]:
    # A name is resolved first, as the checker does.
    (ip, *_) = await Resolver(reactor).resolve(address, monitor.timeout)
    d = kind(reactor, Origin(name="o", address=address), port, monitor, ip)
    d.addTimeout(monitor.timeout, reactor)
    try:
        return True, await d
    except Exception:
        return False, describe(Failure())


class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        path = request.path
        if path == b"/hang":
            self.hanging.append(request)
            return server.NOT_DONE_YET
        if path == b"/down":
            request.setResponseCode(503)
            return b"maintenance"
        if path == b"/host":
            return b"host=" + (request.getHeader(b"host") or b"")
        return b"Service is OK"

    render_HEAD = render_GET

    def __init__(self) -> None:
        super().__init__()
        self.hanging: List[Any] = []


def make_certificates(tmp_path: Any) -> Tuple[str, str, str]:
    """
    A CA and a server certificate for 127.0.0.1 (IP SAN) signed by it:
    (ca.pem, server.pem, server.key).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spectrum test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("origin.test")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = []
    for name, data in (
        ("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        ("server.pem", cert.public_bytes(serialization.Encoding.PEM)),
        (
            "server.key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    ):
        path = os.path.join(str(tmp_path), name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths[0], paths[1], paths[2]


def server_tls_options(cert: str, key: str) -> Any:
    with open(cert, "rb") as c, open(key, "rb") as k:
        return ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()


@pytest_twisted.ensureDeferred
async def test_http_status_body_and_timeout() -> None:
    page = Page()
    port = reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
    number = port.getHost().port
    http = Monitor(type="http", timeout=1.0)
    try:
        assert await probe(probe_http, number, http) == (True, "HTTP 200")
        assert await probe(probe_http, number, attr.evolve(http, path="/down")) == (
            False,
            "HTTP 503, expected 200",
        )
        assert await probe(probe_http, number, attr.evolve(http, path="/down", expected_codes="2xx,5xx")) == (
            True,
            "HTTP 503",
        )
        assert await probe(probe_http, number, attr.evolve(http, expected_body="service is ok")) == (True, "HTTP 200")
        assert await probe(probe_http, number, attr.evolve(http, expected_body="healthy")) == (
            False,
            "HTTP 200, body lacks 'healthy'",
        )
        assert await probe(probe_http, number, attr.evolve(http, method="HEAD", expected_body="x")) == (
            True,
            "HTTP 200",
        )
        hosted = attr.evolve(http, path="/host", expected_body="host=app.example", header=(("Host", ("app.example",)),))
        assert (await probe(probe_http, number, hosted))[0]
        started = time.monotonic()
        ok, error = await probe(probe_http, number, attr.evolve(http, path="/hang", timeout=0.5))
        took = time.monotonic() - started
        assert not ok and 0.5 <= took < 0.7
        assert len(page.hanging) == 1
        ok, error = await probe(probe_http, free_port(), http)
        assert not ok and "refused" in error.lower()
    finally:
        await sleep(0.05)
        await port.stopListening()


class AtOnce(random.Random):
    """
    Jitter that puts the first probe at once (the lower bound).
    """

    def uniform(self, a: float, b: float) -> float:
        return a


@pytest_twisted.ensureDeferred
async def test_hanging_http_origin_is_down_at_the_timeout() -> None:
    """
    A checker on a real hanging twisted.web origin: down when the probe's
    timeout expires, not a moment later.
    """
    page = Page()
    port = reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
    origin = Origin(name="web", address="127.0.0.1", port=port.getHost().port)
    monitor = Monitor(type="http", path="/hang", interval=3.0, timeout=0.5, retries=0, consecutive_down=1)
    pool = Pool(name="web", origins=(origin,), monitor=monitor)
    checker = HealthChecker(Balancer(pool), pool, 80, reactor=reactor, rng=AtOnce())
    try:
        checker.start()
        await wait_for(lambda: bool(page.hanging), 1, step=0.01)
        took = await wait_for(lambda: not checker.is_up("web"), 1.0, step=0.01)
        assert took < 0.5 + 0.1
        (event,) = checker.history
        assert event.error == "timed out" and 0.5 <= event.latency < 0.6
    finally:
        checker.stop()
        await sleep(0.05)
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_and_https_verified_and_insecure(tmp_path: Any) -> None:
    ca, cert, key = make_certificates(tmp_path)
    options = server_tls_options(cert, key)
    tls_port = reactor.listenSSL(0, OriginFactory(greeting=b"+OK ready\r\n"), options, interface="127.0.0.1")
    https_port = reactor.listenSSL(0, server.Site(Page()), options, interface="127.0.0.1")
    tls, https = tls_port.getHost().port, https_port.getHost().port
    try:
        verified = Monitor(type="tls", timeout=2, ca=ca)
        assert await probe(probe_tls, tls, verified) == (True, "handshake done")
        assert await probe(probe_tls, tls, attr.evolve(verified, expect=b"+OK")) == (True, "answer matched")
        ok, error = await probe(probe_tls, tls, attr.evolve(verified, ca=None))
        assert not ok and "certificate verify failed" in error
        assert await probe(probe_tls, tls, Monitor(type="tls", timeout=2, allow_insecure=True)) == (
            True,
            "handshake done",
        )
        # A plaintext port is not TLS.
        plain = listen_origin(OriginFactory(greeting=b"hello\r\n"))
        ok, error = await probe(probe_tls, plain.getHost().port, verified)
        await plain.stopListening()
        assert not ok

        web = Monitor(type="https", timeout=2, ca=ca, expected_body="ok")
        assert await probe(probe_http, https, web) == (True, "HTTP 200")
        named = attr.evolve(web, header=(("Host", ("origin.test",)),))
        assert await probe(probe_http, https, named) == (True, "HTTP 200")
        wrong = attr.evolve(web, header=(("Host", ("other.test",)),))
        ok, error = await probe(probe_http, https, wrong)
        assert not ok
        ok, error = await probe(probe_http, https, attr.evolve(web, ca=None))
        assert not ok
        insecure = Monitor(type="https", timeout=2, allow_insecure=True)
        assert await probe(probe_http, https, insecure) == (True, "HTTP 200")
    finally:
        await sleep(0.05)
        await tls_port.stopListening()
        await https_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smtp_against_twisted_mail() -> None:
    from twisted.mail import smtp

    port = reactor.listenTCP(0, smtp.SMTPFactory(), interface="127.0.0.1")
    echo = listen_origin(OriginFactory(greeting=b"SSH-2.0-OpenSSH_9.2\r\n"))
    try:
        monitor = Monitor(type="smtp", timeout=2)
        ok, detail = await probe(probe_smtp, port.getHost().port, monitor)
        assert ok and detail.startswith("221")
        ok, error = await probe(probe_smtp, echo.getHost().port, monitor)
        assert (ok, error) == (False, "not an SMTP reply: 'SSH-2.0-OpenSSH_9.2'")
    finally:
        await sleep(0.05)
        await port.stopListening()
        await echo.stopListening()


class UDPEcho(protocol.DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(b"echo:" + data, addr)


@pytest_twisted.ensureDeferred
async def test_udp_send_expect() -> None:
    port = reactor.listenUDP(0, UDPEcho(), interface="127.0.0.1")
    number = port.getHost().port
    try:
        monitor = Monitor(type="udp", timeout=0.5, send=b"ping", expect=b"echo:ping")
        assert await probe(probe_udp, number, monitor) == (True, "answer matched")
        assert await probe(probe_udp, number, attr.evolve(monitor, expect=b"pong")) == (False, "timed out")
        closed = free_port(kind=socket.SOCK_DGRAM)
        assert await probe(probe_udp, closed, monitor) == (False, "port unreachable")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tcp_connect_probe() -> None:
    port = listen_origin(OriginFactory())
    try:
        monitor = Monitor(timeout=1)
        assert await probe(probe_tcp, port.getHost().port, monitor) == (True, "connected")
        ok, error = await probe(probe_tcp, free_port(), monitor)
        assert not ok and "refused" in error
        assert await probe(probe_tcp, port.getHost().port, monitor, address="localhost") == (True, "connected")
    finally:
        await sleep(0.05)
        await port.stopListening()


@pytest.fixture
def redis_server(tmp_path: Any) -> Any:
    path = require_program("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.02)
    yield process, port
    process.kill()
    process.wait()


@pytest_twisted.ensureDeferred
async def test_redis_ping_pong(redis_server: Any) -> None:
    """
    The Redis check from the config (send PING, expect +PONG) against a real
    redis-server; a server that wants a password fails it with what it said.
    """
    process, port = redis_server
    monitor = Monitor(type="tcp", timeout=1, send=b"PING\r\n", expect=b"+PONG")
    assert await probe(probe_tcp, port, monitor) == (True, "answer matched")
    regex = attr.evolve(monitor, expect=None, expect_regex=rb"^\+PONG\r\n")
    assert await probe(probe_tcp, port, regex) == (True, "answer matched")
    config = subprocess.run(
        [require_program("redis-cli"), "-p", str(port), "CONFIG", "SET", "requirepass", "secret"],
        capture_output=True,
    )
    assert config.stdout.strip() == b"OK"
    ok, error = await probe(probe_tcp, port, attr.evolve(monitor, send=b"PING\r\nQUIT\r\n"))
    assert not ok and error.startswith("expected b'+PONG', got b'-NOAUTH")
    process.kill()
    process.wait()
    ok, error = await probe(probe_tcp, port, monitor)
    assert not ok and "refused" in error


@pytest_twisted.ensureDeferred
async def test_when_all_down_refuse_or_try_all() -> None:
    """
    The only origin answers, but not what the monitor expects, so it is
    down: with refuse (the default) a client is closed with status 530;
    with try_all it is served.
    """
    monitor = Monitor(type="tcp", interval=0.3, timeout=0.2, retries=0, send=b"PING\r\n", expect=b"+PONG")
    origin = OriginFactory(echo=False, greeting=b"hello\n")
    port = listen_origin(origin)
    app = with_monitor(make_app("alldown", [Origin(name="o", address="127.0.0.1", port=port.getHost().port)]), monitor)
    proxy = Proxy(app)
    health = runtime_of(proxy, "alldown").health
    try:
        await wait_for(lambda: not health.is_up("o"), 1.0)
        # The origin holds the connection open: a wrong answer is known at the timeout.
        assert health.history[-1].error == "timed out"
        client = await connect_client(proxy.port())
        assert await client.done == b""
        event = proxy.events[-1][1]
        assert (event["Event"], event["Status"]) == (ORIGIN_ERROR, S.NO_HEALTHY_ORIGIN)

        proxy.service.apply(Config(apps=(with_monitor(app, monitor, when_all_down="try_all"),)))
        assert not health.is_up("o")
        client = await connect_client(proxy.port())
        client.transport.loseWriteConnection()
        assert await client.done == b"hello\n"
    finally:
        await proxy.stop()
        await port.stopListening()


TWISTD = (sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()")


class Resetter(protocol.Protocol):
    """
    An origin that resets every connection before sending a byte.
    """

    def connectionMade(self) -> None:
        self.factory.accepted += 1
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_passive_reset_before_any_byte() -> None:
    """
    An origin that accepts and resets at once passes a connect probe, but
    real connections reset before any byte mark it down.
    """
    monitor = Monitor(type="tcp", interval=0.5, timeout=0.3, retries=0, consecutive_down=100, passive_down=2)
    factory = protocol.Factory.forProtocol(Resetter)
    factory.accepted = 0
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    origin = Origin(name="rst", address="127.0.0.1", port=port.getHost().port)
    proxy = Proxy(with_monitor(make_app("rst", [origin]), monitor))
    health = runtime_of(proxy, "rst").health
    try:
        for _ in range(2):
            client = await connect_client(proxy.port())
            client.transport.write(b"hello")
            assert await client.done == b""
        await sleep(0.05)
        # The state may already be back up (a connect probe passes), so the
        # history says what happened: down after the second failure.
        downs = [e for e in health.history if not e.healthy]
        assert len(downs) == 1
        event = downs[0]
        assert event.origin == "rst" and event.reason == "2 connections failed in a row"
        assert "reset" in event.error.lower() or "lost" in event.error.lower()
        ups = [e for e in health.history if e.healthy and e.time >= event.time]
        assert health.is_up("rst") == bool(ups)
        statuses = [e["Status"] for kind, e in proxy.events if kind == "disconnect"]
        assert statuses == [S.ORIGIN_RESET, S.ORIGIN_RESET]
        # The connect probe passes, so the origin comes back...
        await wait_for(lambda: health.is_up("rst"), 1.5)
    finally:
        await proxy.stop()
        await port.stopListening()


def test_twistd_logs_health_changes(tmp_path: Any, redis_server: Any) -> None:
    """
    twistd spectrum with a monitored pool (the Redis check from a YAML
    file): a dead origin is logged down with its reason, clients are served
    by the live one, and a SIGHUP reload that removes it leaves the live
    origin's state alone.
    """
    import signal

    process, redis_port = redis_server
    edge, dead = free_port(), free_port()
    config = tmp_path / "spectrum.yaml"
    app = f"""\
apps:
  - name: cache
    protocol: tcp/{edge}
    ips: ["127.0.0.1"]
    origin_pool:
      origins:
        - {{name: redis, address: 127.0.0.1, port: {redis_port}}}
        - {{name: dead, address: 127.0.0.1, port: {dead}}}
      monitor: {{type: tcp, send: "PING\\r\\n", expect: "+PONG", interval: 0.3, timeout: 0.2, retries: 0}}
"""
    config.write_text(app)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = tmp_path / "twistd.log"
    with open(log, "wb") as out:
        twistd = subprocess.Popen(
            # "python -m twisted" is twist, which has no -n: run twistd itself.
            [
                TWISTD[0],
                TWISTD[1],
                TWISTD[2],
                "-n",
                "--pidfile=",
                "spectrum",
                "--drain-timeout",
                "1",
                "--config",
                str(config),
            ],
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while b"origin dead is down" not in log.read_bytes():
            assert twistd.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        line = next(x for x in log.read_text().splitlines() if "origin dead is down" in x)
        assert "cache: origin dead is down: 1 probe failed (Connection was refused" in line
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", edge), timeout=2) as client:
                client.sendall(b"PING\r\n")
                assert client.recv(100) == b"+PONG\r\n"
        config.write_text(app.replace(f"        - {{name: dead, address: 127.0.0.1, port: {dead}}}\n", ""))
        twistd.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while b"reloaded" not in log.read_bytes():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        assert "origin redis is" not in log.read_text()
    finally:
        twistd.terminate()
        twistd.wait(10)
