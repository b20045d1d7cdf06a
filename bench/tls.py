#!/usr/bin/env python3
"""
TLS termination in front of a plaintext origin: spectrum (a flexible app)
next to stunnel and HAProxy, in one run on one machine.

    python bench/tls.py [--seconds 5] [--megabytes 256]

Measures, for each proxy:
- new TLS handshakes per second, with C{openssl s_time -new} (several
  client processes in parallel, TLS 1.3, ECDSA P-256 certificate made by certs/mkcerts.sh), to
  a redis-server origin that the proxy connects to for every handshake;
- bulk throughput client to origin: C{socat} sends N MB of zeros over TLS,
  the proxy forwards plaintext to a C{socat} sink.

spectrum runs as one process (one core); HAProxy is pinned to one thread
(C{nbthread 1}); stunnel uses a thread per connection (one connection at a
time here). Needs openssl, socat, redis-server, stunnel, haproxy.
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
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def need(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if path is None:
        raise SystemExit(f"{program} is not installed")
    return path


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of process C{pid} (all its threads) so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handshakes(port: int, seconds: int, clients: int) -> Tuple[int, float]:
    """
    New TLS connections made by C{clients} parallel C{s_time -new} runs in
    about C{seconds}: (how many, wall seconds).
    """
    started = time.monotonic()
    runs = [
        subprocess.Popen(
            ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(clients)
    ]
    total = 0
    for run in runs:
        out, _ = run.communicate()
        # "N connections in T real seconds" (not the line per user CPU second).
        match = re.search(r"(\d+) connections in \d+ real seconds", out)
        if match is None:
            raise SystemExit("s_time said:\n" + out)
        total += int(match.group(1))
    return total, time.monotonic() - started


def bulk(port: int, megabytes: int) -> float:
    started = time.monotonic()
    subprocess.run(
        f"head -c {megabytes}M /dev/zero | socat -u -b 65536 - OPENSSL:127.0.0.1:{port},verify=0",
        shell=True,
        check=True,
    )
    return megabytes / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="seconds of s_time per proxy")
    parser.add_argument("--megabytes", type=int, default=256, help="MB sent per bulk run")
    parser.add_argument("--clients", type=int, default=4, help="parallel s_time clients")
    options = parser.parse_args()
    for program in ("openssl", "socat", "redis-server", "stunnel", "haproxy"):
        need(program)

    work = tempfile.mkdtemp(prefix="spectrum-bench-tls-")
    processes: List[subprocess.Popen] = []
    try:
        subprocess.run(
            [os.path.join(ROOT, "certs", "mkcerts.sh"), "-d", work, "server", "localhost", "127.0.0.1"],
            check=True,
            capture_output=True,
        )
        crt, key = os.path.join(work, "localhost.crt"), os.path.join(work, "localhost.key")
        pem = os.path.join(work, "combined.pem")
        with open(pem, "wb") as f:
            f.write(open(crt, "rb").read() + open(key, "rb").read())

        pids = {}

        def start(args: List[str], port: int, what: str, **kwargs: object) -> None:
            log = open(os.path.join(work, what.replace(" ", "-") + ".log"), "wb")
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
            processes.append(process)
            pids[what] = process.pid
            try:
                wait_port(port, process, what)
            except SystemExit:
                log.close()
                with open(log.name, "rb") as f:
                    sys.stderr.write(f.read().decode("utf-8", "replace"))
                raise

        redis_port = free_port()
        start(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--maxclients", "4000"],
            redis_port,
            "redis-server",
            cwd=work,
        )
        sink_port = free_port()
        start(
            ["socat", "-u", f"TCP-LISTEN:{sink_port},bind=127.0.0.1,reuseaddr,fork", "OPEN:/dev/null"],
            sink_port,
            "socat sink",
        )

        # Each proxy gets two ports: handshakes (to redis) and bulk (to the sink).
        ports = {name: (free_port(), free_port()) for name in ("spectrum", "stunnel", "haproxy")}

        config = os.path.join(work, "spectrum.yaml")
        hs, bk = ports["spectrum"]
        with open(config, "w") as f:
            f.write(
                f"certificates: [{{certificate: {crt}, private_key: {key}}}]\n"
                "apps:\n"
                f"  - {{name: hs, protocol: tcp/{hs}, ips: [127.0.0.1], tls: flexible,"
                f" origin_direct: ['tcp://127.0.0.1:{redis_port}']}}\n"
                f"  - {{name: bulk, protocol: tcp/{bk}, ips: [127.0.0.1], tls: flexible,"
                f" origin_direct: ['tcp://127.0.0.1:{sink_port}']}}\n"
            )
        env = dict(os.environ, PYTHONPATH=ROOT)
        start(
            [sys.executable, "-m", "twisted", "--log-file=/dev/null", "spectrum", "--config", config],
            hs,
            "spectrum",
            cwd=ROOT,
            env=env,
        )

        hs, bk = ports["stunnel"]
        stunnel_conf = os.path.join(work, "stunnel.conf")
        with open(stunnel_conf, "w") as f:
            f.write(
                f"foreground = yes\npid =\ncert = {crt}\nkey = {key}\n"
                f"[hs]\naccept = 127.0.0.1:{hs}\nconnect = 127.0.0.1:{redis_port}\n"
                f"[bulk]\naccept = 127.0.0.1:{bk}\nconnect = 127.0.0.1:{sink_port}\n"
            )
        start([need("stunnel"), stunnel_conf], hs, "stunnel")

        hs, bk = ports["haproxy"]
        haproxy_conf = os.path.join(work, "haproxy.cfg")
        with open(haproxy_conf, "w") as f:
            f.write(
                "global\n  nbthread 1\n  maxconn 4000\n"
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
                f"frontend hs\n  bind 127.0.0.1:{hs} ssl crt {pem}\n  default_backend redis\n"
                f"frontend bulk\n  bind 127.0.0.1:{bk} ssl crt {pem}\n  default_backend sink\n"
                f"backend redis\n  server r 127.0.0.1:{redis_port}\n"
                f"backend sink\n  server s 127.0.0.1:{sink_port}\n"
            )
        start([need("haproxy"), "-f", haproxy_conf, "-db"], hs, "haproxy")

        results: List[Tuple[str, float, float, float, float]] = []
        for name, (hs, bk) in ports.items():
            before = cpu_seconds(pids[name])
            count, elapsed = handshakes(hs, options.seconds, options.clients)
            middle = cpu_seconds(pids[name])
            throughput = bulk(bk, options.megabytes)
            after = cpu_seconds(pids[name])
            results.append(
                (
                    name,
                    count / elapsed,
                    (middle - before) * 1e6 / count,
                    throughput,
                    (after - middle) * 1e3 / options.megabytes,
                )
            )
        print(
            f"TLS 1.3, ECDSA P-256, {os.cpu_count()} CPUs; {options.clients} s_time clients for"
            f" {options.seconds}s; bulk {options.megabytes} MB"
        )
        print("(clients and proxy share the CPUs: the proxy's own CPU per handshake and per MB is its cost)")
        print(f"{'proxy':<10} {'handshakes/s':>13} {'CPU us/handshake':>17} {'bulk MB/s':>10} {'CPU ms/MB':>10}")
        for name, rate, per_handshake, throughput, per_mb in results:
            print(f"{name:<10} {rate:>13.0f} {per_handshake:>17.0f} {throughput:>10.0f} {per_mb:>10.2f}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
