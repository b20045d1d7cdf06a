"""
Edge ports shared by protocol, and STARTTLS, with real clients: mcstatus
(the Python library players' tools use) against small Minecraft servers
written here, ssh to a real sshd, openssl s_client and curl on one edge
port at once, psql to a real PostgreSQL server, and curl sending mail to
Twisted's ESMTP server.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple
from unittest import mock

import pytest
import pytest_twisted
from mcstatus import JavaServer
from twisted.internet import defer, protocol, reactor, threads
from twisted.mail import smtp
from twisted.web import resource, server
from zope.interface import implementer

from spectrum.admin.metrics import AnalyticsCollector

from conftest import free_port, require_program
from procs import start_program
from relaykit import sleep
from test_realpeers import SSH
from tlskit import Edge, listen_plain, listen_tls, make_certs, run, s_client


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> str:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def cert(certs: str, base: str) -> Dict[str, str]:
    return {"certificate": os.path.join(certs, base + ".crt"), "private_key": os.path.join(certs, base + ".key")}


def app(name: str, origin_port: int, edge_port: int, **extra: Any) -> Dict[str, Any]:
    spec: Dict[str, Any] = {
        "name": name,
        "protocol": "tcp",
        "ips": ["127.0.0.1"],
        "ports": [{"destination_port": edge_port}],
        "origin_direct": [f"tcp://127.0.0.1:{origin_port}"],
        "timeouts": {"connect": 2, "handshake": 5},
    }
    spec.update(extra)
    return spec


async def until(predicate: Any, timeout: float = 5.0) -> None:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await sleep(0.02)
        waited += 0.02


# Minecraft -------------------------------------------------------------------------
#
# The origins speak the protocol from its description, with their own
# encoding, so nothing of the edge's parser is on both sides of a test.


def _varint(value: int) -> bytes:
    out = b""
    value &= 0xFFFFFFFF
    while True:
        if value >> 7:
            out += bytes([(value & 0x7F) | 0x80])
            value >>= 7
        else:
            return out + bytes([value])


def _packet(packet_id: int, payload: bytes) -> bytes:
    body = _varint(packet_id) + payload
    return _varint(len(body)) + body


def _read_varint(data: bytes, pos: int) -> Tuple[Optional[int], int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    return None, pos


class MinecraftServer(protocol.Protocol):
    """
    Answers a status request with the factory's description and a ping
    with its pong; records every byte it got (a PROXY v1 header first, if
    any), and answers a login with a disconnect.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.state = 0
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        self.buffer += data
        if self.state == 0 and self.buffer.startswith(b"PROXY ") and b"\r\n" in self.buffer:
            # Paper reads the PROXY header the edge sends first.
            self.buffer = self.buffer.partition(b"\r\n")[2]
        while True:
            length, start = _read_varint(self.buffer, 0)
            if length is None or len(self.buffer) < start + length:
                return
            body, self.buffer = self.buffer[start : start + length], self.buffer[start + length :]
            packet_id, pos = _read_varint(body, 0)
            if self.state == 0:
                self.state = body[-1]
            elif self.state == 1 and packet_id == 0:
                status = json.dumps(
                    {
                        "version": {"name": "test", "protocol": 767},
                        "players": {"max": 20, "online": 1},
                        "description": {"text": self.factory.description},
                    }
                ).encode()
                self.transport.write(_packet(0, _varint(len(status)) + status))
            elif self.state == 1 and packet_id == 1:
                self.transport.write(_packet(1, body[pos:]))
                self.transport.loseConnection()
            elif self.state == 2:
                text = json.dumps({"text": self.factory.description}).encode()
                self.transport.write(_packet(0, _varint(len(text)) + text))
                self.transport.loseConnection()


class MinecraftFactory(protocol.Factory):
    protocol = MinecraftServer
    noisy = False

    def __init__(self, description: str) -> None:
        self.description = description
        self.received: List[bytes] = []
        self.connections = 0


def minecraft_origin(description: str) -> Tuple[Any, MinecraftFactory]:
    factory = MinecraftFactory(description)
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), factory


def mcstatus_ping(name: str, port: int) -> Any:
    """
    mcstatus' status and ping of C{name}:C{port} (blocking), its socket
    sent to 127.0.0.1: the name stays what the player typed.
    """
    connect = socket.create_connection

    def to_loopback(address: Tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        return connect(("127.0.0.1", address[1]), *args, **kwargs)

    with mock.patch.object(socket, "create_connection", to_loopback):
        server = JavaServer(name, port, timeout=5)
        status = server.status(tries=1)
        latency = server.ping(tries=1)
    return status, latency


@pytest_twisted.ensureDeferred
async def test_mcstatus_two_servers_one_port_and_an_unknown_name(tmp_path: Any) -> None:
    port_a, origin_a = minecraft_origin("server A")
    port_b, origin_b = minecraft_origin("server B")
    edge_port = free_port()
    apps = [
        app("a", port_a.getHost().port, edge_port, sniff="minecraft", dns={"name": "a.example"}),
        app("b", port_b.getHost().port, edge_port, sniff="minecraft", sni=["*.b.example", "b.example"]),
    ]
    for spec in apps:
        spec["minecraft_unknown_message"] = "No such server on this address"
    edge = Edge(str(tmp_path), {"apps": apps})
    try:
        status_a, latency_a = await threads.deferToThread(mcstatus_ping, "a.example", edge_port)
        status_b, _ = await threads.deferToThread(mcstatus_ping, "play.B.example.", edge_port)
        assert status_a.motd.to_plain() == "server A" and latency_a >= 0
        assert status_b.motd.to_plain() == "server B"
        assert (status_a.players.max, status_b.version.protocol) == (20, 767)
        # Each server saw one connection for the status and one for the ping.
        assert (origin_a.connections, origin_b.connections) == (2, 2)

        unknown, _ = await threads.deferToThread(mcstatus_ping, "c.example", edge_port)
        assert unknown.motd.to_plain() == "No such server on this address"
        assert (origin_a.connections, origin_b.connections) == (2, 2)

        await until(lambda: len(edge.finished()) == 6)
        routed = sorted((e["Application"], e["ClientSniffedHostname"]) for e in edge.finished() if e["Status"] == 200)
        assert routed == [("a", "a.example")] * 2 + [("b", "play.b.example")] * 2
        refused = [e for e in edge.finished() if e["Status"] != 200]
        assert [(e["Status"], e["ClientSniffedProtocol"], e["ClientSniffedHostname"]) for e in refused] == [
            (400, "minecraft", "c.example")
        ] * 2
        by_protocol = edge.service.analytics.snapshot()["a"]["protocols"]
        assert by_protocol["minecraft"]["events"]["disconnect"] == 2
    finally:
        await edge.stop()
        await port_a.stopListening()
        await port_b.stopListening()


def _login(port: int, address: str) -> Tuple[bytes, bytes]:
    """
    A login's first packets (handshake with a Forge marker, login start),
    sent in pieces; what came back.
    """
    name = address.encode()
    handshake = _packet(0, _varint(767) + _varint(len(name)) + name + (25565).to_bytes(2, "big") + _varint(2))
    login = _packet(0, _varint(5) + b"Steve" + bytes(range(16)))
    sent = handshake + login
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for i in range(0, len(sent), 7):
            sock.sendall(sent[i : i + 7])
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return sent, answer


@pytest_twisted.ensureDeferred
async def test_minecraft_login_relayed_byte_for_byte(tmp_path: Any) -> None:
    port_a, origin_a = minecraft_origin("welcome to A")
    edge_port = free_port()
    proxy_port, proxy_origin = minecraft_origin("unused")
    edge = Edge(
        str(tmp_path),
        {
            "apps": [
                app(
                    "a",
                    port_a.getHost().port,
                    edge_port,
                    sniff="minecraft",
                    dns={"name": "a.example"},
                    proxy_protocol="v1",
                ),
                app("rest", proxy_port.getHost().port, edge_port, sniff="any"),
            ]
        },
    )
    try:
        sent, answer = await threads.deferToThread(_login, edge_port, "a.example\0FML3\0")
        # The PROXY header the app asks for, then the client's bytes as sent.
        header, _, relayed = b"".join(origin_a.received).partition(b"\r\n")
        assert header.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") and header.endswith(b" %d" % edge_port)
        assert relayed == sent
        text = json.dumps({"text": "welcome to A"}).encode()
        assert answer == _packet(0, _varint(len(text)) + text)
        assert proxy_origin.received == []
    finally:
        await edge.stop()
        await port_a.stopListening()
        await proxy_port.stopListening()


# several protocols on one port --------------------------------------------------------------


class _Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello from the web origin\n"


class _Silent(protocol.Protocol):
    def connectionMade(self) -> None:
        self.got = b""
        self.factory.clients.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if b"\n" in self.got:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.done.callback(self.got)


@pytest.fixture
def ssh(tmp_path: Any) -> Iterator[SSH]:
    server = SSH(tmp_path)
    yield server
    server.stop()


#: the apps of the shared port, and what each takes
PROTOCOL_OF = {"ssh": "ssh", "pa": "tls", "b": "tls", "web": "http", "rest": "any"}


@pytest_twisted.ensureDeferred
async def test_ssh_tls_http_and_a_server_first_protocol_on_one_port(certs: str, tmp_path: Any, ssh: SSH) -> None:
    curl = require_program("curl")
    edge_port = free_port()
    tls_origin, tls_factory = listen_tls(certs, "pa.example", b"TLS origin pa\n")
    plain_origin, _ = listen_plain(b"terminated at the edge\n")
    web = reactor.listenTCP(0, server.Site(_Page()), interface="127.0.0.1")
    greeter, _ = listen_plain(b"220 server speaks first\n", keep_open=True)
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "b.example")],
            "apps": [
                app("ssh", ssh.port, edge_port, sniff="ssh"),
                app("pa", tls_origin.getHost().port, edge_port, sniff="tls", sni=["pa.example"]),
                app("b", plain_origin.getHost().port, edge_port, sniff="tls", sni=["b.example"], tls="flexible"),
                app("web", web.getHost().port, edge_port, sniff="http"),
                app("rest", greeter.getHost().port, edge_port, sniff="any", sniff_wait=0.3),
            ],
        },
    )
    try:
        ssh_run = run(
            [ssh.ssh, *ssh.options(), "-p", str(edge_port), f"{ssh.user}@127.0.0.1", "echo through-one-port"],
            timeout=60,
        )
        passthrough = s_client(
            edge_port, "-servername", "pa.example", "-CAfile", os.path.join(certs, "originca.crt"), stdin=b"x"
        )
        terminated = s_client(
            edge_port, "-servername", "b.example", "-CAfile", os.path.join(certs, "ca.crt"), stdin=b"y"
        )
        web_get = run([curl, "-sS", "--max-time", "20", f"http://127.0.0.1:{edge_port}/"])
        silent = protocol.ClientFactory.forProtocol(_Silent)
        silent.clients = []  # type: ignore[attr-defined]
        silent.done = defer.Deferred()  # type: ignore[attr-defined]
        reactor.connectTCP("127.0.0.1", edge_port, silent)
        results = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(ssh_run),
                defer.Deferred.fromCoroutine(passthrough),
                defer.Deferred.fromCoroutine(terminated),
                defer.Deferred.fromCoroutine(web_get),
                silent.done,  # type: ignore[attr-defined]
            ]
        )
        (ssh_out, ssh_err, ssh_code), (pa_out, _), (b_out, _), (web_out, web_err, web_code), greeting = results
        assert ssh_code == 0, ssh_err
        assert ssh_out == b"through-one-port\n"
        assert "TLS origin pa" in pa_out and "Verify return code: 0 (ok)" in pa_out
        assert "terminated at the edge" in b_out and "Verify return code: 0 (ok)" in b_out
        assert web_code == 0 and web_out == b"hello from the web origin\n", web_err
        assert greeting == b"220 server speaks first\n"

        await until(lambda: len(edge.finished()) == 5)
        service = edge.service
        collector = AnalyticsCollector(service.analytics, service.admission.firewall, service.refusals, service.shield)
        samples = {
            tuple(sorted(sample.labels.items())): sample.value
            for family in collector.collect()
            for sample in family.samples
            if sample.name == "spectrum_client_protocol_connections_total"
        }
        assert samples == {(("app", name), ("protocol", protocol)): 1 for name, protocol in PROTOCOL_OF.items()}
        sniffed = {e["Application"]: (e["ClientSniffedProtocol"], e["Status"]) for e in edge.finished()}
        assert sniffed == {name: (protocol, 200) for name, protocol in PROTOCOL_OF.items()}
    finally:
        await edge.stop()
        for listening in (tls_origin, plain_origin, web, greeter):
            await listening.stopListening()


# PostgreSQL ---------------------------------------------------------------------------------


def postgres_program(name: str) -> str:
    """
    A PostgreSQL server program: on PATH, or where Debian's package puts it.
    """
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    return found or require_program(name)


class Postgres:
    """
    A real PostgreSQL server on a free loopback port, without TLS, that
    trusts every local connection (as the user C{postgres}).
    """

    def __init__(self) -> None:
        initdb = postgres_program("initdb")
        postgres = postgres_program("postgres")
        self.directory = tempfile.mkdtemp(prefix="spectrum-pg-")
        data = os.path.join(self.directory, "data")
        as_user: List[str] = []
        if os.geteuid() == 0:
            # The server refuses to run as root: its own user owns its files.
            as_user = [require_program("runuser"), "-u", "postgres", "--"]
            shutil.chown(self.directory, "postgres")
            os.chmod(self.directory, 0o755)
        subprocess.run(
            [*as_user, initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.port = free_port()
        command = [
            *as_user,
            postgres,
            "-D",
            data,
            "-p",
            str(self.port),
            "-k",
            self.directory,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "ssl=off",
            "-c",
            "fsync=off",
        ]
        self.server = start_program(command, os.path.join(self.directory, "postgres.log"), self.port, timeout=60)

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.stop()


QUERY = "select ssl, current_user from pg_stat_ssl where pid = pg_backend_pid()"


@pytest_twisted.ensureDeferred
async def test_psql_through_starttls_postgres(certs: str, tmp_path: Any, postgres: Postgres) -> None:
    psql = require_program("psql")
    edge_port, open_port = free_port(), free_port()
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [
                app("pg", postgres.port, edge_port, tls="flexible", starttls="postgres"),
                app("pg-open", postgres.port, open_port, tls="flexible", starttls="postgres", allow_plaintext=True),
            ],
        },
    )
    base = f"hostaddr=127.0.0.1 port={edge_port} user=postgres dbname=postgres connect_timeout=10"
    env = dict(os.environ, PGPASSWORD="", PSQLRC="/dev/null")

    async def query(options: str) -> Tuple[bytes, bytes, int]:
        return await run([psql, "-X", "-At", "-c", QUERY, f"{base} {options}"], timeout=60)

    async def query_open(options: str) -> Tuple[bytes, bytes, int]:
        conninfo = f"{base.replace(str(edge_port), str(open_port))} {options}"
        return await run([psql, "-X", "-At", "-c", QUERY, conninfo], timeout=60)

    try:
        with mock.patch.dict(os.environ, env):
            out, err, code = await query("host=localhost sslmode=require")
            assert code == 0, err
            # The server's own view of that backend: no TLS on its leg.
            assert out == b"f|postgres\n"
            ca = os.path.join(certs, "ca.crt")
            out, err, code = await query(f"host=localhost sslmode=verify-full sslrootcert={ca}")
            assert code == 0, err
            assert out == b"f|postgres\n"
            out, err, code = await query("host=localhost sslmode=disable")
            assert code != 0 and out == b""
            assert b"this server requires TLS" in err
            # An app that allows plaintext relays it; TLS still works there.
            out, err, code = await query_open("host=localhost sslmode=disable")
            assert (code, out) == (0, b"f|postgres\n"), err
            out, err, code = await query_open("host=localhost sslmode=require")
            assert (code, out) == (0, b"f|postgres\n"), err
        await until(lambda: len(edge.finished()) == 5)
        events = [e for e in edge.finished() if e["Application"] == "pg"]
        opened = [e for e in edge.finished() if e["Application"] == "pg-open"]
        assert [(e["Status"], e["ClientTlsStatus"]) for e in opened] == [(200, "UNKNOWN"), (200, "OK")]
        assert [(e["Status"], e["ClientTlsStatus"]) for e in events[:2]] == [(200, "OK")] * 2
        assert events[2]["Status"] == 443 and events[2]["Reason"] == "PostgreSQL client did not ask for TLS"
    finally:
        await edge.stop()


# SMTP ---------------------------------------------------------------------------------------


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, box: List[bytes]) -> None:
        self.box = box
        self.lines: List[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        self.box.append(b"\n".join(self.lines))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self) -> None:
        self.box: List[bytes] = []
        self.helo: List[bytes] = []

    def receivedHeader(self, helo: Tuple[bytes, bytes], origin: Any, recipients: Any) -> bytes:
        self.helo.append(helo[0])
        return b"Received: by the test origin"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        return lambda: _Message(self.box)


class _SmtpOrigin(smtp.SMTPFactory):
    protocol = smtp.ESMTP

    def __init__(self, delivery: _Delivery) -> None:
        super().__init__()
        self.domain = b"origin.example"
        self.delivery = delivery

    def buildProtocol(self, addr: Any) -> Any:
        server = super().buildProtocol(addr)
        server.delivery = self.delivery
        server.challengers = {}
        return server


@pytest_twisted.ensureDeferred
async def test_curl_sends_mail_through_starttls_smtp(certs: str, tmp_path: Any) -> None:
    curl = require_program("curl")
    delivery = _Delivery()
    origin = reactor.listenTCP(0, _SmtpOrigin(delivery), interface="127.0.0.1")
    edge_port = free_port()
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [
                app(
                    "mail",
                    origin.getHost().port,
                    edge_port,
                    tls="flexible",
                    starttls="smtp",
                    dns={"name": "mail.example"},
                )
            ],
        },
    )
    mail = tmp_path / "mail.txt"
    mail.write_bytes(b"Subject: through the edge\r\n\r\nhello over STARTTLS\r\n")
    url = f"smtp://127.0.0.1:{edge_port}/client.example"
    common = [curl, "-sS", "--max-time", "20", url, "--mail-from", "a@example.com", "--mail-rcpt", "b@example.com"]
    try:
        out, err, code = await run(
            [*common, "--ssl-reqd", "--cacert", os.path.join(certs, "ca.crt"), "-T", str(mail)], timeout=60
        )
        assert code == 0, err
        (message,) = delivery.box
        assert b"Subject: through the edge" in message and b"hello over STARTTLS" in message
        # The origin's first command was the client's EHLO inside TLS.
        assert delivery.helo == [b"client.example"]
        # Without STARTTLS the edge refuses the mail itself.
        out, err, code = await run([*common, "-T", str(mail)], timeout=60)
        assert code != 0 and b"530" in err
        assert len(delivery.box) == 1
        await until(lambda: len(edge.finished()) == 2)
        first, second = edge.finished()
        assert (first["Status"], first["ClientTlsStatus"]) == (200, "OK")
        assert second["Status"] == 443
    finally:
        await edge.stop()
        await origin.stopListening()


def _encryption_requests(port: int) -> Tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(bytes.fromhex("0000000804d21630"))
        gssenc = sock.recv(16)
        sock.sendall(bytes.fromhex("0000000804d2162f"))
        ssl_answer = sock.recv(16)
    return gssenc, ssl_answer


@pytest_twisted.ensureDeferred
async def test_postgres_gssapi_encryption_declined_then_tls_accepted(certs: str, tmp_path: Any) -> None:
    origin, _ = listen_plain(b"")
    edge_port = free_port()
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [app("pg", origin.getHost().port, edge_port, tls="flexible", starttls="postgres")],
        },
    )
    try:
        answers = await threads.deferToThread(_encryption_requests, edge_port)
        assert answers == (b"N", b"S")
    finally:
        await edge.stop()
        await origin.stopListening()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return answer
            answer += chunk


@pytest_twisted.ensureDeferred
async def test_reload_turns_a_port_into_one_shared_by_protocol(tmp_path: Any) -> None:
    origin_x, _ = listen_plain(b"X:")
    origin_y, _ = listen_plain(b"Y:")
    edge_port = free_port()
    apps = [app("plain", origin_x.getHost().port, edge_port)]
    edge = Edge(str(tmp_path), {"apps": apps})
    try:
        assert await threads.deferToThread(_exchange, edge_port, b"SSH-2.0-x\r\n") == b"X:SSH-2.0-x\r\n"
        apps[0]["sniff"] = "any"
        apps.append(app("ssh", origin_y.getHost().port, edge_port, sniff="ssh"))
        with open(edge.path, "w") as f:
            json.dump({"apps": apps}, f)
        assert edge.service.reload()
        assert await threads.deferToThread(_exchange, edge_port, b"SSH-2.0-x\r\n") == b"Y:SSH-2.0-x\r\n"
        assert await threads.deferToThread(_exchange, edge_port, b"hello\n") == b"X:hello\n"
    finally:
        await edge.stop()
        await origin_x.stopListening()
        await origin_y.stopListening()
