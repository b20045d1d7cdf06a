"""
TLS at the edge and to the origin, with real peers on loopback: openssl
s_client, mosquitto, redis, and TLS origins presenting certificates made by
certs/mkcerts.sh.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from typing import Any, Dict

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from spectrum import status as S

from conftest import free_port, require_program
from relaykit import sleep
from tlskit import (
    Edge,
    client_hello,
    listen_plain,
    listen_tls,
    make_certs,
    run,
    s_client,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> str:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def cert(certs: str, base: str) -> Dict[str, str]:
    return {
        "certificate": os.path.join(certs, base + ".crt"),
        "private_key": os.path.join(certs, base + ".key"),
    }


def app(name: str, origin_port: int, edge_port: int, **extra: Any) -> Dict[str, Any]:
    spec: Dict[str, Any] = {
        "name": name,
        "protocol": "tcp",
        "ips": ["127.0.0.1"],
        "ports": [{"destination_port": edge_port}],
        "origin_direct": [f"tcp://127.0.0.1:{origin_port}"],
        "timeouts": {"connect": 2},
    }
    spec.update(extra)
    return spec


def subject_of(output: str) -> str:
    """
    The subject of the server certificate s_client printed.
    """
    match = re.search(r"^subject=(.*)$", output, re.MULTILINE)
    assert match, output
    return match.group(1).strip().replace(" = ", "=")


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await sleep(0.02)


# termination


@pytest_twisted.ensureDeferred
async def test_flexible_terminates_and_records(certs: str, tmp_path: Any) -> None:
    origin, factory = listen_plain(b"hello from a plaintext origin\n")
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [app("flex", origin.getHost().port, free_port(), tls="flexible")],
        },
    )
    try:
        output, code = await s_client(
            edge.port(),
            "-CAfile",
            os.path.join(certs, "ca.crt"),
            "-verify_return_error",
            "-servername",
            "localhost",
            stdin=b"ping\n",
        )
        assert "hello from a plaintext origin" in output, output
        assert "Verify return code: 0 (ok)" in output
        assert "CN=localhost" in subject_of(output)
        await until(lambda: factory.received)
        assert b"".join(factory.received) == b"ping\n"
        await until(lambda: edge.finished())
        event = edge.finished()[0]
        assert event["Status"] == S.NORMAL
        assert event["ClientTlsProtocol"] == "TLSv1.3"
        assert event["ClientTlsCipher"].startswith("TLS_")
        assert event["ClientTlsClientHelloServerName"] == "localhost"
        assert event["ClientTlsStatus"] == "OK"
        assert event["OriginTlsMode"] == "off"
        assert event["ClientBytes"] == 5
    finally:
        await edge.stop()
        await origin.stopListening()


# SNI routing


@pytest_twisted.ensureDeferred
async def test_sni_passthrough_two_origins_one_port(certs: str, tmp_path: Any) -> None:
    # The origins terminate TLS themselves; the client sees their
    # certificates (made by a CA the edge knows nothing of).
    origin_a, _ = listen_tls(certs, "pa.example", b"origin A\n")
    origin_b, _ = listen_tls(certs, "pb.example", b"origin B\n")
    port = free_port()
    edge = Edge(
        str(tmp_path),
        {
            "apps": [
                app("a", origin_a.getHost().port, port, dns={"name": "a.example"}),
                app("b", origin_b.getHost().port, port, sni=["b.example", "*.w.example"]),
            ]
        },
    )
    try:
        assert len(edge.service.listeners) == 1
        trust = ("-CAfile", os.path.join(certs, "originca.crt"), "-verify_return_error")
        out_a, code_a = await s_client(port, "-servername", "a.example", *trust, stdin=b"x")
        out_b, code_b = await s_client(port, "-servername", "b.example", *trust, stdin=b"y")
        out_w, _ = await s_client(port, "-servername", "host.w.example", *trust, stdin=b"z")
        assert "origin A" in out_a and "origin B" not in out_a
        assert subject_of(out_a) == "CN=pa.example"
        assert "origin B" in out_b and subject_of(out_b) == "CN=pb.example"
        assert "origin B" in out_w
        assert "Verify return code: 0 (ok)" in out_a and "Verify return code: 0 (ok)" in out_b
        await until(lambda: len(edge.finished()) == 3)
        by_app = {e["Application"]: e for e in edge.finished()}
        assert by_app["a"]["ClientTlsClientHelloServerName"] == "a.example"
        assert by_app["a"]["Status"] == S.NORMAL
        # The ClientHello itself went to the origin: the bytes counted
        # include it, although the edge never decrypted anything.
        assert by_app["a"]["ClientBytes"] > 200
        assert by_app["a"]["ClientTlsProtocol"] == "none"
    finally:
        await edge.stop()
        await origin_a.stopListening()
        await origin_b.stopListening()


@pytest_twisted.ensureDeferred
async def test_sni_termination_two_origins_one_port(certs: str, tmp_path: Any) -> None:
    origin_a, _ = listen_plain(b"plain A\n")
    origin_b, _ = listen_plain(b"plain B\n")
    port = free_port()
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost"), cert(certs, "b.example")],
            "apps": [
                app("a", origin_a.getHost().port, port, tls="flexible", dns={"name": "a.example"}),
                app("b", origin_b.getHost().port, port, tls="flexible", dns={"name": "b.example"}),
            ],
        },
    )
    try:
        trust = ("-CAfile", os.path.join(certs, "ca.crt"), "-verify_return_error")
        out_a, _ = await s_client(port, "-servername", "a.example", *trust, stdin=b"x")
        out_b, _ = await s_client(port, "-servername", "b.example", *trust, stdin=b"y")
        # The edge's certificate for each name: localhost.crt covers a.example.
        assert "plain A" in out_a and subject_of(out_a) == "CN=localhost"
        assert "plain B" in out_b and subject_of(out_b) == "CN=b.example"
        await until(lambda: len(edge.finished()) == 2)
        names = {e["Application"]: e["ClientTlsClientHelloServerName"] for e in edge.finished()}
        assert names == {"a": "a.example", "b": "b.example"}
    finally:
        await edge.stop()
        await origin_a.stopListening()
        await origin_b.stopListening()


@pytest_twisted.ensureDeferred
async def test_unknown_sni_refused_with_400_unless_default(certs: str, tmp_path: Any) -> None:
    origin_a, _ = listen_plain(b"A\n")
    origin_b, _ = listen_plain(b"B (default)\n")
    port = free_port()
    apps = [
        app("a", origin_a.getHost().port, port, tls="flexible", dns={"name": "a.example"}),
        app("b", origin_b.getHost().port, port, tls="flexible", dns={"name": "b.example"}),
    ]
    edge = Edge(str(tmp_path), {"apps": apps})
    try:
        output, code = await s_client(port, "-servername", "nobody.example")
        assert code != 0 and "A\n" not in output
        await until(lambda: edge.finished())
        event = edge.finished()[0]
        assert event["Status"] == S.INVALID_SNI == 400
        assert event["ClientTlsStatus"] == "INVALID_SNI"
        assert event["ClientTlsClientHelloServerName"] == "nobody.example"
        assert "nobody.example" in event["Reason"]

        # Now b is the default: the same name reaches it (reload in place).
        apps[1]["sni_default"] = True
        with open(edge.path, "w") as f:
            import yaml

            yaml.safe_dump({"apps": apps}, f)
        assert edge.service.reload()
        output, code = await s_client(port, "-servername", "nobody.example", stdin=b"q")
        assert "B (default)" in output
        output, code = await s_client(port, "-noservername", stdin=b"q")
        assert "B (default)" in output
    finally:
        await edge.stop()
        await origin_a.stopListening()
        await origin_b.stopListening()


# origin TLS


@pytest_twisted.ensureDeferred
async def test_strict_refuses_wrong_name_and_wrong_ca_full_accepts(certs: str, tmp_path: Any) -> None:
    good, _ = listen_tls(certs, "origin.example", b"verified origin\n")
    wrong_name, _ = listen_tls(certs, "wrong.example", b"wrong-name origin\n")
    wrong_ca, _ = listen_tls(certs, "origin-other", b"other-CA origin\n")
    ca = os.path.join(certs, "ca.crt")
    strict = {"ca": ca, "server_name": "origin.example"}
    apps = [
        app("strict-good", good.getHost().port, free_port(), tls="flexible"),
        app("strict-name", wrong_name.getHost().port, free_port(), tls="strict", origin_tls=strict),
        app("strict-ca", wrong_ca.getHost().port, free_port(), tls="strict", origin_tls=strict),
        app("full-name", wrong_name.getHost().port, free_port(), tls="full"),
        app("full-ca", wrong_ca.getHost().port, free_port(), tls="full"),
        # No server_name: the origin's address is the name verified (its
        # certificate lists 127.0.0.1).
        app("strict-ip", good.getHost().port, free_port(), tls="strict", origin_tls={"ca": ca}),
        # No CA: the system store, which does not know the local CA.
        app("strict-system", good.getHost().port, free_port(), tls="strict"),
    ]
    apps[0].update(tls="strict", origin_tls=strict)
    edge = Edge(str(tmp_path), {"certificates": [cert(certs, "localhost")], "apps": apps})
    try:
        outputs = {}
        for spec in apps:
            outputs[spec["name"]], _ = await s_client(edge.port(spec["name"]), stdin=b"hi\n")
        assert "verified origin" in outputs["strict-good"]
        assert "verified origin" in outputs["strict-ip"]
        assert "wrong-name origin" not in outputs["strict-name"]
        assert "other-CA origin" not in outputs["strict-ca"]
        assert "wrong-name origin" in outputs["full-name"]
        assert "other-CA origin" in outputs["full-ca"]
        await until(lambda: len(edge.finished()) == 7)
        events = {e["Application"]: e for e in edge.finished()}
        assert events["strict-good"]["Status"] == S.NORMAL
        assert events["strict-good"]["OriginTlsStatus"] == "OK"
        assert events["strict-good"]["OriginTlsProtocol"] == "TLSv1.3"
        assert events["strict-ip"]["Status"] == S.NORMAL
        assert "verified origin" not in outputs["strict-system"]
        assert events["strict-system"]["Status"] == S.ORIGIN_TLS_INVALID
        for name in ("strict-name", "strict-ca"):
            event = events[name]
            assert event["Status"] == S.ORIGIN_TLS_INVALID, event
            assert event["OriginTlsMode"] == "strict"
            assert event["OriginTlsStatus"] == "HANDSHAKE_FAILED"
            assert "did not verify" in event["Reason"]
        assert "origin.example" in events["strict-name"]["Reason"]
        assert "certificate verify failed" in events["strict-ca"]["Reason"]
        for name in ("full-name", "full-ca"):
            assert events[name]["Status"] == S.NORMAL
            assert events[name]["OriginTlsMode"] == "full"
            assert events[name]["OriginTlsStatus"] == "OK"
    finally:
        await edge.stop()
        for port in (good, wrong_name, wrong_ca):
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_plaintext_client_tls_origin_with_client_certificate(certs: str, tmp_path: Any) -> None:
    # stunnel's client mode: a legacy client speaks plaintext to the edge,
    # the edge speaks verified TLS to an origin that demands a client
    # certificate.
    origin, factory = listen_tls(certs, "origin.example", b"mtls origin\n", client_ca="ca")
    origin_tls = {"ca": os.path.join(certs, "ca.crt"), "server_name": "origin.example"}
    with_cert = dict(
        origin_tls, **{"certificate": os.path.join(certs, "bob.crt"), "private_key": os.path.join(certs, "bob.key")}
    )
    edge = Edge(
        str(tmp_path),
        {
            "apps": [
                app("legacy", origin.getHost().port, free_port(), origin_tls=with_cert),
                app("legacy-nocert", origin.getHost().port, free_port(), origin_tls=origin_tls),
            ]
        },
    )
    try:
        for name in ("legacy", "legacy-nocert"):
            sock = socket.create_connection(("127.0.0.1", edge.port(name)))
            sock.setblocking(False)
            sock.sendall(b"plain hello")
            received = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await sleep(0.02)
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                received += chunk
            sock.close()
            if name == "legacy":
                assert received == b"mtls origin\nplain hello"
            else:
                assert received == b""
        await until(lambda: len(edge.finished()) == 2)
        events = {e["Application"]: e for e in edge.finished()}
        assert events["legacy"]["OriginTlsMode"] == "strict"
        assert events["legacy"]["OriginTlsStatus"] == "OK"
        assert events["legacy"]["ClientTlsProtocol"] == "none"
        refused = events["legacy-nocert"]
        assert refused["OriginTlsStatus"] == "HANDSHAKE_FAILED"
        # TLS 1.3: the origin's refusal comes as an alert after the handshake.
        assert refused["Status"] == S.ORIGIN_ERROR
        assert "certificate required" in refused["Reason"]
        assert b"".join(factory.received) == b"plain hello"
    finally:
        await edge.stop()
        await origin.stopListening()


# mutual TLS at the edge


@pytest_twisted.ensureDeferred
async def test_mtls_at_the_edge(certs: str, tmp_path: Any) -> None:
    origin, factory = listen_plain(b"members only\n")
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [
                app(
                    "mtls",
                    origin.getHost().port,
                    free_port(),
                    tls="flexible",
                    client_auth={"ca": os.path.join(certs, "ca.crt")},
                )
            ],
        },
    )
    port = edge.port()
    try:
        none, _ = await s_client(port, stdin=b"x")
        other, _ = await s_client(
            port,
            "-cert",
            os.path.join(certs, "mallory.crt"),
            "-key",
            os.path.join(certs, "mallory.key"),
            stdin=b"x",
        )
        good, _ = await s_client(
            port, "-cert", os.path.join(certs, "bob.crt"), "-key", os.path.join(certs, "bob.key"), stdin=b"x"
        )
        assert "members only" not in none and "members only" not in other
        assert "members only" in good
        assert factory.connections and len(factory.connections) == 1
        await until(lambda: len(edge.finished()) == 3)
        refused = [e for e in edge.finished() if e["Status"] == S.CLIENT_TLS_FAILED]
        assert len(refused) == 2
        assert all(e["ClientTlsStatus"] == "HANDSHAKE_FAILED" for e in refused)
        assert any("certificate" in e["Reason"] for e in refused)
        passed = [e for e in edge.finished() if e["Status"] == S.NORMAL]
        assert passed[0]["ClientTlsClientCertSubject"] == "CN=bob"
    finally:
        await edge.stop()
        await origin.stopListening()


# what the edge refuses


@pytest_twisted.ensureDeferred
async def test_tls_1_0_and_1_1_refused_by_default(certs: str, tmp_path: Any) -> None:
    origin, factory = listen_plain(b"modern\n")
    apps = [
        app("default", origin.getHost().port, free_port(), tls="flexible"),
        app(
            "legacy-allowed",
            origin.getHost().port,
            free_port(),
            tls="flexible",
            tls_options={"min_version": "1.0"},
        ),
    ]
    edge = Edge(str(tmp_path), {"certificates": [cert(certs, "localhost")], "apps": apps})
    old = ("-cipher", "DEFAULT:@SECLEVEL=0")
    try:
        tls10, _ = await s_client(edge.port("default"), "-tls1", *old, stdin=b"x")
        tls11, _ = await s_client(edge.port("default"), "-tls1_1", *old, stdin=b"x")
        tls12, _ = await s_client(edge.port("default"), "-tls1_2", stdin=b"x")
        # The client can speak TLS 1.0: an app that allows it lets it in.
        allowed, _ = await s_client(edge.port("legacy-allowed"), "-tls1", *old, stdin=b"x")
        assert "modern" not in tls10 and "modern" not in tls11
        assert "modern" in tls12
        assert "modern" in allowed and "Protocol  : TLSv1\n" in allowed
        await until(lambda: len(edge.finished()) == 4)
        events = edge.finished()
        refused = [e for e in events if e["Status"] == S.CLIENT_TLS_FAILED]
        assert len(refused) == 2
        assert all("unsupported protocol" in e["Reason"] for e in refused), refused
        versions = sorted(e["ClientTlsProtocol"] for e in events if e["Status"] == S.NORMAL)
        assert versions == ["TLSv1", "TLSv1.2"]
    finally:
        await edge.stop()
        await origin.stopListening()


class RawClient(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(time.monotonic())


async def raw_connect(port: int) -> RawClient:
    client = RawClient()
    endpoint_factory = protocol.ClientFactory.forProtocol(lambda: client)
    reactor.connectTCP("127.0.0.1", port, endpoint_factory)
    await until(lambda: client.transport is not None and client.transport.connected)
    return client


@pytest.mark.parametrize("mode", ["termination", "passthrough"])
@pytest_twisted.ensureDeferred
async def test_half_client_hello_closed_at_handshake_timeout(certs: str, tmp_path: Any, mode: str) -> None:
    origin, factory = listen_plain(b"never\n")
    port = free_port()
    timeouts = {"connect": 2, "handshake": 0.5}
    if mode == "termination":
        apps = [app("t", origin.getHost().port, port, tls="flexible", timeouts=timeouts)]
    else:
        apps = [
            app("a", origin.getHost().port, port, dns={"name": "a.example"}, timeouts=timeouts),
            app("b", origin.getHost().port, port, dns={"name": "b.example"}, timeouts=timeouts),
        ]
    edge = Edge(str(tmp_path), {"apps": apps})
    try:
        hello = client_hello("a.example")
        client = await raw_connect(port)
        started = time.monotonic()
        client.transport.write(hello[: len(hello) // 2])
        closed_at = await client.closed
        waited = closed_at - started
        assert 0.4 <= waited < 2.0, waited
        assert factory.connections == []
        await until(lambda: edge.finished())
        event = edge.finished()[0]
        if mode == "termination":
            assert event["Status"] == S.CLIENT_TLS_FAILED
            assert "not finished" in event["Reason"]
        else:
            assert event["Status"] == S.INVALID_SNI
            assert "no complete ClientHello" in event["Reason"]
    finally:
        await edge.stop()
        await origin.stopListening()


@pytest.mark.parametrize("mode", ["termination", "passthrough"])
@pytest_twisted.ensureDeferred
async def test_garbage_closes_only_that_connection(certs: str, tmp_path: Any, mode: str) -> None:
    origin, factory = listen_plain(b"", keep_open=True)
    port = free_port()
    if mode == "termination":
        apps = [app("t", origin.getHost().port, port, tls="flexible")]
    else:
        apps = [
            app("a", origin.getHost().port, port, dns={"name": "a.example"}),
            app("b", origin.getHost().port, port, dns={"name": "b.example"}),
        ]
    edge = Edge(str(tmp_path), {"apps": apps})
    try:
        # A healthy session first, held open while the garbage arrives.
        if mode == "termination":
            from twisted.internet import ssl

            good = RawClient()
            reactor.connectSSL(
                "127.0.0.1", port, protocol.ClientFactory.forProtocol(lambda: good), ssl.CertificateOptions()
            )
        else:
            good = await raw_connect(port)
            # A passthrough app relays the ClientHello to the plaintext
            # origin, which echoes it: proof that the raw bytes went through.
            good.transport.write(client_hello("a.example"))
        await until(lambda: factory.connections)
        bad = await raw_connect(port)
        bad.transport.write(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        await bad.closed
        assert bad.received in (b"", bytearray()) or b"HTTP" not in bytes(bad.received)
        await until(lambda: edge.finished())
        event = edge.finished()[0]
        if mode == "termination":
            assert event["Status"] == S.CLIENT_TLS_FAILED and "TLS handshake failed" in event["Reason"]
        else:
            assert event["Status"] == S.INVALID_SNI and "not a TLS ClientHello" in event["Reason"]
        # The good connection still works.
        before = len(b"".join(factory.received))
        good.transport.write(b"still here")
        await until(lambda: b"still here" in b"".join(factory.received))
        assert len(b"".join(factory.received)) > before
        assert not good.closed.called
        good.transport.loseConnection()
        await good.closed
    finally:
        await edge.stop()
        await origin.stopListening()


# legacy protocols gain TLS: real brokers and servers behind flexible apps


async def wait_listening(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            await sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest_twisted.ensureDeferred
async def test_mosquitto_behind_flexible_app(certs: str, tmp_path: Any) -> None:
    mosquitto = require_program("mosquitto")
    require_program("mosquitto_pub")
    broker_port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    edge = None
    try:
        await wait_listening(broker_port, broker)
        edge = Edge(
            str(tmp_path),
            {
                "certificates": [cert(certs, "localhost")],
                "apps": [app("mqtt", broker_port, free_port(), tls="flexible")],
            },
        )
        tls = ["-h", "127.0.0.1", "-p", str(edge.port()), "--cafile", os.path.join(certs, "ca.crt")]
        # Retained, so the subscriber gets it whenever it subscribes.
        out, err, code = await run(["mosquitto_pub", *tls, "-t", "spectrum/test", "-m", "over TLS", "-r"])
        assert code == 0, err
        out, err, code = await run(["mosquitto_sub", *tls, "-t", "spectrum/test", "-C", "1", "-W", "10"])
        assert code == 0, err
        assert out == b"over TLS\n"
        # Without the CA the client refuses the edge: TLS is really there.
        out, err, code = await run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.port()), "-t", "x", "-m", "y"])
        assert code != 0
        await until(lambda: len(edge.finished()) == 3)
        ok = [e for e in edge.finished() if e["ClientTlsStatus"] == "OK"]
        assert len(ok) == 2 and all(e["ClientTlsProtocol"] == "TLSv1.3" for e in ok)
    finally:
        if edge is not None:
            await edge.stop()
        stop_process(broker)


@pytest_twisted.ensureDeferred
async def test_redis_cli_tls_to_plaintext_redis(certs: str, tmp_path: Any) -> None:
    redis_server = require_program("redis-server")
    require_program("redis-cli")
    redis_port = free_port()
    server = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(tmp_path),
    )
    edge = None
    try:
        await wait_listening(redis_port, server)
        edge = Edge(
            str(tmp_path),
            {
                "certificates": [cert(certs, "localhost")],
                "apps": [app("redis", redis_port, free_port(), tls="flexible")],
            },
        )
        cli = [
            "redis-cli",
            "--tls",
            "--cacert",
            os.path.join(certs, "ca.crt"),
            "-h",
            "127.0.0.1",
            "-p",
            str(edge.port()),
        ]
        out, err, code = await run([*cli, "SET", "spectrum", "tls-to-plaintext"])
        assert code == 0 and out.strip() == b"OK", (out, err)
        out, err, code = await run([*cli, "GET", "spectrum"])
        assert out.strip() == b"tls-to-plaintext"
        # The value really is in the plaintext redis behind the edge.
        out, err, code = await run(["redis-cli", "-p", str(redis_port), "GET", "spectrum"])
        assert out.strip() == b"tls-to-plaintext"
    finally:
        if edge is not None:
            await edge.stop()
        stop_process(server)


@pytest_twisted.ensureDeferred
async def test_alpn_chosen_at_the_edge_is_offered_to_the_origin(certs: str, tmp_path: Any) -> None:
    origin, factory = listen_tls(certs, "origin.example", b"", alpn=[b"h2", b"redis", b"http/1.1"])
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [
                app(
                    "alpn",
                    origin.getHost().port,
                    free_port(),
                    tls="full",
                    tls_options={"alpn": ["redis", "h2"]},
                )
            ],
        },
    )
    try:
        output, _ = await s_client(edge.port(), "-alpn", "h2,redis", stdin=b"x")
        # The edge's preference wins at the edge, and the origin is asked
        # for that same protocol.
        assert "ALPN protocol: redis" in output
        output, _ = await s_client(edge.port(), "-alpn", "h2", stdin=b"y")
        assert "ALPN protocol: h2" in output
        await until(lambda: len(factory.protocols) == 2)
        assert factory.protocols == [b"redis", b"h2"]
    finally:
        await edge.stop()
        await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_reload_turns_tls_on_and_off_on_the_same_socket(certs: str, tmp_path: Any) -> None:
    import yaml

    origin, factory = listen_plain(b"", keep_open=True)
    port = free_port()
    spec = app("svc", origin.getHost().port, port)
    edge = Edge(str(tmp_path), {"certificates": [cert(certs, "localhost")], "apps": [spec]})

    def reload(**changes: Any) -> None:
        spec.update(changes)
        with open(edge.path, "w") as f:
            yaml.safe_dump({"certificates": [cert(certs, "localhost")], "apps": [spec]}, f)
        assert edge.service.reload()

    try:
        listener = next(iter(edge.service.listeners.values()))
        plain = await raw_connect(port)
        plain.transport.write(b"plain 1")
        await until(lambda: b"plain 1" in bytes(plain.received))

        reload(tls="flexible")
        output, _ = await s_client(port, "-servername", "localhost", stdin=b"over tls bye")
        assert "CN = localhost" in output and "over tls" in output
        # The plaintext session opened before the change carries on.
        plain.transport.write(b"plain 2")
        await until(lambda: b"plain 2" in bytes(plain.received))

        reload(tls="off")
        again = await raw_connect(port)
        again.transport.write(b"plain 3")
        await until(lambda: b"plain 3" in bytes(again.received))
        assert next(iter(edge.service.listeners.values())) is listener
        for client in (plain, again):
            client.transport.loseConnection()
            await client.closed
    finally:
        await edge.stop()
        await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_certificate_chain_in_the_file_is_sent(certs: str, tmp_path: Any) -> None:
    origin, _ = listen_plain(b"chained\n")
    chain = tmp_path / "chain.crt"
    with open(os.path.join(certs, "b.example.crt"), "rb") as leaf, open(os.path.join(certs, "ca.crt"), "rb") as ca:
        chain.write_bytes(leaf.read() + ca.read())
    files = {"certificate": str(chain), "private_key": os.path.join(certs, "b.example.key")}
    edge = Edge(
        str(tmp_path),
        {"certificates": [files], "apps": [app("chain", origin.getHost().port, free_port(), tls="flexible")]},
    )
    try:
        output, _ = await s_client(edge.port(), "-showcerts", "-servername", "b.example", stdin=b"x")
        assert "chained" in output
        assert output.count("-----BEGIN CERTIFICATE-----") == 2
        assert " 1 s:CN = spectrum local CA (ca)" in output
    finally:
        await edge.stop()
        await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_admission_gates_run_before_the_handshake(certs: str, tmp_path: Any) -> None:
    origin, factory = listen_plain(b"allowed\n")
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost")],
            "apps": [app("t", origin.getHost().port, free_port(), tls="flexible")],
        },
    )
    refusing = [True]

    def gate(app: Any, ip: str) -> Any:
        return (S.FIREWALL, "refused by the gate") if refusing[0] else None

    edge.service.admission.gates.append(gate)
    try:
        refused, _ = await s_client(edge.port(), "-servername", "localhost", stdin=b"x")
        refusing[0] = False
        allowed, _ = await s_client(edge.port(), "-servername", "localhost", stdin=b"x")
        # Refused at accept: no certificate was ever sent.
        assert "BEGIN CERTIFICATE" not in refused and "allowed" not in refused
        assert "allowed" in allowed
        await until(lambda: len(edge.finished()) == 2)
        filtered = next(event for kind, event in edge.events if kind == "clientFiltered")
        assert filtered["Status"] == S.FIREWALL and filtered["Reason"] == "refused by the gate"
        assert filtered.get("ClientTlsStatus", "UNKNOWN") != "OK"
    finally:
        await edge.stop()
        await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_certificate_picked_by_sni_exact_wildcard_default(certs: str, tmp_path: Any) -> None:
    origin, _ = listen_plain(b"hi\n")
    edge = Edge(
        str(tmp_path),
        {
            "certificates": [cert(certs, "localhost"), cert(certs, "b.example"), cert(certs, "_.w.example")],
            "apps": [app("one", origin.getHost().port, free_port(), tls="flexible")],
        },
    )
    try:
        subjects = {}
        for name in ("b.example", "x.w.example", "a.b.w.example", "nobody.example"):
            output, _ = await s_client(edge.port(), "-servername", name, stdin=b"x")
            assert "hi" in output
            subjects[name] = subject_of(output)
        assert subjects == {
            "b.example": "CN=b.example",
            "x.w.example": "CN=*.w.example",
            # A wildcard covers one label only; the first certificate is the
            # default.
            "a.b.w.example": "CN=localhost",
            "nobody.example": "CN=localhost",
        }
    finally:
        await edge.stop()
        await origin.stopListening()
