"""
A UDP app from a config file, served by twistd: datagrams relayed, the
session ended by a reload that removes the app (SIGHUP), and a clean stop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from conftest import free_port
from dnskit import name_server
from procs import STOPPED_BY_SIGTERM, Twistd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_twistd_udp_app_relays_reloads_and_stops(tmp_path: Any) -> None:
    origin = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    origin.bind(("127.0.0.1", 0))
    origin.settimeout(5)
    origin_port = origin.getsockname()[1]
    edge = free_port(kind=socket.SOCK_DGRAM)
    other = free_port(kind=socket.SOCK_DGRAM)
    config = tmp_path / "spectrum.yaml"
    app = f"""
  - name: game
    protocol: udp/{edge}
    ips: [127.0.0.1]
    origin_direct: ["udp://127.0.0.1:{origin_port}"]
    proxy_protocol: simple
    timeouts: {{idle: 30}}
    limits: {{per_ip_sessions: 4}}
"""
    keep = f"""
  - name: other
    protocol: udp/{other}
    ips: [127.0.0.1]
    origin_direct: ["udp://127.0.0.1:{origin_port}"]
"""
    config.write_text("apps:" + app + keep)
    log = tmp_path / "spectrum.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "twisted", f"--log-file={log}", "--log-format=text", "spectrum"]
        + ["--config", str(config), "--drain-timeout", "2"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)
    try:
        wait_for(lambda: log.exists() and f"listening on 127.0.0.1:{other}" in log.read_text())
        client.sendto(b"ping", ("127.0.0.1", edge))
        data, session = origin.recvfrom(65535)
        assert data[:2] == b"\x56\xec" and data[38:] == b"ping"
        # Reply with the header reversed, as an SPP-aware origin does.
        from spectrum.proxy.proxyproto import reverse_simple

        origin.sendto(reverse_simple(data[:38]) + b"pong", session)
        assert client.recvfrom(65535)[0] == b"pong"

        config.write_text("apps:" + keep)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "disconnect status 200" in log.read_text())
        text = log.read_text()
        assert f"game: 127.0.0.1:{client.getsockname()[1]} disconnect status 200" in text
        assert f"stopped listening on 127.0.0.1:{edge} (udp)" in text
        # One line per session (its end), not Twisted's start and close lines
        # for the session's own origin socket.
        assert "_OriginDatagrams starting on" not in text
        assert set(re.findall(r"\(UDP Port (\d+) Closed\)", text)) <= {str(edge), str(other)}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        client.close()
        origin.close()
    # twist stops its reactor on SIGTERM, then exits by that signal.
    assert code in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Main loop terminated." in text
    assert "Traceback" not in text and "Unhandled" not in text


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_datagrams_waiting_on_a_slow_name_are_bounded(tmp_path: Any) -> None:
    """
    Forty clients each send 64 datagrams of 65,000 bytes to a UDP app whose
    origin's name is never answered: what the sessions keep while they wait
    is bounded (per session and in all), the rest is dropped and counted in
    each session's record.
    """

    edge = free_port(kind=socket.SOCK_DGRAM)
    config = tmp_path / "spectrum.yaml"
    events = tmp_path / "events.jsonl"
    clients = []
    with name_server(tmp_path, {"slow.test": "silent"}) as server:
        config.write_text(
            f"""
resolvers: ["127.0.0.1:{server.port}"]
events: {{path: {events}, flush_interval: 0.1}}
apps:
  - name: slow
    protocol: udp/{edge}
    ips: [127.0.0.1]
    origin_direct: ["udp://slow.test:9"]
    timeouts: {{connect: 8}}
"""
        )
        proxy = Twistd(str(config), tmp_path / "twistd.log")
        try:
            proxy.wait_for_log(f"listening on 127.0.0.1:{edge}")
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.sendto(b"warm", ("127.0.0.1", edge))
            probe.close()
            time.sleep(0.5)
            before = _rss(proxy.pid)
            payload = b"x" * 65000
            for _ in range(40):
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                clients.append(client)
                for _ in range(64):
                    client.sendto(payload, ("127.0.0.1", edge))
                # Let the edge read them all before the next client's.
                time.sleep(0.05)
            time.sleep(0.5)
            grown = _rss(proxy.pid) - before
            # At most 64 KiB kept per session: 2.5 MiB for the forty (and
            # what reading and recording them costs); unbounded, 160 MiB.
            assert grown < 24 * 1024 * 1024, grown
            # The sessions end at the connect timeout (523), each counting
            # what it dropped.
            wait_for(lambda: events.exists() and events.read_text().count('"Status":523') >= 41, timeout=15)
        finally:
            code = proxy.stop()
            for client in clients:
                client.close()
    ends = [json.loads(line) for line in events.read_text().splitlines() if '"Status":523' in line]
    dropped = [e["DroppedDatagrams"] for e in ends if e["ClientDatagrams"] == 64]
    assert len(dropped) >= 30 and all(d >= 63 for d in dropped), dropped
    assert code == STOPPED_BY_SIGTERM
