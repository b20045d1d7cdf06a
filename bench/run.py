#!/usr/bin/env python3
"""
Benchmark spectrum against its peers, side by side, in one invocation.

    python bench/run.py                 # every scenario, 3 runs each
    python bench/run.py --quick         # 1 run, shorter tests, 2,000 idle conns
    python bench/run.py --only bulk1,rps --runs 5
    python bench/run.py --save bench/RESULTS.md

Every proxy runs as its own process with a generated configuration in a
temporary directory, on free loopback ports: a direct connection (the
limit), spectrum (the real C{python -m twisted spectrum}), HAProxy (one
thread), nginx stream (one worker), socat, stunnel (TLS only) and Twisted's
own portforward.  Origins and load generators are real programs: iperf3, wrk
against an nginx origin, C{openssl s_time}, and a small C program (hold.c,
compiled here with gcc) that holds idle connections.  This script only
starts things, waits and parses their output; nothing on the data path is
Python except the proxies under test.

Each figure is the median of --runs runs, with the spread (min-max).  Runs
are interleaved across proxies so that background load hits all of them
alike.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
NGINX_MODULES = "/usr/lib/nginx/modules"

#: Debian packages that provide the peers and load generators.
PACKAGES = {
    "haproxy": "haproxy",
    "nginx": "nginx-light libnginx-mod-stream",
    "socat": "socat",
    "stunnel4": "stunnel4",
    "iperf3": "iperf3",
    "wrk": "wrk",
    "openssl": "openssl",
    "gcc": "gcc",
    "pypy3": "pypy3 pypy3-venv (then tox -e pypy, or SPECTRUM_BENCH_PYPY=<a PyPy with spectrum installed>)",
}


class NotApplicable(Exception):
    """This proxy does not do this kind of forwarding; the cell says why."""

    def __init__(self, short: str, detail: str = "") -> None:
        super().__init__(short)
        self.short = short
        self.detail = detail


def which(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 a moment ago."""
    for _ in range(100):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _listening(port: int, udp: bool = False) -> bool:
    # Read the kernel's socket tables rather than connecting: a probe
    # connection would reach the origin (and confuse iperf3's server).
    tables = ("/proc/net/udp", "/proc/net/udp6") if udp else ("/proc/net/tcp", "/proc/net/tcp6")
    want = f":{port:04X}"
    for table in tables:
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and (udp or fields[3] == "0A"):
                        return True
        except OSError:
            pass
    return False


def wait_listening(
    port: int, procs: Sequence[subprocess.Popen], what: str, udp: bool = False, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(port, udp):
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on {port} after {timeout}s")
        time.sleep(0.05)


def spawn(argv: List[str], tmp: str, name: str, **kw) -> subprocess.Popen:
    log = open(os.path.join(tmp, f"{name}.log"), "ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)


def stop(procs: Sequence[subprocess.Popen]) -> None:
    # Forking peers (socat) leave children behind: signal the whole tree.
    tree: List[int] = []
    todo = [p.pid for p in procs if p.poll() is None]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children(pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def rss_kib(pids: Sequence[int]) -> int:
    """VmRSS of C{pids} and their children, in KiB."""
    total = 0
    seen = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
        todo += children(pid)
    return total


# The origins --------------------------------------------------------------


class Workdir:
    """A temp dir with a certificate, a web root and the compiled holder."""

    def __init__(self, keep: bool) -> None:
        self.path = tempfile.mkdtemp(prefix="spectrum-bench-")
        self.keep = keep
        self.crt = os.path.join(self.path, "cert.pem")
        self.key = os.path.join(self.path, "key.pem")
        self.pem = os.path.join(self.path, "combined.pem")
        self.hold: Optional[str] = None

    def prepare(self) -> None:
        if which("openssl"):
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    self.key,
                    "-out",
                    self.crt,
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                ],
                check=True,
                capture_output=True,
            )
            with open(self.pem, "w") as out:
                out.write(open(self.crt).read() + open(self.key).read())
        www = os.path.join(self.path, "www")
        os.makedirs(www)
        with open(os.path.join(www, "big"), "wb") as f:
            f.write(os.urandom(1 << 20) * 8)
        if which("gcc"):
            self.hold = os.path.join(self.path, "hold")
            subprocess.run(["gcc", "-O2", "-o", self.hold, os.path.join(HERE, "hold.c")], check=True)

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


class Origin:
    """A running origin: where proxies forward to."""

    def __init__(self, procs: List[subprocess.Popen], ports: List[int], tls_ports: Sequence[int] = (), **extra) -> None:
        self.procs = procs
        self.ports = ports
        self.tls_ports = tls_ports
        self.extra = extra

    def port_for(self, index: int, tls: bool = False) -> int:
        """
        The origin port for the C{index}th proxy.  Where the origin has
        several, each proxy gets its own, so TIME_WAIT sockets one proxy
        leaves behind (new-connection tests) never take ports from another.
        """
        ports = self.tls_ports if tls else self.ports
        return ports[index % len(ports)]

    def stop(self) -> None:
        stop(self.procs)


def start_iperf3(work: Workdir) -> Origin:
    port = free_port()
    proc = spawn(["iperf3", "-s", "-p", str(port), "-B", "127.0.0.1"], work.path, f"iperf3-{port}")
    wait_listening(port, [proc], "iperf3 -s")
    return Origin([proc], [port])


def start_nginx_http(work: Workdir) -> Origin:
    ports = [free_port() for _ in range(len(PEERS))]
    tls_ports = [free_port() for _ in range(len(PEERS))]
    port = ports[0]
    listens = "\n".join(f"        listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    listens += "\n" + "\n".join(f"        listen 127.0.0.1:{p} ssl backlog=4096;" for p in tls_ports)
    tmp = os.path.join(work.path, f"origin-{port}")
    os.makedirs(os.path.join(tmp, "logs"))
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {nofile_limit()};
events {{ worker_connections {nofile_limit() - 100}; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    server {{
{listens}
        ssl_certificate {work.crt};
        ssl_certificate_key {work.key};
        root {work.path}/www;
        location = / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    proc = spawn(["nginx", "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"], work.path, f"nginx-origin-{port}")
    for p in ports + tls_ports:
        wait_listening(p, [proc], "nginx origin")
    return Origin([proc], ports, tls_ports)


def start_holder(work: Workdir) -> Origin:
    if work.hold is None:
        raise NotApplicable("needs gcc")
    port = free_port()
    countfile = os.path.join(work.path, f"accepted-{port}")
    proc = spawn([work.hold, "serve", str(port), countfile], work.path, f"hold-{port}")
    wait_listening(port, [proc], "hold serve")
    return Origin([proc], [port], countfile=countfile)


# The proxies --------------------------------------------------------------


class Running:
    """A proxy under test, listening on C{port}."""

    def __init__(self, procs: List[subprocess.Popen], port: int) -> None:
        self.procs = procs
        self.port = port

    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        stop(self.procs)


class Peer:
    """One proxy to compare; C{kinds} are the forwardings it can do."""

    name = ""
    programs: Tuple[str, ...] = ()
    kinds = ("tcp",)
    note = ""
    #: seconds it may take to listen
    start_timeout = 15.0

    def missing(self) -> List[str]:
        return [p for p in self.programs if not which(p)]

    def start(self, kind: str, origin: Origin, work: Workdir, index: int = 0, cores: int = 1) -> Running:
        """
        Start forwarding C{kind} ("tcp", "tls": terminate TLS and speak
        plaintext to the origin, "udp": TCP and UDP on one port) to C{origin},
        using C{cores} cores (processes or threads, as the proxy does it).
        """
        if kind not in self.kinds:
            raise NotApplicable(f"no {kind}")
        port = free_port()
        tmp = tempfile.mkdtemp(prefix=f"{self.name}-", dir=work.path)
        procs = self.launch(kind, port, origin.port_for(index), tmp, work, cores)
        try:
            wait_listening(port, procs, self.name, timeout=self.start_timeout)
            if kind == "udp":
                wait_listening(port, procs, self.name, udp=True, timeout=self.start_timeout)
        except Exception:
            stop(procs)
            raise
        return Running(procs, port)

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        raise NotImplementedError


class Direct(Peer):
    name = "direct"
    kinds = ("tcp", "tls", "udp")

    def start(self, kind: str, origin: Origin, work: Workdir, index: int = 0, cores: int = 1) -> Running:
        return Running([], origin.port_for(index, tls=kind == "tls"))


class Spectrum(Peer):
    name = "spectrum"
    kinds = ("tcp", "tls", "udp")
    # PyPy imports slowly, and workers start after their supervisor.
    start_timeout = 60.0

    def __init__(
        self,
        name: str = "spectrum",
        env: Optional[Dict[str, str]] = None,
        root: str = "",
        python: Optional[Callable[[], Optional[str]]] = None,
        warmup: bool = False,
    ) -> None:
        self.name = name
        self.env = env or {}
        #: the source tree to run (another checkout, for a before/after)
        self.root = root or ROOT
        #: finds the interpreter to run it with (None: the one running this)
        self.python = python
        #: a JIT: give it one unrecorded run of each load before measuring
        self.warmup = warmup

    def interpreter(self) -> Optional[str]:
        return self.python() if self.python else sys.executable

    def missing(self) -> List[str]:
        return [] if self.interpreter() else ["pypy3"]

    def config(self, kind: str, port: int, target: int, work: Workdir, cores: int = 1) -> str:
        app = f"""
  - name: bench
    protocol: tcp
    ips: ["127.0.0.1"]
    ports: [{{destination_port: {port}, origin_port: {target}}}]
    origin_pool: {{name: bench, origins: [{{name: origin, address: 127.0.0.1}}]}}
"""
        text = ""
        if kind == "tls":
            text += f"certificates:\n  - {{certificate: {work.crt}, private_key: {work.key}}}\n"
            app += "    tls: flexible\n"
        if cores > 1:
            text += f"workers: {cores}\n"
        text += "apps:\n" + app
        if kind == "udp":
            text += app.replace("name: bench", "name: bench-udp").replace("protocol: tcp", "protocol: udp")
        return text

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        path = os.path.join(tmp, "spectrum.yaml")
        with open(path, "w") as f:
            f.write(self.config(kind, port, target, work, cores))
        # Ask this build's own loader: TLS and UDP arrive in other branches,
        # and once they land the same command measures them.
        sys.path.insert(0, self.root)
        try:
            from spectrum.config import ConfigError, load

            try:
                load(path)
            except ConfigError as e:
                raise NotApplicable("not in this build", f"config loader: {e}") from None
        finally:
            sys.path.remove(self.root)
        env = dict(os.environ, PYTHONPATH=self.root, **self.env)
        # "python -m twisted" is twist: foreground, no pidfile, same plugin.
        # --drain-timeout is given because the foundation's default ("10",
        # a string) is not converted and postOptions fails comparing it.
        argv = [
            self.interpreter() or sys.executable,
            "-m",
            "twisted",
            "--log-level=warn",
            "spectrum",
            "--config",
            path,
            "--drain-timeout",
            "1",
        ]
        self._log = os.path.join(tmp, "spectrum.log")
        return [spawn(argv, tmp, "spectrum", cwd=self.root, env=env)]

    def start(self, kind: str, origin: Origin, work: Workdir, index: int = 0, cores: int = 1) -> Running:
        try:
            return super().start(kind, origin, work, index, cores)
        except RuntimeError:
            if kind == "tcp":
                raise
            # The loader took the config but the service could not serve it
            # (say, a UDP app before the UDP listener lands).
            with open(self._log) as f:
                last = (f.read().strip().splitlines() or ["?"])[-1]
            raise NotApplicable("not in this build", f"spectrum exited: {last}") from None


class HAProxy(Peer):
    name = "haproxy"
    programs = ("haproxy",)
    kinds = ("tcp", "tls")

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        ssl = f" ssl crt {work.pem}" if kind == "tls" else ""
        conf = os.path.join(tmp, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""
global
    nbthread {cores}
    maxconn {nofile_limit() // 2 - 100}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend edge
    bind 127.0.0.1:{port}{ssl}
    default_backend origin
backend origin
    server o 127.0.0.1:{target}
""")
        return [spawn([which("haproxy") or "haproxy", "-db", "-f", conf], tmp, "haproxy")]


class NginxStream(Peer):
    name = "nginx"
    programs = ("nginx",)
    kinds = ("tcp", "tls", "udp")

    def missing(self) -> List[str]:
        out = super().missing()
        if not os.path.exists(f"{NGINX_MODULES}/ngx_stream_module.so"):
            out.append("ngx_stream_module")
        return out

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        servers = f"server {{ listen 127.0.0.1:{port} backlog=4096; proxy_pass 127.0.0.1:{target}; }}"
        if kind == "tls":
            servers = f"""server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {work.crt};
        ssl_certificate_key {work.key};
        proxy_pass 127.0.0.1:{target};
    }}"""
        if kind == "udp":
            servers += (
                f"\n    server {{ listen 127.0.0.1:{port} udp; proxy_pass 127.0.0.1:{target}; proxy_timeout 20s; }}"
            )
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
load_module {NGINX_MODULES}/ngx_stream_module.so;
user root;
worker_processes {cores};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {nofile_limit()};
events {{ worker_connections {nofile_limit() - 100}; }}
stream {{
    {servers}
}}
""")
        os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
        return [spawn(["nginx", "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"], tmp, "nginx")]


class Socat(Peer):
    name = "socat"
    programs = ("socat",)
    kinds = ("tcp", "tls", "udp")
    note = "socat forks a process per connection"

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        listen = f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096"
        if kind == "tls":
            listen = f"OPENSSL-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096,cert={work.pem},verify=0"
        procs = [
            spawn(
                ["socat", "-lf", os.path.join(tmp, "socat.log"), listen, f"TCP:127.0.0.1:{target},nodelay"],
                tmp,
                "socat",
            )
        ]
        if kind == "udp":
            udp = f"UDP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"
            procs.append(
                spawn(
                    ["socat", "-T", "10", "-lf", os.path.join(tmp, "socat-udp.log"), udp, f"UDP:127.0.0.1:{target}"],
                    tmp,
                    "socat-udp",
                )
            )
        return procs


class Stunnel(Peer):
    name = "stunnel"
    programs = ("stunnel4",)
    kinds = ("tls",)

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        conf = os.path.join(tmp, "stunnel.conf")
        with open(conf, "w") as f:
            f.write(f"""
foreground = yes
pid =
output = {tmp}/stunnel.out
debug = 3
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[bench]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{target}
cert = {work.crt}
key = {work.key}
""")
        return [spawn(["stunnel4", conf], tmp, "stunnel")]


class PortForward(Peer):
    name = "portforward"
    kinds = ("tcp",)

    def launch(
        self, kind: str, port: int, target: int, tmp: str, work: Workdir, cores: int = 1
    ) -> List[subprocess.Popen]:
        if cores > 1:
            raise NotApplicable("one process")
        # Per-connection "Starting factory" logs off, as for every peer.
        argv = [
            sys.executable,
            "-m",
            "twisted",
            "--log-level=warn",
            "portforward",
            "-p",
            f"tcp:{port}:interface=127.0.0.1",
            "-h",
            "127.0.0.1",
            "-d",
            str(target),
        ]
        return [spawn(argv, tmp, "portforward", cwd=tmp)]


# The load generators ------------------------------------------------------


class Options:
    duration = 3
    idle_connections = 10000
    profile: Optional[str] = None


def _run(argv: List[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


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
    out = _run(["wrk", "-d", f"{opts.duration}s"] + argv, opts.duration + 30)
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
        start_nginx_http,
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
        start_nginx_http,
        wrk_cps,
        [("cps", "new connections/s (wrk, Connection: close)", "{:,.0f}")],
        needs=("wrk", "nginx"),
    ),
    Scenario(
        "tls_hs",
        "TLS handshakes",
        "tls",
        start_nginx_http,
        s_time,
        [("hs", "TLS handshakes/s (s_time -new, 4 clients)", "{:,.0f}")],
        needs=("openssl", "nginx"),
    ),
    Scenario(
        "tls_bulk",
        "TLS bulk",
        "tls",
        start_nginx_http,
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


def fmt_cell(values: List[float], pattern: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return pattern.format(med)
    return f"{pattern.format(med)} ({pattern.format(min(values))}-{pattern.format(max(values))})"


def machine_facts() -> List[str]:
    def first(cmd: List[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "?"

    def matching(cmd: List[str], start: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (done.stdout + done.stderr).splitlines()
        return next((line.strip() for line in lines if line.startswith(start)), "?")

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        "python": sys.version.split()[0],
        "twisted": first([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
        "haproxy": first(["haproxy", "-v"]) if which("haproxy") else "missing",
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        if which("nginx")
        else "missing",
        "socat": matching(["socat", "-V"], "socat version") if which("socat") else "missing",
        "stunnel": matching(["stunnel4", "-version"], "stunnel ") if which("stunnel4") else "missing",
        "iperf3": first(["iperf3", "-v"]) if which("iperf3") else "missing",
        "wrk": first(["wrk", "-v"]) if which("wrk") else "missing",
        "openssl": first(["openssl", "version"]) if which("openssl") else "missing",
    }
    git = first(["git", "-C", ROOT, "log", "-1", "--format=%h %s"])
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"spectrum commit: {git}",
        f"nproc: {os.cpu_count()}; CPU: {cpu}; kernel: {platform.release()}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ] + [f"{k}: {v}" for k, v in versions.items()]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    # SIGTERM (and SIGINT, which a background shell job ignores) stop the
    # peers and print what was measured so far.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run, 2 s tests, 2,000 idle connections")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; --quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per load test (default 3; --quick 2)")
    parser.add_argument("--idle-connections", type=int, help="default 10000; --quick 2000")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(s.key for s in SCENARIOS))
    parser.add_argument("--peers", help="comma-separated proxies: " + ",".join(p.name for p in PEERS))
    parser.add_argument("--save", metavar="FILE", help="also write the table, command and machine facts here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy spectrum and portforward during each run, into DIR")
    args = parser.parse_args(argv)

    opts = Options()
    runs = args.runs or (1 if args.quick else 3)
    opts.duration = args.duration or (2 if args.quick else 3)
    opts.idle_connections = args.idle_connections or (2000 if args.quick else 10000)
    if args.profile:
        if not which("py-spy"):
            parser.error("--profile needs py-spy (pip install py-spy)")
        os.makedirs(args.profile, exist_ok=True)
        opts.profile = args.profile
    scenarios = SCENARIOS
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {s.key for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        scenarios = [s for s in SCENARIOS if s.key in wanted]
    peers = PEERS
    if args.peers:
        names = args.peers.split(",")
        unknown = set(names) - {p.name for p in PEERS}
        if unknown:
            parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
        peers = [p for p in PEERS if p.name in names]

    # 10,000 idle connections are 20,000 descriptors in a proxy.
    want = max(65536, 2 * opts.idle_connections + 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = nofile_limit()
    if 2 * opts.idle_connections + 200 > limit:
        # A proxy holds two descriptors per relayed connection.
        opts.idle_connections = (limit - 200) // 2
        print(
            f"note: the open files limit is {limit} and cannot be raised here; "
            f"idle memory uses {opts.idle_connections} connections",
            file=sys.stderr,
        )

    missing_tools = sorted({t for s in scenarios for t in s.needs if not which(t)})
    missing_peers = {p.name: p.missing() for p in peers if p.missing()}
    lines = []
    for tool in missing_tools:
        lines.append(f"missing load generator/origin: {tool} (Debian: apt-get install {PACKAGES.get(tool, tool)})")
    for name, progs in missing_peers.items():
        lines.append(
            f"missing peer: {name} needs {', '.join(progs)} (Debian: apt-get install "
            f"{' '.join(PACKAGES.get(p, p) for p in progs if p in PACKAGES) or 'libnginx-mod-stream'})"
        )
    for line in lines:
        print(line, file=sys.stderr)

    facts = machine_facts()
    work = Workdir(args.keep)
    # figures[(scenario, peer)][metric] = [values]; notes[(scenario, peer)] = why no figure
    figures: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    notes: Dict[Tuple[str, str], str] = {}
    try:
        work.prepare()
        for scenario in scenarios:
            lacking = [t for t in scenario.needs if not which(t)]
            if lacking:
                for peer in peers:
                    notes[(scenario.key, peer.name)] = f"needs {', '.join(lacking)}"
                continue
            print(f"== {scenario.title}", file=sys.stderr, flush=True)
            try:
                run_scenario(scenario, peers, runs, opts, work, figures, notes)
            except RuntimeError as e:
                # The origin would not start: this scenario's cells say so,
                # the others are still measured.
                print(f"  {scenario.key}: {e}", file=sys.stderr, flush=True)
                for peer in peers:
                    notes.setdefault((scenario.key, peer.name), "origin failed")
    except KeyboardInterrupt:
        print("interrupted; partial table follows", file=sys.stderr)
    finally:
        work.cleanup()

    table = render(scenarios, peers, figures, notes, runs)
    print(table)
    if args.save:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        command = "python bench/run.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
        for name in ("SPECTRUM_BENCH_BASELINE", "SPECTRUM_BENCH_PYPY"):
            if os.environ.get(name):
                command = f"{name}={shlex.quote(os.environ[name])} {command}"
        facts.append(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        save_results(args.save, results_markdown(command, table, facts, lines, runs, opts))
        print(f"saved to {args.save}", file=sys.stderr)
    return 0


def start_origin(scenario: Scenario, work: Workdir, tries: int = 3) -> Origin:
    """
    C{scenario}'s origin, on fresh ports each try: a port free a moment ago
    may be taken by other work on the machine before the origin binds it.
    """
    for attempt in range(tries):
        try:
            return scenario.origin(work)
        except RuntimeError as e:
            if attempt == tries - 1:
                raise
            print(f"  origin: {e}; again on other ports", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def run_scenario(
    scenario: Scenario, peers: Sequence[Peer], runs: int, opts: Options, work: Workdir, figures: Dict, notes: Dict
) -> None:
    # Fresh scenarios (memory) get a new origin and proxy for every run.
    origin = None if scenario.fresh else start_origin(scenario, work)
    running: Dict[str, Running] = {}
    live: List[Peer] = []
    try:
        for peer in peers:
            cell = (scenario.key, peer.name)
            if peer.missing():
                notes[cell] = "missing"
                continue
            if cell in SKIP:
                notes[cell] = f"n/a ({SKIP[cell]})"
                continue
            if scenario.kind not in peer.kinds:
                notes[cell] = "n/a"
                continue
            if scenario.key == "idle_mem" and isinstance(peer, Direct):
                notes[cell] = "n/a"
                continue
            if not scenario.fresh:
                try:
                    running[peer.name] = peer.start(scenario.kind, origin, work, peers.index(peer), scenario.cores)
                    if getattr(peer, "warmup", False):
                        scenario.measure(running[peer.name], origin, work, opts)
                        print(f"  {peer.name}: warmed up (one unrecorded run)", file=sys.stderr, flush=True)
                except NotApplicable as e:
                    notes[cell] = f"n/a ({e.short})"
                    if e.detail:
                        print(f"  {peer.name}: n/a: {e.detail}", file=sys.stderr)
                    continue
                except Exception as e:
                    notes[cell] = "failed to start"
                    print(f"  {peer.name}: {e}", file=sys.stderr)
                    continue
            live.append(peer)
        # Interleave: run 1 of every proxy, then run 2, ...
        for run in range(runs):
            for peer in live:
                cell = (scenario.key, peer.name)
                if cell in notes:
                    continue
                proxy = running.get(peer.name)
                try:
                    if scenario.fresh:
                        here = start_origin(scenario, work)
                        try:
                            proxy = peer.start(scenario.kind, here, work, peers.index(peer), scenario.cores)
                            try:
                                result = scenario.measure(proxy, here, work, opts)
                            finally:
                                proxy.stop()
                        finally:
                            here.stop()
                    elif opts.profile and isinstance(peer, (Spectrum, PortForward)):
                        result = profiled(scenario, peer, run, proxy, origin, work, opts)
                    else:
                        result = scenario.measure(proxy, origin, work, opts)
                except NotApplicable as e:
                    notes[cell] = f"n/a ({e.short})"
                    continue
                except Exception as e:
                    print(f"  {peer.name} run {run + 1}: {e}", file=sys.stderr, flush=True)
                    figures.setdefault(cell, {}).setdefault("failed", []).append(1)
                    continue
                shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items())
                print(f"  {peer.name} run {run + 1}: {shown}", file=sys.stderr, flush=True)
                for key, value in result.items():
                    figures.setdefault(cell, {}).setdefault(key, []).append(value)
                if not scenario.fresh and proxy and any(p.poll() is not None for p in proxy.procs):
                    notes[cell] = "proxy died"
    finally:
        for proxy in running.values():
            proxy.stop()
        if origin is not None:
            origin.stop()


def profiled(
    scenario: Scenario, peer: Peer, run: int, proxy: Running, origin: Origin, work: Workdir, opts: Options
) -> Dict[str, float]:
    """
    C{scenario.measure}, with py-spy sampling spectrum meanwhile: a flame
    graph (.svg) and collapsed stacks (.txt, for grep and sort).
    """
    assert opts.profile
    stem = os.path.join(opts.profile, f"{scenario.key}-{peer.name}-{run + 1}")
    spies = [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--nonblocking",
                "--rate",
                "400",
                "--pid",
                str(proxy.procs[0].pid),
                "--format",
                fmt,
                "-o",
                f"{stem}.{ext}",
                "-d",
                str(opts.duration + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
    ]
    time.sleep(0.5)
    try:
        return scenario.measure(proxy, origin, work, opts)
    finally:
        for spy in spies:
            spy.wait(30)


#: the peer each ratio compares spectrum with, per figure
RATIO_BASE = {"pps": "nginx", "loss": "nginx"}
LOWER_IS_BETTER = {"p50", "p99", "loss", "kib"}


def render(scenarios: Sequence[Scenario], peers: Sequence[Peer], figures: Dict, notes: Dict, runs: int) -> str:
    # A ratio column for spectrum and for each other runtime of it.
    ours_names = [n for n in ("spectrum", "spectrum-pypy") if n in {p.name for p in peers}] or ["spectrum"]
    header = ["figure"] + [p.name for p in peers] + [f"{n} vs" for n in ours_names]
    rows = [header]
    for scenario in scenarios:
        for key, label, pattern in scenario.metrics:
            row = [label]
            for peer in peers:
                cell = (scenario.key, peer.name)
                got = figures.get(cell, {})
                values = got.get(key, [])
                if values:
                    text = fmt_cell(values, pattern)
                    if got.get("failed"):
                        text += f" [{len(got['failed'])} failed]"
                    if got.get("errors"):
                        text += " [errors]"
                elif cell in notes:
                    text = notes[cell]
                elif got.get("failed"):
                    text = "failed"
                else:
                    text = "-"
                row.append(text)
            base = RATIO_BASE.get(key, "haproxy")
            for name in ours_names:
                ours = figures.get((scenario.key, name), {}).get(key)
                theirs = figures.get((scenario.key, base), {}).get(key)
                if ours and theirs and statistics.median(theirs) > 0:
                    ratio = statistics.median(ours) / statistics.median(theirs)
                    row.append(f"{ratio:.2f}x {base}")
                else:
                    row.append("")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for i, row in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.append("")
    out.append(f"Median of {runs} run(s), (min-max) where more than one. Lower is better for latency, loss, memory.")
    return "\n".join(out)


BEGIN, END = "<!-- bench/run.py output: begin -->", "<!-- bench/run.py output: end -->"


def save_results(path: str, generated: str) -> None:
    """
    Write C{generated} into C{path} between the markers, keeping whatever
    else the file says (the analysis written by hand around it).
    """
    block = f"{BEGIN}\n{generated}\n{END}"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = "# Benchmark results\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def results_markdown(command: str, table: str, facts: List[str], missing: List[str], runs: int, opts: Options) -> str:
    # Other work: the load before the first run (the 15-minute figure at
    # the end is mostly the benchmark's own load generators).
    start = [f for f in facts if f.startswith("load average at start: ")]
    before = float(start[0].split(": ")[1].split()[0]) if start else os.getloadavg()[0]
    loaded = before > 0.75 * (os.cpu_count() or 1)
    parts = [
        "Made with:",
        "",
        f"    {command}",
        "",
        f"({runs} run(s) per figure, {opts.duration} s per load test, {opts.idle_connections} idle connections.)",
        "",
        "## Machine",
        "",
    ]
    parts += [f"- {fact}" for fact in facts]
    if loaded:
        parts += [
            "",
            "The machine was loaded by other work while these figures were taken (see the load",
            "averages): absolute figures are noisy; compare columns within this table.",
        ]
    if missing:
        parts += ["", "Missing:"] + [f"- {m}" for m in missing]
    parts += ["", "## Figures", "", table, ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
