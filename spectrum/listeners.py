"""
Listening sockets for app edge ports.

One listener per (protocol, edge address, edge port). The listener holds a
factory whose runtime can be swapped in place, so a reload that moves a port
between apps, or changes an app, never closes the listening socket.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Sequence

from twisted.internet import tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.python import log

from spectrum.admission import normalize_ip
from spectrum.runtime import AppRuntime
from spectrum.sockets import edge_socket_options

#: Accept queue length for edge ports: an edge takes bursts of new clients.
#: Linux caps it at net.core.somaxconn (4096 by default since 5.4). A full
#: queue makes the kernel drop handshakes, and with SYN cookies on, reset
#: them: a flood then costs other clients their connections.
BACKLOG = 4096


class _EdgePort(tcp.Port):
    """
    A TCP edge port: an IPv6 address means IPv6 only (so C{0.0.0.0} and
    C{::} can both be listed for one app), and admission runs on the
    address the kernel hands over, before Twisted builds anything for the
    connection.
    """

    #: set SO_REUSEPORT, so the worker processes of C{workers: N} each
    #: bind the same address and the kernel spreads new connections
    reuse_port = False
    #: sockets accepted so far (admitted or refused; the kernel filter's
    #: drops never get here)
    accepted = 0

    def createInternetSocket(self) -> socket.socket:
        sock = edge_socket_options(super().createInternetSocket(), self.addressFamily, self.reuse_port)
        # Accepted sockets inherit both from the listening socket (Linux),
        # so the relay sets neither per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def startListening(self) -> None:
        super().startListening()
        host = self.getHost()
        if host.host not in ("0.0.0.0", "::"):
            factory: Any = self.factory
            factory.edge = (normalize_ip(host.host), host.port)

    def doRead(self) -> None:
        """
        Accept at most L{ACCEPTS_PER_TURN} clients, admitting each from its
        address: a refused one is reset and forgotten (no transport, no
        protocol), an admitted one gets its first stage.
        """
        factory: Any = self.factory
        edge = factory.edge
        wildcard = not edge[1]
        try:
            with tcp._BuffersLogs(self._logger.namespace, self._logger.observer) as logger:
                for skt, addr in tcp._accept(logger, range(ACCEPTS_PER_TURN), self.socket, tcp._reservedFD):
                    self.accepted += 1
                    if wildcard:
                        try:
                            here = skt.getsockname()
                        except OSError:
                            skt.close()
                            continue
                        edge = (normalize_ip(here[0]), here[1])
                    connection = factory.admit(addr[0], addr[1], edge)
                    if connection is None:
                        # Closed unread: the client sees its connection end
                        # (a reset, if it had sent anything).
                        skt.close()
                        continue
                    protocol = factory.first_protocol(connection)
                    session = self.sessionno
                    self.sessionno = session + 1
                    if getattr(protocol, "reads_when_dialled", False):
                        # Built without the read interest tcp.Server
                        # registers: a relay reads nothing until its origin
                        # accepts, and would drop it at once (an epoll_ctl
                        # each way).
                        cls: Any = self.transport
                        transport = cls.__new__(cls)
                        transport.startReading = _not_yet
                        cls.__init__(transport, skt, protocol, addr, self, session, self.reactor)
                        del transport.startReading
                    else:
                        transport = self.transport(skt, protocol, addr, self, session, self.reactor)
                    protocol.makeConnection(transport)
        except BaseException:
            log.deferr()


def _not_yet() -> None:
    """C{startReading} while an edge transport is built: not yet."""


#: Clients accepted per reactor turn and port: a flood waiting in the accept
#: queue cannot keep the reactor from the connections it already serves.
ACCEPTS_PER_TURN = 16


class Listener:
    """
    One bound edge address and port, and the factory behind it.
    """

    def __init__(
        self,
        protocol: str,
        ip: str,
        port: int,
        factory: Any,
        listening: IListeningPort,
        shield: Any = None,
        runtimes: Sequence[AppRuntime] = (),
    ) -> None:
        self.protocol = protocol
        self.ip = ip
        self.port = port
        self.factory = factory
        self.listening = listening
        #: the kernel filter guarding the socket (L{spectrum.kernel.shield})
        self.shield = shield
        #: the socket's slot in the sk_lookup steering of an edge range
        self.steering_slot: Optional[int] = None
        #: the ports steered to it
        self.steered_ports: Sequence[int] = ()
        #: the apps it serves (several on a port shared by SNI)
        self.runtimes: Sequence[AppRuntime] = tuple(runtimes)

    def guard(self, runtimes: Sequence[AppRuntime]) -> None:
        """
        Attach the kernel filter of C{runtimes}' rules to the socket.
        """
        listening: Any = self.listening
        sock = getattr(listening, "socket", None) or getattr(getattr(listening, "port", None), "socket", None)
        if self.shield is None or sock is None:
            return
        self.shield.attach(sock, self.protocol == "tcp", [runtime.app for runtime in runtimes])

    def retarget(self, runtimes: Sequence[AppRuntime]) -> None:
        """
        Send the next connections to C{runtimes} (one app, or several
        sharing the port).
        """
        self.runtimes = tuple(runtimes)
        if hasattr(self.factory, "set_routes"):
            self.factory.set_routes(runtimes)
        else:
            self.factory.runtime = runtimes[0]
        self.guard(runtimes)

    def stop(self) -> Any:
        """
        Stop accepting; open connections are not touched.
        """
        return self.listening.stopListening()

    def bound_port(self) -> int:
        return self.listening.getHost().port  # type: ignore[attr-defined]


def listen(
    reactor: Any,
    protocol: str,
    ip: str,
    port: int,
    runtimes: Sequence[AppRuntime],
    tls: Any = None,
    reuse_port: bool = False,
    shield: Any = None,
) -> Listener:
    """
    Bind C{ip}:C{port} for C{protocol} and serve it with C{runtimes} (one
    app, or several sharing a TCP port by SNI).

    @param tls: the service's L{spectrum.proxy.tls.EdgeTls}, for apps that
        speak TLS.
    @param reuse_port: share the port with other processes (SO_REUSEPORT).
    @param shield: the kernel filter to attach to the socket, if any.

    @raise twisted.internet.error.CannotListenError: the address is taken or
        not available.
    """
    if protocol == "udp":
        from spectrum.proxy.udp import listen_udp

        edge, udp_port = listen_udp(reactor, ip, port, runtimes[0], reuse_port=reuse_port)
        listener = Listener(protocol, ip, port, edge, udp_port, shield, runtimes)  # type: ignore[arg-type]
        listener.guard(runtimes)
        return listener
    if protocol != "tcp":
        raise ValueError(f"no listener for protocol {protocol!r}")
    from spectrum.proxy.port import PortFactory

    factory = PortFactory(runtimes, tls)
    if isinstance(reactor, _ReactorWithPorts):
        edge_port = _EdgePort(port, factory, BACKLOG, ip, reactor)
        edge_port.reuse_port = reuse_port
        edge_port.startListening()
        listening: IListeningPort = edge_port
    else:
        # Test reactors (MemoryReactor) record listenTCP calls.
        listening = reactor.listenTCP(port, factory, backlog=BACKLOG, interface=ip)
    listener = Listener(protocol, ip, port, factory, listening, shield, runtimes)
    listener.guard(runtimes)
    return listener


try:
    from twisted.internet.posixbase import PosixReactorBase as _ReactorWithPorts
except ImportError:  # pragma: no cover - non-POSIX
    _ReactorWithPorts = type("_NoReactor", (), {})  # type: ignore[assignment,misc]


def is_ipv6(ip: str) -> bool:
    return isIPv6Address(ip)
