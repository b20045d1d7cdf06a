"""
iperf3 -u through a UDP app (with a TCP app on the same port number for
iperf3's control connection): datagrams of 64, 1400 and 8900 bytes arrive
whole, and loss at a moderate rate stays near a direct run's.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from typing import Any, Dict

import pytest_twisted
from twisted.internet import utils

from spectrum.model import Origin

from conftest import free_port, require_program
from relaykit import Proxy, make_app, sleep
from udpkit import udp_app

TIMEOUT = shutil.which("timeout") or "/usr/bin/timeout"
#: (datagram size, offered rate): a moderate load for each size.
RUNS = [(64, "2M"), (1400, "40M"), (8900, "50M")]


def free_both() -> int:
    """
    A port free for both TCP and UDP on 127.0.0.1.
    """
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


async def iperf3_udp(binary: str, port: int, size: int, rate: str) -> Dict[str, Any]:
    args = ["-c", "127.0.0.1", "-p", str(port), "-u", "-b", rate, "-l", str(size), "-t", "1", "-w", "2M", "-J"]
    for _ in range(20):
        # Bounded: an iperf3 client whose first UDP datagram is lost waits
        # for the server's answer forever.
        out, err, code = await utils.getProcessOutputAndValue(TIMEOUT, ["20", binary] + args)
        assert code != 124, f"iperf3 -l {size} to port {port} did not finish in 20 s"
        result = json.loads(out)
        # The server takes a moment to finish the previous test.
        if "busy" not in result.get("error", ""):
            break
        await sleep(0.1)
    assert "error" not in result and code == 0, (port, size, result.get("error"), err)
    return result["end"]["sum_received"]


@pytest_twisted.ensureDeferred
async def test_iperf3_udp_through_the_edge_whole_datagrams_and_loss_near_direct() -> None:
    binary = require_program("iperf3")
    origin_port = free_both()
    server = subprocess.Popen(
        [binary, "-s", "-B", "127.0.0.1", "-p", str(origin_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    edge_port = free_both()
    target = [Origin(name="iperf3", address="127.0.0.1", port=origin_port)]
    proxy = Proxy(
        make_app("iperf3-control", target, edge_port=edge_port),
        udp_app("iperf3-data", target, edge_port=edge_port),
    )
    figures = []
    try:
        await sleep(0.3)
        for size, rate in RUNS:
            direct = await iperf3_udp(binary, origin_port, size, rate)
            through = await iperf3_udp(binary, edge_port, size, rate)
            figures.append((size, rate, direct, through))
            assert through["packets"] > 0
            # Whole: the receiver got size bytes for every datagram that came.
            assert through["bytes"] == (through["packets"] - through["lost_packets"]) * size, (size, through)
            assert through["lost_percent"] <= direct["lost_percent"] + 2.0, (size, direct, through)
    finally:
        await proxy.stop()
        server.terminate()
        server.wait(5)
    for size, rate, direct, through in figures:
        print(
            f"iperf3 -u -l {size} -b {rate}: direct {direct['packets']} datagrams"
            f" {direct['lost_percent']:.2f}% lost; through spectrum {through['packets']}"
            f" datagrams {through['lost_percent']:.2f}% lost, {through['bytes']} bytes"
        )
    sessions = [e for k, e in proxy.events if k == "disconnect" and e["ClientProto"] == "udp"]
    # A session per client address: two iperf3 runs that happen to get the
    # same ephemeral port within the idle timeout share one.
    assert 1 <= len(sessions) <= len(RUNS)
    assert all(e["ClientDatagrams"] >= 1 for e in sessions)
    assert sum(e["ClientDatagrams"] for e in sessions) >= sum(through["packets"] for *_, through in figures)
