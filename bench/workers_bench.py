#!/usr/bin/env python3
"""
New connections per second through spectrum with C{workers: 1} and
C{workers: 2}, side by side, in one run on the same machine.

    python bench/workers_bench.py                # 3 runs of 5 s each
    python bench/workers_bench.py --runs 5 --duration 10 --workers 1,2,4

The origin is nginx (one worker, a 2-byte answer); the load is wrk with
C{Connection: close}, so every request is a new TCP connection through the
proxy: the figure is connections (accept, origin connect, relay, close) per
second. "direct" is wrk against nginx without a proxy, for reference.
spectrum runs as the real C{twistd -n spectrum} with a generated config.
Runs are interleaved across the settings; each figure is the median of the
runs, with min-max.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from spectrum.workers import TWISTD  # noqa: E402

from conftest import free_port  # noqa: E402
from nodekit import wait_port  # noqa: E402


def need(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        sys.exit(f"workers_bench: {name} is not installed (apt-get install {name})")
    return path


def start_nginx(tmp: str, port: int) -> subprocess.Popen:
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
}}
"""
        )
    process = subprocess.Popen([need("nginx"), "-p", tmp, "-c", conf], stderr=subprocess.DEVNULL)
    wait_port(port)
    return process


def start_spectrum(tmp: str, port: int, origin: int, workers: int) -> subprocess.Popen:
    conf = os.path.join(tmp, f"spectrum-{workers}.yaml")
    with open(conf, "w") as f:
        f.write(
            f"""
workers: {workers}
apps:
  - name: bench
    protocol: tcp
    ips: ["127.0.0.1"]
    ports: [{{destination_port: {port}}}]
    origin_pool:
      name: bench
      origins: [{{name: nginx, address: 127.0.0.1, port: {origin}}}]
"""
        )
    log = open(os.path.join(tmp, f"spectrum-{workers}.out"), "wb")
    # A log file in the temporary directory (each worker writes FILE.wN).
    # Never --logfile=/dev/null: twistd rotates its log file by renaming it.
    logfile = os.path.join(tmp, f"spectrum-{workers}.log")
    process = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", f"--logfile={logfile}", "spectrum", "--config", conf],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    time.sleep(1.0 if workers > 1 else 0.2)  # every worker listening
    return process


def wrk(port: int, duration: float, connections: int) -> float:
    out = subprocess.run(
        [need("wrk"), "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s", "-H", "Connection: close",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Socket errors: (.*)", out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if errors:
        print(f"    (wrk: socket errors {errors.group(1)})", file=sys.stderr)
    return rate


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU seconds used by C{pid} and its children (the
    workers), from /proc.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            with open(f"/proc/{current}/task/{current}/children") as f:
                pids += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return total


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64, help="wrk's concurrent connections")
    parser.add_argument("--workers", default="1,2", help="the settings to compare, e.g. 1,2,4")
    args = parser.parse_args()
    settings = [int(w) for w in args.workers.split(",")]
    tmp = tempfile.mkdtemp(prefix="spectrum-workers-bench-")
    origin = free_port()
    nginx = start_nginx(tmp, origin)
    results: Dict[str, List[float]] = {"direct": []}
    results.update({f"workers: {n}": [] for n in settings})
    cpu: Dict[str, List[float]] = {f"workers: {n}": [] for n in settings}
    try:
        for run in range(args.runs):
            results["direct"].append(wrk(origin, args.duration, args.connections))
            for n in settings:
                port = free_port()
                proxy = start_spectrum(tmp, port, origin, n)
                try:
                    wrk(port, 1.0, args.connections)  # warm-up
                    used = cpu_seconds(proxy.pid)
                    rate = wrk(port, args.duration, args.connections)
                    used = cpu_seconds(proxy.pid) - used
                    results[f"workers: {n}"].append(rate)
                    # CPU milliseconds per connection: the same work spread
                    # over more cores when workers help.
                    cpu[f"workers: {n}"].append(1000 * used / max(1.0, rate * args.duration))
                finally:
                    stop(proxy)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nnew connections/s through the proxy (wrk -t1 -c{args.connections} -d{args.duration:g}s, "
        f"Connection: close; nginx origin; {os.cpu_count()} CPUs; median of {args.runs}, min-max)\n"
    )
    base = statistics.median(results[f"workers: {settings[0]}"])
    print(f"{'setting':<12} {'conn/s':>10} {'min-max':>19} {'vs workers: ' + str(settings[0]):>16} {'CPU ms/conn':>12}")
    for name, rates in results.items():
        median = statistics.median(rates)
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        ratio = "" if name == "direct" else f"{median / base:.2f}x"
        used = f"{statistics.median(cpu[name]):.2f}" if name in cpu else ""
        print(f"{name:<12} {median:>10.0f} {spread:>19} {ratio:>16} {used:>12}")
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
