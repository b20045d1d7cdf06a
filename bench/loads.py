"""
The load generators (iperf3, wrk, openssl s_time, the idle holder) and
the scenarios: which load, against which origin, measured how.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from benchkit import (
    ROOT,
    NotApplicable,
    Origin,
    Workdir,
    output_of,
    rss_kib,
    start_holder,
    start_iperf3,
    start_nginx_http,
)
from peers import Direct, HAProxy, NginxStream, Peer, PortForward, Running, Socat, Spectrum, Stunnel

# The load generators ------------------------------------------------------


class Options:
    duration = 3
    idle_connections = 10000
    profile: Optional[str] = None


def _iperf3(argv: List[str], opts: Options) -> dict:
    # iperf3's server takes one test at a time and may still be tearing the
    # last one down (socat's forked children linger): wait and try again.
    for attempt in range(10):
        out = _run_allow_fail(argv, opts.duration + 30)
        result = json.loads(out)
        error = result.get("error", "")
        if "busy" in error and attempt < 9:
            time.sleep(0.5)
            continue
        if error:
            raise RuntimeError(f"iperf3: {error}")
        return result
    raise AssertionError("unreachable")


def _run_allow_fail(argv: List[str], timeout: float) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout


def iperf3_tcp(streams: int) -> Callable[[Running, Origin, Workdir, Options], Dict[str, float]]:
    def measure(proxy: Running, origin: Origin, work: Workdir, opts: Options) -> Dict[str, float]:
        result = _iperf3(
            ["iperf3", "-c", "127.0.0.1", "-p", str(proxy.port), "-t", str(opts.duration), "-P", str(streams), "-J"],
            opts,
        )
        return {"gbit": result["end"]["sum_received"]["bits_per_second"] / 1e9}

    return measure


def iperf3_udp(proxy: Running, origin: Origin, work: Workdir, opts: Options) -> Dict[str, float]:
    result = _iperf3(
        [
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            str(proxy.port),
            "-u",
            "-l",
            "64",
            "-b",
            "0",
            "-t",
            str(opts.duration),
            "-J",
        ],
        opts,
    )
    total = result["end"]["sum"]
    sent = total["packets"]
    lost = total["lost_packets"]
    return {"pps": (sent - lost) / total["seconds"], "loss": 100.0 * lost / sent if sent else 100.0}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _wrk(argv: List[str], opts: Options) -> Dict[str, float]:
    out = output_of(["wrk", "-d", f"{opts.duration}s"] + argv, opts.duration + 30)
    figures: Dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk printed no rate: {out[-300:]}")
    figures["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            figures[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", out)
    if m:
        figures["gbit"] = float(m.group(1)) * _BYTES[m.group(2)] * 8 / 1e9
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(g) for g in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    if m and errors > 0.01 * int(m.group(1)):
        figures["errors"] = errors
        print("  wrk reported errors:\n    " + "\n    ".join(out.strip().splitlines()[-6:]), file=sys.stderr)
    return figures


def wrk_rps(proxy: Running, origin: Origin, work: Workdir, opts: Options) -> Dict[str, float]:
    return _wrk(["-t2", "-c50", "--latency", f"http://127.0.0.1:{proxy.port}/"], opts)


def wrk_cps(proxy: Running, origin: Origin, work: Workdir, opts: Options) -> Dict[str, float]:
    figures = _wrk(["-t2", "-c50", "-H", "Connection: close", f"http://127.0.0.1:{proxy.port}/"], opts)
    return {"cps": figures["rps"], **({"errors": figures["errors"]} if "errors" in figures else {})}


def wrk_tls_bulk(proxy: Running, origin: Origin, work: Workdir, opts: Options) -> Dict[str, float]:
    figures = _wrk(["-t1", "-c4", f"https://127.0.0.1:{proxy.port}/big"], opts)
    return {"gbit": figures["gbit"], **({"errors": figures["errors"]} if "errors" in figures else {})}


def s_time(proxy: Running, origin: Origin, work: Workdir, opts: Options, clients: int = 4) -> Dict[str, float]:
    # openssl s_time -new: a full handshake per connection, no resumption.
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{proxy.port}", "-new", "-time", str(opts.duration)]
    started = time.monotonic()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(clients)
    ]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=opts.duration + 30)
        m = re.search(r"(\d+) connections in [\d.]+s", out)
        if not m:
            raise RuntimeError(f"s_time: {out.strip()[-300:]}")
        total += int(m.group(1))
    return {"hs": total / (time.monotonic() - started)}


def idle_memory(proxy: Running, origin: Origin, work: Workdir, opts: Options) -> Dict[str, float]:
    if not proxy.procs:
        raise NotApplicable("no proxy")
    n = opts.idle_connections
    countfile = origin.extra["countfile"]

    def accepted() -> int:
        try:
            with open(countfile) as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    base_count = accepted()
    time.sleep(0.3)
    before = rss_kib(proxy.pids())
    holder = subprocess.Popen(
        [work.hold, "connect", str(proxy.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        # Open in batches smaller than the smallest listen backlog among the
        # peers (Twisted's 50), waiting for the origin to see each batch, so
        # that no SYN is dropped and the figure measures memory, not backlog.
        target = 0
        deadline = time.monotonic() + 120
        while target < n:
            batch = min(40, n - target)
            target += batch
            holder.stdin.write(f"{batch}\n")
            holder.stdin.flush()
            line = holder.stdout.readline().split()
            if len(line) != 3 or int(line[1]) < target:
                raise RuntimeError(f"holder opened {line[1:]} of {target}")
            while accepted() - base_count < target:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"origin saw {accepted() - base_count} of {target} connections")
                time.sleep(0.002)
        time.sleep(1.0)
        after = rss_kib(proxy.pids())
    finally:
        holder.stdin.close()
        holder.wait()
    return {"kib": (after - before) / n}


class Scenario:
    def __init__(
        self,
        key: str,
        title: str,
        kind: str,
        origin: Callable[[Workdir], Origin],
        measure: Callable,
        metrics: List[Tuple[str, str, str]],
        fresh: bool = False,
        needs: Tuple[str, ...] = (),
        cores: int = 1,
    ) -> None:
        self.key = key
        self.title = title
        self.kind = kind
        self.origin = origin
        self.measure = measure
        #: (figure key, row label, format) for each row of the table.
        self.metrics = metrics
        #: a new proxy process for each run (memory figures)
        self.fresh = fresh
        self.needs = needs
        #: cores each proxy may use (spectrum workers, HAProxy threads, nginx workers)
        self.cores = cores


#: the all-cores rows: every proxy may use each core of the machine


def nginx_origin(work: Workdir) -> Origin:
    """
    The HTTP origin of the req/s, new-connection and TLS loads: a port per proxy.
    """
    return start_nginx_http(work, len(PEERS))


CORES = os.cpu_count() or 1

SCENARIOS = [
    Scenario(
        "bulk1",
        "bulk, 1 stream",
        "tcp",
        start_iperf3,
        iperf3_tcp(1),
        [("gbit", "TCP bulk, 1 stream (Gbit/s)", "{:.2f}")],
        needs=("iperf3",),
    ),
    Scenario(
        "bulk8",
        "bulk, 8 streams",
        "tcp",
        start_iperf3,
        iperf3_tcp(8),
        [("gbit", "TCP bulk, 8 streams (Gbit/s)", "{:.2f}")],
        needs=("iperf3",),
    ),
    Scenario(
        "rps",
        "requests at 50 connections",
        "tcp",
        nginx_origin,
        wrk_rps,
        [
            ("rps", "HTTP req/s, 50 keep-alive conns", "{:,.0f}"),
            ("p50", "  p50 latency (ms)", "{:.2f}"),
            ("p99", "  p99 latency (ms)", "{:.2f}"),
        ],
        needs=("wrk", "nginx"),
    ),
    Scenario(
        "cps",
        "new connections",
        "tcp",
        nginx_origin,
        wrk_cps,
        [("cps", "new connections/s (wrk, Connection: close)", "{:,.0f}")],
        needs=("wrk", "nginx"),
    ),
    Scenario(
        "tls_hs",
        "TLS handshakes",
        "tls",
        nginx_origin,
        s_time,
        [("hs", "TLS handshakes/s (s_time -new, 4 clients)", "{:,.0f}")],
        needs=("openssl", "nginx"),
    ),
    Scenario(
        "tls_bulk",
        "TLS bulk",
        "tls",
        nginx_origin,
        wrk_tls_bulk,
        [("gbit", "TLS bulk, 4 conns (Gbit/s)", "{:.2f}")],
        needs=("wrk", "nginx", "openssl"),
    ),
    Scenario(
        "udp_pps",
        "UDP 64-byte packets",
        "udp",
        start_iperf3,
        iperf3_udp,
        [("pps", "UDP 64 B packets/s received", "{:,.0f}"), ("loss", "  UDP loss (%)", "{:.1f}")],
        needs=("iperf3",),
    ),
    Scenario(
        "idle_mem",
        "idle memory",
        "tcp",
        start_holder,
        idle_memory,
        [("kib", "memory per idle conn (KiB, RSS delta / N)", "{:.1f}")],
        fresh=True,
        needs=("gcc",),
    ),
]


@functools.cache
def pypy() -> Optional[str]:
    """
    A PyPy that can run spectrum: C{$SPECTRUM_BENCH_PYPY}, else the tox
    env's (C{tox -e pypy}); None if neither can import it.
    """
    for python in (os.environ.get("SPECTRUM_BENCH_PYPY"), os.path.join(ROOT, ".tox", "pypy", "bin", "python")):
        if python and os.access(python, os.X_OK):
            probe = "import twisted, spectrum.tap, platform; assert platform.python_implementation() == 'PyPy'"
            if subprocess.run([python, "-c", probe], cwd=ROOT, capture_output=True).returncode == 0:
                return python
    return None


def on_all_cores(base: Scenario) -> Scenario:
    """
    C{base} with every proxy using every core: its first figure only, the
    row label without its parenthesis, the cores named.
    """
    key, label, pattern = base.metrics[0]
    return Scenario(
        f"{base.key}_all",
        f"{base.title}, all {CORES} cores",
        base.kind,
        base.origin,
        base.measure,
        [(key, f"{label.split(' (')[0]}, {CORES} cores", pattern)],
        needs=base.needs,
        cores=CORES,
    )


# The all-cores rows, before the memory row.
SCENARIOS[-1:-1] = [on_all_cores(s) for s in SCENARIOS if s.key in ("rps", "cps", "tls_hs")]

PEERS: List[Peer] = [
    Direct(),
    Spectrum(),
    # The same tree on PyPy: its JIT compiles the hot paths after a warm-up.
    Spectrum("spectrum-pypy", python=pypy, warmup=True),
    # The zero-copy path (spectrum/proxy/splice.py), opt-in for now.
    Spectrum("spectrum-splice", {"SPECTRUM_ZERO_COPY": "1"}),
    HAProxy(),
    NginxStream(),
    Socat(),
    Stunnel(),
    PortForward(),
]
if os.environ.get("SPECTRUM_BENCH_BASELINE"):
    # Another checkout of spectrum (say, the commit before a hot-path
    # change), run interleaved with this one: a before/after under the
    # same load.
    PEERS.insert(2, Spectrum("spectrum-base", root=os.path.abspath(os.environ["SPECTRUM_BENCH_BASELINE"])))
#: Peers that cannot do a scenario for a reason other than its kind.
SKIP = {("idle_mem", "socat"): "a process per connection"}
