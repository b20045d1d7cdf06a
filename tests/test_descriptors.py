"""
The descriptor limit: twistd started under Debian's stock limit (1024, soft
and hard) says what it can hold, and a crowd of UDP clients cannot take the
descriptors TCP apps and the admin need.
"""

from __future__ import annotations

import json
import resource
import socket
import time
import urllib.request
from typing import Any, List

import pytest_twisted

from spectrum import status as S
from spectrum.descriptors import CONNECTION, RESERVE, open_descriptors
from spectrum.model import Origin

from conftest import free_port
from procs import STOPPED_BY_SIGTERM, Client, NamedOrigin, Twistd, write_config
from relaykit import OriginFactory, Proxy, connect_client, listen_origin, make_app, sleep

TOKEN = "read-token-0123456789abcdef"


def _stock_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _apps(admin: int) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}/client/v4/zones/local/spectrum/apps",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_udp_clients_leave_descriptors_for_tcp_and_the_admin(tmp_path: Any) -> None:
    """
    1500 datagrams from 1500 source ports to a UDP app, under a limit of
    1024: the UDP sessions stop short of the limit (the rest refused with
    432), and meanwhile TCP clients are relayed and the admin answers.
    """
    udp_edge, tcp_edge, admin = free_port(kind=socket.SOCK_DGRAM), free_port(), free_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    events = tmp_path / "events.jsonl"
    clients: List[socket.socket] = []
    with NamedOrigin("tcp-origin") as origin:
        config = {
            "events": {"path": str(events), "flush_interval": 0.1},
            "admin": {
                "listen": f"tcp:{admin}:interface=127.0.0.1",
                "tokens": [{"name": "viewer", "token": TOKEN, "permissions": "read"}],
            },
            "apps": [
                {
                    "name": "crowd",
                    "protocol": f"udp/{udp_edge}",
                    "ips": ["127.0.0.1"],
                    "origin_direct": [f"udp://127.0.0.1:{sink.getsockname()[1]}"],
                },
                {
                    "name": "shell",
                    "protocol": f"tcp/{tcp_edge}",
                    "ips": ["127.0.0.1"],
                    "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
                },
            ],
        }
        path = write_config(tmp_path / "spectrum.json", config)
        proxy = Twistd(path, tmp_path / "twistd.log", preexec_fn=_stock_limit)
        try:
            proxy.wait_for_log(f"AdminSite starting on {admin}")
            assert resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE) == (1024, 1024)
            for _ in range(1500):
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                client.sendto(b"hello", ("127.0.0.1", udp_edge))
                clients.append(client)
            time.sleep(1.0)
            # The bystanders: TCP clients relayed, the admin answering.
            held = []
            for _ in range(50):
                # One at a time: the origin's accept queue is short.
                held.append(Client(tcp_edge))
                assert held[-1].read_line() == b"tcp-origin"
            assert [c.exchange(b"ping") for c in held] == [b"ping"] * 50
            assert [app["name"] for app in _apps(admin)["result"]] == ["crowd", "shell"]
            for c in held:
                c.close()
            line = proxy.wait_for_log("file descriptors:")
        finally:
            code = proxy.stop()
            for client in clients:
                client.close()
            sink.close()
    text = events.read_text()
    refused = [json.loads(e) for e in text.splitlines() if '"Status":432' in e]
    sessions = text.count('"Event":"connect","Application":"crowd"')
    assert sessions + len(refused) <= 1500 and sessions < 1000 and refused, (sessions, len(refused))
    assert f"room for {sessions} UDP sessions" in line, line
    assert code == STOPPED_BY_SIGTERM


def test_the_soft_limit_is_raised_to_the_hard_limit(tmp_path: Any) -> None:
    """
    Started with a soft limit below the hard one, twistd runs with the hard
    one and says so.
    """

    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    assert hard > 1024, "this test needs a hard descriptor limit above 1024"

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    edge = free_port()
    with NamedOrigin("o") as origin:
        app = {
            "name": "a",
            "protocol": f"tcp/{edge}",
            "ips": ["127.0.0.1"],
            "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
        }
        path = write_config(tmp_path / "spectrum.json", {"apps": [app]})
        proxy = Twistd(path, tmp_path / "twistd.log", preexec_fn=low_soft_limit)
        try:
            line = proxy.wait_for_log("file descriptors:")
            assert resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE) == (hard, hard)
            assert f"limit {hard}, raised from 1024;" in line
        finally:
            proxy.stop()


@pytest_twisted.ensureDeferred
async def test_tcp_clients_past_the_share_are_refused_at_accept() -> None:
    """
    With room for three connections, a fourth client is refused at once
    (431, counted) while the three are relayed.
    """
    origin = listen_origin(OriginFactory(greeting=b"hi\n"))
    proxy = Proxy(make_app("tight", [Origin(name="o", address="127.0.0.1", port=origin.getHost().port)]))
    descriptors = proxy.service.descriptors
    descriptors.limit = open_descriptors() + RESERVE + 3 * CONNECTION
    descriptors.rebase()
    try:
        held = [await connect_client(proxy.port()) for _ in range(3)]
        await sleep(0.1)
        refused = await connect_client(proxy.port())
        assert await refused.done == b""
        assert [bytes(c.received) for c in held] == [b"hi\n"] * 3
        statuses = [e["Status"] for kind, e in proxy.events if kind == "clientFiltered"]
        assert statuses == [S.MAX_CONNECTIONS]
        for client in held:
            client.transport.loseConnection()
            await client.done
    finally:
        await proxy.stop()
        await origin.stopListening()
