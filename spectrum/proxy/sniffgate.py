"""
Edge ports shared by protocol (C{sniff}): the first bytes of a connection
name the protocol, and the protocol (and, for TLS and Minecraft, the
hostname) names the app.

L{SniffGate} holds what the client sends (at most a Minecraft handshake's
bound) until L{spectrum.proxy.sniff} decides; TLS then goes on to the
L{SniGate} of the port's TLS apps (SNI routing among them, edge TLS where
an app terminates it), every other protocol to its app's relay, which
sends the bytes read first (after the PROXY header, if the app sends
one). A port with an C{any} app gives it the connections whose client
says nothing for the app's C{sniff_wait} (protocols where the server
speaks first). A Minecraft handshake naming no app gets the edge's own
answer: a server-list entry with the configured message, or a login
refusal with it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from twisted.internet import error as ierror
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from spectrum import status as S
from spectrum.proxy.lifecycle import HELLO, Connection
from spectrum.proxy.router import HostRoutes, RoutedEdge, SniGate, _Gate, needs_router
from spectrum.proxy.sniff import (
    ANY,
    MAX_PACKET,
    MAX_SNIFF,
    MINECRAFT,
    STATUS,
    TLS,
    Handshake,
    HandshakeParser,
    NotMinecraft,
    classify,
    login_disconnect,
    packet,
    read_packet,
    status_response,
)
from spectrum.proxy.tcp import EdgeProtocol
from spectrum.record import CLIENT_FILTERED

#: the protocols whose apps are told apart by a hostname
NAMED = (TLS, MINECRAFT)
#: seconds the edge's own Minecraft answer may take when no handshake
#: timeout bounds it
ANSWER_TIMEOUT = 10.0


class SniffRoutes:
    """
    The apps of an edge port shared by protocol, by what they take.

    @ivar wait: seconds of client silence after which the C{any} app takes
        the connection (0: none on this port).
    @ivar unknown_message: the server-list message for a Minecraft name no
        app has.
    """

    def __init__(self, runtimes: Sequence[Any], tls: Any, hello_timeout: float) -> None:
        grouped: Dict[str, list] = {}
        for runtime in runtimes:
            sniff = runtime.app.sniff
            if sniff:
                grouped.setdefault(sniff, []).append(runtime)
        self.tls = tls
        self.hello_timeout = hello_timeout
        self.tables = {sniff: HostRoutes(apps, tls, hello_timeout) for sniff, apps in grouped.items()}
        anyone = grouped.get(ANY)
        self.wait = anyone[0].app.sniff_wait if anyone else 0.0
        messages = [r.app.minecraft_unknown_message for r in grouped.get(MINECRAFT, ())]
        self.unknown_message = messages[0] if messages else ""

    def table(self, protocol: str) -> Tuple[str, Optional[HostRoutes]]:
        """
        The apps that take C{protocol}, or those that take the rest.
        """
        table = self.tables.get(protocol)
        if table is not None:
            return protocol, table
        return ANY, self.tables.get(ANY)


@implementer(IHalfCloseableProtocol)
class SniffGate(_Gate):
    """
    The protocol of a connection on a port shared by protocol until its
    first bytes name an app; that app's admission runs then (on a port of
    several apps), before any byte reaches an origin.
    """

    def __init__(self, connection: Connection, routes: SniffRoutes) -> None:
        self.connection = connection
        connection.leg = self
        connection.phase = HELLO
        self.routes = routes
        self.reactor = connection.runtime.reactor
        self._held = bytearray()
        self._protocol: Optional[str] = None
        self._parser: Optional[HandshakeParser] = None
        self._wait_call: Any = None
        self._closed = False
        #: the handshake of a Minecraft client the edge answers itself
        self._answering: Optional[Handshake] = None
        self._reason = ""

    def connectionMade(self) -> None:
        routes = self.routes
        elapsed = self.reactor.seconds() - self.connection.started
        if routes.hello_timeout:
            self._timer = self.reactor.callLater(max(0.0, routes.hello_timeout - elapsed), self._expire)
        if routes.wait:
            self._wait_call = self.reactor.callLater(routes.wait, self._silent)

    def _cancel_wait(self) -> None:
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._wait_call = None

    def _expire(self) -> None:
        self._timer = None
        if self._answering is not None:
            self.transport.loseConnection()
            return
        self._refuse(S.INVALID_SNI, f"nothing naming an app after {self.routes.hello_timeout:g}s")

    def _silent(self) -> None:
        # The client waits for the server to speak first.
        self._wait_call = None
        if not self._held and not self._closed:
            self._protocol = ANY
            self._choose(ANY, None)

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        if self._answering is not None:
            self.transport.abortConnection()
            return
        self._refuse(status, reason)

    # reading ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            if self._answering is not None:
                self._answer(data)
            return
        self._cancel_wait()
        self._held += data
        protocol = self._protocol
        if protocol is None:
            protocol = classify(bytes(self._held[:MAX_SNIFF]))
            if protocol is None:
                return
            self._protocol = protocol
            if protocol == MINECRAFT and MINECRAFT in self.routes.tables:
                self._parser = HandshakeParser()
                data = bytes(self._held)
        parser = self._parser
        if parser is None:
            self._choose(protocol, None)
            return
        try:
            handshake = parser.feed(data)
        except NotMinecraft:
            # Not Minecraft after all: whatever takes the rest.
            self._parser = None
            self._protocol = ANY
            self._choose(ANY, None)
            return
        if handshake is not None:
            self._parser = None
            self._choose(MINECRAFT, handshake)

    def readConnectionLost(self) -> None:
        if self._answering is not None:
            self.transport.loseConnection()
            return
        self._refuse(S.INVALID_SNI, "client closed before its first bytes named an app")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._handed_over:
            return
        if self._answering is not None:
            self._answering = None
            self._cancel_timer()
            self.connection.refuse(S.INVALID_SNI, self._reason, CLIENT_FILTERED)
            return
        self._refuse(S.INVALID_SNI, "client closed before its first bytes named an app")

    # deciding -----------------------------------------------------------------

    def _refuse(self, status: int, reason: str, rule: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self._cancel_wait()
        self.connection.refuse(status, reason, CLIENT_FILTERED, rule)
        self.transport.loseConnection()

    def _choose(self, protocol: str, handshake: Optional[Handshake]) -> None:
        self._cancel_wait()
        connection = self.connection
        name = handshake.hostname if handshake is not None else ""
        connection.sniffed = (protocol, name)
        taker, table = self.routes.table(protocol)
        if table is None:
            self._refuse(S.INVALID_SNI, f"no app on this port takes {protocol}")
            return
        held = bytes(self._held)
        self._held = bytearray()
        if taker == TLS:
            # SNI routing among the port's TLS apps, edge TLS where asked.
            self._cancel_timer()
            self._hand_over(SniGate(connection, table), held)
            return
        runtime = table.route(name) if taker == MINECRAFT else table.runtimes[0]
        if runtime is None:
            assert handshake is not None
            self._unknown(handshake, held)
            return
        self._cancel_timer()
        if not connection.named:
            connection.move_to(runtime)
            refusal = connection.admit()
            if refusal is not None:
                self._refuse(refusal.status, refusal.reason, refusal.rule)
                return
        app = runtime.app
        if needs_router(app):
            tls = self.routes.tls
            app_tls = tls.apps.get(app.name) if tls is not None else None
            self._hand_over(RoutedEdge(connection, app_tls, preface=held))
            return
        # The relay sends them to the origin first, after any PROXY header.
        connection.preface = held
        self._hand_over(EdgeProtocol(connection))

    # the edge's own Minecraft answer -------------------------------------------------

    def _unknown(self, handshake: Handshake, held: bytes) -> None:
        """
        No app has the name the player typed: say so in the server list
        (status) or the login screen, then close.
        """
        self._closed = True
        self._reason = f"no app for Minecraft server address {handshake.hostname!r}"
        message = self.routes.unknown_message
        if handshake.next_state != STATUS:
            self._answering = handshake
            self.transport.write(login_disconnect(message))
            self.transport.loseConnection()
            return
        self._answering = handshake
        if self._timer is None:
            self._timer = self.reactor.callLater(ANSWER_TIMEOUT, self._expire)
        self._answer(held[handshake.size :])

    def _answer(self, data: bytes) -> None:
        handshake = self._answering
        assert handshake is not None
        buffer = self._held
        buffer += data
        while buffer:
            try:
                found = read_packet(bytes(buffer[:MAX_PACKET]))
            except NotMinecraft:
                self.transport.loseConnection()
                return
            if found is None:
                if len(buffer) >= MAX_PACKET:
                    self.transport.loseConnection()
                return
            packet_id, payload, size = found
            del buffer[:size]
            if packet_id == 0 and not payload:
                self.transport.write(status_response(self.routes.unknown_message, handshake.protocol_version))
            elif packet_id == 1 and len(payload) == 8:
                # The ping: its pong ends the exchange.
                self.transport.write(packet(1, payload))
                self.transport.loseConnection()
                return
            else:
                self.transport.loseConnection()
                return
