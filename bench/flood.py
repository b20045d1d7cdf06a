#!/usr/bin/env python3
"""
Legitimate throughput under a connection flood from a blocked /16.

    python bench/flood.py                        # spectrum, HAProxy, nginx; 3 runs of 5 s
    python bench/flood.py --seconds 5 --runs 1
    python bench/flood.py --only spectrum,haproxy --inflight 512 --json
    python bench/flood.py --rate 4000            # the same offered flood for every proxy
    python bench/flood.py --variant rate         # from one unblocked address over per_ip_rate
    python bench/flood.py --variant udp          # datagrams from the blocked /16

Variants (C{--variant}):

- C{blocked} (the default, described below): connections from 127.1.0.0/16,
  refused by an access rule.
- C{rate}: connections from one address (127.0.0.2) that no rule blocks,
  against a limit of PER_IP_RATE new connections a second per address:
  spectrum's C{limits.per_ip_rate}, HAProxy's stick table (C{conn_rate(1s)},
  C{tcp-request connection reject} over it); nginx stream has no connection
  rate per address (C{limit_conn} caps concurrent connections, which a flood
  that resets each connection at once never reaches): not applicable. The
  figure beside the throughput: the flood handshakes completed beyond what
  the bucket allows over the flood (its burst plus the rate times its
  seconds).
- C{udp}: a UDP app on an echo origin (bench/udpload.c); the legitimate
  client keeps 32 datagrams in flight from 127.0.0.1 and counts the answers
  a second, alone and while the flooder sends datagrams from 256 sockets on
  random sources in 127.1.0.0/16 (refused by an access rule); nginx stream
  (C{listen ... udp}, C{deny}); HAProxy has no UDP proxying: not applicable.

An nginx HTTP origin (keep-alive, C{return 200}, as bench/run.py's req/s
figure) and, in front of it, each proxy in turn with a rule refusing
127.1.0.0/16: spectrum (C{twistd -n spectrum --config ...}, an access rule
blocking the range, C{kernel_filter: "off"}), HAProxy (C{nbthread 1},
C{tcp-request connection reject}) and nginx stream (one worker, C{deny}).
For each proxy, wrk measures legitimate requests/s from 127.0.0.1 (50
keep-alive connections) alone, then again while a flooder (bench/flood.c,
compiled here with gcc) opens connections from random addresses in
127.1.0.0/16 and resets each one as soon as its handshake completes, with a
bounded number in flight (and, with --rate, a bounded rate). The table gives
both figures, their ratio and the flooder's completed handshakes per second.

Runs are interleaved across proxies (run 1 of each, then run 2, ...); each
figure is the median of the runs, with the spread (min-max). The ratio is
the median of each run's (under flood / alone), the two being taken one
right after the other.

The flooder's helpers (L{compile_flooder}, L{run_flooder}, L{flood}) do
nothing at import and can be used from tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

if __package__:
    from . import benchkit as common
else:  # python bench/flood.py: bench/ is sys.path[0]
    import benchkit as common

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCE = os.path.join(HERE, "flood.c")

#: The range every proxy refuses and the flooder connects from.
BLOCKED = "127.1.0.0/16"
#: Where a sanity probe connects from (inside BLOCKED).
PROBE_SOURCE = "127.1.0.1"
#: The one unblocked address of the C{rate} variant's flood.
RATE_SOURCE = "127.0.0.2"
#: New connections a second per address in the C{rate} variant (the burst
#: is as many): well above the legitimate client's 50 connections.
PER_IP_RATE = 100
#: The legitimate UDP client's datagrams in flight.
UDP_WINDOW = 32
VARIANTS = ("blocked", "rate", "udp")

#: twistd, run with this interpreter (as spectrum.workers does).
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


# The flooder ---------------------------------------------------------------


def compile_flooder(directory: Optional[str] = None) -> str:
    """
    Compile bench/flood.c with gcc into C{directory} (default: a new
    directory from L{tempfile.mkdtemp}, the caller's to remove) and return
    the path of the program.

    @raise RuntimeError: gcc is missing or the compilation failed.
    """
    return _compile(SOURCE, "flood", directory)


def compile_udpload(directory: str) -> str:
    """
    Compile bench/udpload.c (the UDP echo origin and legitimate client)
    into C{directory}; the path of the program.
    """
    return _compile(os.path.join(HERE, "udpload.c"), "udpload", directory)


def _compile(source: str, name: str, directory: Optional[str]) -> str:
    gcc = common.which("gcc")
    if gcc is None:
        raise RuntimeError("the flooder needs gcc (Debian: apt-get install gcc)")
    if directory is None:
        directory = tempfile.mkdtemp(prefix="spectrum-flood-")
    binary = os.path.join(directory, name)
    done = subprocess.run([gcc, "-O2", "-Wall", "-o", binary, source], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"gcc failed on {source}: {done.stderr.strip()[-500:]}")
    return binary


def start_flooder(
    binary: str,
    port: int,
    seconds: float,
    inflight: int = 256,
    host: str = "127.0.0.1",
    cpu: Optional[int] = None,
    rate: float = 0,
    timeout_ms: float = 250,
    source: str = BLOCKED,
    udp: bool = False,
) -> subprocess.Popen:
    """
    Start flooding C{host}:C{port} for C{seconds} from random sources in
    C{source} (a network or one address), at most C{inflight} connections
    at a time, pinned to C{cpu} if given, starting at most C{rate}
    connections a second if given (else as many as the bound in flight
    allows), abandoning a connect not done in C{timeout_ms} (its SYN
    dropped) for a fresh one. With C{udp}, C{inflight} sockets send
    datagrams instead (C{rate} a second at most, if given), and
    C{completed} counts what came back to them.
    L{flooder_result} waits for the end and reads it.
    """
    cpu_arg = -1 if cpu is None else cpu
    argv = [binary, "-s", source, *(["-u"] if udp else [])]
    argv += [host, str(port), f"{seconds:g}", str(inflight), str(cpu_arg), f"{rate:g}", f"{timeout_ms:g}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def flooder_result(proc: subprocess.Popen, timeout: float = 30) -> Dict[str, float]:
    """
    Wait for a flooder from L{start_flooder} and return its counts:
    C{completed} (handshakes), C{attempts}, C{failed}, C{timeouts},
    C{unfinished}, C{addr_retries}, C{seconds} (as it measured them),
    C{inflight}, and C{rate}: completed handshakes per second.
    """
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("the flooder did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the flooder failed ({proc.returncode}): {err.strip()[-300:]}")
    try:
        counts = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"the flooder printed no counts: {out.strip()[-300:]!r} {err.strip()[-300:]!r}") from None
    counts["rate"] = counts["completed"] / counts["seconds"] if counts["seconds"] > 0 else 0.0
    return counts


def run_flooder(
    binary: str,
    port: int,
    seconds: float,
    inflight: int = 256,
    host: str = "127.0.0.1",
    cpu: Optional[int] = None,
    rate: float = 0,
    timeout_ms: float = 250,
) -> Dict[str, float]:
    """
    Flood C{host}:C{port} for C{seconds} and return the counts (see
    L{start_flooder} and L{flooder_result}).
    """
    proc = start_flooder(binary, port, seconds, inflight, host, cpu, rate, timeout_ms)
    return flooder_result(proc, timeout=seconds + 30)


def flood(
    port: int,
    seconds: float,
    inflight: int = 256,
    host: str = "127.0.0.1",
    cpu: Optional[int] = None,
    rate: float = 0,
    timeout_ms: float = 250,
) -> Dict[str, float]:
    """
    Compile the flooder into a temporary directory, flood C{host}:C{port}
    for C{seconds}, remove the directory and return the counts (see
    L{flooder_result}).
    """
    directory = tempfile.mkdtemp(prefix="spectrum-flood-")
    try:
        return run_flooder(compile_flooder(directory), port, seconds, inflight, host, cpu, rate, timeout_ms)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# The origin and the proxies ------------------------------------------------


def start_origin(tmp: str, ports: Sequence[int]) -> subprocess.Popen:
    """
    nginx answering C{200 ok} on every port in C{ports}, keep-alive without
    limits: bench/run.py's origin for its req/s figure, without TLS.
    """
    listens = "\n".join(f"        listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    conf = os.path.join(tmp, "origin.conf")
    os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"""
user root;
worker_processes 1;
daemon off;
pid {tmp}/origin.pid;
error_log {tmp}/origin-error.log warn;
worker_rlimit_nofile {common.nofile_limit()};
events {{ worker_connections {common.nofile_limit() - 100}; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    server {{
{listens}
        location = / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    proc = common.spawn(["nginx", "-p", tmp, "-c", conf, "-e", f"{tmp}/origin-error.log"], tmp, "origin")
    for p in ports:
        common.wait_listening(p, [proc], "nginx origin")
    return proc


def start_udp_origin(binary: str, tmp: str, ports: Sequence[int]) -> List[subprocess.Popen]:
    """
    bench/udpload.c's echo on every port in C{ports}, one process each.
    """
    procs = [common.spawn([binary, "echo", str(p)], tmp, f"udp-origin-{p}") for p in ports]
    for p in ports:
        common.wait_listening(p, procs, "UDP echo origin", udp=True)
    return procs


class Proxy:
    """
    One proxy under test, refusing BLOCKED (or limiting the rate of new
    connections per address: the C{rate} variant), forwarding to the origin.
    """

    name = ""
    programs: Sequence[str] = ()

    def missing(self) -> List[str]:
        return [p for p in self.programs if not common.which(p)]

    def not_applicable(self, variant: str) -> str:
        """
        Why this proxy has no equivalent of C{variant}; "" when it has.
        """
        return ""

    def launch(self, port: int, target: int, tmp: str, variant: str) -> List[subprocess.Popen]:
        raise NotImplementedError

    def start(self, port: int, target: int, work: str, variant: str = "blocked") -> List[subprocess.Popen]:
        tmp = tempfile.mkdtemp(prefix=f"{self.name}-", dir=work)
        procs = self.launch(port, target, tmp, variant)
        try:
            common.wait_listening(port, procs, self.name, udp=variant == "udp")
        except Exception as e:
            common.stop(procs)
            raise RuntimeError(f"{e}; log: {log_tail(tmp)}") from None
        return procs


def log_tail(tmp: str) -> str:
    lines: List[str] = []
    for name in sorted(os.listdir(tmp)):
        if name.endswith((".log", ".out")):
            with open(os.path.join(tmp, name), errors="replace") as f:
                lines += [f"{name}: {line}" for line in f.read().strip().splitlines()[-3:]]
    return " | ".join(lines) or "(empty)"


class Spectrum(Proxy):
    name = "spectrum"

    def __init__(self, name: str = "spectrum", root: str = ROOT, kernel_filter: bool = True, mode: str = "off") -> None:
        self.name = name
        #: the source tree to run (another checkout, for a before/after)
        self.root = root
        #: whether that tree knows the C{kernel_filter} key
        self.kernel_filter = kernel_filter
        #: its value ("off": the userspace path alone; "on": the eBPF filter)
        self.mode = mode

    def launch(self, port: int, target: int, tmp: str, variant: str) -> List[subprocess.Popen]:
        path = os.path.join(tmp, "spectrum.yaml")
        # Quoted: bare, YAML 1.1 reads on/off as booleans.
        kernel_filter = f'kernel_filter: "{self.mode}"' if self.kernel_filter else ""
        rules = f"""
access_rules:
  - mode: block
    configuration: {{target: ip_range, value: {BLOCKED}}}
    notes: flood bench
"""
        limits = ""
        if variant == "rate":
            rules = ""
            limits = f"    limits: {{per_ip_rate: {PER_IP_RATE}}}"
        with open(path, "w") as f:
            f.write(f"""
{kernel_filter}
{rules}
apps:
  - name: bench
    protocol: {"udp" if variant == "udp" else "tcp"}
    ips: ["127.0.0.1"]
    ports: [{{destination_port: {port}, origin_port: {target}}}]
    origin_pool: {{name: bench, origins: [{{name: origin, address: 127.0.0.1}}]}}
{limits}
""")
        # A log file in the temp dir (never /dev/null: twistd rotates it).
        argv = [*TWISTD, "-n", "--pidfile=", f"--logfile={tmp}/twistd.log", "spectrum", "--config", path]
        env = dict(os.environ, PYTHONPATH=self.root)
        return [common.spawn(argv, tmp, self.name, cwd=self.root, env=env)]


class HAProxy(Proxy):
    name = "haproxy"
    programs = ("haproxy",)

    def not_applicable(self, variant: str) -> str:
        return "no UDP proxying" if variant == "udp" else ""

    def launch(self, port: int, target: int, tmp: str, variant: str) -> List[subprocess.Popen]:
        conf = os.path.join(tmp, "haproxy.cfg")
        refuse = f"tcp-request connection reject if {{ src {BLOCKED} }}"
        if variant == "rate":
            # The table's own rate (conn_rate over 1 s), checked at accept
            # like the rule above; tracked connections count at accept.
            refuse = (
                "stick-table type ip size 100k expire 10s store conn_rate(1s)\n"
                "    tcp-request connection track-sc0 src\n"
                f"    tcp-request connection reject if {{ sc0_conn_rate gt {PER_IP_RATE} }}"
            )
        with open(conf, "w") as f:
            f.write(f"""
global
    nbthread 1
    maxconn {common.nofile_limit() // 2 - 100}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend edge
    bind 127.0.0.1:{port}
    {refuse}
    default_backend origin
backend origin
    server o 127.0.0.1:{target}
""")
        return [common.spawn([common.which("haproxy") or "haproxy", "-db", "-f", conf], tmp, "haproxy")]


class NginxStream(Proxy):
    name = "nginx"
    programs = ("nginx",)

    def missing(self) -> List[str]:
        out = super().missing()
        if not os.path.exists(f"{common.NGINX_MODULES}/ngx_stream_module.so"):
            out.append("ngx_stream_module (libnginx-mod-stream)")
        return out

    def not_applicable(self, variant: str) -> str:
        if variant == "rate":
            return "stream has no per-address connection rate"
        return ""

    def launch(self, port: int, target: int, tmp: str, variant: str) -> List[subprocess.Popen]:
        conf = os.path.join(tmp, "nginx.conf")
        listen = f"{port} udp" if variant == "udp" else f"{port} backlog=4096"
        # error_log at warn, as in bench/run.py: nginx logs each refusal
        # ("access forbidden by rule") at error level, as it would anywhere.
        with open(conf, "w") as f:
            f.write(f"""
load_module {common.NGINX_MODULES}/ngx_stream_module.so;
user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {common.nofile_limit()};
events {{ worker_connections {common.nofile_limit() - 100}; }}
stream {{
    server {{
        listen 127.0.0.1:{listen};
        deny {BLOCKED};
        allow all;
        proxy_pass 127.0.0.1:{target};
    }}
}}
""")
        os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
        return [common.spawn(["nginx", "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"], tmp, "nginx")]


PROXIES: List[Proxy] = [Spectrum(), Spectrum("spectrum-kernel", mode="on"), HAProxy(), NginxStream()]
if os.environ.get("SPECTRUM_BENCH_BASELINE"):
    # Another checkout of spectrum (the commit before a change), flooded in
    # the same run: a before/after under the same load. Checkouts before
    # the kernel_filter key get no such key.
    PROXIES.insert(
        1,
        Spectrum(
            "spectrum-base",
            root=os.path.abspath(os.environ["SPECTRUM_BENCH_BASELINE"]),
            kernel_filter=os.environ.get("SPECTRUM_BENCH_BASELINE_KERNEL_FILTER", "") == "1",
        ),
    )


def refuses_blocked(port: int, timeout: float = 5.0, udp: bool = False) -> bool:
    """
    Whether the proxy on C{port} closes a connection from inside BLOCKED
    without answering (it should, before any byte); with C{udp}, whether a
    datagram from there goes unanswered for half a second.
    """
    if udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((PROBE_SOURCE, 0))
            s.settimeout(0.5)
            s.sendto(b"probe", ("127.0.0.1", port))
            try:
                s.recv(100)
            except socket.timeout:
                return True
            return False
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((PROBE_SOURCE, 0))
        try:
            s.connect(("127.0.0.1", port))
        except socket.timeout:
            # Dropped in the kernel (spectrum's kernel filter): no handshake.
            return True
        except ConnectionResetError:
            # Refused before this side saw its handshake complete.
            return True
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


# Measuring -----------------------------------------------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU seconds of C{pids} and their children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
        todo += common.children(pid)
    return total


def wrk(port: int, seconds: int, connections: int) -> Dict[str, float]:
    """
    wrk's requests/s (C{rps}), and its socket errors and non-2xx answers
    (C{errors}), however few.
    """
    argv = ["wrk", "-t2", f"-c{connections}", "-d", f"{seconds}s", f"http://127.0.0.1:{port}/"]
    out = common.output_of(argv, seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk printed no rate: {out[-300:]}")
    errors = 0
    m2 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m2:
        errors += sum(int(g) for g in m2.groups())
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m2:
        errors += int(m2.group(1))
    return {"rps": float(m.group(1)), "errors": float(errors)}


def udp_client(binary: str, port: int, seconds: int) -> Dict[str, float]:
    """
    bench/udpload.c's client: datagrams answered a second (C{rps}) with
    UDP_WINDOW in flight, and those given up (C{errors}).
    """
    out = common.output_of([binary, "client", "127.0.0.1", str(port), str(seconds), str(UDP_WINDOW)], seconds + 30)
    try:
        counts = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"the UDP client printed no counts: {out[-300:]!r}") from None
    return {"rps": counts["answered"] / counts["seconds"], "errors": float(counts["lost"])}


class Settings:
    variant = "blocked"
    #: the legitimate UDP client (bench/udpload.c), for the udp variant
    udpload = ""
    seconds = 5
    inflight = 256
    connections = 50
    cpu: Optional[int] = None
    #: connections the flooder starts a second at most (0: no cap)
    rate: float = 0
    #: a flood connect not done in this long is abandoned for a fresh one
    timeout_ms: float = 250
    #: the flooder starts this long before wrk and stops this long after
    lead = 0.5


def measure(procs: List[subprocess.Popen], port: int, binary: str, settings: Settings) -> Dict[str, float]:
    """
    One run for one proxy: wrk alone, then wrk under the flood.
    """
    udp = settings.variant == "udp"

    def legitimate() -> Dict[str, float]:
        if udp:
            return udp_client(settings.udpload, port, settings.seconds)
        return wrk(port, settings.seconds, settings.connections)

    alone = legitimate()
    time.sleep(0.5)
    pids = [p.pid for p in procs]
    flooder = start_flooder(
        binary,
        port,
        settings.seconds + 2 * settings.lead,
        settings.inflight,
        cpu=settings.cpu,
        rate=settings.rate,
        timeout_ms=settings.timeout_ms,
        source=RATE_SOURCE if settings.variant == "rate" else BLOCKED,
        udp=udp,
    )
    try:
        time.sleep(settings.lead)
        started, cpu0 = time.monotonic(), cpu_seconds(pids)
        under = legitimate()
        took, cpu1 = time.monotonic() - started, cpu_seconds(pids)
    finally:
        counts = flooder_result(flooder, timeout=settings.seconds + 30)
    # Let the proxy work off what is left in its accept queue.
    time.sleep(1.0)
    figures = {
        "alone": alone["rps"],
        "flood": under["rps"],
        "ratio": under["rps"] / alone["rps"] if alone["rps"] else 0.0,
        "cps": counts["rate"],
        "attempts": counts["attempts"] / counts["seconds"],
        "timeouts": counts["timeouts"],
        "cpu": 100.0 * (cpu1 - cpu0) / took,
        "completed": counts["completed"],
    }
    if settings.variant == "rate":
        # What the bucket lets through over the flood: its burst, then the rate.
        allowed = PER_IP_RATE + PER_IP_RATE * counts["seconds"]
        figures["beyond"] = max(0.0, counts["completed"] - allowed)
    figures["errors_alone"] = alone["errors"]
    figures["errors_flood"] = under["errors"]
    return figures


# Output --------------------------------------------------------------------

COLUMNS = [
    ("alone", "req/s alone", "{:,.0f}"),
    ("flood", "req/s under flood", "{:,.0f}"),
    ("ratio", "under flood / alone", "{:.3f}"),
    ("cps", "flood handshakes/s", "{:,.0f}"),
    ("attempts", "flood connects/s", "{:,.0f}"),
    ("cpu", "proxy CPU % under flood", "{:.0f}"),
]
RATE_COLUMNS = COLUMNS[:4] + [("beyond", "flood handshakes beyond the bucket", "{:,.0f}")] + COLUMNS[4:]
UDP_COLUMNS = [
    ("alone", "answered/s alone", "{:,.0f}"),
    ("flood", "answered/s under flood", "{:,.0f}"),
    ("ratio", "under flood / alone", "{:.3f}"),
    ("attempts", "flood datagrams/s", "{:,.0f}"),
    ("completed", "flood datagrams answered", "{:,.0f}"),
    ("cpu", "proxy CPU % under flood", "{:.0f}"),
]


def columns(variant: str) -> List:
    return {"rate": RATE_COLUMNS, "udp": UDP_COLUMNS}.get(variant, COLUMNS)


def describe(settings: Settings) -> str:
    """
    What the run measured, in a sentence.
    """
    cap = f" and at most {settings.rate:,.0f} started a second" if settings.rate > 0 else ""
    pinned = f"; flooder pinned to CPU {settings.cpu}" if settings.cpu is not None else ""
    if settings.variant == "udp":
        return (
            f"Legitimate UDP datagrams answered/s ({UDP_WINDOW} in flight from 127.0.0.1, {settings.seconds} s, "
            f"64 bytes, echoed by the origin) through each proxy, alone and while a flooder sends 64-byte datagrams "
            f"from {settings.inflight} sockets on random sources in {BLOCKED} (refused by every proxy){cap}{pinned}."
        )
    wrk_part = (
        f"Legitimate HTTP req/s (wrk -t2 -c{settings.connections} keep-alive, {settings.seconds} s, from 127.0.0.1) "
        "through each proxy, alone and while a flooder opens connections "
    )
    if settings.variant == "rate":
        source = (
            f"from one address, {RATE_SOURCE}, that no rule blocks, against a limit of {PER_IP_RATE} new "
            f"connections a second per address (burst {PER_IP_RATE})"
        )
    else:
        source = f"from {BLOCKED} (refused by every proxy)"
    return f"{wrk_part}{source}, {settings.inflight} in flight{cap}, each reset once its handshake completes{pinned}."


def cell(values: List[float], pattern: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return pattern.format(med)
    return f"{pattern.format(med)} ({pattern.format(min(values))}-{pattern.format(max(values))})"


def render(proxies: Sequence[Proxy], figures: Dict, notes: Dict[str, str], settings: Settings, runs: int) -> str:
    shown = columns(settings.variant)
    header = ["proxy"] + [label for _, label, _ in shown]
    rows = [header]
    for proxy in proxies:
        got = figures.get(proxy.name, {})
        if not got.get("alone"):
            note = notes.get(proxy.name, "failed" if got.get("failed") else "-")
            rows.append([proxy.name, note] + [""] * (len(shown) - 1))
            continue
        row = [proxy.name] + [cell(got[key], pattern) for key, _, pattern in shown]
        if any(v for k in ("errors_alone", "errors_flood") for v in got.get(k, [])):
            row[0] += " [lost datagrams]" if settings.variant == "udp" else " [wrk errors]"
        if got.get("failed"):
            row[0] += f" [{len(got['failed'])} failed]"
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = [describe(settings), ""]
    for i, row in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.append("")
    out.append(
        f"Median of {runs} run(s), (min-max) where more than one; the ratio is the median of each run's ratio. "
        + (
            "flood datagrams answered: what came back to the flood's sources over its whole run."
            if settings.variant == "udp"
            else "flood handshakes/s: the flooder's completed handshakes over its whole run."
        )
        + (
            f" beyond the bucket: completed flood handshakes less the {PER_IP_RATE} of the burst and "
            f"{PER_IP_RATE} a second of the flooder's run."
            if settings.variant == "rate"
            else ""
        )
    )
    return "\n".join(out)


def machine_facts() -> Dict[str, str]:
    def first(cmd: List[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except Exception:
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "spectrum commit": first(["git", "-C", ROOT, "log", "-1", "--format=%h %s"]),
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "haproxy": first(["haproxy", "-v"]) if common.which("haproxy") else "missing",
        "nginx": first(["nginx", "-v"]) if common.which("nginx") else "missing",
        "wrk": first(["wrk", "-v"]) if common.which("wrk") else "missing",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument(
        "--variant", choices=VARIANTS, default="blocked", help="blocked (default), rate or udp: see the module's text"
    )
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk measurement (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per proxy, interleaved (default 3)")
    parser.add_argument(
        "--inflight", type=int, default=256, help="flood connections in flight, or UDP sockets (default 256)"
    )
    parser.add_argument(
        "--rate", type=float, default=0, help="flood connections started a second at most (default: no cap)"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=250,
        metavar="MS",
        help="a flood connect not done in MS ms (its SYN dropped) makes way for a fresh one (default 250)",
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk's keep-alive connections (default 50)")
    parser.add_argument("--only", help="comma-separated proxies: " + ",".join(p.name for p in PROXIES))
    parser.add_argument(
        "--flood-cpu", type=int, help="CPU the flooder is pinned to (default: the last one; -1: not pinned)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs)")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.runs < 1 or args.inflight < 1:
        parser.error("--seconds, --runs and --inflight must be at least 1")
    if args.connect_timeout <= 0 or args.rate < 0:
        parser.error("--connect-timeout must be more than 0 and --rate 0 or more")
    proxies = PROXIES
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {p.name for p in PROXIES}
        if unknown:
            parser.error(f"unknown proxy(ies): {', '.join(sorted(unknown))}")
        proxies = [p for p in PROXIES if p.name in names]
    for tool in ("wrk", "nginx", "gcc"):
        if not common.which(tool):
            parser.error(f"needs {tool} (Debian: apt-get install {common.PACKAGES.get(tool, tool)})")

    settings = Settings()
    settings.variant = args.variant
    settings.seconds = args.seconds
    settings.inflight = args.inflight
    settings.rate = args.rate
    settings.timeout_ms = args.connect_timeout
    settings.connections = args.connections
    ncpu = os.cpu_count() or 1
    if args.flood_cpu is None:
        settings.cpu = ncpu - 1 if ncpu > 1 else None
    else:
        settings.cpu = args.flood_cpu if args.flood_cpu >= 0 else None

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 65536), max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    facts = machine_facts()
    print(f"load average before the run: {facts['load average at start']}", file=sys.stderr, flush=True)
    work = tempfile.mkdtemp(prefix="spectrum-flood-bench-")
    figures: Dict[str, Dict[str, List[float]]] = {}
    notes: Dict[str, str] = {}
    running: Dict[str, List[subprocess.Popen]] = {}
    ports: Dict[str, int] = {}
    origins: List[subprocess.Popen] = []
    udp = settings.variant == "udp"
    try:
        binary = compile_flooder(work)
        if udp:
            settings.udpload = compile_udpload(work)
        live = []
        for proxy in proxies:
            if proxy.not_applicable(settings.variant):
                notes[proxy.name] = "n/a: " + proxy.not_applicable(settings.variant)
            elif proxy.missing():
                notes[proxy.name] = "missing"
                print(f"  {proxy.name}: missing {', '.join(proxy.missing())}", file=sys.stderr)
            else:
                live.append(proxy)
        # Each proxy its own origin port.
        targets = {p.name: common.free_port() for p in live}
        if live and udp:
            origins = start_udp_origin(settings.udpload, work, list(targets.values()))
        elif live:
            origins = [start_origin(work, list(targets.values()))]
        for proxy in live:
            port = common.free_port()
            try:
                running[proxy.name] = proxy.start(port, targets[proxy.name], work, settings.variant)
            except Exception as e:
                notes[proxy.name] = "failed to start"
                print(f"  {proxy.name}: {e}", file=sys.stderr, flush=True)
                continue
            if settings.variant != "rate" and not refuses_blocked(port, udp=udp):
                notes[proxy.name] = f"does not refuse {BLOCKED}"
                print(f"  {proxy.name}: a connection from {PROBE_SOURCE} was not refused", file=sys.stderr)
                common.stop(running.pop(proxy.name))
                continue
            ports[proxy.name] = port
        for run in range(args.runs):
            for proxy in live:
                if proxy.name not in ports:
                    continue
                procs = running[proxy.name]
                try:
                    result = measure(procs, ports[proxy.name], binary, settings)
                except Exception as e:
                    print(f"  {proxy.name} run {run + 1}: {e}", file=sys.stderr, flush=True)
                    figures.setdefault(proxy.name, {}).setdefault("failed", []).append(1)
                    continue
                shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items())
                print(f"  {proxy.name} run {run + 1}: {shown}", file=sys.stderr, flush=True)
                for key, value in result.items():
                    figures.setdefault(proxy.name, {}).setdefault(key, []).append(value)
                if any(p.poll() is not None for p in procs):
                    notes[proxy.name] = "proxy died"
                    print(f"  {proxy.name}: the proxy exited", file=sys.stderr)
                    ports.pop(proxy.name)
    except KeyboardInterrupt:
        print("interrupted; partial figures follow", file=sys.stderr)
    finally:
        for procs in running.values():
            common.stop(procs)
        common.stop(origins)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    if args.json:
        out = {
            "settings": {
                "seconds": settings.seconds,
                "runs": args.runs,
                "inflight": settings.inflight,
                "rate": settings.rate,
                "connect_timeout_ms": settings.timeout_ms,
                "connections": settings.connections,
                "flood_cpu": settings.cpu,
                "variant": settings.variant,
                "blocked": BLOCKED,
                **({"per_ip_rate": PER_IP_RATE, "source": RATE_SOURCE} if settings.variant == "rate" else {}),
            },
            "machine": facts,
            "proxies": {
                p.name: {
                    "runs": figures.get(p.name, {}),
                    "median": {k: statistics.median(v) for k, v in figures.get(p.name, {}).items() if v},
                    **({"note": notes[p.name]} if p.name in notes else {}),
                }
                for p in proxies
            },
        }
        print(json.dumps(out, indent=2))
    else:
        print(render(proxies, figures, notes, settings, args.runs))
        print(f"\nload average before the run: {facts['load average at start']}; after: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {facts['nproc']} CPUs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
