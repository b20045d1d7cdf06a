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
from typing import Any, Dict, List

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
        {"certificates": [cert(certs, "localhost")], "apps": [app("flex", origin.getHost().port, free_port(), tls="flexible")]},
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
