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
