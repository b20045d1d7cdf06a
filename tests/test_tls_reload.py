"""
Certificates replaced without a restart: on SIGHUP (through a real twistd
process) and when the files change; new handshakes get the new certificate
while an established TLS session keeps working.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Optional

import pytest
import pytest_twisted
import yaml

from conftest import free_port
from relaykit import sleep
from tlskit import ROOT, Edge, listen_plain, make_certs, s_client


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> str:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


class EchoOrigin:
    """
    A threaded echo server, for an edge running in another process.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def install(certs: str, base: str, directory: str) -> None:
    # Replace the files the config names, as an operator renewing would.
    for ext in ("crt", "key"):
        shutil.copyfile(os.path.join(certs, f"{base}.{ext}"), os.path.join(directory, f"edge.{ext}.new"))
        os.replace(os.path.join(directory, f"edge.{ext}.new"), os.path.join(directory, f"edge.{ext}"))


def names_of(cert: Optional[dict]) -> set:
    assert cert is not None
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


def handshake(port: int, ca: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


@pytest.fixture
def origin() -> Iterator[EchoOrigin]:
    server = EchoOrigin()
    yield server
    server.close()


def test_sighup_swaps_certificate_established_session_continues(certs: str, tmp_path: Any, origin: EchoOrigin) -> None:
    directory = str(tmp_path)
    install(certs, "one.example", directory)
    edge_port = free_port()
    config = {
        # Relative paths: relative to the config file.
        "certificates": [{"certificate": "edge.crt", "private_key": "edge.key"}],
        "apps": [
            {
                "name": "tls",
                "protocol": f"tcp/{edge_port}",
                "ips": ["127.0.0.1"],
                "tls": "flexible",
                "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
            }
        ],
    }
    path = os.path.join(directory, "spectrum.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # "python -m twisted" is twist: the foreground runner of twistd plugins.
    args = [sys.executable, "-m", "twisted", "--log-format=text", "--log-file=-", "spectrum", "--config", path]
    # No file watching: only the SIGHUP can change the certificate.
    args += ["--certificate-check", "0"]
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ca = os.path.join(certs, "ca.crt")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                session = handshake(edge_port, ca)
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "twistd did not listen"
                time.sleep(0.1)
        assert names_of(session.getpeercert()) == {"one.example", "localhost"}
        session.sendall(b"before")
        assert session.recv(100) == b"before"

        install(certs, "two.example", directory)
        time.sleep(0.3)
        # Files changed but nothing told the edge: still the old one.
        with handshake(edge_port, ca) as probe:
            assert "one.example" in names_of(probe.getpeercert())
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            with handshake(edge_port, ca) as probe:
                if "two.example" in names_of(probe.getpeercert()):
                    break
            assert time.monotonic() < deadline, "SIGHUP did not swap the certificate"
            time.sleep(0.1)
        # The session made before the swap carries on.
        session.sendall(b"after")
        assert session.recv(100) == b"after"
        session.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    text = output.decode("utf-8", "replace")
    assert "reloaded" in text, text
    assert "Traceback" not in text, text


@pytest_twisted.ensureDeferred
async def test_certificate_file_change_is_picked_up(certs: str, tmp_path: Any) -> None:
    directory = str(tmp_path)
    install(certs, "one.example", directory)
    origin, _ = listen_plain(b"hi\n")
    edge_port = free_port()
    data = {
        "certificates": [{"certificate": "edge.crt", "private_key": "edge.key"}],
        "apps": [
            {
                "name": "tls",
                "protocol": f"tcp/{edge_port}",
                "ips": ["127.0.0.1"],
                "tls": "flexible",
                "origin_direct": [f"tcp://127.0.0.1:{origin.getHost().port}"],
            }
        ],
    }
    edge = Edge(directory, data, check_interval=0.1)
    try:
        output, _ = await s_client(edge_port, stdin=b"x")
        assert "CN = one.example" in output
        install(certs, "two.example", directory)
        deadline = time.monotonic() + 5
        while True:
            output, _ = await s_client(edge_port, stdin=b"x")
            if "CN = two.example" in output:
                break
            assert time.monotonic() < deadline, output
            await sleep(0.1)
        # A broken replacement is refused; the last good certificate stays.
        with open(os.path.join(directory, "edge.crt"), "w") as f:
            f.write("not a certificate\n")
        await sleep(0.4)
        output, _ = await s_client(edge_port, stdin=b"x")
        assert "CN = two.example" in output
    finally:
        await edge.stop()
        await origin.stopListening()
