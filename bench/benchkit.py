"""
The benchmark's processes: free ports, spawning and stopping, a temporary
work directory with generated configs, memory of a process tree, and the
origins (iperf3, an nginx HTTP origin, the idle-connection holder).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional, Sequence

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


def output_of(argv: List[str], timeout: float) -> str:
    """
    What C{argv} prints on stdout; it must succeed.
    """
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


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


def start_nginx_http(work: Workdir, count: int) -> Origin:
    """
    An nginx HTTP (and HTTPS) origin listening on C{count} ports of each
    kind, one per proxy, so no two proxies share a listening queue.
    """
    ports = [free_port() for _ in range(count)]
    tls_ports = [free_port() for _ in range(count)]
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
