"""
C{workers: N}: N processes share the edge port, the supervisor restarts one
that dies, and stops them all.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import free_port
from nodekit import EchoOrigin, Node, app_config, echo_once, listening_sockets, wait_port


@pytest.fixture
def origin():
    server = EchoOrigin()
    yield server
    server.close()


def test_two_workers_share_the_port_and_one_is_restarted(tmp_path: Path, origin: EchoOrigin) -> None:
    port = free_port()
    node = Node(tmp_path, "edge", {"apps": [app_config("echo", port, origin.port)], "workers": 2}).start()
    try:
        started = node.wait_log(r"worker (\d) started \(pid (\d+)\)", count=2)
        pids = {int(m.group(1)): int(m.group(2)) for m in started}
        assert sorted(pids) == [0, 1]
        wait_port(port)
        deadline = time.monotonic() + 10
        while listening_sockets(port) < 2:
            assert time.monotonic() < deadline, "the two workers do not both listen"
            time.sleep(0.05)
        for i in range(40):
            assert echo_once(port, b"hello %d" % i) == b"hello %d" % i

        os.kill(pids[0], signal.SIGKILL)
        # Once it is gone (connections queued on its socket at the moment it
        # died are reset: the kernel's doing), the other worker serves every
        # new connection until it is back.
        node.wait_log(r"worker 0 exited")
        assert listening_sockets(port) == 1
        for i in range(40):
            assert echo_once(port, b"during %d" % i) == b"during %d" % i
        restarted = node.wait_log(r"worker 0 started \(pid (\d+)\)", count=2)[-1]
        assert int(restarted.group(1)) != pids[0]
        deadline = time.monotonic() + 10
        while listening_sockets(port) < 2:
            assert time.monotonic() < deadline, "the restarted worker does not listen"
            time.sleep(0.05)
        assert echo_once(port, b"after") == b"after"
    finally:
        status = node.stop()
    # twistd ends by the signal that stopped it (or 0 on older Twisted).
    assert status in (0, -signal.SIGTERM), node.log()
    # Every worker is gone with the supervisor: nothing listens any more.
    assert listening_sockets(port) == 0


def test_workers_option_overrides_the_config(tmp_path: Path, origin: EchoOrigin) -> None:
    port = free_port()
    node = Node(tmp_path, "edge", {"apps": [app_config("echo", port, origin.port)]}, ["--workers", "3"]).start()
    try:
        node.wait_log(r"worker 2 started", count=1)
        deadline = time.monotonic() + 10
        while listening_sockets(port) < 3:
            assert time.monotonic() < deadline, "three workers do not all listen"
            time.sleep(0.05)
        assert echo_once(port) == b"ping"
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()
