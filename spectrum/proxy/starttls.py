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
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from twisted.internet import error as ierror
from twisted.python.failure import Failure

from spectrum import status as S
from spectrum.proxy.lifecycle import HELLO, Connection
from spectrum.proxy.router import HandshakeGate, _Gate, base_fields
from spectrum.proxy.tcp import EdgeProtocol
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


class PostgresGate(_Gate):
    """
    The protocol of a C{starttls: postgres} connection until it asks for
    TLS (then the edge handshake takes its place) or starts without it.
    """

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
        self._refuse(S.CLIENT_TLS_FAILED, "no PostgreSQL SSLRequest before the handshake timeout")

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
            self._refuse(S.CLIENT_TLS_FAILED, "client closed before asking for TLS")

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
            self._cancel_timer()
            factory = self.app_tls.server_factory
            gate = HandshakeGate(self.connection, self.app_tls, self.deadline)
            self._hand_over(factory.protocol(factory, gate), bytes(held))
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
        self.connection.preface = bytes(held)
        self._hand_over(EdgeProtocol(self.connection))
