"""
Zero-copy relay for plain TCP to plain TCP: bytes move socket -> pipe ->
socket with C{splice(2)} and never enter Python.

The two legs stay ordinary Twisted TCP transports; only how each one reads
and writes changes.  L{attach} moves the two transport instances to
subclasses of C{tcp.Server} and C{tcp.Client} whose C{doRead} and
C{doWrite} splice (same layout, no new attributes, so no memory per
connection beyond one small L{SpliceRelay}).  Everything else (half-close,
C{loseConnection}, C{abortConnection}, C{connectionLost}, the reactor's
bookkeeping) is Twisted's own code, and L{spectrum.proxy.tcp.EdgeProtocol}
sees the same callbacks as on the normal path:

  - reading a leg splices what its socket holds into that direction's pipe,
    then at once from the pipe into the other leg's socket (no extra poll
    round and no C{epoll_ctl} per chunk when the writer keeps up);
  - what the other socket does not take stays in the pipe: reading stops
    on this leg (backpressure) and the other leg waits to be writable, and
    reading resumes once the pipe is empty.  A leg is read only while its
    pipe is empty, so per connection at most two pipes' worth (64 KiB each)
    is in flight inside the proxy;
  - end of file reads as C{CONNECTION_DONE}, which Twisted turns into
    C{readConnectionLost} (the half-close); a leg's pending half-close or
    close waits until its pipe is drained, because Twisted's own C{doWrite}
    runs only then;
  - bytes read are added to the legs' C{received} counters, which the
    records and the idle timer read, exactly as C{dataReceived} does.

Pipes are taken on a direction's first byte, so an idle connection costs
no descriptors beyond its two sockets, and an empty pipe goes back to a
small per-process pool when its connection closes, so short connections
do not pay for pipe2() and close() each time.

Where C{os.splice} is missing (not Linux, Python < 3.10), a transport is
not a plain TCP socket transport (TLS, a test transport), or a leg already
has bytes in its write buffer (a PROXY header written at connect), L{attach}
returns C{False} and the connection keeps the normal path.

The fast path is off unless C{SPECTRUM_ZERO_COPY=1} is in the environment
(or L{ENABLED} is set), until it has run in production as long as the
normal path has.
"""

from __future__ import annotations

import errno
import fcntl
import os
import termios
from array import array
from typing import Any, List, Optional, Tuple

from twisted.internet import main, tcp

#: Whether L{spectrum.proxy.tcp} should try this path.
ENABLED = os.environ.get("SPECTRUM_ZERO_COPY", "").lower() in ("1", "yes", "true", "on")

#: Largest splice per call: the default pipe capacity.
CHUNK = 64 * 1024

_splice: Any = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)

#: Most empty pipes kept for reuse (two descriptors each).
POOL_SIZE = 32
_pool: List[Tuple[int, int]] = []


def available() -> bool:
    """
    Whether this platform can splice between sockets.
    """
    return _splice is not None


def eligible(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP socket transport with nothing
    waiting in its write buffer (TLS, for one, is not).
    """
    return (
        type(transport) in _SPLICING
        and not getattr(transport, "TLS", False)
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
    )


def attach(edge: Any, leg: Any) -> bool:
    """
    Move the bytes between C{edge}'s client and C{leg}'s origin with
    splice from now on.

    @param edge: an L{EdgeProtocol}; its C{received} counts client bytes,
        and its C{splice} attribute receives the L{SpliceRelay}.
    @param leg: its L{OriginProtocol}; its C{received} counts origin bytes.
    @return: C{False} (and nothing changed) where the fast path does not
        apply.
    """
    client, origin = edge.transport, leg.transport
    if _splice is None or not (eligible(client) and eligible(origin)) or client.protocol is not edge:
        return False
    edge.splice = SpliceRelay(edge, leg)
    client.__class__ = _SPLICING[type(client)]
    origin.__class__ = _SPLICING[type(origin)]
    return True


def close_pool() -> None:
    """
    Close the pipes kept for reuse.
    """
    while _pool:
        for fd in _pool.pop():
            os.close(fd)


#: L{_Direction.drain}: the pipe is empty, Twisted's doWrite may run.
_DRAINED = object()


class _Direction:
    """
    One way through the relay: reads C{src}'s socket into a pipe, writes the
    pipe into C{dst}'s socket, and counts into C{counter}.
    """

    __slots__ = ("src", "dst", "counter", "read_fd", "write_fd", "pending", "eof")

    def __init__(self, src: Any, dst: Any, counter: Any) -> None:
        self.src = src
        self.dst = dst
        self.counter = counter
        self.read_fd = -1
        self.write_fd = -1
        #: bytes in the pipe not yet written to dst
        self.pending = 0
        self.eof = False

    def do_read(self) -> Any:
        if self.write_fd < 0:
            self.read_fd, self.write_fd = _pool.pop() if _pool else os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            n = _splice(self.src.fileno(), self.write_fd, CHUNK, flags=_FLAGS)
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not n:
            self.eof = True
            return main.CONNECTION_DONE
        self.counter.received += n
        self.pending = n
        self._flush()
        if self.pending:
            # The other socket is full: stop reading here until it drains.
            self.src.stopReading()
            self.dst.startWriting()
        return None

    def _flush(self) -> Optional[OSError]:
        dst = self.dst.fileno()
        while self.pending:
            try:
                n = _splice(self.read_fd, dst, self.pending, flags=_FLAGS)
            except OSError as e:
                return e
            if not n:
                return None
            self.pending -= n
        return None

    def drain(self) -> Any:
        """
        C{dst} is writable: move what the pipe holds.  L{_DRAINED} when the
        pipe is empty, else what C{doWrite} returns.
        """
        if self.pending:
            error = self._flush()
            if error is not None and error.errno not in _AGAIN:
                return main.CONNECTION_LOST
            if self.pending:
                return None
            if not self.eof:
                # resumeProducing, not startReading: it leaves a leg that is
                # closing alone.
                self.src.resumeProducing()
        return _DRAINED

    def close(self) -> None:
        if self.read_fd < 0:
            return
        if not self.pending and len(_pool) < POOL_SIZE:
            _pool.append((self.read_fd, self.write_fd))
        else:
            os.close(self.read_fd)
            os.close(self.write_fd)
        self.read_fd = self.write_fd = -1


class SpliceRelay:
    """
    The splice state of one relayed connection: one L{_Direction} each way.
    """

    __slots__ = ("upstream", "downstream", "_lost")

    def __init__(self, edge: Any, leg: Any) -> None:
        client, origin = edge.transport, leg.transport
        self.upstream = _Direction(client, origin, edge)
        self.downstream = _Direction(origin, client, leg)
        self._lost = 0

    def one_lost(self) -> None:
        """
        One leg's socket is closed; once both are, free the pipes.
        """
        self._lost += 1
        if self._lost == 2:
            self.upstream.close()
            self.downstream.close()

    def pending(self) -> int:
        """
        Bytes inside the proxy's pipes, both ways (for tests and stats).
        """
        total = 0
        for direction in (self.upstream, self.downstream):
            if direction.read_fd >= 0:
                buf = array("i", [0])
                fcntl.ioctl(direction.read_fd, termios.FIONREAD, buf)
                total += buf[0]
        return total


class _SplicingServer(tcp.Server):
    """
    The client leg on the zero-copy path (its protocol is the edge).
    """

    protocol: Any

    def doRead(self) -> Any:
        return self.protocol.splice.upstream.do_read()

    def doWrite(self) -> Any:
        result = self.protocol.splice.downstream.drain()
        # With the pipe empty, Twisted's doWrite stops writing and carries
        # out any close or half-close that was waiting for the buffer.
        return super().doWrite() if result is _DRAINED else result

    def connectionLost(self, reason: Any) -> None:
        relay = self.protocol.splice
        try:
            super().connectionLost(reason)
        finally:
            relay.one_lost()


def _relay_of(origin_transport: Any) -> SpliceRelay:
    # An origin reached through an endpoint (by hostname) has its protocol
    # wrapped once.
    protocol = origin_transport.protocol
    return getattr(protocol, "_wrappedProtocol", protocol).edge.splice


class _SplicingClient(tcp.Client):
    """
    The origin leg on the zero-copy path (its protocol's C{edge} holds the
    relay).
    """

    def doRead(self) -> Any:
        return _relay_of(self).downstream.do_read()

    def doWrite(self) -> Any:
        result = _relay_of(self).upstream.drain()
        return super().doWrite() if result is _DRAINED else result

    def connectionLost(self, reason: Any) -> None:
        relay = _relay_of(self)
        try:
            super().connectionLost(reason)
        finally:
            relay.one_lost()


#: The transport classes the fast path takes, and what they become.
_SPLICING = {tcp.Server: _SplicingServer, tcp.Client: _SplicingClient}
