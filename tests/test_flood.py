"""
A connection flood from a blocked /16 against a real C{twistd spectrum}:
the service keeps relaying its legitimate client, every refused connection
is counted (C{/metrics} and analytics agree with the flooder's completed
handshakes), and the event log keeps a sampled share of them plus one
summary line per second, so a flood cannot fill the disk.

The flooder is bench/flood.c (random sources in 127.1.0.0/16, non-blocking
connects, a bounded number in flight), compiled with gcc for the test.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from typing import Any, Dict, List

from prometheus_client.parser import text_string_to_metric_families

from bench.flood import compile_flooder, run_flooder

from conftest import free_port, require_program
from procs import NamedOrigin, start_twistd, tcp_app, wait_until, write_config

#: Seconds of flood (the test is bounded by it).
FLOOD_SECONDS = 3.0
#: Connections a second the flooder starts: well above what a legitimate
#: client base opens, and steady, so the figure does not hang on how the
#: two cores are shared with the test's own client and origin (the bench,
#: bench/flood.py, floods as fast as the proxy accepts, beside its peers).
FLOOD_RATE = 20000
#: Records per app and second the event log keeps (spectrum.refusals).
SAMPLED_PER_SECOND = 20


def round_trips(port: int, seconds: float, stop: threading.Event) -> int:
    """
    Echo round trips through the edge on one connection for C{seconds}.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        assert reader.readline() == b"o\n"
        count = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            sock.sendall(b"ping\n")
            assert reader.readline() == b"ping\n"
            count += 1
        return count


def refused_total(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as answer:
        text = answer.read().decode("utf-8")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "spectrum_refused_total" and sample.labels.get("app") == "game":
                total += sample.value
    return total


def test_a_flood_from_a_blocked_range_is_shed_and_counted(tmp_path: Any) -> None:
    require_program("gcc")
    flooder = compile_flooder(str(tmp_path))
    origin = NamedOrigin("o")
    edge, admin = free_port(), free_port()
    events = tmp_path / "events.jsonl"
    config = {
        "kernel_filter": "off",
        "access_rules": [{"mode": "block", "configuration": {"target": "ip_range", "value": "127.1.0.0/16"}}],
        "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"},
        "events": {"path": str(events), "flush_interval": 0.1},
        "apps": [tcp_app("game", edge, [origin.port])],
    }
    proxy = start_twistd(write_config(tmp_path / "spectrum.json", config), tmp_path / "twistd.log", [edge, admin])
    stop = threading.Event()
    try:
        alone = round_trips(edge, 1.5, stop) / 1.5
        under: List[int] = []
        client = threading.Thread(target=lambda: under.append(round_trips(edge, FLOOD_SECONDS - 0.5, stop)))
        counts: Dict[str, float] = {}
        client.start()
        try:
            counts = run_flooder(flooder, edge, FLOOD_SECONDS, inflight=256, rate=FLOOD_RATE)
        finally:
            client.join(FLOOD_SECONDS + 10)
            stop.set()
        ratio = under[0] / (FLOOD_SECONDS - 0.5) / alone
        completed = counts["completed"]
        assert completed > 1000, counts

        # Every completed handshake was accepted and refused, and counted.
        def settled() -> bool:
            return abs(refused_total(admin) - completed) <= completed * 0.01

        wait_until(settled, timeout=15, what=f"refusals counted near {completed:.0f}")
        assert ratio >= 0.3, f"legitimate round trips/s under the flood: {ratio:.2f} of {alone:.0f}/s alone"
        assert proxy.poll() is None

        # The event log: at most the sampled share per second, and one
        # summary line per second for the rest; together, every refusal.
        proxy.stop()
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        filtered = [e for e in lines if e.get("Event") == "clientFiltered"]
        summaries = [e for e in lines if e.get("Event") == "clientFilteredSummary"]
        per_second: Dict[int, int] = {}
        for event in filtered:
            second = int(event["DisconnectTimestamp"])
            per_second[second] = per_second.get(second, 0) + 1
        assert max(per_second.values()) <= SAMPLED_PER_SECOND
        assert len({e["Second"] for e in summaries}) == len(summaries)
        assert len(filtered) + sum(e["Count"] for e in summaries) == refused_total_from(lines)
        assert abs(len(filtered) + sum(e["Count"] for e in summaries) - completed) <= completed * 0.01
        assert os.path.getsize(events) < 200 * 1024
    finally:
        stop.set()
        if proxy.poll() is None:
            proxy.kill()
        origin.close()


def refused_total_from(lines: List[Dict[str, Any]]) -> int:
    """
    The refusals the event log accounts for: its lines plus its summaries.
    """
    return sum(1 for e in lines if e.get("Event") == "clientFiltered") + sum(
        e["Count"] for e in lines if e.get("Event") == "clientFilteredSummary"
    )
