"""
The probe kinds: each is a function C{(reactor, origin, port, monitor) ->
Deferred} that fires with a short description when the origin answers as
the monitor expects, and fails otherwise (L{ProbeError} when it answered
otherwise). L{PROBES} maps a monitor's C{type} to its probe.

C{tcp} (connect; with C{send}/C{expect}, a dialogue), C{tls} (handshake,
verified unless C{allow_insecure}), C{http}/C{https} (treq), C{smtp}
(greeting 220, HELO 250, QUIT 221), C{udp} (send, expect a reply).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import socket
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from spectrum.model import Monitor, Origin

#: The most of an answer kept to match C{expect} against.
MAX_ANSWER = 64 * 1024

#: A probe: (reactor, origin, port, monitor, address) -> Deferred that fires
#: (with a short description) when the origin is healthy and fails
#: otherwise. C{address} is the IP address to probe (the checker resolves an
#: origin given by name); the origin's name stays what TLS verifies and what
#: HTTP sends as its Host.
Probe = Callable[[Any, Origin, int, Monitor, str], "Deferred[Optional[str]]"]


class ProbeError(Exception):
    """
    The origin answered, but not as the monitor expects; C{str()} is one line.
    """


def describe(reason: Failure) -> str:
    """
    A probe's failure as the one line kept in status and events.
    """
    if reason.check(DeferredTimeout, ierror.TimeoutError, CancelledError):
        return "timed out"
    inner = getattr(reason.value, "reasons", None)
    if isinstance(inner, list) and inner and all(isinstance(r, Failure) for r in inner):
        # twisted.web's ResponseFailed and ResponseNeverReceived wrap the causes.
        return "; ".join(describe(r) for r in inner)
    text = reason.getErrorMessage()
    return " ".join(text.split()) or getattr(reason.type, "__name__", "error")


_RESET = struct.pack("ii", 1, 0)
# Created non-blocking in one system call where the platform allows.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM = socket.SOCK_STREAM | _NONBLOCK


@implementer(IWriteDescriptor)
class _Connect:
    """
    A TCP connect and nothing else, on a bare non-blocking socket: a fraction
    of a transport's cost, which matters at a thousand probes a second.
    """

    def __init__(self, reactor: Any, address: str, port: int) -> None:
        self.reactor = reactor
        self.result: Deferred[Optional[str]] = Deferred(self._cancel)
        self.watching = False
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock: Optional[socket.socket] = socket.socket(family, _STREAM)
        if not _NONBLOCK:
            self.sock.setblocking(False)
        code = self.sock.connect_ex((address, port))
        if code == errno.EINPROGRESS:
            # A near origin (loopback, same host) often answers within the
            # connect call itself: then the reactor need not watch at all.
            # Asking again says EISCONN, the error, or EALREADY (in progress).
            code = self.sock.connect_ex((address, port))
            if code == errno.EISCONN:
                code = 0
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self.watching = True
            reactor.addWriter(self)
        else:
            self._finish(code)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "HealthProbe"

    def doWrite(self) -> None:
        assert self.sock is not None
        self._finish(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a refused connect as a hang-up: the socket knows why.
        if self.sock is not None and not self.result.called:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._finish(code)
                return
        self._close()
        if not self.result.called:
            self.result.errback(reason)

    def _close(self) -> None:
        if self.watching:
            self.watching = False
            self.reactor.removeWriter(self)
        if self.sock is not None:
            # Close with a reset, as HAProxy's checks do: no FIN exchange and
            # no TIME_WAIT socket left behind per probe.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self.sock.close()
            self.sock = None

    def _finish(self, code: int) -> None:
        self._close()
        if code:
            self.result.errback(ierror.getConnectError((code, os.strerror(code))))
        else:
            self.result.callback("connected")

    def _cancel(self, d: Deferred) -> None:
        self._close()


@functools.lru_cache(maxsize=4096)
def is_literal(address: str) -> bool:
    """
    Whether C{address} is an IP address (not a name to resolve).
    """
    return isIPAddress(address) or isIPv6Address(address)


def _endpoint(reactor: Any, address: str, port: int, timeout: float) -> Any:
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

    if isIPv6Address(address):
        return TCP6ClientEndpoint(reactor, address, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, address, port, timeout=timeout)


class _Answer:
    """
    Matches an answer, as it arrives, against C{expect} or C{expect_regex}.
    """

    def __init__(self, expect: Optional[bytes], regex: Optional[bytes]) -> None:
        self.expect = expect
        self.pattern = re.compile(regex) if regex is not None else None
        self.buffer = b""

    @property
    def wanted(self) -> bool:
        return self.expect is not None or self.pattern is not None

    def feed(self, data: bytes) -> bool:
        """
        Add C{data}; whether the answer so far matches.
        """
        if len(self.buffer) < MAX_ANSWER:
            self.buffer = (self.buffer + data)[:MAX_ANSWER]
        if self.pattern is not None:
            return self.pattern.search(self.buffer) is not None
        return self.expect is not None and self.expect in self.buffer

    def mismatch(self) -> ProbeError:
        want = self.pattern.pattern if self.pattern is not None else self.expect
        return ProbeError(f"expected {want!r}, got {self.buffer[:80]!r}")


@implementer(IHandshakeListener)
class StreamProbe(Protocol):
    """
    One probe's dialogue on a stream: wait for the TLS handshake (when
    C{tls}), write C{send}, read until the answer matches. C{result} fires
    with a description on success and fails with the reason otherwise.
    """

    transport: Any

    def __init__(self, send: Optional[bytes], answer: _Answer, tls: bool = False) -> None:
        self.send = send
        self.answer = answer
        self.tls = tls
        self.result: Deferred[Optional[str]] = Deferred()

    def connectionMade(self) -> None:
        if not self.tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        if self.send:
            self.transport.write(self.send)
        if not self.answer.wanted:
            self._succeed("handshake done" if self.tls else "connected")

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        if self.answer.feed(data):
            self._succeed("answer matched")

    def _succeed(self, detail: str) -> None:
        if not self.result.called:
            self.result.callback(detail)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.result.called:
            return
        if reason.check(ierror.ConnectionDone) and self.answer.wanted:
            self.result.errback(self.answer.mismatch())
        elif reason.check(ierror.ConnectionDone):
            self.result.errback(ProbeError("closed before the TLS handshake"))
        else:
            self.result.errback(reason)


def _run_stream(reactor: Any, endpoint: Any, protocol: Any) -> Deferred:
    """
    Connect C{protocol} through C{endpoint}; its C{result}, cancellable at
    any stage (the connect, or the open connection).
    """
    from twisted.internet.endpoints import connectProtocol

    connecting = connectProtocol(endpoint, protocol)

    def cancel(d: Deferred) -> None:
        if not connecting.called:
            connecting.cancel()
        elif protocol.transport is not None:
            protocol.transport.abortConnection()

    result: Deferred[Optional[str]] = Deferred(cancel)

    def connect_failed(reason: Failure) -> None:
        if not result.called:
            result.errback(reason)

    connecting.addErrback(connect_failed)

    def finished(value: Any) -> None:
        if not result.called:
            if isinstance(value, Failure):
                result.errback(value)
            else:
                result.callback(value)

    protocol.result.addBoth(finished)
    return result


def _tls_creator(monitor: Monitor, hostname: str) -> Any:
    from twisted.internet import ssl

    if monitor.allow_insecure:
        return _InsecureCreator(hostname)
    trust: Any = None
    if monitor.ca is not None:
        with open(monitor.ca, "rb") as f:
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())],
            )
    return ssl.optionsForClientTLS(hostname, trustRoot=trust)


def _pem_blocks(data: bytes) -> List[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


@implementer(IOpenSSLClientConnectionCreator, IPolicyForHTTPS)
class _InsecureCreator:
    """
    A TLS client that sends SNI and verifies nothing (C{allow_insecure}).
    """

    def __init__(self, hostname: str) -> None:
        from OpenSSL import SSL

        self.hostname = hostname
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_verify(SSL.VERIFY_NONE, lambda *args: True)

    def clientConnectionForTLS(self, protocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self.context, None)
        if not (isIPAddress(self.hostname) or isIPv6Address(self.hostname)):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        return connection

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self


def _host_header(monitor: Monitor) -> Optional[str]:
    for name, values in monitor.header:
        if name.lower() == "host" and values:
            return values[0]
    return None


def probe_tcp(reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
    """
    Connect; with C{send}/C{expect}, hold a dialogue.
    """
    if monitor.send is None and monitor.expect is None and monitor.expect_regex is None:
        return _Connect(reactor, address, port).result
    answer = _Answer(monitor.expect, monitor.expect_regex)
    endpoint = _endpoint(reactor, address, port, monitor.timeout)
    return _run_stream(reactor, endpoint, StreamProbe(monitor.send, answer))


def probe_tls(reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
    """
    A TLS handshake (verified against C{ca} or the system's CAs unless
    C{allow_insecure}); then C{send}/C{expect} when given.
    """
    from twisted.internet.endpoints import wrapClientTLS

    endpoint = wrapClientTLS(
        _tls_creator(monitor, origin.address),
        _endpoint(reactor, address, port, monitor.timeout),
    )
    return _run_stream(
        reactor, endpoint, StreamProbe(monitor.send, _Answer(monitor.expect, monitor.expect_regex), tls=True)
    )


def parse_smtp(buffer: bytes) -> Tuple[List[Tuple[int, str]], bytes]:
    """
    Complete SMTP replies in C{buffer} (multi-line ones joined), and what is
    left over. Pure.

    @raise ProbeError: a line that is not an SMTP reply.
    """
    replies: List[Tuple[int, str]] = []
    lines: List[str] = []
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
            raise ProbeError(f"not an SMTP reply: {text[:80]!r}")
        lines.append(text[4:])
        if len(text) == 3 or text[3] == " ":
            replies.append((int(text[:3]), " ".join(lines)))
            lines = []
    return replies, buffer


class SMTPProbe(Protocol):
    """
    Greeting 220, C{HELO} 250, C{QUIT} 221.
    """

    transport: Any
    STEPS = ((220, b"HELO spectrum-health\r\n"), (250, b"QUIT\r\n"), (221, None))

    def __init__(self) -> None:
        self.result: Deferred[Optional[str]] = Deferred()
        self.buffer = b""
        self.step = 0

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            replies, self.buffer = parse_smtp(self.buffer + data)
            if len(self.buffer) > MAX_ANSWER:
                raise ProbeError("SMTP reply line too long")
            for code, text in replies:
                want, then = self.STEPS[self.step]
                if code != want:
                    raise ProbeError(f"expected {want}, got {code} {text[:80]}")
                self.step += 1
                if then is None:
                    self.result.callback(f"{code} {text[:40]}")
                    self.transport.loseConnection()
                    return
                self.transport.write(then)
        except ProbeError:
            self.result.errback()
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.result.called:
            if reason.check(ierror.ConnectionDone):
                reason = Failure(ProbeError(f"closed after {self.step} of 3 SMTP replies"))
            self.result.errback(reason)


def probe_smtp(reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
    """
    An SMTP greeting, HELO and QUIT.
    """
    return _run_stream(reactor, _endpoint(reactor, address, port, monitor.timeout), SMTPProbe())


@implementer(IReadDescriptor)
class _Datagram:
    """
    Send one datagram from a connected UDP socket and wait for a reply that
    matches; an ICMP port unreachable (ECONNREFUSED on the socket) fails at
    once. A bare socket: Twisted's UDP port stops listening on that error.
    """

    def __init__(self, reactor: Any, address: str, port: int, send: bytes, answer: _Answer) -> None:
        self.reactor = reactor
        self.answer = answer
        self.result: Deferred[Optional[str]] = Deferred(lambda d: self._close())
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock: Optional[socket.socket] = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.reading = False
        try:
            self.sock.connect((address, port))
            self.sock.send(send)
        except OSError as e:
            self._fail(e.errno)
            return
        self.reading = True
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "HealthProbe"

    def doRead(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(e.errno)
                return
            if self.answer.feed(data):
                self._close()
                self.result.callback("answer matched")
                return

    def connectionLost(self, reason: Failure) -> None:
        if self.sock is not None and not self.result.called:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(code)
                return
        self._close()
        if not self.result.called:
            self.result.errback(reason)

    def _fail(self, code: Optional[int]) -> None:
        self._close()
        if code == errno.ECONNREFUSED:
            error: Exception = ProbeError("port unreachable")
        else:
            error = ProbeError(os.strerror(code) if code else "socket error")
        self.result.errback(error)

    def _close(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def probe_udp(reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
    """
    Send C{send}; the reply must match C{expect} or C{expect_regex}.
    """
    answer = _Answer(monitor.expect, monitor.expect_regex)
    return _Datagram(reactor, address, port, monitor.send or b"", answer).result


def _codes(expected: str) -> Callable[[int], bool]:
    singles = set()
    hundreds = set()
    for part in expected.split(","):
        part = part.strip()
        if part.endswith("xx"):
            hundreds.add(int(part[0]))
        else:
            singles.add(int(part))
    return lambda code: code in singles or code // 100 in hundreds


def _quiet_pool(reactor: Any) -> Any:
    """
    A pool without keep-alive whose connection factories do not log their
    start and stop (one pair per probe otherwise).
    """
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

    class _QuietFactory(_HTTP11ClientFactory):
        noisy = False

    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietFactory
    return pool


def probe_http(reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
    """
    An HTTP(S) request through treq: the status must be one of
    C{expected_codes}, the body must contain C{expected_body} (any case).
    """
    import treq
    from twisted.web.client import Agent

    # The URL names the origin (its Host header); the connection goes to the address.
    host = f"[{origin.address}]" if isIPv6Address(origin.address) else origin.address
    url = f"{monitor.type}://{host}:{port}{monitor.path}"
    policy = None
    if monitor.type == "https":
        policy = _tls_creator(monitor, _host_header(monitor) or origin.address)
        if not monitor.allow_insecure:
            policy = _FixedPolicy(policy)
    connect = _ToAddress(reactor, address, monitor.timeout, policy)
    agent = Agent.usingEndpointFactory(reactor, connect, pool=_quiet_pool(reactor))
    client = treq.client.HTTPClient(agent)
    headers: Dict[Any, Any] = {name: list(values) for name, values in monitor.header}
    headers.setdefault("User-Agent", ["spectrum-health"])
    accept = _codes(monitor.expected_codes)
    d = client.request(monitor.method, url, headers=headers)

    def got(response: Any) -> Any:
        if monitor.method == "HEAD" or (monitor.expected_body is None and not accept(response.code)):
            # Nothing more to learn: do not wait for a body.
            check(response, b"")
            response.deliverBody(Protocol())
            return f"HTTP {response.code}"
        chunks: List[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            if size[0] < MAX_ANSWER:
                chunks.append(data)
                size[0] += len(data)

        return treq.collect(response, collect).addCallback(lambda _: check(response, b"".join(chunks)))

    def check(response: Any, body: bytes) -> str:
        if not accept(response.code):
            raise ProbeError(f"HTTP {response.code}, expected {monitor.expected_codes}")
        if monitor.expected_body is not None and monitor.method != "HEAD":
            if monitor.expected_body.lower() not in body.decode("utf-8", "replace").lower():
                raise ProbeError(f"HTTP {response.code}, body lacks {monitor.expected_body!r}")
        return f"HTTP {response.code}"

    return d.addCallback(got)


@implementer(IAgentEndpointFactory)
class _ToAddress:
    """
    An HTTP agent's connections, all to one IP address whatever the URL
    names (TLS through C{policy} for https).
    """

    def __init__(self, reactor: Any, address: str, timeout: float, policy: Any) -> None:
        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        self.policy = policy

    def endpointForURI(self, uri: Any) -> Any:
        endpoint = _endpoint(self.reactor, self.address, uri.port, self.timeout)
        if self.policy is not None:
            from twisted.internet.endpoints import wrapClientTLS

            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


@implementer(IPolicyForHTTPS)
class _FixedPolicy:
    """
    An HTTPS policy that uses one client TLS options object (verifying the
    configured name) whatever the URL's host.
    """

    def __init__(self, options: Any) -> None:
        self.options = options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.options


PROBES: Dict[str, Probe] = {
    "tcp": probe_tcp,
    "tls": probe_tls,
    "http": probe_http,
    "https": probe_http,
    "smtp": probe_smtp,
    "udp": probe_udp,
}
