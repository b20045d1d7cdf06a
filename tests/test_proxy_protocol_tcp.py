"""
PROXY protocol on TCP: the header to a real PROXY-aware origin (nginx
stream), and headers from an upstream (HAProxy, and hand-made ones):
trusted, untrusted, malformed and late.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any, Iterator

import attr
import pytest
import pytest_twisted

from spectrum import status as S
from spectrum.model import Origin, Timeouts
from spectrum.proxy import proxyproto as pp

from conftest import free_port, require_program
from relaykit import OriginFactory, Proxy, connect_client, listen_origin, make_app, sleep

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def wait_listening(port: int, proc: subprocess.Popen, log: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {open(log).read() if os.path.exists(log) else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on {port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def nginx(tmp_path: Any) -> Iterator[tuple]:
    """
    nginx stream on a free port, PROXY protocol required on the listener;
    it answers with the client address the header declared and logs it.
    """
    binary = require_program("nginx")
    if not os.path.exists(NGINX_STREAM_MODULE):
        pytest.fail(f"{NGINX_STREAM_MODULE} is missing (Debian package libnginx-mod-stream)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    access = tmp_path / "access.log"
    conf.write_text(
        f"""
load_module {NGINX_STREAM_MODULE};
daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
stream {{
    log_format pp '$proxy_protocol_addr $proxy_protocol_port $remote_addr';
    access_log {access} pp;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        return "$proxy_protocol_addr $proxy_protocol_port\\n";
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, proc, str(tmp_path / "error.log"))
        yield port, access
    finally:
        stop(proc)


@pytest.mark.parametrize("mode", ["v1", "v2"])
@pytest_twisted.ensureDeferred
async def test_nginx_origin_logs_the_real_client_address(nginx: tuple, mode: str) -> None:
    nginx_port, access = nginx
    app = attr.evolve(make_app("pp", [Origin(name="nginx", address="127.0.0.1", port=nginx_port)]), proxy_protocol=mode)
    proxy = Proxy(app)
    try:
        client = await connect_client(proxy.port(), bind="127.0.0.7")
        client_port = client.transport.getHost().port
        answer = await client.done
        assert answer == f"127.0.0.7 {client_port}\n".encode()
        expected = f"127.0.0.7 {client_port} 127.0.0.1"
        for _ in range(50):
            if expected in access.read_text().splitlines():
                break
            await sleep(0.05)
        assert expected in access.read_text().splitlines(), access.read_text()
    finally:
        await proxy.stop()
    (event,) = [e for k, e in proxy.events if k == "disconnect"]
    assert event["ProxyProtocol"] == mode and event["ClientIP"] == "127.0.0.7"
    # The header is not the client's: only nginx's answer counts.
    assert event["ClientBytes"] == 0 and event["OriginBytes"] == len(answer)


@pytest_twisted.ensureDeferred
async def test_haproxy_upstream_to_spectrum_to_nginx_keeps_the_client(nginx: tuple, tmp_path: Any) -> None:
    """
    client 127.0.0.7 -> HAProxy (send-proxy-v2) -> spectrum (accepts it,
    sends v1 on) -> nginx: nginx sees 127.0.0.7.
    """
    binary = require_program("haproxy")
    nginx_port, access = nginx
    app = attr.evolve(
        make_app("chain", [Origin(name="nginx", address="127.0.0.1", port=nginx_port)]),
        proxy_protocol="v1",
        accept_proxy_protocol=("127.0.0.1/32",),
    )
    proxy = Proxy(app)
    hport = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(
        f"""
global
    pidfile {tmp_path}/haproxy.pid
defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
listen upstream
    bind 127.0.0.1:{hport}
    server spectrum 127.0.0.1:{proxy.port()} send-proxy-v2
"""
    )
    log = tmp_path / "haproxy.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        await sleep(0.3)
        assert proc.poll() is None, log.read_text()
        client = await connect_client(hport, bind="127.0.0.7")
        client_port = client.transport.getHost().port
        answer = await client.done
        assert answer == f"127.0.0.7 {client_port}\n".encode()
    finally:
        stop(proc)
        await proxy.stop()
    (event,) = [e for k, e in proxy.events if k == "disconnect"]
    assert event["ClientIP"] == "127.0.0.7" and event["ClientPort"] == client_port
    assert event["UpstreamIP"] == "127.0.0.1"


def inbound_app(origin_port: int, **changes: Any) -> Any:
    app = make_app("in", [Origin(name="o", address="127.0.0.1", port=origin_port)])
    changes.setdefault("accept_proxy_protocol", ("127.0.0.2/32",))
    return attr.evolve(app, **changes)


@pytest_twisted.ensureDeferred
async def test_trusted_upstream_declares_the_client_for_records_and_onward_header() -> None:
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(inbound_app(port.getHost().port, proxy_protocol="v2"))
    try:
        client = await connect_client(proxy.port(), bind="127.0.0.2")
        # The header and the first bytes in one segment.
        client.transport.write(pp.encode_v1(("203.0.113.9", 4242), ("127.0.0.1", proxy.port())) + b"hello")
        await sleep(0.2)
        client.transport.write(b" world")
        await sleep(0.2)
        client.transport.loseConnection()
        await client.done
        await sleep(0.1)
    finally:
        await proxy.stop()
        await port.stopListening()
    info, rest = pp.HeaderDecoder().feed(origin.closed[0])
    assert info.source == ("203.0.113.9", 4242)
    assert rest == b"hello world"
    (event,) = [e for k, e in proxy.events if k == "disconnect"]
    assert (event["ClientIP"], event["ClientPort"]) == ("203.0.113.9", 4242)
    assert event["ClientBytes"] == len(b"hello world") and event["UpstreamIP"] == "127.0.0.2"


@pytest_twisted.ensureDeferred
async def test_untrusted_malformed_and_late_headers_close_only_their_connection() -> None:
    origin = OriginFactory()
    port = listen_origin(origin)
    app = inbound_app(port.getHost().port, timeouts=Timeouts(connect=2.0, handshake=0.3))
    proxy = Proxy(app)
    try:
        good = await connect_client(proxy.port(), bind="127.0.0.2")
        good.transport.write(pp.encode_v2(("198.51.100.1", 1000), ("127.0.0.1", proxy.port())) + b"a")
        await sleep(0.1)

        # From an address not in trusted: closed, though the header is fine.
        untrusted = await connect_client(proxy.port(), bind="127.0.0.3")
        untrusted.transport.write(pp.encode_v1(("198.51.100.2", 1), ("127.0.0.1", 2)) + b"x")
        assert await untrusted.done == b""
        # Malformed from a trusted address: closed.
        malformed = await connect_client(proxy.port(), bind="127.0.0.2")
        malformed.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await malformed.done == b""
        # Half a header, then nothing: closed at the handshake timeout.
        started = time.monotonic()
        late = await connect_client(proxy.port(), bind="127.0.0.2")
        late.transport.write(b"PROXY TCP4 198.51.100.3")
        assert await late.done == b""
        assert 0.25 < time.monotonic() - started < 2

        # The good one carried on through all of that.
        good.transport.write(b"b")
        await sleep(0.1)
        assert bytes(good.received) == b"ab"
        good.transport.loseConnection()
        await good.done
        await sleep(0.1)
    finally:
        await proxy.stop()
        await port.stopListening()
    assert origin.accepted == 1
    refused = [e for k, e in proxy.events if k == "clientFiltered"]
    assert [(e["ClientIP"], e["Status"]) for e in refused] == [
        ("127.0.0.3", S.FIREWALL),
        ("127.0.0.2", S.BAD_PROXY_HEADER),
        ("127.0.0.2", S.BAD_PROXY_HEADER),
    ]
    assert "not trusted" in refused[0]["Reason"]
    assert "does not start with a PROXY" in refused[1]["Reason"]
    assert "within 0.3s" in refused[2]["Reason"]
    (done,) = [e for k, e in proxy.events if k == "disconnect"]
    assert done["ClientIP"] == "198.51.100.1" and done["ClientBytes"] == 2
    assert proxy.service.open_connections() == 0


@pytest_twisted.ensureDeferred
async def test_a_scoped_or_injected_declared_address_is_refused_and_never_forwarded() -> None:
    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(inbound_app(port.getHost().port, proxy_protocol="v1"))
    bad = [
        b"PROXY TCP6 fe80::1%\nX-Injected:1 ::1 1234 80\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1234 80\r\n",
        b"PROXY TCP6 ::1 fe80::2%lo 1234 80\r\n",
        b"PROXY TCP4 ::1 127.0.0.1 1234 80\r\n",
        b"PROXY TCP6 127.0.0.1 ::1 1234 80\r\n",
        b"PROXY TCP6 ::1  ::1 1234 80\r\n",
    ]
    try:
        for header in bad:
            client = await connect_client(proxy.port(), bind="127.0.0.2")
            client.transport.write(header + b"hello")
            assert await client.done == b"", header
        good = await connect_client(proxy.port(), bind="127.0.0.2")
        good.transport.write(b"PROXY TCP6 2001:db8::7 ::1 1234 80\r\nhello")
        await sleep(0.2)
        good.transport.loseConnection()
        await good.done
        await sleep(0.1)
    finally:
        await proxy.stop()
        await port.stopListening()
    # Only the good one reached the origin, with a clean header.
    assert origin.accepted == 1
    (received,) = origin.closed
    assert received.count(b"\n") == 1
    info, rest = pp.HeaderDecoder().feed(received)
    assert info.source == ("2001:db8::7", 1234) and rest == b"hello"
    refused = [e for k, e in proxy.events if k == "clientFiltered"]
    assert [e["Status"] for e in refused] == [S.BAD_PROXY_HEADER] * len(bad)
    assert all("\n" not in e["Reason"] for e in refused)


@pytest_twisted.ensureDeferred
async def test_edge_checks_and_hashing_see_the_declared_client() -> None:
    origins, ports = [], []
    for name in ("a", "b"):
        factory = OriginFactory(echo=False, greeting=name.encode())
        ports.append((factory, listen_origin(factory)))
        origins.append(Origin(name=name, address="127.0.0.1", port=ports[-1][1].getHost().port))
    app = attr.evolve(
        make_app("in", origins, load_balancing="hash"),
        accept_proxy_protocol=("127.0.0.0/8",),
    )
    proxy = Proxy(app)
    seen: list = []

    def block(app: Any, ip: str) -> Any:
        seen.append(ip)
        if ip == "203.0.113.66":
            return S.FIREWALL, "blocked by test rule"
        return None

    proxy.service.admission.gates.append(block)

    async def through(declared: str, bind: str) -> bytes:
        client = await connect_client(proxy.port(), bind=bind)
        client.transport.write(pp.encode_v2((declared, 1234), ("127.0.0.1", proxy.port())))
        # Until the origin's one-byte greeting came, or the edge closed.
        for _ in range(100):
            if client.received or client.done.called:
                break
            await sleep(0.01)
        client.transport.loseConnection()
        return await client.done

    try:
        assert await through("203.0.113.66", "127.0.0.2") == b""
        # The same declared client through different upstreams: one origin.
        answers = {await through("198.51.100.20", f"127.0.0.{i}") for i in range(2, 8)}
        assert len(answers) == 1 and answers <= {b"a", b"b"}
        spread = {await through(f"198.51.100.{i}", "127.0.0.2") for i in range(30, 60)}
        assert spread == {b"a", b"b"}
    finally:
        await proxy.stop()
        for _, port in ports:
            await port.stopListening()
    assert seen[0] == "203.0.113.66" and "127.0.0.2" not in seen
    (blocked,) = [e for k, e in proxy.events if k == "clientFiltered"]
    assert blocked["ClientIP"] == "203.0.113.66" and blocked["Status"] == S.FIREWALL
