"""
A real redis-server for tests: on a free loopback port, no persistence,
killed and restarted on demand (the same port, so clients reconnect).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from typing import Optional

from conftest import free_port, require_program


class RedisServer:
    """
    One C{redis-server} process on 127.0.0.1.
    """

    def __init__(self, port: Optional[int] = None) -> None:
        self.program = require_program("redis-server")
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen] = None

    def url(self, prefix: Optional[str] = None) -> str:
        """
        A store URL on this server; a fresh key prefix keeps tests apart.
        """
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix or 't' + uuid.uuid4().hex[:12]}"

    def start(self) -> "RedisServer":
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
