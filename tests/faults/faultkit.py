"""
What every fault test needs: origins in their own process, a real
C{twistd spectrum} with its file descriptor limit raised, traffic that
checks every byte it gets back (the bystanders), the proxy's memory and
descriptors read from C{/proc}, and the event log.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from procs import Twistd, start_twistd, wait_until, write_config

HERE = os.path.dirname(os.path.abspath(__file__))


def raise_nofile() -> int:
    """
    Raise this process's soft descriptor limit to its hard limit (children,
    twistd included, inherit it); return the new limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Origins:
    """
    L{origin.py} in a subprocess: one port per mode.
    """

    def __init__(self, *modes: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "origin.py"), *modes],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.ports = [int(p) for p in line.split()]
        assert len(self.ports) == len(modes), f"origin did not start: {line!r}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)


def app(name: str, edge: int, origin: int, **extra: Any) -> Dict[str, Any]:
    document: Dict[str, Any] = {
        "name": name,
        "protocol": f"tcp/{edge}",
        "ips": ["127.0.0.1"],
        "origin_direct": [f"tcp://127.0.0.1:{origin}"],
    }
    document.update(extra)
    return document


class Proxy:
    """
    A C{twistd spectrum} for a fault test, its event log and its figures.
    """

    def __init__(
        self,
        tmp: Any,
        apps: List[Dict[str, Any]],
        *options: str,
        extra: Any = None,
        wait: Any = (),
        preexec_fn: Optional[Callable[[], None]] = None,
    ) -> None:
        raise_nofile()
        self.events_path = os.path.join(os.fspath(tmp), "events.jsonl")
        document = {"apps": apps, "events": {"path": self.events_path, "flush_interval": 0.1}}
        document.update(extra or {})
        self.config = write_config(os.path.join(os.fspath(tmp), "spectrum.json"), document)
        ports = [int(a["protocol"].split("/")[1]) for a in apps if a["protocol"].startswith("tcp")] + list(wait)
        log = os.path.join(os.fspath(tmp), "twistd.log")
        self.twistd: Twistd = start_twistd(self.config, log, ports, options, preexec_fn)
        self.pid = self.twistd.pid

    def rss(self) -> int:
        """
        Resident memory in bytes (C{VmRSS}).
        """
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu(self) -> float:
        """
        CPU seconds used so far (user + system).
        """
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def events(self) -> List[Dict[str, Any]]:
        try:
            with open(self.events_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_for_event(self, predicate: Any, timeout: float = 10.0) -> Dict[str, Any]:
        def find() -> Optional[Dict[str, Any]]:
            return next((e for e in self.events() if predicate(e)), None)

        return wait_until(find, timeout, 0.05, "an event")

    def alive(self) -> bool:
        return self.twistd.poll() is None

    def settle_fds(self, baseline: int, slack: int = 8, timeout: float = 15.0) -> int:
        """
        Wait until the descriptor count is back within C{slack} of C{baseline}.
        """
        wait_until(lambda: self.fds() <= baseline + slack, timeout, 0.1, f"fds back near {baseline}")
        return self.fds()

    def stop(self) -> int:
        return self.twistd.stop()

    def kill(self) -> None:
        self.twistd.kill()


def blob(size: int, rng: random.Random) -> bytes:
    return rng.randbytes(size)


def echo_once(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """
    Send C{payload} through C{port}, half-close, read everything back.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(262144)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def exchange(sock: socket.socket, payload: bytes) -> bool:
    """
    Send C{payload} on an open echo connection; whether exactly it came back.
    """
    sock.sendall(payload)
    want = len(payload)
    got = bytearray()
    while len(got) < want:
        data = sock.recv(want - len(got))
        if not data:
            return False
        got += data
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


class Bystanders:
    """
    Background traffic through an echo app while a fault happens: each
    thread opens a connection, sends random bytes, half-closes and checks
    the SHA-256 of what comes back. Any difference, error or short answer
    is counted.
    """

    def __init__(self, port: int, threads: int = 4, size: int = 32768) -> None:
        self.port = port
        self.size = size
        self.done = 0
        self.bytes = 0
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Bystanders:
        for t in self._threads:
            t.start()
        # Traffic is flowing before the fault starts.
        wait_until(lambda: self.done >= len(self._threads), 10, 0.01, "bystander traffic")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            payload = rng.randbytes(rng.randrange(1, self.size))
            try:
                back = echo_once(self.port, payload)
            except OSError as e:
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                continue
            with self._lock:
                if hashlib.sha256(back).digest() != hashlib.sha256(payload).digest():
                    self.errors.append(f"corrupted: sent {len(payload)} bytes, got {len(back)}")
                else:
                    self.done += 1
                    self.bytes += len(payload)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def check(self) -> str:
        """
        Assert no bystander saw an error or a wrong byte; describe the load.
        """
        self.stop()
        assert not self.errors, f"{len(self.errors)} bystander failures, first: {self.errors[:3]}"
        assert self.done > 0
        return f"{self.done} checked echoes ({self.bytes} bytes) on other connections"


# results --------------------------------------------------------------------
#
# Each test names its fault, the load it held and what it checked; the
# outcome is appended as one JSON line to C{$SPECTRUM_FAULT_RESULTS}
# (default C{build/faults.jsonl}), from which C{tests/faults/report.py}
# renders the table in C{docs/RELIABILITY.md}.

ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.environ.get("SPECTRUM_FAULT_RESULTS") or os.path.join(ROOT, "build", "faults.jsonl")


class FaultRecord:
    def __init__(self, test: str) -> None:
        self.test = test
        self.fault = ""
        self.load = ""
        self.checked: List[str] = []
        self.figures: Dict[str, Any] = {}
        self.started = time.monotonic()

    def describe(self, fault: str, load: str) -> None:
        self.fault = fault
        self.load = load

    def check(self, what: str) -> None:
        """
        Note a check that passed (call it after its assert).
        """
        self.checked.append(what)


@pytest.fixture(name="fault")
def fault_fixture(request: Any) -> Iterator[FaultRecord]:
    """
    The record of a fault test, written out when it ends.
    """
    record = FaultRecord(request.node.name)
    failed = request.session.testsfailed
    yield record
    # The call's report is counted before fixtures are torn down.
    outcome = "passed" if request.session.testsfailed == failed else "failed"
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    line = {
        "test": record.test,
        "fault": record.fault,
        "load": record.load,
        "checked": record.checked,
        "figures": record.figures,
        "result": outcome,
        "seconds": round(time.monotonic() - record.started, 1),
    }
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
