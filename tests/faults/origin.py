"""
A many-connection origin in its own process, for fault tests: one
C{selectors} loop, so ten thousand connections cost no threads, and the
test process keeps its file descriptors for clients.

Usage: C{python origin.py MODE[@PORT] [...]}; one listening port per mode
on 127.0.0.1 (PORT, or any free one), their numbers printed on one line
once all listen. Modes:

  - C{echo}: send back what arrives (reading pauses while 1 MiB waits to go);
  - C{reset:N}: echo, and reset the connection (RST) once N bytes arrived;
  - C{silent}: read and discard, never answer;
  - C{noread}: accept and never read.
"""

from __future__ import annotations

import resource
import selectors
import socket
import struct
import sys
from typing import Dict, List

HIGH = 1 << 20


def main(modes: List[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    listeners: Dict[socket.socket, str] = {}
    for spec in modes:
        mode, _, port = spec.partition("@")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(port or 0)))
        s.listen(4096)
        s.setblocking(False)
        listeners[s] = mode
        sel.register(s, selectors.EVENT_READ, ("listen", mode))
    print(" ".join(str(s.getsockname()[1]) for s in listeners), flush=True)
    state: Dict[socket.socket, List] = {}  # conn -> [mode, pending bytes, received]

    def close(conn: socket.socket) -> None:
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        state.pop(conn, None)
        conn.close()

    def rearm(conn: socket.socket) -> None:
        mode, pending, _ = state[conn]
        events = 0
        if mode != "noread" and len(pending) < HIGH:
            events |= selectors.EVENT_READ
        if pending:
            events |= selectors.EVENT_WRITE
        if events:
            sel.modify(conn, events, ("conn", mode))
        else:
            sel.unregister(conn)
            sel.register(conn, selectors.EVENT_READ, ("idle", mode))

    while True:
        for key, events in sel.select():
            kind, mode = key.data
            sock = key.fileobj
            if kind == "listen":
                for _ in range(256):
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    conn.setblocking(False)
                    state[conn] = [mode, bytearray(), 0]
                    if mode == "noread":
                        # Registered for nothing useful: it is never read.
                        continue
                    sel.register(conn, selectors.EVENT_READ, ("conn", mode))
                continue
            entry = state.get(sock)
            if entry is None:
                continue
            if kind == "idle":
                continue
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    close(sock)
                    continue
                if data == b"":
                    if entry[1]:
                        try:
                            sock.setblocking(True)
                            sock.sendall(entry[1])
                        except OSError:
                            pass
                    close(sock)
                    continue
                if data:
                    entry[2] += len(data)
                    if mode.startswith("reset:") and entry[2] >= int(mode.split(":")[1]):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        close(sock)
                        continue
                    if mode != "silent":
                        entry[1] += data
            if events & selectors.EVENT_WRITE and entry[1]:
                try:
                    sent = sock.send(entry[1])
                    del entry[1][:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(sock)
                    continue
            rearm(sock)


if __name__ == "__main__":
    main(sys.argv[1:])
