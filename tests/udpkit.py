"""
In-process pieces for UDP relay tests: origins and clients on real loopback
sockets, and UDP apps built straight from model objects.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet import defer, protocol, reactor

from spectrum.model import App, Origin, Timeouts

from conftest import free_port


def udp_app(
    name: str,
    origins: Sequence[Origin],
    edge_port: Optional[int] = None,
    edge_last: Optional[int] = None,
    origin_first: Optional[int] = None,
    load_balancing: str = "round_robin",
    ips: Sequence[str] = ("127.0.0.1",),
    idle: float = 60.0,
    proxy_protocol: str = "off",
    max_sessions: int = 10000,
    per_ip_sessions: int = 0,
) -> App:
    import socket

    import attr

    from relaykit import make_app

    if edge_port is None:
        edge_port = free_port(ips[0], socket.SOCK_DGRAM)
    app = make_app(
        name,
        origins,
        edge_port=edge_port,
        edge_last=edge_last,
        origin_first=origin_first,
        load_balancing=load_balancing,
        ips=ips,
        timeouts=Timeouts(connect=2.0, idle=idle),
    )
    return attr.evolve(
        app,
        protocol="udp",
        proxy_protocol=proxy_protocol,
        max_sessions=max_sessions,
        per_ip_sessions=per_ip_sessions,
    )


class UDPOrigin(protocol.DatagramProtocol):
    """
    An origin: answers each datagram with C{answer(data, addr)} (an echo by
    default; L{None} for no answer) and keeps what it received.
    """

    noisy = False

    def __init__(self, answer: Optional[Callable[[bytes, Any], Optional[bytes]]] = None) -> None:
        self.answer = answer or (lambda data, addr: data)
        self.received: List[Tuple[bytes, Any]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))
        reply = self.answer(data, addr)
        if reply is not None:
            self.transport.write(reply, addr)


#: Socket buffers of test peers: a burst from 200 clients must not
#: overflow a peer that shares the process (and its reactor) with the edge.
TEST_SOCKET_BUFFER = 4 * 1024 * 1024


def _roomy(port: Any) -> Any:
    import socket

    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        port.socket.setsockopt(socket.SOL_SOCKET, option, TEST_SOCKET_BUFFER)
    return port


def listen_udp_origin(origin: UDPOrigin, host: str = "127.0.0.1", port: int = 0) -> Any:
    return _roomy(reactor.listenUDP(port, origin, interface=host, maxPacketSize=65535))


class UDPClient(protocol.DatagramProtocol):
    """
    A client bound to its own address: sends to the edge and collects what
    comes back.
    """

    noisy = False

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self._waiters: List[Tuple[int, defer.Deferred]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        ready = [w for w in self._waiters if len(self.received) >= w[0]]
        for waiter in ready:
            self._waiters.remove(waiter)
            waiter[1].callback(self.received)

    def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        self.transport.write(data, (host, port))

    def wait_for(self, count: int, timeout: float = 3.0) -> defer.Deferred:
        """
        Fires with what was received once C{count} datagrams have come, or
        with what came when C{timeout} passes.
        """
        d: defer.Deferred = defer.Deferred()
        if len(self.received) >= count:
            d.callback(self.received)
            return d
        entry = (count, d)
        self._waiters.append(entry)

        def late() -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)
                d.callback(self.received)

        call = reactor.callLater(timeout, late)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d


def bind_client(host: str = "127.0.0.1") -> Tuple[UDPClient, Any]:
    client = UDPClient()
    port = _roomy(reactor.listenUDP(0, client, interface=host, maxPacketSize=65535))
    return client, port
