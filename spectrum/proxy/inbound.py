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
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.python.failure import Failure

from spectrum import status as S
from spectrum.proxy.proxyproto import HeaderDecoder, ProxyHeaderError
from spectrum.proxy.tcp import EdgeProtocol, normalize_ip
from spectrum.record import CLIENT_FILTERED, ConnectionRecord

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


class InboundProxyEdge(EdgeProtocol):
    """
    An edge connection that reads a PROXY header before anything else.

    Nothing runs before the header is whole (edge checks, origin choice,
    the record), since all of them need the declared client address; then
    the connection carries on as a plain L{EdgeProtocol}, with the bytes
    that followed the header sent to the origin first.
    """

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self._decoder: Optional[HeaderDecoder] = None
        self._header_timer: Any = None
        self._leftover = b""
        self._upstream: Optional[Tuple[str, int]] = None

    def connectionMade(self) -> None:
        runtime = self.runtime
        # Counted as open at once, so a drain waits for it and can end it.
        runtime.opened(self)
        peer = self.transport.getPeer()
        self._upstream = (normalize_ip(peer.host), peer.port)
        if not is_trusted(peer.host, runtime.app.accept_proxy_protocol):
            self._reject(f"{self._upstream[0]} is not trusted to send a PROXY header", S.FIREWALL)
            return
        self._decoder = HeaderDecoder()
        timeout = runtime.app.timeouts.handshake or DEFAULT_HEADER_TIMEOUT
        self._header_timer = self.reactor.callLater(timeout, self._timed_out, timeout)

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            # The header is done: the plain relay.
            EdgeProtocol.dataReceived(self, data)
            return
        try:
            result = decoder.feed(data)
        except ProxyHeaderError as e:
            self._reject(str(e))
            return
        if result is None:
            return
        info, self._leftover = result
        self._decoder = None
        self._cancel_timer()
        if info.source is not None:
            ip, port = info.source
            kind = IPv6Address if ":" in ip else IPv4Address
            self.declared_peer = kind("TCP", ip, port)
        EdgeProtocol.connectionMade(self)
        if self._upstream is not None:
            self.record.extra["UpstreamIP"] = self._upstream[0]
            self.record.extra["UpstreamPort"] = self._upstream[1]

    def origin_preamble(self) -> bytes:
        header = super().origin_preamble()
        rest, self._leftover = self._leftover, b""
        self.received += len(rest)
        return header + rest

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if not hasattr(self, "record"):
            # Gone before the header was whole (the record is made once it is).
            self._cancel_timer()
            if not self._finished:
                self._decoder = None
                self._record_rejection("closed before a whole PROXY header", S.BAD_PROXY_HEADER)
            return
        super().connectionLost(reason)

    def _timed_out(self, timeout: float) -> None:
        self._header_timer = None
        self._reject(f"no whole PROXY header within {timeout:g}s")

    def _cancel_timer(self) -> None:
        if self._header_timer is not None and self._header_timer.active():
            self._header_timer.cancel()
        self._header_timer = None

    def _reject(self, reason: str, status: int = S.BAD_PROXY_HEADER) -> None:
        self._decoder = None
        self._cancel_timer()
        self._record_rejection(reason, status)
        self.transport.abortConnection()

    def _record_rejection(self, reason: str, status: int) -> None:
        self._finished = True
        runtime = self.runtime
        app = runtime.app
        host = self.transport.getHost()
        upstream = self._upstream or ("", 0)
        now = self.reactor.seconds()
        record = ConnectionRecord(
            application=app.name,
            app_id=app.id,
            client_ip=upstream[0],
            client_port=upstream[1],
            edge_ip=normalize_ip(host.host),
            edge_port=host.port,
            connect_time=now,
        )
        record.status = status
        record.reason = reason
        record.disconnect_time = now
        record.extra["ProxyProtocol"] = app.proxy_protocol
        self.log.info("{app}: {client} refused: {reason}", app=app.name, client=upstream[0], reason=reason)
        runtime.recorders(CLIENT_FILTERED, record)
        runtime.closed(self)
