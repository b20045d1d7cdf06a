"""
Run inside a fresh network namespace (tests/test_kernel_range.py starts it
under C{unshare --net}, with loopback up): a C{tcp/20000-29999} app (10,000
ports) in a real C{twistd spectrum} with the kernel filter, its origins on
sampled ports of 30000-39999 answering with their own port number. Checks,
and exits 1 with one line saying what failed:

- the edge listens on one socket and holds fewer than 50 descriptors;
- a connection to any sampled edge port reaches the origin port at the
  same offset;
- a reload (SIGHUP) narrowing the range to 20000-20099 refuses the ports
  that left, and the ports that stayed still reach their origins.

Prints one line of JSON with what it measured.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EDGE = (20000, 29999)
ORIGIN_FIRST = 30000
NARROWED = (20000, 20099)
#: edge ports tried (both ends, and a sample)
SAMPLE = 60
MAX_DESCRIPTORS = 50
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


class Failed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def serve_origins(ports: List[int]) -> List[socket.socket]:
    """
    A listening socket on each of C{ports}, answering every connection
    with its port number, in one thread.
    """
    listeners = []
    for port in ports:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(64)
        server.setblocking(False)
        listeners.append(server)

    def run() -> None:
        import selectors

        chosen = selectors.DefaultSelector()
        for server in listeners:
            chosen.register(server, selectors.EVENT_READ)
        while True:
            for key, _ in chosen.select():
                server = key.fileobj
                assert isinstance(server, socket.socket)
                try:
                    client, _ = server.accept()
                except OSError:
                    continue
                with client:
                    client.sendall(b"%d\n" % server.getsockname()[1])

    threading.Thread(target=run, daemon=True).start()
    return listeners


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        received = b""
        while not received.endswith(b"\n"):
            chunk = client.recv(100)
            if not chunk:
                break
            received += chunk
        return received


def refused(port: int) -> bool:
    with socket.socket() as client:
        client.settimeout(2)
        return client.connect_ex(("127.0.0.1", port)) != 0


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def write_config(path: str, edge: tuple) -> None:
    origin_last = ORIGIN_FIRST + edge[1] - edge[0]
    with open(path, "w") as f:
        f.write(f"""
kernel_filter: "on"
apps:
  - name: range
    protocol: tcp/{edge[0]}-{edge[1]}
    origin_port: "{ORIGIN_FIRST}-{origin_last}"
    ips: ["127.0.0.1"]
    origin_pool: {{name: range, origins: [{{name: o, address: 127.0.0.1}}]}}
""")


def wait_for(port: int, process: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            with open(log) as f:
                raise Failed(f"twistd exited {process.returncode}: {f.read()[-600:]}")
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        check(time.monotonic() < deadline, f"the edge does not listen on {port}")
        time.sleep(0.1)


def main() -> int:
    rng = random.Random(15)
    ends = {EDGE[0], EDGE[0] + 1, NARROWED[0] + 50, NARROWED[1], NARROWED[1] + 1, EDGE[1]}
    sample = sorted({*ends, *rng.sample(range(EDGE[0], EDGE[1] + 1), SAMPLE)})
    kept = [port for port in sample if port <= NARROWED[1]]
    gone = [port for port in sample if port > NARROWED[1]]
    serve_origins([ORIGIN_FIRST + port - EDGE[0] for port in sample])
    tmp = tempfile.mkdtemp(prefix="spectrum-range-")
    config, log = os.path.join(tmp, "spectrum.yaml"), os.path.join(tmp, "twistd.log")
    write_config(config, EDGE)
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "spectrum", "--config", config]
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    figures: Dict[str, object] = {}
    try:
        wait_for(EDGE[1], process, log)
        figures["start_seconds"] = round(time.monotonic() - started, 2)
        with open(log) as f:
            check("kernel filter: on" in f.read(), "the kernel filter is not on")
        count = descriptors(process.pid)
        figures["descriptors"] = count
        check(count < MAX_DESCRIPTORS, f"{count} descriptors open for 10,000 ports")
        for port in sample:
            want = b"%d\n" % (ORIGIN_FIRST + port - EDGE[0])
            got = greeting(port)
            check(got == want, f"edge port {port} reached {got!r}, not {want!r}")
        figures["ports_checked"] = len(sample)

        write_config(config, NARROWED)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not refused(gone[-1]):
            check(time.monotonic() < deadline, "the narrowing reload did not take effect")
            time.sleep(0.1)
        for port in gone:
            check(refused(port), f"edge port {port} left the range but still connects")
        for port in kept:
            want = b"%d\n" % (ORIGIN_FIRST + port - EDGE[0])
            check(greeting(port) == want, f"edge port {port}, still in the range, no longer reaches its origin")
        figures["refused_after_reload"] = len(gone)
        figures["kept_after_reload"] = len(kept)
        with open(log) as f:
            text = f.read()
        check("Traceback" not in text, "twistd logged a traceback: " + text[text.find("Traceback") :][:600])
    except Failed as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
