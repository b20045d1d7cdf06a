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
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from spectrum import status as S
from spectrum.listeners import BACKLOG, Listener, _EdgePort, _ReactorWithPorts
from spectrum.model import App, Config, Origin
from spectrum.proxy.sni import ClientHelloParser, NotClientHello
from spectrum.proxy.tcp import EdgeFactory, EdgeProtocol, OriginProtocol, _OriginFactory, normalize_ip
from spectrum.proxy.tls import (
    TLS_HANDSHAKE_FAILED,
    TLS_INVALID_SNI,
    TLS_OK,
    TLS_UNKNOWN,
    AppTls,
    EdgeTls,
    TlsWrapperFactory,
    describe_tls_error,
    is_verification_error,
    peer_subject,
)
from spectrum.record import CLIENT_FILTERED, ORIGIN_ERROR, TLS_ERROR, ConnectionRecord
from spectrum.runtime import AppRuntime

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


def _base_fields(app: App) -> Dict[str, Any]:
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
        runtime: AppRuntime,
        app_tls: Optional[AppTls],
        preface: bytes = b"",
        fields: Optional[Dict[str, Any]] = None,
        alpn: Optional[bytes] = None,
    ) -> None:
        super().__init__(runtime)
        self.app_tls = app_tls
        self.fields = self.record_fields = fields if fields is not None else _base_fields(runtime.app)
        self.alpn = alpn
        self._held: List[bytes] = [preface] if preface else []
        # Until an origin is joined, hold what arrives (per connection,
        # not per chunk: the class method takes over afterwards).
        self.dataReceived = self._held.append  # type: ignore[method-assign,assignment]

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._origin_gone and self.fields.get("ClientTlsStatus") == TLS_OK and reason.check(ierror.ConnectionLost):
            # We closed first (the origin had); a TLS client that drops the
            # TCP connection instead of answering our close_notify is the
            # normal end, not a client error.
            reason = Failure(ierror.ConnectionDone())
        super().connectionLost(reason)

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


# Gates


class _Gate(Protocol):
    """
    What both gates share: the client's addresses, the deadline, the record
    of a connection refused before it reached an app.
    """

    # Set in connectionMade (or by the factory) before anything reads them.
    runtime: Any = None
    transport: Any
    started: float
    reactor: Any
    recorders: Any
    _timer: Any = None
    _closed = False
    _handed_over = False

    def _remember(self) -> None:
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        self._addresses = (normalize_ip(peer.host), peer.port, normalize_ip(host.host), host.port)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _record(self, kind: str, status: int, reason: str, fields: Dict[str, Any], app: Optional[App]) -> None:
        client_ip, client_port, edge_ip, edge_port = self._addresses
        record = ConnectionRecord(
            application=app.name if app is not None else "",
            app_id=app.id if app is not None else "",
            client_ip=client_ip,
            client_port=client_port,
            edge_ip=edge_ip,
            edge_port=edge_port,
            connect_time=self.started,
        )
        record.status = status
        record.reason = reason
        record.extra.update(fields)
        record.disconnect_time = self.reactor.seconds()
        self.recorders(kind, record)


@implementer(IHandshakeListener)
class HandshakeGate(_Gate):
    """
    The wrapped protocol of an edge TLS connection until its handshake
    completes; then the L{RoutedEdge} takes its place.
    """

    def __init__(
        self,
        runtime: AppRuntime,
        app_tls: AppTls,
        deadline: Optional[float] = None,
        started: Optional[float] = None,
        addresses: Optional[Tuple[str, int, str, int]] = None,
    ) -> None:
        self.runtime = runtime
        self.app_tls = app_tls
        self.reactor = runtime.reactor
        self.recorders = runtime.recorders
        self.deadline = deadline
        self.started = self.reactor.seconds() if started is None else started
        self._early: List[bytes] = []
        self._status = S.CLIENT_TLS_FAILED
        self._reason = ""
        if addresses is not None:
            self._addresses = addresses

    def connectionMade(self) -> None:
        if not hasattr(self, "_addresses"):
            self._remember()
        self.runtime.opened(self)
        if self.deadline is None:
            timeout = self.runtime.app.timeouts.handshake
            if timeout:
                self.deadline = self.started + timeout
        if self.deadline is not None:
            self._timer = self.reactor.callLater(max(0.0, self.deadline - self.reactor.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        waited = self.reactor.seconds() - self.started
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
        connection = tls.getHandle()
        runtime = self.runtime
        fields = _base_fields(runtime.app)
        name = connection.get_servername()
        fields.update(
            ClientTlsProtocol=connection.get_protocol_version_name(),
            ClientTlsCipher=connection.get_cipher_name() or "none",
            ClientTlsClientHelloServerName=name.decode("ascii", "replace") if name else "",
            ClientTlsStatus=TLS_OK,
            ClientTlsClientCertSubject=peer_subject(connection) or "",
        )
        edge = RoutedEdge(runtime, self.app_tls, fields=fields, alpn=tls.negotiatedProtocol)
        self._handed_over = True
        tls.wrappedProtocol = edge
        edge.makeConnection(tls)
        runtime.closed(self)
        for chunk in self._early:
            edge.dataReceived(chunk)
        self._early = []

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._handed_over or self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self.runtime.closed(self)
        fields = _base_fields(self.runtime.app)
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
        self._record(TLS_ERROR, self._status, self._reason, fields, self.runtime.app)


@implementer(IHalfCloseableProtocol)
class SniGate(_Gate):
    """
    The protocol of a connection on a shared edge port until its ClientHello
    names an app.
    """

    def __init__(self, router: RouterFactory) -> None:
        self.router = router
        self.runtime = router.runtime
        self.reactor = self.runtime.reactor
        self.recorders = self.runtime.recorders
        self.parser = ClientHelloParser()
        self._held: List[bytes] = []
        self.deadline: Optional[float] = None

    def connectionMade(self) -> None:
        self._remember()
        self.started = self.reactor.seconds()
        self.runtime.opened(self)
        timeout = self.router.hello_timeout
        if timeout:
            self.deadline = self.started + timeout
            self._timer = self.reactor.callLater(timeout, self._expire)

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

    def _refuse(self, kind: str, status: int, reason: str, name: Optional[str] = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self.runtime.closed(self)
        fields = {
            "ClientTlsClientHelloServerName": name or "",
            "ClientTlsStatus": TLS_INVALID_SNI,
        }
        self._record(kind, status, reason, fields, None)
        self.transport.loseConnection()

    def _route(self, name: Optional[str]) -> None:
        runtime = self.router.route(name)
        if runtime is None:
            why = f"no app for SNI {name!r}" if name else "no SNI in the ClientHello and no default app"
            self._refuse(CLIENT_FILTERED, S.INVALID_SNI, why, name)
            return
        self._cancel_timer()
        self._handed_over = True
        preface = b"".join(self._held)
        self._held = []
        transport = self.transport
        app = runtime.app
        app_tls = self.router.tls.apps.get(app.name)
        if app.terminates_tls and app_tls is not None:
            factory = app_tls.server_factory
            gate = HandshakeGate(runtime, app_tls, self.deadline, self.started, self._addresses)
            tls = factory.protocol(factory, gate)
            transport.protocol = tls
            tls.makeConnection(transport)
            self.runtime.closed(self)
            tls.dataReceived(preface)
            return
        fields = _base_fields(app)
        fields["ClientTlsClientHelloServerName"] = name or ""
        edge = RoutedEdge(runtime, app_tls, preface=preface, fields=fields)
        transport.protocol = edge
        edge.makeConnection(transport)
        self.runtime.closed(self)


# The listener's factory


class RouterFactory(ServerFactory):
    """
    Builds the first protocol of each connection on a routed edge port.
    """

    noisy = False

    def __init__(self, runtimes: Sequence[AppRuntime], tls: EdgeTls) -> None:
        self.tls = tls
        self.set_routes(runtimes)

    @property
    def runtime(self) -> AppRuntime:
        return self.runtimes[0]

    @runtime.setter
    def runtime(self, runtime: AppRuntime) -> None:
        # Listener.retarget() of a port that one app now has alone.
        self.set_routes([runtime])

    def set_routes(self, runtimes: Sequence[AppRuntime]) -> None:
        """
        Serve C{runtimes} from the next connection on.
        """
        exact: Dict[str, AppRuntime] = {}
        wildcard: Dict[str, AppRuntime] = {}
        default: Optional[AppRuntime] = None
        for runtime in runtimes:
            app = runtime.app
            for name in app.hostnames:
                if name.startswith("*."):
                    wildcard[name[2:]] = runtime
                else:
                    exact[name] = runtime
            if app.sni_default:
                default = runtime
        self.runtimes = list(runtimes)
        self.shared = len(self.runtimes) > 1
        self._exact = exact
        self._wildcard = wildcard
        self._default = default
        self.hello_timeout = max((r.app.timeouts.handshake for r in self.runtimes), default=0.0)

    def route(self, name: Optional[str]) -> Optional[AppRuntime]:
        """
        The app for SNI C{name}: an exact name, else a wildcard, else the
        default app, else L{None}.
        """
        if name:
            runtime = self._exact.get(name)
            if runtime is None:
                runtime = self._wildcard.get(name.partition(".")[2])
            if runtime is not None:
                return runtime
        return self._default

    def buildProtocol(self, addr: Any) -> Protocol:
        if self.shared:
            return SniGate(self)
        runtime = self.runtimes[0]
        app = runtime.app
        app_tls = self.tls.apps.get(app.name)
        if app.terminates_tls and app_tls is not None:
            factory = app_tls.server_factory
            return factory.protocol(factory, HandshakeGate(runtime, app_tls))
        return RoutedEdge(runtime, app_tls)


def listen_routed(
    reactor: Any,
    protocol: str,
    ip: str,
    port: int,
    runtimes: Sequence[AppRuntime],
    tls: EdgeTls,
    reuse_port: bool = False,
) -> Listener:
    """
    Bind C{ip}:C{port} and serve it with a L{RouterFactory}.

    @param reuse_port: share the port with other processes (SO_REUSEPORT).
    """
    if protocol != "tcp":
        raise ValueError(f"no routed listener for protocol {protocol!r}")
    factory = RouterFactory(runtimes, tls)
    if isinstance(reactor, _ReactorWithPorts):
        edge_port = _EdgePort(port, factory, BACKLOG, ip, reactor)
        edge_port.reuse_port = reuse_port
        edge_port.startListening()
        listening: Any = edge_port
    else:
        listening = reactor.listenTCP(port, factory, backlog=BACKLOG, interface=ip)
    return Listener(protocol, ip, port, factory, listening)


def set_routes(listener: Listener, runtimes: Sequence[AppRuntime], tls: EdgeTls, routed: bool) -> None:
    """
    Point an existing listener at C{runtimes}, switching between the plain
    relay and a router when a reload changed what the port needs; the
    listening socket stays open.
    """
    if routed:
        if isinstance(listener.factory, RouterFactory):
            listener.factory.set_routes(runtimes)
            return
        factory: Any = RouterFactory(runtimes, tls)
    elif isinstance(listener.factory, RouterFactory):
        factory = EdgeFactory(runtimes[0])
    else:
        if listener.runtime is not runtimes[0]:
            listener.retarget(runtimes[0])
        return
    listener.factory = factory
    listener.listening.factory = factory  # type: ignore[attr-defined]
