"""
PROXY protocol from an upstream: when spectrum sits behind another load
balancer, each connection starts with a v1 or v2 header naming the real
client, and that client is the one access rules, hashing, records and the
header sent onward see.

Only sources in the app's C{accept_proxy_protocol.trusted} networks may
declare an address. A connection from elsewhere, one whose header is
malformed or too long, and one that sends no whole header within
C{timeouts.handshake} seconds is closed, and only that one.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Optional, Tuple

from twisted.internet import error as ierror
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from spectrum import status as S
from spectrum.admission import normalize_ip
from spectrum.proxy.lifecycle import HEADER, Connection
from spectrum.proxy.proxyproto import HeaderDecoder, ProxyHeaderError

#: How long a header may take when the app sets no handshake timeout.
DEFAULT_HEADER_TIMEOUT = 10.0


@functools.lru_cache(maxsize=64)
def trusted_networks(cidrs: Tuple[str, ...]) -> Tuple[Any, ...]:
    """
    The networks of an app's C{accept_proxy_protocol.trusted}, parsed once.
    """
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def is_trusted(ip: str, cidrs: Tuple[str, ...]) -> bool:
    """
    Whether the connection's own peer C{ip} may declare a client address.
    """
    try:
        address = ipaddress.ip_address(normalize_ip(ip))
    except ValueError:
        return False
    return any(address.version == net.version and address in net for net in trusted_networks(cidrs))


class HeaderGate(Protocol):
    """
    The first leg of a connection on an C{accept_proxy_protocol} port: reads
    the upstream's PROXY header and nothing else.

    The upstream was found trusted at accept; once the header is whole the
    declared client is the connection's client, admission runs for it, and
    the port's next stage (the relay, the TLS handshake, the ClientHello of
    a shared port) takes the transport, with the bytes that followed the
    header.
    """

    transport: Any

    def __init__(self, connection: Connection, port: Any) -> None:
        self.connection = connection
        connection.leg = self
        connection.phase = HEADER
        self.port = port
        self.reactor = connection.runtime.reactor
        self._decoder: Optional[HeaderDecoder] = HeaderDecoder()
        self._timer: Any = None

    def connectionMade(self) -> None:
        timeout = self.connection.runtime.app.timeouts.handshake or DEFAULT_HEADER_TIMEOUT
        self._timer = self.reactor.callLater(timeout, self._timed_out, timeout)

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            result = decoder.feed(data)
        except ProxyHeaderError as e:
            self._reject(S.BAD_PROXY_HEADER, str(e))
            return
        if result is None:
            return
        info, leftover = result
        self._decoder = None
        self._cancel_timer()
        connection = self.connection
        if info.source is not None:
            connection.declare(*info.source)
        refusal = self.port.admit_declared(connection)
        if refusal is not None:
            connection.refuse_with(refusal)
            self.transport.abortConnection()
            return
        self.port.hand_over(connection, self.transport, leftover)

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        self._reject(status, reason)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._decoder is not None:
            # Gone before the header was whole (a balancer's health check).
            self._decoder = None
            self._cancel_timer()
            self.connection.refuse(S.BAD_PROXY_HEADER, "closed before a whole PROXY header")

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._reject(S.BAD_PROXY_HEADER, f"no whole PROXY header within {timeout:g}s")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _reject(self, status: int, reason: str) -> None:
        if self._decoder is None:
            return
        self._decoder = None
        self._cancel_timer()
        self.connection.refuse(status, reason)
        self.transport.abortConnection()
