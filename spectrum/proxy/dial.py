"""
The origin connect for an IP literal, without the machinery
C{reactor.connectTCP} keeps for reconnecting clients.

C{connectTCP} builds a L{Connector}, starts the factory, defers the connect
to the next reactor turn (C{callLater(0)}) and resolves the address through
a L{Deferred} even when it is already an IP address. A relay opens one
origin connection per client and never reconnects it, so here the socket is
created with its options set, C{connect()} is called at once, the
descriptor keeps its read interest
when the connect completes, and the connect timeouts of one length share a
timer. What follows the connect is Twisted's own L{tcp.Client}, unchanged:
the relay's transports are the same either way.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Dict, Optional, Tuple

from twisted.internet import address, error, tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

try:
    from twisted.internet.posixbase import PosixReactorBase as _Posix
except ImportError:  # pragma: no cover - non-POSIX
    _Posix = type("_NoReactor", (), {})  # type: ignore[assignment,misc]

_TCP_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
_KEEPALIVE = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
log = Logger()
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY)


def can_dial(reactor: Any) -> bool:
    """
    Whether C{reactor} runs socket transports (a POSIX reactor; test
    reactors that record C{connectTCP} calls do not).
    """
    return isinstance(reactor, _Posix)


def origin_client(host: str, port: int, dial: Dial, reactor: Any, source: Optional[str] = None) -> tcp.Client:
    """
    A L{tcp.Client} to an IP literal, its socket made with the relay's
    options, not yet connecting; its C{connector} is C{dial}.

    It is a plain L{tcp.Client} (built without the constructor that would
    schedule the connect for the next reactor turn), so everything that
    knows Twisted's transports (the direct-write and splice paths) knows it.
    """
    client = tcp.Client.__new__(tcp.Client)
    client.connector = dial
    client._requiresResolution = False
    if isIPv6Address(host):
        client.addr = tcp._resolveIPv6(host, port)
        client.addressFamily = socket.AF_INET6
        client._addressType = address.IPv6Address  # type: ignore[assignment]
    else:
        client.addr = (host, port)
    # Non-blocking: tcp.Connection.__init__ below makes it so, before connect.
    skt = socket.socket(client.addressFamily, socket.SOCK_STREAM)
    # Set before connect(): the relay wants both on every leg.
    skt.setsockopt(*_TCP_NODELAY)
    skt.setsockopt(*_KEEPALIVE)
    if source is not None:
        # The config's egress address: origins see connections from it.
        try:
            skt.bind((source, 0))
        except OSError:
            skt.close()
            raise
    # The protocol comes with the connect (tcp.Client does the same).
    tcp.Connection.__init__(client, skt, None, reactor)  # type: ignore[arg-type]
    return client


class _Deadlines:
    """
    The connect deadlines of one length, under one timer: a dial is added
    as it starts and dropped as it ends, and the timer, armed for the
    oldest, times out what is still pending when it fires. A dict in
    insertion order is a queue ordered by deadline, since the length is the
    same for all; a timer per connection would cost a heap push and a
    cancel for every client.
    """

    __slots__ = ("reactor", "length", "pending", "call")

    def __init__(self, reactor: Any, length: float) -> None:
        self.reactor = reactor
        self.length = length
        self.pending: Dict[Dial, float] = {}
        self.call: Any = None

    def add(self, dial: Dial) -> None:
        self.pending[dial] = self.reactor.seconds() + self.length
        if self.call is None:
            self.call = self.reactor.callLater(self.length, self._fire)

    def _fire(self) -> None:
        pending = self.pending
        now = self.reactor.seconds()
        expired = []
        while pending:
            dial = next(iter(pending))
            if pending[dial] > now:
                break
            del pending[dial]
            expired.append(dial)
        # Re-armed before any dial hears of its timeout: one that retries
        # the next origin adds itself again, and must find the timer set.
        self.call = None
        if pending:
            self.call = self.reactor.callLater(pending[next(iter(pending))] - now, self._fire)
        for dial in expired:
            try:
                dial.timed_out()
            except Exception:
                log.failure("connect timeout of {dial!r}", dial=dial)


_deadlines: Dict[Tuple[Any, float], _Deadlines] = {}


def _deadlines_for(reactor: Any, length: float) -> _Deadlines:
    key = (reactor, length)
    deadlines = _deadlines.get(key)
    if deadlines is None:
        deadlines = _deadlines[key] = _Deadlines(reactor, length)
    return deadlines


class Dial:
    """
    One connect attempt to one origin: the connector of its L{tcp.Client}
    (it builds the protocol, reports a failure), and the handle the relay
    keeps to cancel it.
    """

    __slots__ = ("factory", "transport", "_deadlines")

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory
        self.transport: Optional[tcp.Client] = None
        self._deadlines: Optional[_Deadlines] = None

    def start(self, host: str, port: int, timeout: float, reactor: Any, source: Optional[str] = None) -> None:
        """
        Create the socket and call C{connect()}. An immediate success is
        delivered from inside this call (the caller keeps its handle on this
        L{Dial} before calling it); a failure, on a later reactor turn.
        """
        try:
            client = origin_client(host, port, self, reactor, source)
        except OSError as e:
            # Reported on the next turn, as connectTCP reports it: the caller
            # is still setting up (a PROXY header's fields, say).
            reactor.callLater(
                0,
                self.factory.clientConnectionFailed,
                self,
                Failure(error.ConnectBindError(e.errno, e.strerror)),
            )
            return
        self.transport = client
        try:
            address = client.addr
            if len(address) == 4:
                # IPv6: the scope id as a name, as tcp.Client keeps it
                name = socket.getnameinfo(address, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
                address = (name,) + address[1:]
            client.realAddress = address
            result = client.socket.connect_ex(address)
        except OSError as e:
            result = e.errno or errno.EINVAL
        except (OverflowError, ValueError):
            result = errno.EINVAL
        if result in _IN_PROGRESS:
            deadlines = self._deadlines = _deadlines_for(reactor, timeout)
            deadlines.add(self)
            # Both, as tcp.Client does: a refusal makes the socket readable
            # with the error pending, so it is read from SO_ERROR below.
            client.doRead = client.doWrite = self._settled  # type: ignore[method-assign]
            client.startReading()
            client.startWriting()
        elif result == 0 or result == errno.EISCONN:
            self._connected(client)
        else:
            # Next turn, as above.
            reactor.callLater(0, client.failIfNotConnected, error.getConnectError((result, os.strerror(result))))

    def _settled(self) -> None:
        """
        The socket became writable (connected) or readable (failed).
        """
        client = self.transport
        if client is None:
            # Failed already (this turn's write event after the read one).
            return
        result = client.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not result:
            # An event meant for an earlier socket with this descriptor
            # number (closed and reused within one poll batch) can land
            # here: only connect() itself says whether this one is done.
            try:
                result = client.socket.connect_ex(client.realAddress)
            except OSError as e:
                result = e.errno or errno.EINVAL
            if result in _IN_PROGRESS:
                return
            if result == errno.EISCONN:
                result = 0
        if result:
            client.failIfNotConnected(error.getConnectError((result, os.strerror(result))))
            return
        del client.doRead, client.doWrite
        # Reading stays on; tcp.Client would drop both and add reading back,
        # one epoll_ctl each.
        client.stopWriting()
        self._connected(client)

    def _connected(self, client: tcp.Client) -> None:
        self._drop_deadline()
        client._connectDone()

    def timed_out(self) -> None:
        self._deadlines = None
        if self.transport is not None:
            self.transport.failIfNotConnected(error.TimeoutError())

    def _drop_deadline(self) -> None:
        if self._deadlines is not None:
            self._deadlines.pending.pop(self, None)
            self._deadlines = None

    def stopConnecting(self) -> None:
        """
        Give up on a connect still in progress (the client left).
        """
        if self.transport is None or self.transport.connected:
            raise error.NotConnectingError()
        self.transport.stopConnecting()

    # what tcp.Client asks of its connector

    def buildProtocol(self, addr: Any) -> Any:
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: Failure) -> None:
        self._drop_deadline()
        self.transport = None
        self.factory.clientConnectionFailed(
            self,  # type: ignore[arg-type]
            reason,
        )

    def connectionLost(self, reason: Failure) -> None:
        self.transport = None
