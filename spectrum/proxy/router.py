"""
Edge ports that need more than the plain relay: TLS termination, TLS
towards the origin, and several apps on one address and port told apart by
the ClientHello's SNI.

A connection on such a port starts at a gate: L{SniGate} reads the
ClientHello (without decrypting) on a shared port and picks the app;
L{HandshakeGate} waits for the edge's TLS handshake. Either then hands the
transport to a L{RoutedEdge} (the relay of L{spectrum.proxy.tcp}, plus TLS
towards the origin) and steps out of the way, so relayed bytes pass through
no extra Python layer. A shared port routes on the ClientHello before the
handshake even when the app terminates TLS: the same SNI then gets the
app's own TLS settings (minimum version, client CA, ALPN) for its handshake.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from spectrum import status as S
from spectrum.model import App, Config, Origin
from spectrum.proxy.lifecycle import HANDSHAKE, HELLO, Connection
from spectrum.proxy.sni import ClientHelloParser, NotClientHello
from spectrum.proxy.tcp import EdgeProtocol, OriginProtocol, _OriginFactory
from spectrum.proxy.tls import (
    TLS_HANDSHAKE_FAILED,
    TLS_INVALID_SNI,
    TLS_OK,
    TLS_UNKNOWN,
    AppTls,
    TlsWrapperFactory,
    describe_tls_error,
    is_verification_error,
    peer_subject,
)
from spectrum.record import CLIENT_FILTERED, ORIGIN_ERROR, TLS_ERROR

ListenerKey = Tuple[str, str, int]


def needs_router(app: App) -> bool:
    """
    Whether an app's connections need more than the plain relay.
    """
    return app.terminates_tls or app.origin_tls is not None


def routed_groups(config: Config) -> Dict[ListenerKey, Tuple[App, ...]]:
    """
    The (protocol, edge address, edge port) keys served by a router, and
    the apps on each: keys shared by several apps, and keys of apps that
    speak TLS at the edge or to the origin.
    """
    groups: Dict[ListenerKey, List[App]] = {}
    for app in config.apps:
        for ip in app.ips:
            for port in app.edge_ports():
                groups.setdefault((app.protocol, ip, port), []).append(app)
    return {key: tuple(apps) for key, apps in groups.items() if len(apps) > 1 or any(needs_router(app) for app in apps)}


class HostRoutes:
    """
    Apps told apart by a hostname (the SNI of a ClientHello, the server
    address of a Minecraft handshake): an exact name, else a one-label
    wildcard, else the default app.

    @ivar tls: the edge's TLS state, for the apps that terminate TLS.
    @ivar hello_timeout: seconds a client has to send what names its app.
    """

    def __init__(self, runtimes: Sequence[Any], tls: Any = None, hello_timeout: float = 0.0) -> None:
        exact: Dict[str, Any] = {}
        wildcard: Dict[str, Any] = {}
        default: Optional[Any] = None
        for runtime in runtimes:
            app = runtime.app
            for name in app.hostnames:
                if name.startswith("*."):
                    wildcard[name[2:]] = runtime
                else:
                    exact[name] = runtime
            if app.sni_default:
                default = runtime
        if default is None and len(runtimes) == 1 and not runtimes[0].app.hostnames:
            # One app that names no host takes every name.
            default = runtimes[0]
        self.runtimes = list(runtimes)
        self.tls = tls
        self.hello_timeout = hello_timeout
        self._exact = exact
        self._wildcard = wildcard
        self._default = default

    def route(self, name: Optional[str]) -> Optional[Any]:
        """
        The app for hostname C{name}: an exact name, else a wildcard, else
        the default app, else L{None}.
        """
        if name:
            runtime = self._exact.get(name)
            if runtime is None:
                runtime = self._wildcard.get(name.partition(".")[2])
            if runtime is not None:
                return runtime
        return self._default


def base_fields(app: App) -> Dict[str, Any]:
    return {
        "ClientTlsProtocol": "none",
        "ClientTlsCipher": "none",
        "ClientTlsClientHelloServerName": "",
        "ClientTlsStatus": TLS_UNKNOWN,
        "ClientTlsClientCertSubject": "",
        "OriginTlsMode": app.origin_tls_mode,
        "OriginTlsProtocol": "none",
        "OriginTlsStatus": TLS_UNKNOWN,
    }


# The relay, with held bytes and origin TLS


@implementer(IHandshakeListener)
class TlsOriginProtocol(OriginProtocol):
    """
    An origin leg over TLS: joins the relay once the origin's handshake (and
    its verification, in strict mode) has succeeded.
    """

    handshook = False
    edge: RoutedEdge

    def connectionMade(self) -> None:
        # Not yet: the TLS handshake comes first.
        pass

    def handshakeCompleted(self) -> None:
        self.handshook = True
        connection = self.transport.getHandle()
        extra = self.edge.record.extra
        extra["OriginTlsProtocol"] = connection.get_protocol_version_name()
        extra["OriginTlsStatus"] = TLS_OK
        OriginProtocol.connectionMade(self)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.handshook:
            self.edge.origin_tls_failed(self.origin, reason)
            return
        if is_verification_error(reason):
            # Twisted before 24 reports the handshake done before the name
            # check fails it; the relay had started but nothing was sent.
            edge = self.edge
            edge.record.extra["OriginTlsStatus"] = TLS_HANDSHAKE_FAILED
            edge._status = S.ORIGIN_TLS_INVALID
            edge._reason = f"{self.origin.name}: certificate did not verify: {describe_tls_error(reason)}"
        elif reason.check(SSL.Error) and not self.received:
            # TLS 1.3 refuses a client certificate after the client's side
            # of the handshake is done: the first thing read is the alert.
            self.edge.record.extra["OriginTlsStatus"] = TLS_HANDSHAKE_FAILED
            reason = Failure(SSL.Error(describe_tls_error(reason)))
        OriginProtocol.connectionLost(self, reason)


class _TlsOriginFactory(_OriginFactory):
    def buildProtocol(self, addr: Any) -> TlsOriginProtocol:
        return TlsOriginProtocol(self.edge, self.origin)


class RoutedEdge(EdgeProtocol):
    """
    The relay for a routed connection: bytes read before the origin is up
    (the ClientHello of a passthrough connection, a client's first request
    after its handshake) are held and sent first; the origin leg speaks TLS
    when the app asks for it; the record carries the TLS fields.
    """

    #: bytes held during routing are written after the join, so the
    #: zero-copy path (which would overtake them) stays off here
    zero_copy = False

    def __init__(
        self,
        connection: Connection,
        app_tls: Optional[AppTls],
        preface: bytes = b"",
        alpn: Optional[bytes] = None,
    ) -> None:
        super().__init__(connection)
        self.app_tls = app_tls
        if connection.fields is None:
            connection.fields = base_fields(connection.runtime.app)
        self.fields = connection.fields
        self.alpn = alpn
        early = connection.preface + preface
        connection.preface = b""
        self._held: List[bytes] = [early] if early else []
        # Until an origin is joined, hold what arrives (per connection,
        # not per chunk: the class method takes over afterwards).
        self.dataReceived = self._held.append  # type: ignore[method-assign,assignment]

    def client_lost_status(self, reason: Failure) -> Optional[int]:
        if self.fields.get("ClientTlsStatus") == TLS_OK and (
            getattr(self.transport, "tcp_closed_cleanly", False)
            or is_unclean_tls_close(reason)
            or (self._origin_gone and reason.check(ierror.ConnectionLost))
        ):
            # A TLS client that closes TCP without close_notify (most do),
            # or that drops the connection instead of answering our
            # close_notify once the origin had closed, ended normally.
            return None
        return super().client_lost_status(reason)

    def origin_factory(self, origin: Origin) -> Any:
        app_tls = self.app_tls
        if app_tls is None or self.runtime.app.origin_tls_mode == "off":
            return super().origin_factory(origin)
        creator = app_tls.origin_creator(origin.address, self.alpn)
        return TlsWrapperFactory(creator, True, _TlsOriginFactory(self, origin), clock=self.reactor)

    def origin_connected(self, leg: OriginProtocol) -> None:
        held, self._held = self._held, []
        self.__dict__.pop("dataReceived", None)
        super().origin_connected(leg)
        if self.origin_leg is leg and held:
            data = b"".join(held)
            self._write(data)
            self.received += len(data)

    def origin_tls_failed(self, origin: Origin, reason: Failure) -> None:
        """
        The origin's TLS handshake failed (or its certificate did not
        verify): close the client and record why.
        """
        self._pending = None
        self.record.extra["OriginTlsStatus"] = TLS_HANDSHAKE_FAILED
        if self._client_gone:
            self._origin_gone = True
            self._maybe_finish()
            return
        invalid = is_verification_error(reason)
        self._status = S.ORIGIN_TLS_INVALID if invalid else S.ORIGIN_TLS_FAILED
        what = "certificate did not verify" if invalid else "TLS handshake failed"
        self._reason = f"{origin.name}: {what}: {describe_tls_error(reason)}"
        self._origin_gone = True
        self._finish(ORIGIN_ERROR)
        self.transport.loseConnection()


def is_unclean_tls_close(reason: Failure) -> bool:
    """
    Whether C{reason} is a TLS peer closing TCP without close_notify.
    """
    if not reason.check(SSL.Error):
        return False
    return "unexpected eof" in describe_tls_error(reason).lower()


# Gates


class _Gate(Protocol):
    """
    What both gates share: the connection, its deadline timer.
    """

    connection: Connection
    transport: Any
    reactor: Any
    _timer: Any = None
    _handed_over = False

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _hand_over(self, protocol: Any, data: bytes = b"") -> None:
        """
        Put C{protocol} in this gate's place on the transport.
        """
        self._handed_over = True
        transport = self.transport
        transport.protocol = protocol
        protocol.makeConnection(transport)
        if data:
            protocol.dataReceived(data)


@implementer(IHandshakeListener)
class HandshakeGate(_Gate):
    """
    The wrapped protocol of an edge TLS connection until its handshake
    completes; then the L{RoutedEdge} takes its place.
    """

    def __init__(
        self, connection: Connection, app_tls: AppTls, deadline: Optional[float] = None, relay: Any = None
    ) -> None:
        self.connection = connection
        connection.leg = self
        connection.phase = HANDSHAKE
        self.app_tls = app_tls
        #: the relay that takes over after the handshake
        self.relay = relay or RoutedEdge
        self.reactor = connection.runtime.reactor
        self.deadline = deadline
        self._early: List[bytes] = []
        self._status = S.CLIENT_TLS_FAILED
        self._reason = ""

    def connectionMade(self) -> None:
        connection = self.connection
        if self.deadline is None:
            timeout = connection.runtime.app.timeouts.handshake
            if timeout:
                self.deadline = connection.started + timeout
        if self.deadline is not None:
            self._timer = self.reactor.callLater(max(0.0, self.deadline - self.reactor.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        waited = self.reactor.seconds() - self.connection.started
        self.abort(S.CLIENT_TLS_FAILED, f"TLS handshake not finished after {waited:.1f}s")

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        """
        Close the connection (handshake timeout, shutdown).
        """
        self._status = status
        self._reason = reason
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._early.append(data)

    def handshakeCompleted(self) -> None:
        self._cancel_timer()
        tls = self.transport
        handle = tls.getHandle()
        connection = self.connection
        fields = base_fields(connection.runtime.app)
        name = handle.get_servername()
        fields.update(
            ClientTlsProtocol=handle.get_protocol_version_name(),
            ClientTlsCipher=handle.get_cipher_name() or "none",
            ClientTlsClientHelloServerName=name.decode("ascii", "replace") if name else "",
            ClientTlsStatus=TLS_OK,
            ClientTlsClientCertSubject=peer_subject(handle) or "",
        )
        connection.fields = fields
        edge = self.relay(connection, self.app_tls, alpn=tls.negotiatedProtocol)
        self._handed_over = True
        tls.wrappedProtocol = edge
        edge.makeConnection(tls)
        for chunk in self._early:
            edge.dataReceived(chunk)
        self._early = []

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._handed_over:
            return
        self._cancel_timer()
        connection = self.connection
        fields = base_fields(connection.runtime.app)
        fields["ClientTlsStatus"] = TLS_HANDSHAKE_FAILED
        try:
            name = self.transport.getHandle().get_servername()
        except Exception:
            name = None
        if name:
            fields["ClientTlsClientHelloServerName"] = name.decode("ascii", "replace")
        if not self._reason:
            if reason.check(ierror.ConnectionDone, ierror.ConnectionLost):
                self._reason = "client closed during the TLS handshake"
            else:
                self._reason = "TLS handshake failed: " + describe_tls_error(reason)
        connection.fields = fields
        connection.refuse(self._status, self._reason, TLS_ERROR)


@implementer(IHalfCloseableProtocol)
class SniGate(_Gate):
    """
    The protocol of a connection on a shared edge port until its ClientHello
    names an app; that app's admission runs then, before any byte is
    answered.
    """

    def __init__(self, connection: Connection, router: Any) -> None:
        self.connection = connection
        connection.leg = self
        connection.phase = HELLO
        self.router = router
        self.reactor = connection.runtime.reactor
        self.parser = ClientHelloParser()
        self._held: List[bytes] = []
        self.deadline: Optional[float] = None
        self._closed = False

    def connectionMade(self) -> None:
        timeout = self.router.hello_timeout
        if timeout:
            self.deadline = self.connection.started + timeout
            self._timer = self.reactor.callLater(max(0.0, self.deadline - self.reactor.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._refuse(TLS_ERROR, S.INVALID_SNI, f"no complete ClientHello after {self.router.hello_timeout:g}s")

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        self._refuse(TLS_ERROR, status, reason)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._held.append(data)
        try:
            hello = self.parser.feed(data)
        except NotClientHello as e:
            self._refuse(TLS_ERROR, S.INVALID_SNI, f"not a TLS ClientHello: {e}")
            return
        if hello is not None:
            self._route(hello.server_name)

    def readConnectionLost(self) -> None:
        self._refuse(TLS_ERROR, S.INVALID_SNI, "client closed before a complete ClientHello")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._handed_over:
            return
        self._refuse(TLS_ERROR, S.INVALID_SNI, "client closed before a complete ClientHello")

    def _refuse(self, kind: str, status: int, reason: str, name: Optional[str] = None, rule: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        connection = self.connection
        fields = connection.fields = connection.fields or {}
        fields["ClientTlsClientHelloServerName"] = name or ""
        if "ClientTlsStatus" not in fields:
            fields["ClientTlsStatus"] = TLS_INVALID_SNI
        connection.refuse(status, reason, kind, rule)
        self.transport.loseConnection()

    def _route(self, name: Optional[str]) -> None:
        runtime = self.router.route(name)
        if runtime is None:
            why = f"no app for SNI {name!r}" if name else "no SNI in the ClientHello and no default app"
            self._refuse(CLIENT_FILTERED, S.INVALID_SNI, why, name)
            return
        self._cancel_timer()
        connection = self.connection
        refusal = None
        if not connection.named:
            # A shared port: the app's own admission, now that it is known.
            connection.move_to(runtime)
            refusal = connection.admit()
        if refusal is not None:
            connection.fields = base_fields(runtime.app)
            connection.fields["ClientTlsStatus"] = TLS_UNKNOWN
            self._refuse(CLIENT_FILTERED, refusal.status, refusal.reason, name, refusal.rule)
            return
        preface = b"".join(self._held)
        self._held = []
        app = runtime.app
        app_tls = self.router.tls.apps.get(app.name)
        if app.terminates_tls and app_tls is not None:
            factory = app_tls.server_factory
            self._hand_over(factory.protocol(factory, HandshakeGate(connection, app_tls, self.deadline)), preface)
            return
        connection.fields = base_fields(app)
        connection.fields["ClientTlsClientHelloServerName"] = name or ""
        self._hand_over(RoutedEdge(connection, app_tls, preface=preface))
