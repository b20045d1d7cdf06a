"""
TLS for PostgreSQL clients in front of a plaintext server (C{tls:
flexible} with C{starttls: postgres}).

A PostgreSQL client asks for TLS in the clear first: an 8-byte SSLRequest,
answered with C{S} (yes) or C{N}; the TLS handshake follows on the same
connection, then the startup message inside it. L{PostgresGate} answers
the SSLRequest itself (C{N} to a GSSAPI encryption request, which comes
first), hands the connection to the edge TLS handshake with the app's
certificate, and the relay then speaks plaintext to the origin, which sees
the startup message as its first bytes. A client opening with TLS at once
(PostgreSQL 17's C{sslnegotiation=direct}) goes straight to the handshake.
A client that starts without TLS gets a PostgreSQL error (and its startup
message never reaches the origin) unless the app allows plaintext.

L{first_message} is the pure, bounded parser of the client's first
message.

SMTP submission (C{starttls: smtp}): L{SmtpGate} greets the client itself,
answers EHLO (offering STARTTLS), HELO, NOOP, RSET and QUIT, refuses
anything else until STARTTLS, then hands over to the edge handshake. The
client says EHLO again inside TLS; the relay (L{SmtpEdge}) reads the
origin's own greeting away before it joins the legs, so the origin sees
that EHLO as its first command. L{command_line} and L{greeting_end} are
the pure, bounded parsers of both sides' lines.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import error as ierror
from twisted.python.failure import Failure

from spectrum import status as S
from spectrum.proxy.lifecycle import HELLO, Connection
from spectrum.proxy.router import HandshakeGate, RoutedEdge, _Gate, base_fields
from spectrum.proxy.tcp import EdgeProtocol, OriginProtocol, _OriginFactory
from spectrum.record import TLS_ERROR

SSL_REQUEST = "ssl"
GSSENC_REQUEST = "gssenc"
CANCEL = "cancel"
STARTUP = "startup"
DIRECT_TLS = "tls"

_SSL_CODE = 80877103
_GSSENC_CODE = 80877104
_CANCEL_CODE = 80877102
#: the largest first message accepted (the server's own limit is 10000)
MAX_STARTUP = 10000


class NotPostgres(ValueError):
    """
    The bytes are not how a PostgreSQL client starts.
    """


def first_message(data: bytes) -> Optional[Tuple[str, int]]:
    """
    What the client's first message is (C{ssl}, C{gssenc}, C{cancel},
    C{startup}, or C{tls} for a TLS record at once) and its size; L{None}
    while it is incomplete.

    @raise NotPostgres: it is none of those, or longer than L{MAX_STARTUP}.
    """
    if not data:
        return None
    if data[0] == 0x16:
        return DIRECT_TLS, 0
    if len(data) < 8:
        if data[0] != 0:
            raise NotPostgres(f"first byte 0x{data[0]:02x} starts no PostgreSQL message")
        return None
    length = int.from_bytes(data[:4], "big")
    code = int.from_bytes(data[4:8], "big")
    if not 8 <= length <= MAX_STARTUP:
        raise NotPostgres(f"first message of {length} bytes")
    if code in (_SSL_CODE, _GSSENC_CODE):
        if length != 8:
            raise NotPostgres(f"an encryption request of {length} bytes")
        return (SSL_REQUEST if code == _SSL_CODE else GSSENC_REQUEST), 8
    if code == _CANCEL_CODE:
        kind = CANCEL
    elif code >> 16 == 3:
        kind = STARTUP
    else:
        raise NotPostgres(f"unknown protocol code {code}")
    if len(data) < length:
        return None
    return kind, length


def error_response(message: str, code: str = "28000") -> bytes:
    """
    A PostgreSQL ErrorResponse (FATAL) with C{message}, as a client shows it.
    """
    fields = b""
    for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message)):
        fields += tag + value.encode("utf-8") + b"\0"
    fields += b"\0"
    return b"E" + (len(fields) + 4).to_bytes(4, "big") + fields


class _StartTlsGate(_Gate):
    """
    What both STARTTLS gates share: the handshake deadline (from accept),
    the refusal, and the move to the edge handshake.
    """

    #: the reason recorded when the deadline passes first
    late = ""
    #: what the client is told then
    late_answer = b""
    #: the reason recorded when the client closes first
    gone = ""

    def __init__(self, connection: Connection, app_tls: Any) -> None:
        self.connection = connection
        connection.leg = self
        connection.phase = HELLO
        self.app_tls = app_tls
        self.reactor = connection.runtime.reactor
        self.deadline: Optional[float] = None
        self._held = bytearray()
        self._closed = False

    def connectionMade(self) -> None:
        timeout = self.connection.runtime.app.timeouts.handshake
        if timeout:
            self.deadline = self.connection.started + timeout
            self._timer = self.reactor.callLater(max(0.0, self.deadline - self.reactor.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._refuse(S.CLIENT_TLS_FAILED, self.late, self.late_answer)

    def abort(self, status: int, reason: str, graceful: bool = False) -> None:
        self._refuse(status, reason)

    def _refuse(self, status: int, reason: str, answer: bytes = b"") -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self.connection.fields = base_fields(self.connection.runtime.app)
        self.connection.refuse(status, reason, TLS_ERROR)
        if answer:
            self.transport.write(answer)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self._handed_over:
            self._refuse(S.CLIENT_TLS_FAILED, self.gone)

    def _start_tls(self, early: bytes, relay: Any = None) -> None:
        """
        Hand the connection to the edge handshake, with the bytes the
        client sent after its request for TLS.
        """
        self._cancel_timer()
        factory = self.app_tls.server_factory
        gate = HandshakeGate(self.connection, self.app_tls, self.deadline, relay)
        self._hand_over(factory.protocol(factory, gate), early)


class PostgresGate(_StartTlsGate):
    """
    The protocol of a C{starttls: postgres} connection until it asks for
    TLS (then the edge handshake takes its place) or starts without it.
    """

    late = "no PostgreSQL SSLRequest before the handshake timeout"
    gone = "client closed before asking for TLS"

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        held = self._held
        held += data
        while True:
            try:
                found = first_message(bytes(held[:MAX_STARTUP]))
            except NotPostgres as e:
                self._refuse(S.CLIENT_TLS_FAILED, f"not a PostgreSQL client: {e}")
                return
            if found is None:
                return
            kind, size = found
            if kind == GSSENC_REQUEST:
                # No GSSAPI encryption here; the client asks for TLS next.
                del held[:size]
                self.transport.write(b"N")
                continue
            break
        if kind in (SSL_REQUEST, DIRECT_TLS):
            del held[:size]
            if kind == SSL_REQUEST:
                self.transport.write(b"S")
            self._start_tls(bytes(held))
            return
        app = self.connection.runtime.app
        if kind == STARTUP and not app.allow_plaintext:
            self._refuse(
                S.CLIENT_TLS_FAILED,
                "PostgreSQL client did not ask for TLS",
                error_response("this server requires TLS (sslmode=require)"),
            )
            return
        # A cancel request (never encrypted by older clients), or plaintext
        # the app allows: relayed as it came.
        self._cancel_timer()
        connection = self.connection
        connection.fields = base_fields(app)
        connection.preface = bytes(held)
        self._hand_over(EdgeProtocol(connection))


# SMTP -------------------------------------------------------------------------

#: RFC 5321's longest command line, CRLF included
MAX_COMMAND = 512
#: commands a client may send before STARTTLS
MAX_COMMANDS = 10
#: bytes the origin's greeting may take
MAX_GREETING = 4096


class NotSmtp(ValueError):
    """
    The bytes break the SMTP exchange the edge holds.
    """


def command_line(data: bytes) -> Optional[Tuple[str, str, int]]:
    """
    The first command line in C{data}: its verb (upper case), its argument
    and its size with the line end; L{None} while incomplete.

    @raise NotSmtp: the line is longer than L{MAX_COMMAND}.
    """
    end = data.find(b"\n", 0, MAX_COMMAND)
    if end < 0:
        if len(data) >= MAX_COMMAND:
            raise NotSmtp(f"a command line longer than {MAX_COMMAND} bytes")
        return None
    line = data[:end].rstrip(b"\r").decode("ascii", "replace")
    verb, _, argument = line.partition(" ")
    return verb.upper(), argument.strip(), end + 1


def greeting_end(data: bytes) -> Optional[int]:
    """
    Where the origin's greeting (a 220 reply, perhaps of several lines)
    ends in C{data}; L{None} while incomplete.

    @raise NotSmtp: it is not a 220 reply, or longer than L{MAX_GREETING}.
    """
    pos = 0
    while True:
        end = data.find(b"\n", pos, MAX_GREETING)
        if end < 0:
            if len(data) >= MAX_GREETING:
                raise NotSmtp(f"no greeting in the first {MAX_GREETING} bytes")
            return None
        line = data[pos:end]
        if line[:3] != b"220":
            raise NotSmtp("the origin greeted with " + repr(line[:40].decode("ascii", "replace")))
        if line[3:4] != b"-":
            return end + 1
        pos = end + 1


class SmtpGate(_StartTlsGate):
    """
    The protocol of a C{starttls: smtp} connection until its STARTTLS.
    """

    late = "no STARTTLS before the handshake timeout"
    late_answer = b"421 4.7.0 Timeout waiting for STARTTLS\r\n"
    gone = "client closed before STARTTLS"

    def __init__(self, connection: Connection, app_tls: Any) -> None:
        super().__init__(connection, app_tls)
        self.name = connection.runtime.app.dns_name or "spectrum"
        self._commands = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(f"220 {self.name} ESMTP\r\n".encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        held = self._held
        held += data
        answers: List[bytes] = []
        while True:
            try:
                found = command_line(bytes(held[:MAX_COMMAND]))
            except NotSmtp as e:
                self._refuse(S.CLIENT_TLS_FAILED, str(e), b"500 5.5.2 Line too long\r\n")
                return
            if found is None:
                break
            verb, argument, size = found
            del held[:size]
            self._commands += 1
            if verb == "STARTTLS":
                self.transport.write(b"".join(answers) + b"220 2.0.0 Ready to start TLS\r\n")
                self._start_tls(bytes(held), SmtpEdge)
                return
            if verb == "QUIT":
                self._refuse(
                    S.CLIENT_TLS_FAILED, "client quit before STARTTLS", b"".join(answers) + b"221 2.0.0 Bye\r\n"
                )
                return
            if self._commands > MAX_COMMANDS:
                answer = b"".join(answers) + b"421 4.7.0 Too many commands\r\n"
                self._refuse(S.CLIENT_TLS_FAILED, f"no STARTTLS after {MAX_COMMANDS} commands", answer)
                return
            if verb == "EHLO":
                answers.append(f"250-{self.name}\r\n250-PIPELINING\r\n250 STARTTLS\r\n".encode("ascii"))
            elif verb == "HELO":
                answers.append(f"250 {self.name}\r\n".encode("ascii"))
            elif verb in ("NOOP", "RSET"):
                answers.append(b"250 2.0.0 OK\r\n")
            else:
                answers.append(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        if answers:
            self.transport.write(b"".join(answers))


class GreetedOrigin(OriginProtocol):
    """
    An SMTP origin leg: joins the relay once the origin's greeting has
    been read (and dropped: the client had the edge's own).
    """

    def connectionMade(self) -> None:
        self._greeting: Optional[bytearray] = bytearray()
        self._failed = False
        runtime = self.edge.runtime
        wait = runtime.app.timeouts.connect or 10.0
        self._timer = runtime.reactor.callLater(wait, self._late)

    def _late(self) -> None:
        self._timer = None
        if self._greeting is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        greeting = self._greeting
        if greeting is None:
            OriginProtocol.dataReceived(self, data)
            return
        greeting += data
        try:
            end = greeting_end(bytes(greeting))
        except NotSmtp as e:
            self._failed = True
            self.transport.loseConnection()
            self.edge.origin_failed(self.origin, Failure(ierror.ConnectError(string=str(e))))
            return
        if end is None:
            return
        rest = bytes(greeting[end:])
        self._greeting = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        OriginProtocol.connectionMade(self)
        if rest:
            OriginProtocol.dataReceived(self, rest)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._failed:
            return
        if self._greeting is not None:
            self._failed = True
            self.edge.origin_failed(self.origin, Failure(ierror.ConnectError(string="closed before its greeting")))
            return
        OriginProtocol.connectionLost(self, reason)


class _GreetedFactory(_OriginFactory):
    def buildProtocol(self, addr: Any) -> GreetedOrigin:
        return GreetedOrigin(self.edge, self.origin)


class SmtpEdge(RoutedEdge):
    """
    The relay of a C{starttls: smtp} connection after the edge handshake:
    the client's bytes (its EHLO inside TLS) wait for the origin's greeting.
    """

    def origin_factory(self, origin: Any) -> Any:
        return _GreetedFactory(self, origin)
