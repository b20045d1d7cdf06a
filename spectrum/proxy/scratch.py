"""
Reads into one reused buffer, copied out at their exact size.

Twisted reads a socket with C{recv(65536)} (C{recvfrom(maxPacketSize)} for
UDP): every read allocates 64 KiB, then shrinks the result to what came.
For a relay's small messages and datagrams that is a 64 KiB malloc and a
split per read; mixed with the small long-lived allocations of open
connections, the split-off holes fragment the C heap, which then grows for
hours while what it holds stays level. Here the kernel copies into one
buffer the process keeps, and the data is copied out once at its size
(from the small-object allocator up to 512 bytes). The reactor is one
thread, and every read's bytes are copied out before the next read, so one
buffer serves every socket.

A TCP transport that reads full buffers (a bulk transfer) goes back to
Twisted's C{recv}: a read that fills most of the 64 KiB is kept as it is
allocated, with nothing split off, and not copied a second time.
"""

from __future__ import annotations

import socket
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import main, udp
from twisted.python import log

SIZE = 65536
_buffer = bytearray(SIZE)
_view = memoryview(_buffer)
#: a TCP read of at least this many bytes switches its transport to plain
#: recv(); one below L{SMALL} switches it back
BULK = 32768
SMALL = 8192


def read_tcp(self: Any) -> Any:
    """
    C{doRead} for a TCP transport (L{twisted.internet.tcp.Connection}).
    """
    bulk = self._bulk
    try:
        if bulk:
            data = self.socket.recv(self.bufferSize)
        else:
            data = _view[: self.socket.recv_into(_buffer)].tobytes()
    except OSError as se:
        if se.args[0] == EWOULDBLOCK:
            return None
        return main.CONNECTION_LOST
    if not data:
        return main.CONNECTION_DONE
    if bulk:
        if len(data) < SMALL:
            self._bulk = False
    elif len(data) >= BULK:
        self._bulk = True
    self.protocol.dataReceived(data)
    return None


class DatagramPort(udp.Port):
    """
    Twisted's UDP port, reading each datagram into the shared buffer.
    C{maxPacketSize} must not exceed L{SIZE}.
    """

    def doRead(self) -> None:
        read = 0
        receive = self.socket.recvfrom_into
        limit = min(self.maxPacketSize, SIZE)
        while read < self.maxThroughput:
            try:
                size, addr = receive(_buffer, limit)
            except OSError as se:
                no = se.args[0]
                if no in udp._sockErrReadIgnore:
                    return
                if no in udp._sockErrReadRefuse:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                raise
            read += size
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]
            try:
                self.protocol.datagramReceived(_view[:size].tobytes(), addr)
            except BaseException:
                log.err()
