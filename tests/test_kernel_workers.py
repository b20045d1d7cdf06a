"""
The kernel filter under C{workers: N}: the workers share one set of maps
(pinned in the bpf file system under the supervisor's pid), so an address's
rate is one bucket whichever worker's socket the kernel picks, and the
counters are the node's; nothing stays pinned after a stop, and what a
supervisor killed with SIGKILL left is removed at the next start.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Dict

import pytest
import requests
from test_kernel import require_kernel_filter

from adminkit import EDIT, READ
from conftest import IN_CI, free_port
from nodekit import EchoOrigin, Node, app_config, listening_sockets

RATE = 20
BURST = 300
BLOCKED = 10


def require_bpffs() -> None:
    """
    The bpf file system at /sys/fs/bpf, where the workers pin their maps
    (systemd mounts it at boot; a bare container may not have it: mount it,
    as root may).
    """
    import subprocess

    from spectrum.kernel.shield import PIN_ROOT

    with open("/proc/mounts") as f:
        if any(line.split()[1:3] == [PIN_ROOT, "bpf"] for line in f):
            return
    done = subprocess.run(["mount", "-t", "bpf", "bpf", PIN_ROOT], capture_output=True, text=True)
    if done.returncode != 0:
        message = f"no bpf file system at {PIN_ROOT}: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)


def handshakes(port: int, source: str, count: int, wait: float = 0.4) -> int:
    """
    C{count} connects from C{source} at once; how many handshakes completed
    within C{wait} seconds (under the 1 s SYN retransmission: one SYN each).
    """
    sockets = []
    try:
        for _ in range(count):
            client = socket.socket()
            client.setblocking(False)
            client.bind((source, 0))
            client.connect_ex(("127.0.0.1", port))
            sockets.append(client)
        time.sleep(wait)
        done = 0
        for client in sockets:
            try:
                client.getpeername()
            except OSError:
                continue
            done += 1
        return done
    finally:
        for client in sockets:
            client.close()


def start_node(tmp_path: Path, name: str, port: int, origin: EchoOrigin, admin: int) -> Node:
    app: Dict[str, Any] = app_config("echo", port, origin.port)
    app["limits"] = {"per_ip_rate": RATE}
    config = {
        "kernel_filter": "on",
        "workers": 2,
        "apps": [app],
        "access_rules": [{"mode": "block", "configuration": {"target": "ip_range", "value": "127.1.0.0/16"}}],
        "admin": {
            "listen": f"tcp:{admin}:interface=127.0.0.1",
            "tokens": [
                {"name": "ops", "token": EDIT, "permissions": "edit"},
                {"name": "r", "token": READ, "permissions": "read"},
            ],
        },
    }
    node = Node(tmp_path, name, config).start()
    node.wait_log(r"worker 1 started")
    deadline = time.monotonic() + 15
    while listening_sockets(port) < 2:
        assert time.monotonic() < deadline, "the two workers do not both listen"
        time.sleep(0.05)
    return node


def pins_of(node: Node) -> str:
    from spectrum.kernel.shield import pin_directory

    assert node.process is not None
    return pin_directory(node.process.pid)


def test_workers_share_one_rate_and_one_set_of_counters(tmp_path: Path) -> None:
    require_kernel_filter()
    require_bpffs()
    origin = EchoOrigin()
    port, admin = free_port(), free_port()
    node = start_node(tmp_path, "edge", port, origin, admin)
    try:
        pins = pins_of(node)
        (scope,) = os.listdir(pins)
        assert "counters" in os.listdir(os.path.join(pins, scope))
        # One bucket for the address whichever worker's socket the kernel
        # chose for each SYN: its size (and what refilled meanwhile) got in,
        # not one bucket's worth per worker.
        admitted = handshakes(port, "127.0.0.55", BURST)
        assert RATE <= admitted <= RATE + 10
        for index in range(BLOCKED):
            assert handshakes(port, f"127.1.0.{index + 1}", 1, wait=0.2) == 0
        # The admin (in worker 0) reads the node's counters: both workers' drops.
        answer = requests.get(
            f"http://127.0.0.1:{admin}/client/v4/zones/local/spectrum/kernel",
            headers={"Authorization": f"Bearer {READ}"},
            timeout=5,
        ).json()["result"]
        packets = {drop["reason"]: drop["packets"] for drop in answer["dropped"]}
        assert packets.pop("per_ip_rate") == BURST - admitted
        assert list(packets.values()) == [BLOCKED]
    finally:
        node.stop()
        origin.close()
    assert not os.path.exists(pins), "the maps stay pinned after a stop"


def test_pins_left_by_a_killed_supervisor_are_removed_at_the_next_start(tmp_path: Path) -> None:
    require_kernel_filter()
    require_bpffs()
    origin = EchoOrigin()
    port = free_port()
    node = start_node(tmp_path, "first", port, origin, free_port())
    try:
        pins = pins_of(node)
        assert os.path.isdir(pins)
        assert node.process is not None
        node.process.kill()  # SIGKILL: no chance to unpin
        node.process.wait()
        deadline = time.monotonic() + 10
        while listening_sockets(port):
            assert time.monotonic() < deadline, "orphaned workers keep the edge port"
            time.sleep(0.05)
        # Nothing is attached (the sockets are gone); the maps stay pinned
        # until the next start.
        assert os.path.isdir(pins)
        killed = node.process.pid
        again = start_node(tmp_path, "second", port, origin, free_port())
        try:
            again.wait_log(rf"removed the maps pinned by spectrum {killed}, which is gone")
            assert not os.path.exists(pins)
        finally:
            again.stop()
    finally:
        node.stop()
        origin.close()


def test_maps_stay_private_where_they_cannot_be_pinned(tmp_path: Path) -> None:
    """
    A directory that is not a bpf file system: the scope gets this
    process's own maps (and a warning), not a failed listener.
    """
    require_kernel_filter()
    from spectrum.kernel.shield import KernelShield
    from spectrum.model import Limits

    class App:
        name = "game"
        ip_firewall = True
        limits = Limits(per_ip_rate=5)

    shield = KernelShield("on")
    try:
        shield.share(str(tmp_path / "pins"))
        scope = shield.scope_for([App()])
        assert scope is not None and scope.directory is None and shield.directory is None
        assert scope.per_ip_rate == 5
        assert os.listdir(tmp_path / "pins") == []
    finally:
        shield.close()
