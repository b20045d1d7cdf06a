"""
System calls per relayed connection, counted by strace.

A real C{twistd spectrum} relays N short connections (connect, 100 bytes
echoed, half-close, close) to an echo origin, one after another, while
C{strace -c -f} is attached to it; the table is each system call's count
divided by N, and the total. The first 200 connections are not counted
(start-up, the first allocations).

    python bench/syscalls.py [--connections 2000]

The proxy runs as operators run it (twistd, logging to a file), so one
C{write} per connection is its log line. Needs C{strace} (Debian package
C{strace}); ptrace must be allowed. Run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "faults")]

from conftest import free_port  # noqa: E402
from procs import start_twistd, write_config  # noqa: E402

PAYLOAD = b"x" * 100
WARM_UP = 200


def one_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(PAYLOAD)
        got = s.recv(1000)
        s.shutdown(socket.SHUT_WR)
        while True:
            data = s.recv(1000)
            if not data:
                break
            got += data
    if got != PAYLOAD:
        raise SystemExit(f"wrong echo: {got[:40]!r}")


def parse(summary: str) -> Dict[str, int]:
    """
    C{{syscall: calls}} from C{strace -c} output.
    """
    counts: Dict[str, int] = {}
    for line in summary.splitlines():
        # % time, seconds, usecs/call, calls, [errors,] syscall
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$", line)
        if m and m.group(2) != "total":
            counts[m.group(2)] = int(m.group(1))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description="system calls per relayed connection")
    parser.add_argument("--connections", type=int, default=2000)
    options = parser.parse_args()
    if shutil.which("strace") is None:
        print("strace is missing (Debian package strace)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="spectrum-syscalls-")
    origin_port, edge = free_port(), free_port()
    origin = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "faults", "origin.py"), f"echo@{origin_port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert origin.stdout is not None
    origin.stdout.readline()
    config = write_config(
        os.path.join(tmp, "spectrum.json"),
        {
            "apps": [
                {
                    "name": "echo",
                    "protocol": f"tcp/{edge}",
                    "ips": ["127.0.0.1"],
                    "origin_direct": [f"tcp://127.0.0.1:{origin_port}"],
                }
            ]
        },
    )
    proxy = start_twistd(config, os.path.join(tmp, "twistd.log"), [edge])
    try:
        for _ in range(WARM_UP):
            one_connection(edge)
        out = os.path.join(tmp, "strace.txt")
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(proxy.pid), "-o", out], stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        for _ in range(options.connections):
            one_connection(edge)
        time.sleep(0.5)
        tracer.terminate()
        tracer.wait()
        counts = parse(open(out).read())
    finally:
        proxy.stop()
        origin.kill()
    n = options.connections
    print(f"system calls per connection ({n} connections, 100 bytes echoed each, half-closed by the client)")
    print("| syscall | per connection |")
    print("|---|---|")
    for name, calls in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"| {name} | {calls / n:.2f} |")
    print(f"| **total** | **{sum(counts.values()) / n:.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
