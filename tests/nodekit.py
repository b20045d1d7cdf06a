"""
Real spectrum processes for tests (C{twistd -n spectrum}), a threaded echo
origin, and blocking clients: for tests where the proxy runs in another
process, so the test's own reactor need not run.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from spectrum.workers import TWISTD

from procs import START_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class EchoOrigin(socketserver.ThreadingTCPServer):
    """
    An echo server on 127.0.0.1 in threads.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def echo_once(port: int, payload: bytes = b"ping", timeout: float = 3.0) -> bytes:
    """
    Connect to 127.0.0.1:C{port}, send C{payload}, half-close, read to EOF.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def app_config(name: str, edge_port: int, origin_port: int) -> Dict[str, Any]:
    return {
        "name": name,
        "protocol": "tcp",
        "ips": ["127.0.0.1"],
        "ports": [{"destination_port": edge_port}],
        "origin_pool": {"name": name, "origins": [{"name": "o", "address": "127.0.0.1", "port": origin_port}]},
    }


class Node:
    """
    One C{twistd -n spectrum} process, its log in a file.
    """

    def __init__(self, tmp: Path, name: str, config: Dict[str, Any], args: Optional[List[str]] = None) -> None:
        self.name = name
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"{name}.log"
        self.args = args or []
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> Node:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "spectrum", "--config", str(self.config_path)] + self.args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> List[re.Match]:
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.log()))
            if len(found) >= count:
                return found
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def listening_sockets(port: int) -> int:
    """
    How many TCP sockets listen on 127.0.0.1:C{port} or 0.0.0.0:C{port}
    (SO_REUSEPORT lets several).
    """
    wanted = (f"0100007F:{port:04X}", f"00000000:{port:04X}")
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] in wanted and fields[3] == "0A":
            count += 1
    return count


class _UDPEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


class UDPEchoOrigin(socketserver.ThreadingUDPServer):
    """
    A UDP echo server on 127.0.0.1 in threads.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UDPEcho)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def udp_echo_once(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        return s.recv(65536)


def udp_sockets(port: int) -> int:
    """
    How many UDP sockets are bound to 127.0.0.1:C{port}.
    """
    wanted = f"0100007F:{port:04X}"
    return sum(1 for line in Path("/proc/net/udp").read_text().splitlines()[1:] if line.split()[1] == wanted)
