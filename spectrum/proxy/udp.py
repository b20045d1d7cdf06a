"""
The UDP relay: one listening socket per edge address and port, and a
session per client address, each with its own connected socket to the
origin the balancer picked, so the origin's replies find their way back.

UDP has no close: a session ends when it has been quiet for the app's
C{timeouts.idle}, when its origin refuses (ICMP port unreachable), or when
its edge port closes (reload, stop). One timer per edge port sweeps the
sessions; nothing is rescheduled per datagram. After a refusal the client's
datagrams are refused for L{REFUSED_HOLD} (counted, no record each).

PROXY protocol: C{v2} puts a DGRAM header on the first datagram of a
session; C{simple} (Cloudflare's Simple Proxy Protocol) puts a 38-byte
header on every datagram both ways, and a reply whose header does not
match its session is dropped and counted. With C{accept_proxy_protocol},
the first datagram from a trusted upstream starts with a PROXY header (v2,
as an edge in front sends it) that names the client the session is for.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Dict, List, Optional, Tuple, Union

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from spectrum import status as S
from spectrum.admission import Refusal, Ticket, normalize_ip
from spectrum.descriptors import SESSION
from spectrum.geo import UNKNOWN_COUNTRY
from spectrum.model import Origin
from spectrum.proxy import proxyproto, scratch
from spectrum.proxy.inbound import is_trusted
from spectrum.record import CLIENT_FILTERED, CONNECT, DISCONNECT, ORIGIN_ERROR, ConnectionRecord
from spectrum.resolver import QuietPort
from spectrum.runtime import AppRuntime
from spectrum.sockets import edge_socket_options

#: The largest datagram read, edge and origin side: the most UDP can carry,
#: where Twisted's default (8192) would cut datagrams short.
MAX_DATAGRAM = 65535
#: Socket buffers asked for on the edge port, which every client shares
#: (the kernel caps them at net.core.rmem_max / wmem_max).
EDGE_SOCKET_BUFFER = 4 * 1024 * 1024
#: Datagrams kept for a session while its origin's name is being resolved
#: (the rest are dropped and counted): at most this many, of at most
#: PENDING_BYTES in all, and no more than PENDING_TOTAL for every session of
#: the process together.
PENDING_DATAGRAMS = 64
PENDING_BYTES = 64 * 1024
PENDING_TOTAL = 8 * 1024 * 1024
#: The longest gap between idle sweeps, whatever the idle timeout.
MAX_SWEEP_INTERVAL = 5.0
#: Seconds a client's datagrams are refused (counted, no record each) after
#: its session ended on the origin's refusal (ICMP port unreachable), so a
#: client sending on to a dead origin costs a session per second, not one
#: per datagram.
REFUSED_HOLD = 1.0

Address = Tuple[str, int]


class PendingBytes:
    """
    The bytes every session of the process keeps while it waits for its
    origin, against one limit.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """
        Count C{size} more bytes kept, unless that would pass the limit.
        """
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


#: the process's sessions waiting for their origins
PENDING = PendingBytes(PENDING_TOTAL)


class _OriginDatagrams(DatagramProtocol):
    """
    A session's socket to its origin: hands replies to the session.
    """

    noisy = False

    def __init__(self, session: Session) -> None:
        self.session = session

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.session.from_origin(data)

    def connectionRefused(self) -> None:
        self.session.refused("origin refused (ICMP port unreachable)")

    def stopProtocol(self) -> None:
        # The reactor closes a connected UDP socket on a pending socket error
        # (EPOLLERR: an ICMP port unreachable from the origin) before any
        # read could report it as refused.
        if not self.session.ended:
            self.session.refused("origin refused (ICMP error on the origin socket)")


class Session:
    """
    One client address's flow through an edge port to one origin.

    @ivar bad_replies: origin datagrams dropped because their Simple Proxy
        Protocol header did not match this session.
    """

    #: its socket to the origin
    descriptors = SESSION

    __slots__ = (
        "addr",
        "bad_replies",
        "client_bytes",
        "client_datagrams",
        "dropped",
        "edge",
        "ended",
        "origin",
        "origin_bytes",
        "origin_datagrams",
        "port",
        "record",
        "runtime",
        "seen",
        "seen_at",
        "ticket",
        "_first",
        "_pending",
        "_pending_bytes",
        "_reply_headers",
        "_send",
        "_spp",
    )

    def __init__(
        self,
        edge: UDPEdge,
        runtime: AppRuntime,
        addr: Address,
        record: ConnectionRecord,
        origin: Origin,
        now: float,
        ticket: Optional[Ticket] = None,
    ) -> None:
        self.edge = edge
        #: what admission took; given back when the session ends
        self.ticket = ticket
        self.runtime = runtime
        self.addr = addr
        self.record = record
        self.origin = origin
        self.port: Any = None
        self.client_bytes = 0
        self.client_datagrams = 0
        self.origin_bytes = 0
        self.origin_datagrams = 0
        self.bad_replies = 0
        self.dropped = 0
        self.ended = False
        # Idle bookkeeping: the datagram count at the last sweep, and when it
        # last moved.
        self.seen = 0
        self.seen_at = now
        self._send: Any = None
        self._pending: Optional[List[bytes]] = []
        self._pending_bytes = 0
        mode = runtime.app.proxy_protocol
        client = (record.client_ip, record.client_port)
        proxy = (record.edge_ip, record.edge_port)
        self._first = proxyproto.encode_v2(client, proxy, "udp") if mode == "v2" else b""
        self._spp = proxyproto.encode_simple(client, proxy) if mode == "simple" else b""
        self._reply_headers: Tuple[bytes, ...] = ()
        if self._spp:
            # The origin answers with the header reversed (or, leniently,
            # as it was sent); both name this session and nothing else.
            self._reply_headers = (proxyproto.reverse_simple(self._spp), self._spp)

    # the origin socket -------------------------------------------------------

    def connect(self, reactor: Any, ip: str, port: int) -> None:
        """
        Open this session's own socket to the origin at C{ip}:C{port}.

        @raise CannotListenError: no socket could be had (file descriptors
            exhausted).
        """
        ipv6 = isIPv6Address(ip)
        interface = self.runtime.egress.source_for(ipv6) or ("::" if ipv6 else "")
        if isinstance(reactor, PosixReactorBase):
            self.port = _SessionPort(0, _OriginDatagrams(self), interface, MAX_DATAGRAM, reactor)
            self.port.startListening()
        else:
            self.port = reactor.listenUDP(0, _OriginDatagrams(self), interface=interface, maxPacketSize=MAX_DATAGRAM)
        self.port.connect(ip, port)
        self._send = self.port.socket.send
        pending, self._pending = self._pending, None
        self._release_pending()
        for data in pending or ():
            # Already counted when they arrived.
            self.client_datagrams -= 1
            self.client_bytes -= len(data)
            self.from_client(data)

    # datagrams ----------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.client_datagrams += 1
        self.client_bytes += len(data)
        send = self._send
        if send is None:
            pending = self._pending
            size = len(data)
            if (
                pending is not None
                and len(pending) < PENDING_DATAGRAMS
                and self._pending_bytes + size <= PENDING_BYTES
                and PENDING.take(size)
            ):
                pending.append(data)
                self._pending_bytes += size
            else:
                self.dropped += 1
            return
        if self._spp:
            data = self._spp + data
        elif self._first:
            data = self._first + data
        try:
            send(data)
        except OSError as e:
            self._send_failed(e)
            return
        if self._first:
            # Sent: the origin knows the client now.
            self._first = b""

    def _release_pending(self) -> None:
        PENDING.give(self._pending_bytes)
        self._pending_bytes = 0

    def _send_failed(self, e: OSError) -> None:
        if e.errno == errno.ECONNREFUSED:
            self.refused("origin refused (ICMP port unreachable)")
        else:
            # A full socket buffer (EAGAIN, ENOBUFS) or a datagram too big
            # for the path: UDP's answer is to drop it.
            self.dropped += 1

    def from_origin(self, data: bytes) -> None:
        if self._spp:
            if data[: proxyproto.SPP_LENGTH] not in self._reply_headers:
                self.bad_replies += 1
                return
            # A view, not a copy: the payload goes straight to the client.
            data = memoryview(data)[proxyproto.SPP_LENGTH :]  # type: ignore[assignment]
        self.origin_datagrams += 1
        self.origin_bytes += len(data)
        try:
            self.edge.sendto(data, self.addr)
        except OSError:
            self.dropped += 1

    # the end ------------------------------------------------------------------

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        """
        End the session now (the runtime's drain deadline).
        """
        self.end(status, reason)

    def refused(self, reason: str) -> None:
        """
        The origin refused (ICMP): end, and hold the client's next datagrams
        off for a moment.
        """
        if not self.ended:
            self.end(S.ORIGIN_REFUSED, reason)
            self.edge.hold(self.addr)

    def end(self, status: int, reason: str = "") -> None:
        """
        Close the origin socket, forget the session and record its end.
        """
        if self.ended:
            return
        self.ended = True
        if self._pending:
            # Never sent: counted as dropped.
            self.dropped += len(self._pending)
            self._pending = None
        self._release_pending()
        if self.ticket is not None:
            self.ticket.release()
        if self.port is not None:
            self.port.stopListening()
        self.edge.forget(self)
        runtime = self.runtime
        runtime.balancer.connection_closed(self.origin)
        record = self.record
        record.client_bytes = self.client_bytes
        record.origin_bytes = self.origin_bytes
        record.status = status
        record.reason = reason
        record.disconnect_time = runtime.reactor.seconds()
        extra = record.extra
        extra["ClientDatagrams"] = self.client_datagrams
        extra["OriginDatagrams"] = self.origin_datagrams
        extra["OriginDroppedDatagrams"] = self.bad_replies
        extra["DroppedDatagrams"] = self.dropped
        extra["Duration"] = record.duration
        runtime.recorders(DISCONNECT, record)
        runtime.closed(self)


class UDPEdge(DatagramProtocol):
    """
    The protocol of one UDP edge port: finds or opens the session of each
    datagram's source address and sweeps idle sessions.

    @ivar runtime: the app served; a reload may swap it, and sessions opened
        before keep theirs.
    @ivar refused: datagrams refused because their source could not have a
        session (access rules, session caps, no origin).
    """

    log = Logger()
    noisy = False
    transport: Any

    def __init__(self, runtime: AppRuntime) -> None:
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.sessions: Dict[Address, Session] = {}
        #: client addresses whose session the origin refused, and until when
        #: their datagrams are refused (L{REFUSED_HOLD})
        self.held: Dict[Address, float] = {}
        self.per_ip: Dict[str, int] = {}
        self.refused = 0
        self._sweep: Any = None
        self._edge_ip = ""
        self._edge_port = 0
        self.sendto: Any = None

    def startProtocol(self) -> None:
        sock = self.transport.socket
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, EDGE_SOCKET_BUFFER)
            except OSError:
                pass
        # Straight to the socket: Twisted's write() checks the address on
        # every call and raises on a full buffer.
        self.sendto = sock.sendto
        host = self.transport.getHost()
        self._edge_ip = normalize_ip(host.host)
        self._edge_port = host.port

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        session = self.sessions.get(addr)
        if session is None:
            if self.held and self._held_off(addr):
                return
            opened = self._open(addr, data)
            if opened is None:
                return
            session, data = opened
        session.from_client(data)

    # opening ------------------------------------------------------------------

    def hold(self, addr: Address) -> None:
        """
        Refuse C{addr}'s datagrams for L{REFUSED_HOLD} seconds.
        """
        self.held[addr] = self.reactor.seconds() + REFUSED_HOLD
        self._schedule_sweep()

    def _held_off(self, addr: Address) -> bool:
        until = self.held.get(addr)
        if until is None:
            return False
        if self.reactor.seconds() >= until:
            del self.held[addr]
            return False
        self.refused += 1
        runtime = self.runtime
        runtime.refusals.count(
            runtime.app.name, ORIGIN_ERROR, S.ORIGIN_REFUSED, "", normalize_ip(addr[0]), UNKNOWN_COUNTRY
        )
        return True

    def _open(self, addr: Address, data: bytes) -> Optional[Tuple[Session, bytes]]:
        """
        A new session for the source C{addr}, and the first datagram's
        payload (without an upstream's PROXY header); L{None} when the
        source gets no session.
        """
        runtime = self.runtime
        app = runtime.app
        reactor = self.reactor
        now = reactor.seconds()
        client_ip = normalize_ip(addr[0])
        client_port = addr[1]
        upstream = None
        if app.accept_proxy_protocol:
            declared = self._declared(addr, client_ip, data)
            if declared is None:
                return None
            info, data = declared
            if info.source is not None:
                upstream = (client_ip, client_port)
                client_ip = normalize_ip(info.source[0])
                client_port = info.source[1]
        client = (client_ip, client_port)
        verdict = runtime.admission.admit(app, runtime.limits, client_ip)
        if isinstance(verdict, Refusal):
            self._refuse(client, upstream, verdict.status, verdict.reason, CLIENT_FILTERED, verdict)
            return None
        # Admitted: every way out below gives the place back.
        refusal = None
        if app.max_sessions and len(runtime.connections) >= app.max_sessions:
            refusal = (S.SESSION_LIMIT, f"app has {app.max_sessions} sessions open", CLIENT_FILTERED)
        elif app.per_ip_sessions and self.per_ip.get(client_ip, 0) >= app.per_ip_sessions:
            refusal = (S.SESSION_LIMIT, f"{client_ip} has {app.per_ip_sessions} sessions open", CLIENT_FILTERED)
        elif not runtime.descriptors.room_for_session():
            refusal = (S.SESSION_LIMIT, runtime.descriptors.refusal(), CLIENT_FILTERED)
        candidates = runtime.balancer.candidates(client_ip, 1) if refusal is None else []
        if refusal is None and not candidates:
            refusal = (S.NO_HEALTHY_ORIGIN, "", ORIGIN_ERROR)
        if refusal is not None:
            verdict.release()
            self._refuse(client, upstream, refusal[0], refusal[1], refusal[2], verdict)
            return None
        origin = candidates[0]
        try:
            mapped = app.mapping_for(self._edge_port).origin_port(self._edge_port)
        except KeyError:
            mapped = None
        port = mapped or origin.port or self._edge_port
        record = self._record(client, upstream, now, verdict)
        record.origin_name = origin.name
        record.origin_ip = origin.address
        record.origin_port = port
        session = Session(self, runtime, addr, record, origin, now, verdict)
        address = origin.address
        if not (isIPAddress(address) or isIPv6Address(address)):
            addresses = runtime.resolver.cached(address)
            address = addresses[0] if addresses else ""
            if address:
                record.origin_ip = address
        if address:
            try:
                session.connect(reactor, address, port)
            except (OSError, CannotListenError) as e:
                verdict.release()
                self._refuse(
                    client, upstream, S.ORIGIN_UNREACHABLE, f"no socket for the origin: {e}", ORIGIN_ERROR, verdict
                )
                return None
        self.sessions[addr] = session
        self.per_ip[client_ip] = self.per_ip.get(client_ip, 0) + 1
        runtime.opened(session)
        runtime.balancer.connection_opened(origin)
        runtime.recorders(CONNECT, record)
        self._schedule_sweep()
        if not address:
            # Resolved off the data plane (the session's first datagrams
            # wait, bounded); an answer known to be empty ends it at once.
            runtime.resolver.resolve(origin.address, app.timeouts.connect).addCallbacks(
                self._resolved, self._unresolved, callbackArgs=(session, port), errbackArgs=(session,)
            )
            if session.ended:
                return None
        return session, data

    def _record(
        self, client: Address, upstream: Optional[Address], now: float, learnt: Union[Ticket, Refusal, None]
    ) -> ConnectionRecord:
        app = self.runtime.app
        record = ConnectionRecord(
            application=app.name,
            app_id=app.id,
            client_ip=client[0],
            client_port=client[1],
            edge_ip=self._edge_ip,
            edge_port=self._edge_port,
            connect_time=now,
            client_proto="udp",
        )
        extra = record.extra
        extra["ProxyProtocol"] = app.proxy_protocol
        extra["IpFirewall"] = app.ip_firewall
        if learnt is not None:
            record.firewall = learnt.matched
            extra["ClientCountry"] = learnt.country
            extra["ClientAsn"] = learnt.asn
        if upstream is not None:
            extra["UpstreamIP"], extra["UpstreamPort"] = upstream
        return record

    def _declared(self, addr: Address, ip: str, data: bytes) -> Optional[Tuple[proxyproto.ProxyInfo, bytes]]:
        """
        The PROXY header that must start the first datagram from an
        upstream, and the payload after it; L{None} (the datagram refused
        and counted) for an untrusted source or a missing or bad header.
        """
        app = self.runtime.app
        reason = None
        status = S.BAD_PROXY_HEADER
        result = None
        if not is_trusted(ip, app.accept_proxy_protocol):
            reason = f"{ip} is not trusted to send a PROXY header"
            status = S.FIREWALL
        else:
            try:
                result = proxyproto.HeaderDecoder().feed(data)
            except proxyproto.ProxyHeaderError as e:
                reason = str(e)
            if result is None and reason is None:
                reason = "the first datagram holds no whole PROXY header"
        if result is not None:
            return result
        self._refuse((ip, addr[1]), None, status, reason or "", CLIENT_FILTERED, None)
        return None

    def _resolved(self, addresses: Tuple[str, ...], session: Session, port: int) -> None:
        if session.ended:
            return
        # UDP cannot tell a working address from another: the first.
        ip = session.record.origin_ip = addresses[0]
        try:
            session.connect(self.reactor, ip, port)
        except (OSError, CannotListenError) as e:
            session.end(S.ORIGIN_UNREACHABLE, f"no socket for the origin: {e}")

    def _unresolved(self, reason: Failure, session: Session) -> None:
        session.end(S.ORIGIN_UNREACHABLE, f"{session.origin.address}: {reason.getErrorMessage()}")

    def _refuse(
        self,
        client: Address,
        upstream: Optional[Address],
        status: int,
        reason: str,
        kind: str,
        learnt: Union[Ticket, Refusal, None],
    ) -> None:
        """
        Drop a datagram whose source gets no session: counted always, a
        whole record within the refusals' sampling.
        """
        self.refused += 1
        runtime = self.runtime
        refusals = runtime.refusals
        name = runtime.app.name
        rule = learnt.rule if isinstance(learnt, Refusal) else ""
        if not refusals.wants_record(name):
            country = learnt.country if learnt is not None else UNKNOWN_COUNTRY
            refusals.count(name, kind, status, rule, client[0], country)
            return
        now = self.reactor.seconds()
        record = self._record(client, upstream, now, learnt)
        record.status = status
        record.reason = reason
        record.disconnect_time = now
        record.extra.update(ClientDatagrams=1, OriginDatagrams=0, Duration=0.0)
        refusals.record(kind, record, rule)

    # sessions ending ------------------------------------------------------------

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.addr) is session:
            del self.sessions[session.addr]
            ip = session.record.client_ip
            left = self.per_ip.get(ip, 1) - 1
            if left > 0:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)

    def _schedule_sweep(self) -> None:
        if self._sweep is not None:
            return
        idle = self.runtime.app.timeouts.idle
        interval = min(idle / 4.0, MAX_SWEEP_INTERVAL) if idle else MAX_SWEEP_INTERVAL
        self._sweep = self.reactor.callLater(interval, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """
        End each session quiet for its app's idle timeout: a session whose
        datagram count has not moved since C{seen_at}.
        """
        self._sweep = None
        now = self.reactor.seconds()
        for session in list(self.sessions.values()):
            # Replies dropped for a bad header do not keep a session alive.
            count = session.client_datagrams + session.origin_datagrams
            if count != session.seen:
                session.seen = count
                session.seen_at = now
                continue
            idle = session.runtime.app.timeouts.idle
            if idle and now - session.seen_at >= idle:
                # A UDP session has no close: this is its normal end.
                session.end(S.NORMAL, "idle timeout")
        if self.held:
            self.held = {addr: until for addr, until in self.held.items() if until > now}
        if self.sessions or self.held:
            self._schedule_sweep()

    def close(self, status: int = S.NORMAL, reason: str = "edge port closed") -> None:
        """
        End every session (the edge port is closing: replies could no
        longer reach the clients).
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for session in list(self.sessions.values()):
            session.end(status, reason)


class UDPListening:
    """
    The listening port of a UDP edge, as a L{spectrum.listeners.Listener}
    holds it: stopping it ends the port's sessions, then closes the socket.
    """

    def __init__(self, edge: UDPEdge, port: Any) -> None:
        self.edge = edge
        self.port = port

    def getHost(self) -> Any:
        return self.port.getHost()

    def stopListening(self) -> Any:
        self.edge.close()
        return self.port.stopListening()


class _SessionPort(QuietPort, scratch.DatagramPort):
    """
    A session's own socket towards its origin: quiet (one log line per
    session is its record's), reading into the shared buffer.
    """


class _EdgeUDPPort(scratch.DatagramPort):
    """
    A UDP port where an IPv6 address means IPv6 only, as for TCP edge
    ports, so C{0.0.0.0} and C{::} can both be listed for one app.
    """

    #: set SO_REUSEPORT for the workers of C{workers: N}; the kernel sends
    #: a client's datagrams to one worker (by address hash), so its session
    #: stays in one process while the workers stay the same
    reuse_port = False

    def createInternetSocket(self) -> socket.socket:
        return edge_socket_options(super().createInternetSocket(), self.addressFamily, self.reuse_port)


def listen_udp(
    reactor: Any, ip: str, port: int, runtime: AppRuntime, reuse_port: bool = False
) -> Tuple[UDPEdge, UDPListening]:
    """
    Bind C{ip}:C{port} for UDP and serve it with C{runtime}.

    @param reuse_port: share the port with other processes (SO_REUSEPORT).

    @raise twisted.internet.error.CannotListenError: the address is taken.
    """
    edge = UDPEdge(runtime)
    if isinstance(reactor, PosixReactorBase):
        listening: Any = _EdgeUDPPort(port, edge, ip, MAX_DATAGRAM, reactor)
        listening.reuse_port = reuse_port
        listening.startListening()
    else:
        listening = reactor.listenUDP(port, edge, interface=ip, maxPacketSize=MAX_DATAGRAM)
    return edge, UDPListening(edge, listening)
