"""
A real redis-server for tests: on a free loopback port, no persistence,
killed and restarted on demand (the same port, so clients reconnect).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from typing import Any, Dict, List, Optional

from twisted.internet import defer

from conftest import free_port, require_program
from relaykit import sleep


class RedisServer:
    """
    One C{redis-server} process on 127.0.0.1.
    """

    def __init__(self, port: Optional[int] = None, debug: bool = False) -> None:
        self.program = require_program("redis-server")
        self.port = port or free_port()
        #: allow DEBUG (SLEEP...) from loopback: Redis 7 refuses it by default
        self.debug = debug
        self.process: Optional[subprocess.Popen] = None

    def url(self, prefix: Optional[str] = None) -> str:
        """
        A store URL on this server; a fresh key prefix keeps tests apart.
        """
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix or 't' + uuid.uuid4().hex[:12]}"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                *(["--enable-debug-command", "local"] if self.debug else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """
        SIGKILL: the way a crashed or unplugged Redis goes.
        """
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def command(self, *args: str) -> bytes:
        """
        Send one command with a raw socket (independent of the client under
        test) and return the raw reply.
        """
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"".join(parts))
            return s.recv(65536)

    def stall(self, seconds: float) -> None:
        """
        C{DEBUG SLEEP}: Redis stops answering everyone for C{seconds} (the
        kernel still accepts connections; nothing is read), as a Redis held
        up by a slow disk or a long command would. Returns once it is
        asleep; needs C{debug=True}.
        """
        arg = str(seconds).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$%d\r\n%s\r\n" % (len(arg), arg))
            s.settimeout(min(0.3, seconds / 2))
            try:
                answer = s.recv(256)
            except socket.timeout:
                return  # no answer yet: asleep
            raise RuntimeError(f"DEBUG SLEEP answered at once: {answer!r}")


class Recorder:
    """
    A store listener that keeps what it was told.
    """

    def __init__(self) -> None:
        self.changes: List[tuple] = []
        self.resyncs = 0
        self._waiters: List[defer.Deferred] = []

    def changed(self, kind: str, id: str, doc: Optional[Dict[str, Any]]) -> None:
        self.changes.append((kind, id, doc))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def resync(self) -> None:
        self.resyncs += 1

    async def wait_for(self, count: int, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.changes) < count:
            assert time.monotonic() < deadline, f"only {self.changes} of {count} changes arrived"
            await sleep(0.01)


async def until_available(store: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not store.available:
        assert time.monotonic() < deadline, "the store never became available"
        await sleep(0.01)
