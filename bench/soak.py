"""
Soak: a real C{twistd spectrum} under mixed TCP, TLS and UDP traffic for a
long time (an hour by default), with access rules changing through the
admin API, the config reloaded, and one of two origins flapping. Every
echoed byte is checked (SHA-256). Once a minute it prints connections,
errors, bytes checked, RSS and descriptors; at the end, whether RSS stayed
flat after the warm-up (the analytics window, 10 minutes here, plus 2: the
per-minute buckets grow until the window is full).

    python bench/soak.py                 # 60 minutes
    python bench/soak.py --minutes 5

Not part of the test suite. Exit status 1 if any byte was wrong, any
error happened outside a flap window, or RSS grew more than --rss-slack MiB
after the warm-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "faults")]

from conftest import free_port  # noqa: E402
from faultkit import raise_nofile  # noqa: E402
from procs import start_twistd, write_config  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
MB = 1024 * 1024


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = {"tcp": 0, "tls": 0, "udp": 0}
        self.bytes = 0
        self.errors: List[str] = []
        self.flap_errors = 0
        #: UDP datagrams with no answer within 2 s (UDP may drop; counted apart)
        self.udp_lost = 0
        self.flapping = threading.Event()

    def ok(self, kind: str, n: int) -> None:
        with self.lock:
            self.connections[kind] += 1
            self.bytes += n

    def error(self, what: str) -> None:
        with self.lock:
            # A connection that was on the origin as it was killed may fail:
            # counted apart, not as a proxy error.
            if self.flapping.is_set() and not what.startswith("corrupt"):
                self.flap_errors += 1
            else:
                self.errors.append(what)


def origin(*specs: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "faults", "origin.py"), *specs],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    return process


def udp_echo(port: int, stop: threading.Event) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(0.5)
    while not stop.is_set():
        try:
            data, peer = s.recvfrom(65536)
        except socket.timeout:
            continue
        s.sendto(data, peer)


def tcp_client(port: int, stats: Stats, stop: threading.Event, seed: int, tls: bool) -> None:
    rng = random.Random(seed)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    kind = "tls" if tls else "tcp"
    while not stop.is_set():
        payload = rng.randbytes(rng.randrange(1, 256 * 1024))
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s: Any = context.wrap_socket(raw, server_hostname="soak.localhost") if tls else raw
            with s:
                s.sendall(payload)
                got = bytearray()
                while len(got) < len(payload):
                    data = s.recv(262144)
                    if not data:
                        break
                    got += data
        except OSError as e:
            stats.error(f"{kind}: {type(e).__name__}: {e}")
            time.sleep(0.05)
            continue
        if len(got) < len(payload) and payload.startswith(got):
            # Closed early (an origin killed under it), no wrong byte.
            stats.error(f"{kind}: closed after {len(got)} of {len(payload)} bytes")
        elif hashlib.sha256(got).digest() != hashlib.sha256(payload).digest():
            stats.error(f"corrupt {kind}: sent {len(payload)}, got {len(got)}")
        else:
            stats.ok(kind, len(payload))


def udp_client(port: int, stats: Stats, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            for _ in range(20):
                payload = rng.randbytes(rng.randrange(1, 1400))
                try:
                    s.send(payload)
                    back = s.recv(65536)
                except socket.timeout:
                    with stats.lock:
                        stats.udp_lost += 1
                    break
                except OSError as e:
                    stats.error(f"udp: {type(e).__name__}: {e}")
                    break
                if back != payload:
                    stats.error("corrupt udp datagram")
                else:
                    stats.ok("udp", len(payload))


def api(admin: int, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}/client/v4{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as e:
        # An error in the envelope (a duplicate rule is a 409): just the answer.
        return json.load(e)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="spectrum soak run")
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rss-slack", type=float, default=16, help="MiB RSS may grow after the warm-up")
    parser.add_argument(
        "--window",
        type=int,
        default=10,
        help="analytics window (minutes); the warm-up is this plus 2, the minutes kept growing till then",
    )
    parser.add_argument("--tcp", type=int, default=4, help="TCP client threads")
    parser.add_argument("--tls", type=int, default=2, help="TLS client threads")
    parser.add_argument("--udp", type=int, default=2, help="UDP client threads")
    options = parser.parse_args()
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="spectrum-soak-")
    stop = threading.Event()
    stats = Stats()
    steady, flappy, udp_origin = free_port(), free_port(), free_port(kind=socket.SOCK_DGRAM)
    edge_tcp, edge_tls, edge_udp, admin = free_port(), free_port(), free_port(), free_port()
    origins = [origin(f"echo@{steady}"), origin(f"echo@{flappy}")]
    threading.Thread(target=udp_echo, args=(udp_origin, stop), daemon=True).start()
    pool = {
        "name": "echoes",
        "origins": [
            {"name": "steady", "address": "127.0.0.1", "port": steady},
            {"name": "flappy", "address": "127.0.0.1", "port": flappy},
        ],
        "monitor": {"type": "tcp", "interval": 1, "timeout": 1, "consecutive_up": 1, "consecutive_down": 1},
    }
    document: Dict[str, Any] = {
        "apps": [
            {"name": "tcp", "protocol": f"tcp/{edge_tcp}", "ips": ["127.0.0.1"], "origin_pool": pool},
            {
                "name": "tls",
                "protocol": f"tcp/{edge_tls}",
                "ips": ["127.0.0.1"],
                "tls": "flexible",
                "origin_pool": dict(pool, name="echoes-tls"),
            },
            {
                "name": "udp",
                "protocol": f"udp/{edge_udp}",
                "ips": ["127.0.0.1"],
                "origin_direct": [f"udp://127.0.0.1:{udp_origin}"],
            },
        ],
        "admin": {
            "listen": f"tcp:{admin}:interface=127.0.0.1",
            "tokens": [{"name": "soak", "token": TOKEN, "permissions": "edit"}],
        },
        # Per-minute analytics are kept for the window: memory grows while
        # the window fills (an hour by default), then stays.
        "analytics": {"window_minutes": options.window},
    }
    config = write_config(os.path.join(tmp, "spectrum.json"), document)
    proxy = start_twistd(config, os.path.join(tmp, "twistd.log"), [edge_tcp, edge_tls, admin])
    print(f"soak: {options.minutes:g} min; twistd pid {proxy.pid}; work dir {tmp}", flush=True)
    threads = (
        [threading.Thread(target=tcp_client, args=(edge_tcp, stats, stop, i, False)) for i in range(options.tcp)]
        + [threading.Thread(target=tcp_client, args=(edge_tls, stats, stop, 100 + i, True)) for i in range(options.tls)]
        + [threading.Thread(target=udp_client, args=(edge_udp, stats, stop, 200 + i)) for i in range(options.udp)]
    )
    for t in threads:
        t.daemon = True
        t.start()
    started = time.monotonic()
    end = started + options.minutes * 60
    next_report = started + 60
    next_rule = started + 5
    next_flap = started + 20
    next_reload = started + 45
    rules: List[str] = []
    samples: List[int] = []
    minute = 0
    print(
        "minute  connections(tcp/tls/udp)        errors  flap-errors  udp-lost  checked-MiB    RSS-MiB  fds",
        flush=True,
    )
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if proxy.poll() is not None:
                print(f"twistd exited with {proxy.poll()}:\n{proxy.log()[-3000:]}")
                return 1
            if now >= next_rule:
                next_rule = now + 5
                # Rules come and go (for addresses that are not ours).
                if len(rules) < 20:
                    value = f"192.0.2.{random.randrange(1, 255)}"
                    made = api(
                        admin,
                        "POST",
                        "/user/firewall/access_rules/rules",
                        {"mode": "block", "configuration": {"target": "ip", "value": value}},
                    )
                    if made["success"]:
                        rules.append(made["result"]["id"])
                else:
                    api(admin, "DELETE", f"/user/firewall/access_rules/rules/{rules.pop(0)}")
            if now >= next_flap:
                next_flap = now + 30
                stats.flapping.set()
                origins[1].kill()
                origins[1].wait()
                time.sleep(5)
                origins[1] = origin(f"echo@{flappy}")
                time.sleep(3)  # health marks it up again
                stats.flapping.clear()
            if now >= next_reload:
                next_reload = now + 60
                proxy.signal(signal.SIGHUP)
            if now >= next_report:
                next_report += 60
                minute += 1
                size = rss(proxy.pid)
                samples.append(size)
                c = stats.connections
                print(
                    f"{minute:6d}  {c['tcp']:9d}/{c['tls']:7d}/{c['udp']:8d}  {len(stats.errors):12d}"
                    f"  {stats.flap_errors:11d}  {stats.udp_lost:8d}  {stats.bytes / MB:11.1f}  {size / MB:9.1f}"
                    f"  {len(os.listdir(f'/proc/{proxy.pid}/fd')):4d}",
                    flush=True,
                )
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        status = proxy.stop()
        for o in origins:
            o.kill()
    failed = False
    if stats.errors:
        print(f"errors ({len(stats.errors)}), first: {stats.errors[:5]}")
        failed = True
    warm_up = options.window + 2
    if len(samples) > warm_up:
        warmed = samples[warm_up - 1]
        later = samples[warm_up:]
        grown = (max(later) - warmed) / MB
        print(
            f"RSS after the {warm_up}-minute warm-up: {warmed / MB:.1f} MiB; most since: {max(later) / MB:.1f} MiB"
            f" (+{grown:.1f}); last: {later[-1] / MB:.1f} MiB"
        )
        failed = failed or grown > options.rss_slack
    else:
        print(f"too short to judge RSS: the warm-up is {warm_up} minutes")
    print(f"twistd stopped with {status}; {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
