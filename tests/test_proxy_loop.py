"""
A proxy loop the config check cannot see (two apps pointing at each other
through a hostname that resolves to this machine) is stopped at run time:
a connection arriving from one of the process's own origin sockets is
refused (status 508), so one client costs one extra connection, not
hundreds until the descriptors run out. Real C{twistd spectrum}.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, List

import pytest_twisted

from spectrum.model import Config, Origin, Timeouts

from adminkit import document
from conftest import free_port
from edgekit import EdgeProxy, exchange, origin_at
from edgekit import wait_until as wait_for
from procs import NamedOrigin, greeting, start_twistd, wait_until, write_config
from relaykit import OriginFactory, black_hole, listen_origin, make_app


def local_hostname() -> str:
    """
    This machine's name, which resolves to one of its own addresses (the
    config check does not resolve names, so it cannot see the loop).
    """
    name = socket.gethostname()
    address = socket.gethostbyname(name)
    with socket.socket() as s:
        s.bind((address, 0))  # it is this machine's
    return name


def app(name: str, edge: int, origin: str, port: int) -> Any:
    return {"name": name, "protocol": f"tcp/{edge}", "ips": ["0.0.0.0"], "origin_direct": [f"tcp://{origin}:{port}"]}


def events(path: Any) -> List[Any]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def test_two_apps_pointing_at_each_other_stop_after_one_hop(tmp_path: Any) -> None:
    host = local_hostname()
    a, b, bystander = free_port("0.0.0.0"), free_port("0.0.0.0"), free_port()
    origin = NamedOrigin("o")
    data = document(
        [
            app("a", a, host, b),
            app("b", b, host, a),
            {
                "name": "bystander",
                "protocol": f"tcp/{bystander}",
                "ips": ["127.0.0.1"],
                "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
            },
        ]  # fmt: skip
    )
    del data["admin"]
    log = tmp_path / "events.jsonl"
    data["events"] = {"path": str(log), "flush_interval": 0.05}
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", [a, b, bystander])
    try:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", a), timeout=5) as client:
            client.sendall(b"hello\n")
            try:
                assert client.recv(100) == b""
            except ConnectionResetError:
                pass  # closed with a reset: as good as closed
        assert time.monotonic() - started < 2
        looped = wait_until(
            lambda: [e for e in events(log) if e["Status"] == 508], what="the loop refused with status 508"
        )
        assert all("a proxy loop" in e["Reason"] and e["Application"] in ("a", "b") for e in looped), looped
        assert greeting(bystander) == b"o"
        # The loop went a few hops at most (not hundreds until EMFILE), and
        # nothing of it stays open.
        time.sleep(0.5)
        connects = [e for e in events(log) if e["Event"] == "connect" and e["Application"] != "bystander"]
        assert 1 <= len(connects) <= 6, connects
        assert len(os.listdir(f"/proc/{proxy.pid}/fd")) < 40
    finally:
        proxy.stop()
        origin.close()


@pytest_twisted.ensureDeferred
async def test_origin_sockets_are_forgotten_on_every_way_out() -> None:
    """
    The process's own origin sockets (what a loop is recognised by) are
    known from connect() on and forgotten however the connection ends:
    relayed and closed, the connect timed out, the connect refused; else
    the set grows with every connection.
    """
    origin = OriginFactory()
    listening = listen_origin(origin)
    with black_hole() as (host, port):
        apps = (
            make_app("relayed", [origin_at(listening)]),
            make_app("stuck", [Origin("hole", host, port)], timeouts=Timeouts(connect=1.0)),
            make_app("refused", [Origin("closed", "127.0.0.1", free_port())]),
        )
        proxy = EdgeProxy(Config(apps=apps))
        admission = proxy.service.admission
        try:
            assert await exchange(proxy.port("relayed"), None) == b"ping"
            stuck = socket.create_connection(("127.0.0.1", proxy.port("stuck")))
            await wait_for(lambda: len(admission.origin_sockets) == 1, what="the stuck connect known")
            ((local_ip, local_port, origin_ip, origin_port),) = admission.origin_sockets
            assert (origin_ip, origin_port) == (host, port) and local_port > 0
            stuck.close()
            assert await exchange(proxy.port("refused"), None) == b""
            await wait_for(lambda: not admission.origin_sockets, what="every origin socket forgotten")
        finally:
            await proxy.stop()
            await listening.stopListening()
