"""
One client connection from accept to close, whatever the port kind.

A L{Connection} is made when admission lets a client in (at accept, or once
an upstream's PROXY header names the client) and lives until both legs are
closed. The Twisted protocols that carry it from stage to stage (the PROXY
header, the ClientHello of a shared port, the edge TLS handshake, the relay)
are thin legs: each reports to the connection, and the connection alone

  - holds what admission took (its L{Ticket}s) and releases it once;
  - builds the one L{ConnectionRecord} and hands it to the recorders;
  - sends a refusal (anything that ends before the relay started) through
    L{Refusals}, so a flood of them costs counters, not records;
  - is what the runtime counts as open, so a drain waits for it and
    C{abort} reaches whichever leg holds it now.

A refusal at accept makes no connection at all: L{refuse_at_accept}.

Phases, in order (each optional but the last two)::

    header -> hello -> handshake -> dialing -> relaying -> closed
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from spectrum.admission import Refusal, Ticket, normalize_ip
from spectrum.geo import UNKNOWN_COUNTRY
from spectrum.record import CLIENT_FILTERED, ConnectionRecord

HEADER = "header"
HELLO = "hello"
HANDSHAKE = "handshake"
DIALING = "dialing"
RELAYING = "relaying"
CLOSED = "closed"


class Connection:
    """
    One client connection's state, shared by the legs that carry it.

    @ivar runtime: the app it belongs to (on a shared port, the port's first
        app until the ClientHello names one: C{named} is then false).
    @ivar leg: the protocol holding the connection now; C{abort} goes there.
    @ivar preface: bytes read by an earlier stage that the next one must
        see first (what followed a PROXY header).
    @ivar fields: extra record fields an earlier stage learnt (TLS).
    @ivar sniffed: on a port shared by protocol, the protocol the first
        bytes spoke and the hostname they named (C{""}: none).
    """

    __slots__ = (
        "runtime",
        "named",
        "client_ip",
        "client_port",
        "edge_ip",
        "edge_port",
        "started",
        "phase",
        "leg",
        "preface",
        "fields",
        "sniffed",
        "upstream",
        "record",
        "_tickets",
        "_counted",
        "_country",
        "_asn",
        "_matched",
    )

    def __init__(
        self,
        runtime: Any,
        client_ip: str,
        client_port: int,
        edge_ip: str,
        edge_port: int,
        started: float,
        named: bool = True,
    ) -> None:
        self.runtime = runtime
        self.named = named
        self.client_ip = client_ip
        self.client_port = client_port
        self.edge_ip = edge_ip
        self.edge_port = edge_port
        self.started = started
        self.phase = DIALING
        self.leg: Any = None
        self.preface = b""
        self.fields: Optional[Dict[str, Any]] = None
        self.sniffed: Optional[Tuple[str, str]] = None
        self.upstream: Optional[Tuple[str, int]] = None
        self.record: Optional[ConnectionRecord] = None
        self._tickets: List[Ticket] = []
        self._counted = False
        self._country = UNKNOWN_COUNTRY
        self._asn: Optional[int] = None
        self._matched = "UNKNOWN"

    # admission ------------------------------------------------------------

    def take(self, ticket: Ticket) -> None:
        """
        Hold C{ticket} until the connection ends.
        """
        self._tickets.append(ticket)
        if ticket.country != UNKNOWN_COUNTRY or ticket.asn is not None:
            self._country = ticket.country
            self._asn = ticket.asn
        self._matched = ticket.matched

    def admit(self) -> Optional[Refusal]:
        """
        Admit the client to the connection's app (its rules, its limits and
        the gates); L{None} when admitted, else why not.
        """
        runtime = self.runtime
        verdict = runtime.admission.admit(runtime.app, runtime.limits, self.client_ip)
        if isinstance(verdict, Refusal):
            self._note(verdict)
            return verdict
        self.take(verdict)
        return None

    def admit_to_port(self, limits: Any, port_limits: Any) -> Optional[Refusal]:
        """
        Admit the client to a shared port before its app is known.
        """
        verdict = self.runtime.admission.admit_to_port(limits, port_limits, self.client_ip)
        if isinstance(verdict, Refusal):
            self._note(verdict)
            return verdict
        self.take(verdict)
        return None

    def _note(self, refusal: Refusal) -> None:
        self._country = refusal.country
        self._asn = refusal.asn
        self._matched = refusal.matched

    def declare(self, ip: str, port: int) -> None:
        """
        An upstream's PROXY header named the client: it is the client from
        now on, and the upstream is remembered.
        """
        self.upstream = (self.client_ip, self.client_port)
        self.client_ip = normalize_ip(ip)
        self.client_port = port

    # being open -------------------------------------------------------------

    def open(self) -> None:
        """
        Count the connection as open in its runtime (a drain waits for it).
        """
        if not self._counted:
            self._counted = True
            self.runtime.opened(self)

    def move_to(self, runtime: Any) -> None:
        """
        The ClientHello named the app: the connection is that app's now.
        """
        if self._counted:
            self.runtime.closed(self)
            runtime.opened(self)
        self.runtime = runtime
        self.named = True

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        """
        Close the connection now (drain deadline, idle timeout).
        """
        leg = self.leg
        if leg is not None:
            leg.abort(status, reason, graceful)

    # the record -------------------------------------------------------------

    def make_record(self) -> ConnectionRecord:
        """
        The connection's record (built once, on first use).
        """
        record = self.record
        if record is not None:
            return record
        app = self.runtime.app
        named = self.named
        record = self.record = ConnectionRecord(
            application=app.name if named else "",
            app_id=app.id if named else "",
            client_ip=self.client_ip,
            client_port=self.client_port,
            edge_ip=self.edge_ip,
            edge_port=self.edge_port,
            connect_time=self.started,
        )
        record.firewall = self._matched
        extra = record.extra
        extra["ClientCountry"] = self._country
        extra["ClientAsn"] = self._asn
        if named:
            extra["IpFirewall"] = app.ip_firewall
            extra["ProxyProtocol"] = app.proxy_protocol
        if self.upstream is not None:
            extra["UpstreamIP"], extra["UpstreamPort"] = self.upstream
        if self.fields:
            extra.update(self.fields)
        if self.sniffed is not None:
            extra["ClientSniffedProtocol"], extra["ClientSniffedHostname"] = self.sniffed
        return record

    # the end --------------------------------------------------------------------

    def refuse(self, status: int, reason: str, kind: str = CLIENT_FILTERED, rule: str = "") -> None:
        """
        End a connection that never reached the relay: counted always, a
        whole record only within the refusals' sampling.
        """
        if self.phase == CLOSED:
            return
        self.phase = CLOSED
        self._release()
        runtime = self.runtime
        refusals = runtime.refusals
        name = runtime.app.name if self.named else ""
        if refusals.wants_record(name):
            self._record_refusal(kind, status, reason, rule)
        else:
            refusals.count(name, kind, status, rule, self.client_ip, self._country)
        if self._counted:
            runtime.closed(self)

    def _record_refusal(self, kind: str, status: int, reason: str, rule: str) -> None:
        runtime = self.runtime
        record = self.make_record()
        record.status = status
        record.reason = reason
        record.disconnect_time = runtime.reactor.seconds()
        runtime.refusals.record(kind, record, rule)

    def refuse_with(self, refusal: Refusal) -> None:
        """
        End the connection with an admission refusal.
        """
        self.refuse(refusal.status, refusal.reason, CLIENT_FILTERED, refusal.rule)

    def finish(self, kind: str, status: int, reason: str, client_bytes: int, origin_bytes: int) -> None:
        """
        End a connection that reached the dialing stage: the whole record,
        always.
        """
        if self.phase == CLOSED:
            return
        self.phase = CLOSED
        self._release()
        runtime = self.runtime
        record = self.make_record()
        record.client_bytes = client_bytes
        record.origin_bytes = origin_bytes
        record.status = status
        record.reason = reason
        record.disconnect_time = runtime.reactor.seconds()
        runtime.recorders(kind, record)
        if self._counted:
            runtime.closed(self)

    def _release(self) -> None:
        tickets, self._tickets = self._tickets, []
        for ticket in tickets:
            ticket.release()
        self.leg = None


def refuse_at_accept(
    runtime: Any, named: bool, client: Tuple[str, int], edge: Tuple[str, int], refusal: Refusal
) -> None:
    """
    Count (and, within the sampling, record) a client refused before any
    connection state was made for it.
    """
    refusals = runtime.refusals
    name = runtime.app.name if named else ""
    if refusals.wants_record(name):
        connection = Connection(runtime, client[0], client[1], edge[0], edge[1], runtime.reactor.seconds(), named)
        connection._note(refusal)
        connection.phase = CLOSED
        connection._record_refusal(CLIENT_FILTERED, refusal.status, refusal.reason, refusal.rule)
    else:
        refusals.count(name, CLIENT_FILTERED, refusal.status, refusal.rule, client[0], refusal.country)
