"""
C{workers: N}: N processes share the edge port, the supervisor restarts one
that dies, and stops them all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Tuple

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


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_workers_share_rules_apps_and_figures(tmp_path: Path, origin: EchoOrigin, kind: str) -> None:
    """
    The workers share state: with the memory store the supervisor holds it
    and serves it to them, with Redis they use Redis. The admin API (worker
    0's) sees both workers' traffic, and a rule or an app made through it
    applies in every worker.
    """
    from test_cluster import ClusterNode, settled, wait_until

    from rediskit import RedisServer

    redis = RedisServer().start() if kind == "redis" else None
    store = redis.url() if redis is not None else "memory"
    node = ClusterNode(tmp_path, "edge", store, origin)
    node.process.config_path.write_text(node.process.config_path.read_text() + "workers: 2\n")
    node.start()
    try:
        node.process.wait_log(r"store: edge-w1 in step")
        node.ready()
        deadline = time.monotonic() + 10
        while listening_sockets(node.edge) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = settled(node)["count"]
        for i in range(60):
            assert echo_once(node.edge, b"%d" % i) == b"%d" % i
        wait_until(lambda: node.summary()["count"] >= before + 120, 5.0, "figures of both workers")
        assert node.summary()["count"] == before + 120
        nodes = node.api("GET", "/zones/local/spectrum/cluster")["nodes"]
        # The kernel spread the connections over both workers.
        assert set(nodes) == {"edge-w0", "edge-w1"}
        assert all(nodes[w]["echo"]["events"].get("connect", 0) > 0 for w in nodes), nodes

        # A rule made through the API refuses clients in both workers.
        node.api("POST", "/user/firewall/access_rules/rules",
                 {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.1"}})  # fmt: skip
        time.sleep(0.5)
        refused = 0
        for _ in range(30):
            try:
                refused += echo_once(node.edge, b"x") == b""
            except OSError:
                refused += 1
        assert refused == 30

        # An app made through the API listens in both workers.
        port = free_port()
        node.api("POST", "/zones/local/spectrum/apps",
                 {"protocol": f"tcp/{port}", "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
                  "dns": {"type": "CNAME", "name": "made.example.com"}, "ip_firewall": False})  # fmt: skip
        deadline = time.monotonic() + 3
        while listening_sockets(port) < 2:
            assert time.monotonic() < deadline, "the app made through the API does not listen in both workers"
            time.sleep(0.05)
        assert echo_once(port, b"new app") == b"new app"
    finally:
        status = node.stop()
        if redis is not None:
            redis.kill()
    assert status in (0, -signal.SIGTERM), node.process.log()


def test_worker_command_lines() -> None:
    from spectrum.workers import TWISTD, worker_argv

    build = worker_argv("/etc/s.yaml", 10.0, "/tmp/x/store.sock", ["twistd", "-n", "spectrum", "--workers", "2"])
    assert build(1) == [*TWISTD, "-n", "--pidfile=", "spectrum", "--config", "/etc/s.yaml", "--drain-timeout",
                        "10.0", "--store-socket", "/tmp/x/store.sock", "--worker", "1"]  # fmt: skip
    # A log file of its own per worker: twistd rotates the file it writes.
    build = worker_argv("/etc/s.yaml", 5.0, None, ["twistd", "--logfile", "/var/log/s.log", "spectrum"])
    assert build(0)[len(TWISTD) : len(TWISTD) + 3] == ["-n", "--pidfile=", "--logfile=/var/log/s.log.w0"]
    assert "--store-socket" not in build(0)
    build = worker_argv("/etc/s.yaml", 5.0, None, ["twistd", "-l", "-", "spectrum"])
    assert not any(a.startswith("--logfile") for a in build(0))


def test_workers_share_a_udp_port(tmp_path: Path, origin: EchoOrigin) -> None:
    from nodekit import UDPEchoOrigin, udp_echo_once, udp_sockets

    udp_origin = UDPEchoOrigin()
    port, udp_port = free_port(), free_port(kind=socket.SOCK_DGRAM)
    udp_app = dict(app_config("dns", udp_port, udp_origin.port), protocol="udp")
    node = Node(tmp_path, "edge", {"apps": [app_config("echo", port, origin.port), udp_app], "workers": 2}).start()
    try:
        node.wait_log(r"worker 1 started")
        deadline = time.monotonic() + 15
        while udp_sockets(udp_port) < 2 or listening_sockets(port) < 2:
            assert time.monotonic() < deadline, "the two workers do not both bind the TCP and UDP ports"
            time.sleep(0.05)
        for i in range(20):
            assert udp_echo_once(udp_port, b"datagram %d" % i) == b"datagram %d" % i
    finally:
        status = node.stop()
        udp_origin.close()
    assert status in (0, -signal.SIGTERM), node.log()


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, origin: EchoOrigin) -> None:
    port = free_port()
    node = Node(tmp_path, "edge", {"apps": [app_config("echo", port, origin.port)], "workers": 2}).start()
    try:
        node.wait_log(r"worker 1 started")
        deadline = time.monotonic() + 15
        while listening_sockets(port) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert node.process is not None
        node.process.kill()  # SIGKILL: no chance to stop the workers
        node.process.wait()
        deadline = time.monotonic() + 5
        while listening_sockets(port):
            assert time.monotonic() < deadline, "orphaned workers keep the edge port"
            time.sleep(0.05)
    finally:
        node.stop()


def _workers_alive(log: str) -> list:
    pids = [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", log)]
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid)]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.parametrize("what", ["edge", "admin"])
def test_a_worker_that_cannot_start_stops_the_service(tmp_path: Path, origin: EchoOrigin, what: str) -> None:
    """
    Issue 16, fault 3: with a port no worker can bind, the supervisor
    restarted the workers forever and looked healthy. A worker that fails
    at start stops the whole service with its one line, exit status 1.
    The edge port is checked by the supervisor before any worker starts;
    the admin port, which worker 0 binds, is reported by that worker.
    """
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    config = {"apps": [app_config("echo", busy if what == "edge" else free_port(), origin.port)], "workers": 2}
    if what == "admin":
        token = {"name": "t", "token": "x" * 32, "permissions": "read"}
        config["admin"] = {"listen": f"tcp:{busy}:interface=127.0.0.1", "tokens": [token]}
    expected = {
        "edge": f"spectrum: apps[0] (echo): cannot listen on 127.0.0.1:{busy}: Address already in use",
        "admin": f"spectrum: admin.listen: cannot listen on 'tcp:{busy}:interface=127.0.0.1': Address already in use",
    }[what]
    node = Node(tmp_path, "edge", config).start()
    try:
        assert node.process is not None
        try:
            status = node.process.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after 20 s:\n{node.log()}") from None
        log = node.log()
        assert status == 1, log
        assert log.count(expected) == 1, log
        assert "Traceback" not in log and "restarting" not in log, log
        assert not _workers_alive(log), log
    finally:
        taken.close()
        node.stop()


def _events(path: Path) -> Dict[str, int]:
    """
    Events by kind in one event log, and the bytes of the closed ones.
    """
    counts: Dict[str, int] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind = event["Event"]
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "disconnect":
            counts["bytes"] = counts.get("bytes", 0) + event["ClientBytes"]
    return counts


def _scrape(admin: int) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_cover_every_worker(tmp_path: Path, origin: EchoOrigin) -> None:
    """
    C{/metrics} of C{--workers 2} (served by worker 0) counts both workers'
    connections: summed, and per worker under a C{worker} label, equal to
    each worker's own event log.
    """
    port, admin = free_port(), free_port()
    config = {
        "apps": [app_config("echo", port, origin.port)],
        "events": {"path": str(tmp_path / "events.jsonl")},
        "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"},
    }
    node = Node(tmp_path, "edge", config, ["--workers", "2"]).start()
    try:
        node.wait_log(r"store: \S+-w1 in step")
        wait_port(port)
        wait_port(admin)
        deadline = time.monotonic() + 10
        while listening_sockets(port) < 2:
            assert time.monotonic() < deadline, "the two workers do not both listen"
            time.sleep(0.05)
        for i in range(60):
            assert echo_once(port, b"hello %d" % i) == b"hello %d" % i
        logs = {"0": tmp_path / "events.jsonl", "1": tmp_path / "events.w1.jsonl"}

        def settled() -> Any:
            per_worker = {worker: _events(path) for worker, path in logs.items()}
            logged = sum(counts.get("disconnect", 0) for counts in per_worker.values())
            if logged < 60:
                return None
            metrics = _scrape(admin)
            total = metrics.get(("spectrum_events_total", (("app", "echo"), ("event", "disconnect"), ("origin", "o"))))
            return (per_worker, metrics) if total == logged else None

        per_worker, metrics = _wait(settled, "/metrics to count both workers' connections")
        # The kernel spread them: each worker has its own share.
        assert all(counts.get("disconnect", 0) > 0 for counts in per_worker.values()), per_worker
        total_bytes = sum(counts["bytes"] for counts in per_worker.values())
        assert metrics[("spectrum_bytes_ingress_total", (("app", "echo"), ("origin", "o")))] == total_bytes
        for worker, counts in per_worker.items():
            labels = (("app", "echo"), ("event", "disconnect"), ("origin", "o"), ("worker", worker))
            assert metrics[("spectrum_worker_events_total", labels)] == counts["disconnect"]
            labels = (("app", "echo"), ("origin", "o"), ("worker", worker))
            assert metrics[("spectrum_worker_bytes_ingress_total", labels)] == counts["bytes"]
        assert metrics[("spectrum_store_up", ())] == 1
        assert metrics[("spectrum_origin_up", (("app", "echo"), ("monitored", "false"), ("origin", "o")))] == 1
        assert metrics[("spectrum_reloads_total", (("result", "ok"),))] == 0
    finally:
        assert node.stop() in (0, -signal.SIGTERM), node.log()


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def test_workers_option_auto_is_one_per_usable_core() -> None:
    """C{--workers auto} is a count (one per core); a word other than auto is refused."""
    from twisted.python import usage

    from spectrum.tap import Options

    options = Options()
    options.parseOptions(["--workers", "auto"])
    assert options["workers"] == len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with pytest.raises(usage.UsageError, match="workers"):
        Options().parseOptions(["--workers", "many"])
