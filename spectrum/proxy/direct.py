"""
Direct writes for the normal (copying) relay path.

Twisted's C{transport.write} always buffers: the bytes go to a list, the
descriptor is added to the poller for writing (C{epoll_ctl}), and only on the
next loop round does C{doWrite} send them and take the descriptor out again
(another C{epoll_ctl}).  For a relay, where nearly every chunk read is sent
on at once into a socket with room, that is two system calls and a loop
round per chunk for nothing; and a chunk larger than the transport's buffer
size (a TLS record batch, a 64 KiB read) pauses and resumes the other leg
each time, two more.

L{attach} moves a leg's TCP transport to a subclass (same layout, no new
attributes, as L{spectrum.proxy.splice} does) whose C{write} sends straight
to the socket when nothing waits in the transport's buffer, so the byte
order is kept, and hands whatever the socket does not take (or any error) to
Twisted's own C{write}, which buffers it, waits for the socket to be
writable, pauses the producer when the buffer fills and reports a broken
connection exactly as before.  A transport that is closed or half-closed
for writing takes Twisted's path too, and drops the bytes as it does.

A half-close (C{loseWriteConnection}) with nothing buffered shuts the
socket's write side down at once, rather than on the next loop round after
registering for writability; and the final close skips the C{shutdown(2)}
Twisted makes before C{close()} (the process is the descriptor's only
holder, so C{close()} alone has the same effect).

Reads go through L{spectrum.proxy.scratch} (one reused buffer, copied out
at the exact size) instead of a 64 KiB allocation per read.

Under TLS the socket transport is the one below the TLS protocol: the
encrypted records go straight out the same way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from spectrum.proxy import scratch

#: Twisted's own write for TCP transports (C{tcp.Server} and C{tcp.Client}
#: both resolve to it): buffers, and pauses the producer when full.
_buffered_write = tcp.Connection.write


def _write(self: Any, data: bytes) -> None:
    """
    C{write} that tries the socket first.
    """
    if not self._tempDataLen and not self.dataBuffer and self.connected and not self._writeDisconnected:
        try:
            sent = self.socket.send(data)
        except OSError:
            # Full (EAGAIN) or broken: Twisted's write buffers the bytes and
            # its doWrite finds and reports the error as before.
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    _buffered_write(self, data)


#: Twisted's own half-close: marks the transport, waits for the socket to be
#: writable, and shuts the write side down from C{doWrite}.
_buffered_lose_write = tcp.Connection.loseWriteConnection


def _lose_write(self: Any) -> None:
    """
    C{loseWriteConnection} that shuts the write side down at once when
    nothing waits to be sent: a relay half-closes one leg as the other's EOF
    arrives, and Twisted's way costs two C{epoll_ctl} and a loop round.
    """
    if (
        not self._tempDataLen
        and not self.dataBuffer
        and self.connected
        and not self.disconnecting
        and not self._writeDisconnecting
    ):
        self._writeDisconnecting = True
        self._writeDisconnected = True
        # In case a write interest is still registered (no syscall if not):
        # its doWrite must not close the write side a second time.
        self.stopWriting()
        self._closeWriteConnection()
        return
    _buffered_lose_write(self)


class _DirectServer(tcp.Server):
    write = _write
    loseWriteConnection = _lose_write
    doRead = scratch.read_tcp
    _bulk = False


class _DirectClient(tcp.Client):
    write = _write
    loseWriteConnection = _lose_write
    doRead = scratch.read_tcp
    _bulk = False


#: The transport classes this path takes, and what they become.
_DIRECT = {tcp.Server: _DirectServer, tcp.Client: _DirectClient}


def attach(transport: Any) -> bool:
    """
    Make the socket transport under C{transport} (itself, or the one below
    its TLS layers) write directly.  C{False} (and nothing changed) where
    there is none: a test transport, a transport already changed (the
    zero-copy path, say).

    Bound C{write} methods taken before this still buffer; take them again.
    """
    for _ in range(4):
        kind = _DIRECT.get(type(transport))
        if kind is not None:
            transport.__class__ = kind
            # The socket is close-on-exec and this process its only holder:
            # close() alone ends it as shutdown(2) + close() would.
            transport._shouldShutdown = False
            return True
        if type(transport) in _DIRECT.values():
            return True
        transport = getattr(transport, "transport", None)
        if transport is None:
            return False
    return False
