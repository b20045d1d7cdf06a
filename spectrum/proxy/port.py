"""
What a TCP edge port does with each new client, whatever its kind: admit
it (at accept, from the address the kernel gave, before any byte is read),
then start the first stage of its connection.

  - plain relay:        admission at accept, then the relay;
  - TLS at the edge:    admission at accept, then the handshake, then the relay;
  - TLS to the origin:  admission at accept, then the relay with a TLS origin leg;
  - shared (SNI):       the global rules and the port's per-address limit at
                        accept, the app's own admission once the ClientHello
                        names it, before the handshake or the origin;
  - shared by protocol (C{sniff}): the same, once the first bytes (and a
                        ClientHello or a Minecraft handshake) name the app;
  - STARTTLS (PostgreSQL, SMTP): admission at accept, then the client's
                        request for TLS, the handshake and the relay;
  - behind an upstream (C{accept_proxy_protocol}, any of the above): the
                        upstream's trust at accept, admission of the
                        declared client right after its PROXY header.

A refused client costs a counter (and, within the sampling, a record): no
transport, no protocol, no connection state.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from twisted.internet.protocol import Protocol, ServerFactory

from spectrum import status as S
from spectrum.admission import Refusal, normalize_ip
from spectrum.limits import ClientLimits
from spectrum.model import Limits
from spectrum.proxy.inbound import HeaderGate, is_trusted
from spectrum.proxy.lifecycle import HEADER, Connection, refuse_at_accept
from spectrum.proxy.router import HandshakeGate, HostRoutes, RoutedEdge, SniGate, needs_router
from spectrum.proxy.sniffgate import SniffGate, SniffRoutes
from spectrum.proxy.starttls import PostgresGate, SmtpGate
from spectrum.proxy.tcp import EdgeProtocol


def port_limits(runtimes: Sequence[Any]) -> Limits:
    """
    The per-address limit of a shared port before its ClientHello is read:
    the largest C{per_ip_connections} of its apps when each sets one (no
    client can hold more than that on any of them), else none.
    """
    limits = [runtime.app.limits.per_ip_connections for runtime in runtimes]
    if limits and all(limits):
        return Limits(per_ip_connections=max(limits))
    return Limits()


class PortFactory(ServerFactory):
    """
    The factory of one TCP edge address and port: its apps (one, or several
    told apart by SNI or by protocol), its admission and the first stage of
    each connection.

    @ivar edge: the bound address and port when the socket is bound to one
        address (not a wildcard), so connections need not ask the kernel.
    """

    noisy = False

    def __init__(self, runtimes: Sequence[Any], tls: Any = None) -> None:
        self.tls = tls
        self.edge: Tuple[str, int] = ("", 0)
        #: the port's own limit state, for a shared port's open ClientHellos
        self.port_state = ClientLimits()
        self.set_routes(runtimes)

    @property
    def runtime(self) -> Any:
        return self.runtimes[0]

    @runtime.setter
    def runtime(self, runtime: Any) -> None:
        self.set_routes([runtime])

    def set_routes(self, runtimes: Sequence[Any]) -> None:
        """
        Serve C{runtimes} from the next connection on.
        """
        self.runtimes = list(runtimes)
        self.shared = len(self.runtimes) > 1
        self.hello_timeout = max((r.app.timeouts.handshake for r in self.runtimes), default=0.0)
        self.names = HostRoutes(self.runtimes, self.tls, self.hello_timeout)
        self.port_limits = port_limits(self.runtimes)
        # The apps of a shared port agree on it (the config checks so).
        self.trusted = self.runtimes[0].app.accept_proxy_protocol
        self.sniffing: Optional[SniffRoutes] = None
        if any(r.app.sniff for r in self.runtimes):
            self.sniffing = SniffRoutes(self.runtimes, self.tls, self.hello_timeout)

    def route(self, name: Optional[str]) -> Optional[Any]:
        """
        The app for SNI C{name} (see L{HostRoutes.route}).
        """
        return self.names.route(name)

    # admission ------------------------------------------------------------

    def admit(self, host: str, port: int, edge: Tuple[str, int]) -> Optional[Connection]:
        """
        Decide on a client the kernel has just handed over, from its
        address alone: its connection, or L{None} (refused and counted; the
        caller closes the socket).
        """
        runtime = self.runtimes[0]
        ip = normalize_ip(host)
        shared = self.shared
        trusted = self.trusted
        if trusted:
            if not is_trusted(ip, trusted):
                refusal = Refusal(S.FIREWALL, f"{ip} is not trusted to send a PROXY header")
                refuse_at_accept(runtime, not shared, (ip, port), edge, refusal)
                return None
            connection = Connection(runtime, ip, port, edge[0], edge[1], runtime.reactor.seconds(), not shared)
            connection.phase = HEADER
            connection.open()
            return connection
        admission = runtime.admission
        if shared:
            verdict = admission.admit_to_port(self.port_state, self.port_limits, ip)
        else:
            verdict = admission.admit(runtime.app, runtime.limits, ip)
        if isinstance(verdict, Refusal):
            refuse_at_accept(runtime, not shared, (ip, port), edge, verdict)
            return None
        connection = Connection(runtime, ip, port, edge[0], edge[1], runtime.reactor.seconds(), not shared)
        connection.take(verdict)
        connection.open()
        return connection

    def admit_declared(self, connection: Connection) -> Optional[Refusal]:
        """
        Admit the client an upstream's PROXY header declared.
        """
        if self.shared:
            return connection.admit_to_port(self.port_state, self.port_limits)
        return connection.admit()

    # the first stage ---------------------------------------------------------

    def first_protocol(self, connection: Connection) -> Protocol:
        """
        The protocol an admitted connection starts with.
        """
        if connection.phase == HEADER:
            return HeaderGate(connection, self)
        return self.next_protocol(connection)

    def next_protocol(self, connection: Connection) -> Protocol:
        """
        The protocol after admission: the first bytes of a port shared by
        protocol, the ClientHello of a port shared by SNI, the request for
        TLS of a STARTTLS app, the edge TLS handshake, or the relay.
        """
        if self.sniffing is not None:
            return SniffGate(connection, self.sniffing)
        if self.shared:
            return SniGate(connection, self.names)
        app = connection.runtime.app
        app_tls = self.tls.apps.get(app.name) if self.tls is not None else None
        if app.starttls and app_tls is not None:
            gate = SmtpGate if app.starttls == "smtp" else PostgresGate
            return gate(connection, app_tls)
        if app.terminates_tls and app_tls is not None:
            factory = app_tls.server_factory
            return factory.protocol(factory, HandshakeGate(connection, app_tls))
        if needs_router(app):
            return RoutedEdge(connection, app_tls)
        return EdgeProtocol(connection)

    def hand_over(self, connection: Connection, transport: Any, leftover: bytes) -> None:
        """
        Move an admitted connection from its PROXY header to the next stage,
        with the bytes that followed the header.
        """
        protocol = self.next_protocol(connection)
        transport.protocol = protocol
        if isinstance(protocol, EdgeProtocol):
            # The relay sends them to the origin first, once it is joined.
            connection.preface = leftover
            protocol.makeConnection(transport)
            return
        protocol.makeConnection(transport)
        if leftover:
            protocol.dataReceived(leftover)

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        """
        The path of reactors that accept for us (test reactors): the same
        admission, from the address Twisted gives.
        """
        connection = self.admit(addr.host, addr.port, self.edge)
        if connection is None:
            return None
        return self.first_protocol(connection)
