"""
The origin connect for an IP literal, without the machinery
C{reactor.connectTCP} keeps for reconnecting clients.

C{connectTCP} builds a L{Connector}, starts the factory, defers the connect
to the next reactor turn (C{callLater(0)}) and resolves the address through
a L{Deferred} even when it is already an IP address. A relay opens one
origin connection per client and never reconnects it, so here the socket is
created with its options set, C{connect()} is called at once, and only the
connect timeout is a timer. What follows the connect is Twisted's own
L{tcp.Client}, unchanged: the relay's transports are the same either way.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.internet import address, error, tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

try:
    from twisted.internet.posixbase import PosixReactorBase as _Posix
except ImportError:  # pragma: no cover - non-POSIX
    _Posix = type("_NoReactor", (), {})  # type: ignore[assignment,misc]

_TCP_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
_KEEPALIVE = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def can_dial(reactor: Any) -> bool:
    """
    Whether C{reactor} runs socket transports (a POSIX reactor; test
    reactors that record C{connectTCP} calls do not).
    """
    return isinstance(reactor, _Posix)


def origin_client(host: str, port: int, dial: Dial, reactor: Any) -> tcp.Client:
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
    skt = socket.socket(client.addressFamily, socket.SOCK_STREAM)
    skt.setblocking(False)
    # Set before connect(): the relay wants both on every leg.
    skt.setsockopt(*_TCP_NODELAY)
    skt.setsockopt(*_KEEPALIVE)
    # The protocol comes with the connect (tcp.Client does the same).
    tcp.Connection.__init__(client, skt, None, reactor)  # type: ignore[arg-type]
    return client


class Dial:
    """
    One connect attempt to one origin: the connector of its L{tcp.Client}
    (it builds the protocol, reports a failure, runs the timeout), and the
    handle the relay keeps to cancel it.
    """

    __slots__ = ("factory", "transport", "_timeout")

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory
        self.transport: Optional[tcp.Client] = None
        self._timeout: Any = None

    def start(self, host: str, port: int, timeout: float, reactor: Any) -> None:
        """
        Create the socket and call C{connect()}. A refusal the kernel reports
        at once, or an immediate success, is delivered from inside this call;
        the caller keeps its handle on this L{Dial} before calling it.
        """
        try:
            client = origin_client(host, port, self, reactor)
        except OSError as e:
            self.factory.clientConnectionFailed(
                self,  # type: ignore[arg-type]
                Failure(error.ConnectBindError(e.errno, e.strerror)),
            )
            return
        self.transport = client
        self._timeout = reactor.callLater(timeout, self._timed_out)
        client._setRealAddress(client.addr)

    def _timed_out(self) -> None:
        self._timeout = None
        if self.transport is not None:
            self.transport.failIfNotConnected(error.TimeoutError())

    def _stop_timer(self) -> None:
        if self._timeout is not None:
            if self._timeout.active():
                self._timeout.cancel()
            self._timeout = None

    def stopConnecting(self) -> None:
        """
        Give up on a connect still in progress (the client left).
        """
        if self.transport is None or self.transport.connected:
            raise error.NotConnectingError()
        self.transport.stopConnecting()

    # what tcp.Client asks of its connector

    def buildProtocol(self, addr: Any) -> Any:
        self._stop_timer()
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: Failure) -> None:
        self._stop_timer()
        self.transport = None
        self.factory.clientConnectionFailed(
            self,  # type: ignore[arg-type]
            reason,
        )

    def connectionLost(self, reason: Failure) -> None:
        self.transport = None
