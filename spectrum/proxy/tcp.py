"""
The TCP relay: a client connection at the edge, joined to one origin.

The client is not read until an origin has accepted; each transport is then
registered as the other's streaming producer, so a slow reader on either side
pauses the writer on the other and memory per connection stays bounded by the
transports' buffers. EOF is propagated as a half-close both ways.
"""

from __future__ import annotations

import errno
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spectrum import status as S
from spectrum.admission import normalize_ip
from spectrum.model import Origin, PortMapping
from spectrum.proxy import direct, splice
from spectrum.proxy.dial import Dial, can_dial
from spectrum.proxy.lifecycle import DIALING, RELAYING, Connection
from spectrum.proxy.proxyproto import header_for
from spectrum.record import CONNECT, DISCONNECT, ORIGIN_ERROR, ConnectionRecord

_literals: Dict[str, bool] = {}


def _is_literal(address: str) -> bool:
    """
    Whether C{address} is an IP address (not a name), remembered per
    address: the test parses the string, and it runs for every connection.
    """
    literal = _literals.get(address)
    if literal is None:
        if len(_literals) > 4096:
            _literals.clear()
        literal = _literals[address] = isIPAddress(address) or isIPv6Address(address)
    return literal


def _connect_failure_status(reason: Failure) -> int:
    if reason.check(ierror.ConnectionRefusedError):
        return S.ORIGIN_REFUSED
    if reason.check(ierror.TimeoutError, ierror.TCPTimedOutError):
        return S.ORIGIN_CONNECT_TIMEOUT
    return S.ORIGIN_UNREACHABLE


def _lost_status(reason: Failure, origin_side: bool) -> Optional[int]:
    """
    The status a connection closed with C{reason} gets, or L{None} for a
    clean close.
    """
    if reason.check(ierror.ConnectionDone):
        return None
    if not origin_side:
        return S.CLIENT_ERROR
    code = getattr(reason.value, "osError", None)
    args = getattr(reason.value, "args", ())
    if code is None and args:
        code = args[0]
    if code == errno.EPIPE:
        return S.ORIGIN_BROKEN_PIPE
    if code == errno.ETIMEDOUT:
        return S.ORIGIN_TIMEOUT
    if reason.check(ierror.ConnectionLost) or code == errno.ECONNRESET:
        return S.ORIGIN_RESET
    return S.ORIGIN_ERROR


@implementer(IHalfCloseableProtocol)
class OriginProtocol(Protocol):
    """
    The origin leg: moves the origin's bytes to the client and counts them.
    """

    __slots__ = ("edge", "origin", "received", "_write", "_read_closed", "_write_closed")

    transport: Any

    def __init__(self, edge: EdgeProtocol, origin: Origin) -> None:
        self.edge = edge
        self.origin = origin
        self.received = 0
        self._read_closed = False
        self._write_closed = False

    def connectionMade(self) -> None:
        self._write = self.edge.transport.write
        self.edge.origin_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._write(data)
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if not self.edge._client_gone:
            self.edge.transport.loseWriteConnection()
        if self._write_closed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        if self._read_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self.edge.origin_lost(reason)


class _OriginFactory(ClientFactory):
    noisy = False

    def __init__(self, edge: EdgeProtocol, origin: Origin) -> None:
        self.edge = edge
        self.origin = origin

    def buildProtocol(self, addr: Any) -> OriginProtocol:
        return OriginProtocol(self.edge, self.origin)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.edge.origin_failed(self.origin, reason)


class _IdleSweep:
    """
    The idle checks of every relayed connection with one idle length, under
    one timer that fires every half length: a connection joins as it starts
    relaying and leaves as it ends. A timer per connection would cost a
    delayed call (and its memory) held by every idle client, and a heap push
    and a cancel for every short one.
    """

    __slots__ = ("reactor", "interval", "members", "call")
    log = Logger()

    def __init__(self, reactor: Any, interval: float) -> None:
        self.reactor = reactor
        self.interval = interval
        self.members: Dict[EdgeProtocol, None] = {}
        self.call: Any = None

    def add(self, edge: EdgeProtocol) -> None:
        self.members[edge] = None
        if self.call is None:
            self.call = self.reactor.callLater(self.interval, self._sweep)

    def discard(self, edge: EdgeProtocol) -> None:
        # The timer stays armed: the sweep that finds no member stops it.
        self.members.pop(edge, None)

    def _sweep(self) -> None:
        self.call = None
        for edge in list(self.members):
            try:
                edge._idle_check()
            except Exception:
                self.log.failure("idle check failed")
        if self.members:
            self.call = self.reactor.callLater(self.interval, self._sweep)


_sweeps: Dict[Tuple[Any, float], _IdleSweep] = {}


def _idle_sweep(reactor: Any, idle: float) -> _IdleSweep:
    key = (reactor, idle)
    sweep = _sweeps.get(key)
    if sweep is None:
        sweep = _sweeps[key] = _IdleSweep(reactor, idle / 2.0)
    return sweep


@implementer(IHalfCloseableProtocol)
class EdgeProtocol(Protocol):
    """
    The client leg of the relay: origin choice with retries, the idle timer,
    and what the connection's end records. Admission has already run (at
    accept, or after an upstream's PROXY header); the L{Connection} holds
    what it took.
    """

    log = Logger()
    transport: Any
    #: set in connectionMade, before anything else can happen
    record: ConnectionRecord
    #: whether the zero-copy path may take over once the origin is joined
    zero_copy = True
    #: it starts reading the client once an origin accepts (so the edge
    #: listener does not register the read interest first)
    reads_when_dialled = True

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        connection.leg = self
        self.runtime = runtime = connection.runtime
        self.reactor = runtime.reactor
        self.origin_leg: Optional[OriginProtocol] = None
        self.received = 0
        self._write: Any = None
        self._candidates: List[Origin] = []
        self._pending: Any = None
        #: the origin being dialled: its port, and its name's addresses not yet tried
        self._port = 0
        self._addresses: List[str] = []
        self._mapping: Optional[PortMapping] = None
        self._connect_status = S.NO_HEALTHY_ORIGIN
        self._client_gone = False
        self._origin_gone = False
        self._read_closed = False
        self._write_closed = False
        self._status: Optional[int] = None
        self._reason = ""
        self._idle_sweep: Optional[_IdleSweep] = None
        self._idle_mark = -1
        self._idle_quiet = 0
        self._finished = False
        #: the origin connect in progress went through L{Dial}
        self._dialled = False
        #: the zero-copy state (spectrum.proxy.splice) when on that path
        self.splice: Any = None
        #: the origin connection's two ends (local, then remote), once connected
        self._origin_socket: Optional[Tuple[str, int, str, int]] = None

    # client side -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        # Read nothing until an origin has accepted.
        transport.pauseProducing()
        connection = self.connection
        connection.phase = DIALING
        if not connection.edge_port:
            host = transport.getHost()
            connection.edge_ip = normalize_ip(host.host)
            connection.edge_port = host.port
        self.record = record = connection.make_record()
        app = self.runtime.app
        self._candidates = self.runtime.balancer.candidates(record.client_ip, app.origin_tries)
        try:
            self._mapping = app.mapping_for(record.edge_port)
        except KeyError:
            self._mapping = None
        self._try_next()

    def dataReceived(self, data: bytes) -> None:
        self._write(data)
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self._read_closed = True
        leg = self.origin_leg
        if leg is not None and not self._origin_gone:
            leg.transport.loseWriteConnection()
        if self._write_closed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        if self._read_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._client_gone = True
        if self._status is None:
            self._status = self.client_lost_status(reason)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if hasattr(pending, "stopConnecting"):
                try:
                    pending.stopConnecting()
                except ierror.NotConnectingError:
                    pass
            else:
                pending.cancel()
            self._forget_origin_socket()
            self._origin_gone = True
        leg = self.origin_leg
        if leg is not None and not self._origin_gone:
            leg.transport.loseConnection()
        elif self.origin_leg is None:
            self._origin_gone = True
        self._maybe_finish()

    def client_lost_status(self, reason: Failure) -> Optional[int]:
        """
        The status of a client leg that closed with C{reason}, or L{None}
        for a clean close.
        """
        return _lost_status(reason, origin_side=False)

    # origin side -----------------------------------------------------------

    def _try_next(self) -> None:
        if not self._candidates:
            self._status = self._connect_status
            self._origin_gone = True
            self._finish(ORIGIN_ERROR)
            self.transport.loseConnection()
            return
        origin = self._candidates.pop(0)
        edge_port = self.record.edge_port
        mapped = self._mapping.origin_port(edge_port) if self._mapping else None
        port = self._port = mapped or origin.port or edge_port
        self.record.origin_name = origin.name
        self.record.origin_ip = origin.address
        self.record.origin_port = port
        self._addresses = []
        address = origin.address
        if _is_literal(address):
            self._dial(origin, address)
            return
        resolver = self.runtime.resolver
        addresses = resolver.cached(address)
        if addresses:
            self._resolved(addresses, origin)
            return
        # The lookup waits at most the connect timeout; the connect then has its own.
        d = self._pending = resolver.resolve(address, self.runtime.app.timeouts.connect or 120)
        d.addCallbacks(self._resolved, self._unresolved, callbackArgs=(origin,), errbackArgs=(origin,))

    def _resolved(self, addresses: Tuple[str, ...], origin: Origin) -> None:
        """
        C{origin}'s name resolved: dial its first address; the others are
        tried in turn if it fails.
        """
        self._pending = None
        if self._client_gone:
            self._origin_gone = True
            self._maybe_finish()
            return
        self._addresses = list(addresses[1:])
        self._dial(origin, addresses[0])

    def _unresolved(self, reason: Failure, origin: Origin) -> None:
        if not reason.check(CancelledError):
            self.origin_failed(origin, reason)

    def _dial(self, origin: Origin, address: str) -> None:
        """
        Connect to C{origin} at the IP address C{address}.
        """
        self.record.origin_ip = address
        timeout = self.runtime.app.timeouts.connect or 120
        factory = self.origin_factory(origin)
        self._dialled = can_dial(self.reactor)
        source = self.runtime.egress.source_for(":" in address)
        if self._dialled:
            dial = self._pending = Dial(factory)
            dial.start(address, self._port, timeout, self.reactor, source)
            client = dial.transport
            if self._pending is dial and client is not None:
                # Known from connect() on (the kernel has chosen the local
                # port), so a loop back to one of our edges is refused at
                # that accept, before the next hop dials anything.
                try:
                    local = client.socket.getsockname()
                except OSError:
                    pass
                else:
                    self._note_origin_socket((normalize_ip(local[0]), local[1], normalize_ip(address), self._port))
        else:
            bind = (source, 0) if source is not None else None
            self._pending = self.reactor.connectTCP(address, self._port, factory, timeout=timeout, bindAddress=bind)

    def origin_factory(self, origin: Origin) -> ClientFactory:
        """
        The factory for a connection to C{origin} (subclasses wrap it, for
        TLS towards the origin).
        """
        return _OriginFactory(self, origin)

    def origin_failed(self, origin: Origin, reason: Failure) -> None:
        """
        A connect attempt failed: try the next origin, or give up.
        """
        self._pending = None
        self._forget_origin_socket()
        if self._addresses and not self._client_gone:
            # The next address of the same name.
            self._dial(origin, self._addresses.pop(0))
            return
        self.runtime.origin_failed(origin, reason)
        if self._client_gone:
            self._origin_gone = True
            self._maybe_finish()
            return
        self._connect_status = _connect_failure_status(reason)
        self._reason = f"{origin.name}: {reason.getErrorMessage()}"
        self.log.debug(
            "{app}: origin {origin} failed: {error}",
            app=self.runtime.app.name,
            origin=origin.name,
            error=reason.getErrorMessage(),
        )
        self._try_next()

    def origin_connected(self, leg: OriginProtocol) -> None:
        """
        An origin accepted: wire the two legs together and start reading.
        """
        self._pending = None
        if self._client_gone:
            leg.transport.loseConnection()
            return
        self.origin_leg = leg
        client = self.transport
        origin_transport = leg.transport
        # A proxy loop: this origin connection may reach one of our own
        # edges. Accepted after this, it is refused there (spectrum.proxy.
        # port); accepted before, it is closed here.
        ends = self._origin_socket
        if ends is None:
            host, peer = origin_transport.getHost(), origin_transport.getPeer()
            ends = (normalize_ip(host.host), host.port, normalize_ip(peer.host), peer.port)
            self._note_origin_socket(ends)
        inner = self.runtime.admission.client_sockets.get(ends)
        if inner is not None:
            inner.abort(S.PROXY_LOOP, f"{ends[0]}:{ends[1]} is this process's own origin connection: a proxy loop")
        # Both legs get TCP_NODELAY and keepalive: an edge socket inherits
        # them from its listening socket, a dialled origin socket has them
        # from before its connect; only a hostname origin's needs them here.
        if not self._dialled:
            origin_transport.setTcpNoDelay(True)
            origin_transport.setTcpKeepAlive(True)
        self._write = origin_transport.write
        preamble = self.origin_preamble()
        if preamble:
            self._write(preamble)
        if splice.ENABLED and self.zero_copy:
            # Plain TCP both ways: move bytes in the kernel (else no-op).
            splice.attach(self, leg)
        if self.splice is None:
            # Write straight to the sockets while their buffers are empty.
            direct.attach(client)
            direct.attach(origin_transport)
            self._write = origin_transport.write
            leg._write = client.write
        # Each side's buffer filling up pauses reading on the other.
        origin_transport.registerProducer(client, True)
        client.registerProducer(origin_transport, True)
        origin_address = origin_transport.getPeer()
        self.record.origin_ip = normalize_ip(origin_address.host)
        self.runtime.balancer.connection_opened(leg.origin)
        self._reason = ""
        self.connection.phase = RELAYING
        self.runtime.recorders(CONNECT, self.record)
        idle = self.runtime.app.timeouts.idle
        if idle:
            self._idle_sweep = _idle_sweep(self.reactor, idle)
            self._idle_sweep.add(self)
        client.resumeProducing()

    def origin_preamble(self) -> bytes:
        """
        What the origin gets before any client byte: the PROXY header of the
        app's C{proxy_protocol} mode, if any.
        """
        record = self.record
        mode = self.runtime.app.proxy_protocol
        header = header_for(mode, (record.client_ip, record.client_port), (record.edge_ip, record.edge_port))
        connection = self.connection
        preface = connection.preface
        if preface:
            # What followed an upstream's PROXY header: the client's first bytes.
            connection.preface = b""
            self.received += len(preface)
            return header + preface
        return header

    def _note_origin_socket(self, ends: Tuple[str, int, str, int]) -> None:
        """
        Remember this connection's origin socket by its two ends (a proxy
        loop is a client with those ends at one of our edges).
        """
        self._origin_socket = ends
        self.runtime.admission.origin_sockets.add(ends)

    def _forget_origin_socket(self) -> None:
        if self._origin_socket is not None:
            self.runtime.admission.origin_sockets.discard(self._origin_socket)
            self._origin_socket = None

    def origin_lost(self, reason: Failure) -> None:
        self._origin_gone = True
        self._forget_origin_socket()
        if self._status is None:
            self._status = _lost_status(reason, origin_side=True)
            if self._status is not None:
                self._reason = reason.getErrorMessage()
        if not self._client_gone:
            self.transport.loseConnection()
        if self.origin_leg is not None:
            self.runtime.balancer.connection_closed(self.origin_leg.origin)
            # Passive health: a reset before the origin sent anything is a failure.
            if self._status == S.ORIGIN_RESET and not self.origin_leg.received:
                self.runtime.origin_failed(self.origin_leg.origin, reason)
            elif self.origin_leg.received:
                self.runtime.origin_worked(self.origin_leg.origin)
        self._maybe_finish()

    # timers and the end ----------------------------------------------------

    def _idle_check(self) -> None:
        # No per-chunk timer resets: compare the byte counters every half
        # period (the sweep's) and close after two quiet halves in a row.
        leg = self.origin_leg
        total = self.received + (leg.received if leg is not None else 0)
        if total != self._idle_mark:
            self._idle_mark = total
            self._idle_quiet = 0
        else:
            self._idle_quiet += 1
            if self._idle_quiet >= 2:
                self._stop_idle()
                self.abort(S.IDLE_TIMEOUT, "idle timeout", graceful=True)

    def _stop_idle(self) -> None:
        sweep, self._idle_sweep = self._idle_sweep, None
        if sweep is not None:
            sweep.discard(self)

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        """
        Close both legs now, recording C{status}.
        """
        if self._status is None:
            self._status = status
            self._reason = reason
        close = "loseConnection" if graceful else "abortConnection"
        if not self._client_gone:
            getattr(self.transport, close)()
        leg = self.origin_leg
        if leg is not None and not self._origin_gone:
            getattr(leg.transport, close)()

    def buffered(self) -> int:
        """
        Bytes written to either leg and not yet sent (for tests and stats).
        """
        total = 0
        transports = [self.transport]
        if self.origin_leg is not None:
            transports.append(self.origin_leg.transport)
        for transport in transports:
            total += len(getattr(transport, "dataBuffer", b"")) + getattr(transport, "_tempDataLen", 0)
        if self.splice is not None:
            total += self.splice.pending()
        return total

    def _maybe_finish(self) -> None:
        if self._client_gone and self._origin_gone:
            self._finish(DISCONNECT)

    def _finish(self, kind: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_idle()
        leg = self.origin_leg
        self.connection.finish(
            kind,
            S.NORMAL if self._status is None else self._status,
            self._reason,
            self.received,
            leg.received if leg is not None else 0,
        )
