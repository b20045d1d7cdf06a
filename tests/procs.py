"""
Helpers for tests that run real programs: C{twistd spectrum} as a
subprocess, origins the test can tell apart, and waiting on ports.

Everything here is blocking and bounded by a timeout, for plain (non
pytest_twisted) tests that talk to other processes over real sockets.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence

#: How C{twistd} ends after a clean shutdown on SIGTERM: it stops the reactor
#: (stopping services, draining), then raises the same signal against itself
#: so its parent sees what ended it (C{twisted.application.app._exitWithSignal}).
#: A clean stop is this status and C{"Server Shut Down."} as the last log line.
STOPPED_BY_SIGTERM = -signal.SIGTERM

#: The worktree root: twistd runs here, and finds the plugin and package here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd() -> List[str]:
    """
    The command that runs the real C{twistd} of this Python.

    C{python -m twisted} is C{twist}, a different runner without C{-n} or
    C{--pidfile}; C{twistd} is the console script installed next to the
    interpreter, and C{twisted.scripts.twistd.run} is what that script runs.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [sys.executable, script]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def spectrum_cli() -> List[str]:
    """
    The C{spectrum} command: the console script installed next to this
    Python, else the module it runs.
    """
    script = os.path.join(os.path.dirname(sys.executable), "spectrum")
    if os.access(script, os.X_OK):
        return [sys.executable, script]
    return [sys.executable, "-m", "spectrum.cli"]


def spectrum_command(config: Optional[str] = None, *options: str) -> List[str]:
    """
    C{twistd -n --pidfile= spectrum [--config FILE] [options]}.
    """
    command = [*twistd(), "-n", "--pidfile=", "spectrum"]
    if config is not None:
        command += ["--config", os.fspath(config)]
    return command + list(options)


def environment() -> Dict[str, str]:
    """
    The environment for a subprocess that imports spectrum from the worktree.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: PyPy's GC frees garbage only at its next major collection, which comes
#: once the heap has grown by 82%: bounds on a process's RSS there allow for
#: what floats until then.
ON_PYPY = platform.python_implementation() == "PyPy"

#: How long a started twistd may take to listen: a bound, not a wait. PyPy
#: imports (and compiles) slowly, and the suite may share a busy machine.
START_TIMEOUT = 60.0


def run(command: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """
    Run C{command} from the worktree root to its end; stdout and stderr
    are captured as text.
    """
    return subprocess.run(
        list(command),
        cwd=ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Any, data: Any) -> str:
    """
    Write C{data} to C{path} as JSON (or as the text given), atomically, so
    a reload never reads half a file; return the path.
    """
    path = os.fspath(path)
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    partial = path + ".partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)
    return path


def tcp_app(name: str, edge_port: int, origins: Iterable[int], **extra: Any) -> Dict[str, Any]:
    """
    A config app: 127.0.0.1:C{edge_port} relayed to origins on 127.0.0.1.
    """
    origin_list = list(origins)
    app: Dict[str, Any] = {
        "name": name,
        "protocol": "tcp",
        "ips": ["127.0.0.1"],
        "ports": [{"destination_port": edge_port, "origin_port": origin_list[0]}],
        "origin_pool": {
            "name": name,
            "origins": [
                {"name": f"{name}-{i}", "address": "127.0.0.1", "port": port} for i, port in enumerate(origin_list)
            ],
        },
    }
    app.update(extra)
    return app


# waiting ------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """
    Poll C{predicate} until it returns something true; return that.

    @raise AssertionError: C{timeout} seconds went by first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def accepts(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """
    Whether something accepts TCP connections on C{host}:C{port} now.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0, process: Any = None) -> None:
    """
    Wait until C{host}:C{port} accepts connections; fail early if C{process}
    (a L{Twistd} or L{subprocess.Popen}) died meanwhile.
    """

    def ready() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.poll()} before {host}:{port} was ready")
        return accepts(port, host, timeout=0.5)

    wait_until(ready, timeout, 0.05, f"{host}:{port} to accept")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether C{host}:C{port} could be bound for listening now.
    """
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


# twistd ---------------------------------------------------------------------


class Twistd:
    """
    C{twistd -n spectrum} running as a subprocess; its log (stdout and
    stderr) goes to a file the test can read while it runs.
    """

    def __init__(
        self, config: Optional[str], log_path: Any, *options: str, preexec_fn: Optional[Callable[[], None]] = None
    ) -> None:
        self.log_path = os.fspath(log_path)
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            spectrum_command(config, *options),
            cwd=ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def log(self) -> str:
        """
        Everything twistd wrote so far.
        """
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, text: str, timeout: float = 10.0, after: int = 0) -> str:
        """
        Wait until C{text} shows up in the log after character C{after};
        return the line that holds it.
        """

        def line() -> Optional[str]:
            log = self.log()[after:]
            for entry in log.splitlines():
                if text in entry:
                    return entry
            if self.poll() is not None:
                raise AssertionError(f"twistd exited with {self.poll()} before logging {text!r}:\n{log}")
            return None

        return wait_until(line, timeout, 0.02, f"{text!r} in the log")

    def wait_for_ports(self, *ports: int, timeout: float = START_TIMEOUT) -> None:
        for port in ports:
            wait_for_port(port, timeout=timeout, process=self)

    def signal(self, signum: int) -> None:
        self.wait_for_handler(signum)
        self.process.send_signal(signum)

    def wait_for_handler(self, signum: int, timeout: float = 10.0) -> None:
        """
        Wait until the process catches C{signum}: its edge ports listen
        before the reactor runs and installs its handlers, and a signal in
        between would end it the default way, without its shutdown.
        """

        def caught() -> bool:
            if self.process.poll() is not None:
                return True
            try:
                with open(f"/proc/{self.process.pid}/status") as f:
                    for line in f:
                        if line.startswith("SigCgt:"):
                            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
            except OSError:
                return True
            return False

        wait_until(caught, timeout, 0.01, f"twistd to catch signal {signum}")

    def stop(self, timeout: float = 15.0) -> int:
        """
        SIGTERM, then wait for the exit; SIGKILL if it takes longer than
        C{timeout} seconds. Returns the exit status (L{STOPPED_BY_SIGTERM}
        after a clean stop).
        """
        if self.process.poll() is None:
            self.wait_for_handler(signal.SIGTERM)
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"twistd did not exit within {timeout}s of SIGTERM:\n{self.log()}") from None
        finally:
            self._log.close()

    def wait(self, timeout: float = 15.0) -> int:
        """
        Wait for the process to exit on its own; return its status.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"twistd still running after {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        """
        Make sure the process is gone (for cleanup after a failed test).
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


def start_twistd(
    config: Optional[str],
    log_path: Any,
    ports: Iterable[int] = (),
    options: Sequence[str] = (),
    preexec_fn: Optional[Callable[[], None]] = None,
) -> Twistd:
    """
    Start twistd spectrum and wait until every port in C{ports} accepts.
    """
    proxy = Twistd(config, log_path, *options, preexec_fn=preexec_fn)
    try:
        proxy.wait_for_ports(*ports)
    except BaseException:
        proxy.kill()
        raise
    return proxy


# origins ------------------------------------------------------------------


class _Handler(socketserver.BaseRequestHandler):
    server: NamedOrigin._Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.sendall(self.server.banner)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                # Half-close from the client: answer, then close our side.
                try:
                    sock.sendall(b"bye\n")
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            sock.sendall(data)


class NamedOrigin:
    """
    A TCP origin on 127.0.0.1 that greets each connection with its name
    (C{b"<name>\\n"}), echoes what it reads, and answers EOF with
    C{b"bye\\n"} before closing, so a test can tell which origin a
    connection reached and that bytes and half-close went both ways.
    """

    class _Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        banner = b""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = self._Server(("127.0.0.1", 0), _Handler)
        self.server.banner = name.encode() + b"\n"
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> NamedOrigin:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Client:
    """
    A blocking TCP client with a deadline on every read.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; had {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def exchange(self, data: bytes) -> bytes:
        """
        Send one line and read one line back.
        """
        self.sock.sendall(data + b"\n")
        return self.read_line()

    def finish(self) -> bytes:
        """
        Half-close, then read everything until the peer closes.
        """
        self.sock.shutdown(socket.SHUT_WR)
        chunks = [self.buffer]
        self.buffer = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


def greeting(port: int) -> bytes:
    """
    The first line a new connection to C{port} receives.
    """
    client = Client(port)
    try:
        return client.read_line()
    finally:
        client.close()


# real peers ---------------------------------------------------------------


class Program:
    """
    A real server program (sshd, redis-server...) run in the foreground as
    a subprocess, its output in a log file.
    """

    def __init__(self, command: Sequence[str], log_path: Any) -> None:
        self.command = list(command)
        self.log_path = os.fspath(log_path)
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> None:
        """
        SIGTERM, and SIGKILL if it does not exit within C{timeout} seconds.
        """
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
        finally:
            self._log.close()


def start_program(command: Sequence[str], log_path: Any, port: int, timeout: float = START_TIMEOUT) -> Program:
    """
    Start C{command} and wait until it accepts on 127.0.0.1:C{port}.
    """
    program = Program(command, log_path)
    try:
        wait_for_port(port, timeout=timeout, process=program)
    except BaseException:
        program.stop()
        raise AssertionError(f"{command[0]} did not start:\n{program.log()}") from None
    return program
