"""
The proxies under test, each started from a generated config in the work
directory: a direct connection (the limit), spectrum (CPython and PyPy),
HAProxy, nginx stream, socat, stunnel and Twisted's portforward.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

from benchkit import (
    NGINX_MODULES,
    ROOT,
    NotApplicable,
    Origin,
    Workdir,
    free_port,
    nofile_limit,
    spawn,
    stop,
    wait_listening,
    which,
)

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
