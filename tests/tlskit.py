"""
Pieces for TLS tests: certificates made by certs/mkcerts.sh, TLS and
plaintext origins on loopback, an edge built from a config mapping, and
real programs (openssl s_client, mosquitto, redis) run without blocking the
reactor.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from spectrum.config import load
from spectrum.service import SpectrumService

from conftest import require_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MKCERTS = os.path.join(ROOT, "certs", "mkcerts.sh")


def make_certs(directory: str) -> str:
    """
    Every certificate the TLS tests use, made with certs/mkcerts.sh into
    C{directory}: CA "ca" (edge, clients, good origins), CA "other"
    (untrusted), CA "originca" (passthrough origins).
    """
    require_program("openssl")

    def mk(*args: str) -> None:
        subprocess.run([MKCERTS, "-d", directory, *args], check=True, capture_output=True)

    mk("server", "localhost", "127.0.0.1", "a.example")
    mk("server", "b.example")
    mk("server", "*.w.example")
    mk("server", "one.example", "localhost", "127.0.0.1")
    mk("server", "two.example", "localhost", "127.0.0.1")
    mk("server", "origin.example", "127.0.0.1")
    mk("server", "wrong.example", "127.0.0.1")
    mk("-c", "other", "server", "origin.example", "127.0.0.1")
    os.rename(os.path.join(directory, "origin.example.crt"), os.path.join(directory, "origin-other.crt"))
    os.rename(os.path.join(directory, "origin.example.key"), os.path.join(directory, "origin-other.key"))
    mk("server", "origin.example", "127.0.0.1")
    mk("-c", "originca", "server", "pa.example")
    mk("-c", "originca", "server", "pb.example")
    mk("client", "bob")
    mk("-c", "other", "client", "mallory")
    return directory


# origins


class Greeter(protocol.Protocol):
    """
    Writes the factory's greeting, echoes the first bytes it gets and then
    closes (so C{s_client -ign_eof} ends), or keeps echoing when the
    factory says C{keep_open}, until a read ends with C{bye}.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        self.factory.protocols.append(getattr(self.transport, "negotiatedProtocol", None))
        self.transport.write(data)
        if not self.factory.keep_open or data.endswith(b"bye"):
            self.transport.loseConnection()


class GreeterFactory(protocol.Factory):
    protocol = Greeter
    noisy = False

    def __init__(self, greeting: bytes = b"", keep_open: bool = False) -> None:
        self.greeting = greeting
        self.keep_open = keep_open
        self.connections: List[Greeter] = []
        self.received: List[bytes] = []
        #: the ALPN protocol of the connection, at each read
        self.protocols: List[Optional[bytes]] = []


def listen_plain(greeting: bytes, keep_open: bool = False) -> Tuple[Any, GreeterFactory]:
    factory = GreeterFactory(greeting, keep_open)
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), factory


def server_options(
    certs: str, base: str, client_ca: Optional[str] = None, alpn: Optional[Sequence[bytes]] = None
) -> Any:
    with open(os.path.join(certs, base + ".crt"), "rb") as f:
        cert = f.read()
    with open(os.path.join(certs, base + ".key"), "rb") as f:
        key = f.read()
    private = ssl.PrivateCertificate.loadPEM(cert + key)
    kwargs: Dict[str, Any] = {}
    if client_ca:
        with open(os.path.join(certs, client_ca + ".crt"), "rb") as f:
            ca = ssl.Certificate.loadPEM(f.read())
        kwargs.update(verify=True, caCerts=[ca.original], requireCertificate=True)
    if alpn:
        kwargs["acceptableProtocols"] = list(alpn)
    return ssl.CertificateOptions(privateKey=private.privateKey.original, certificate=private.original, **kwargs)


def listen_tls(
    certs: str,
    base: str,
    greeting: bytes,
    client_ca: Optional[str] = None,
    alpn: Optional[Sequence[bytes]] = None,
) -> Tuple[Any, GreeterFactory]:
    """
    A TLS origin presenting DIR/BASE.crt that greets with C{greeting}.
    """
    factory = GreeterFactory(greeting)
    wrapped = TLSMemoryBIOFactory(server_options(certs, base, client_ca, alpn), False, factory)
    return reactor.listenTCP(0, wrapped, interface="127.0.0.1"), factory


# the edge


class Edge:
    """
    A started SpectrumService from a config mapping written to a file (so
    relative paths and reloads work), and the events it recorded.
    """

    def __init__(
        self, directory: str, data: Dict[str, Any], name: str = "spectrum.yaml", check_interval: float = 0
    ) -> None:
        self.path = os.path.join(directory, name)
        with open(self.path, "w") as f:
            yaml.safe_dump(data, f)
        self.service = SpectrumService(load(self.path), reactor=reactor, drain_timeout=2.0)
        self.service.certificate_check_interval = check_interval
        self.events: List[Tuple[str, Dict[str, Any]]] = []
        self.service.recorders.add(lambda kind, record: self.events.append((kind, record.as_event(kind))))
        self.service.startService()

    def port(self, app: str = "") -> int:
        for listener in self.service.listeners.values():
            if not app or any(r.app.name == app for r in listener.runtimes):
                return listener.bound_port()
        raise KeyError(app)

    def finished(self) -> List[Dict[str, Any]]:
        """
        Events of connections that ended (any kind but connect).
        """
        return [event for kind, event in self.events if kind != "connect"]

    def stop(self) -> defer.Deferred:
        return defer.ensureDeferred(_await(self.service.stopService()))


async def _await(d: Any) -> Any:
    return await d


# programs


class _Run(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes, close_stdin: bool) -> None:
        self.stdin = stdin
        self.close_stdin = close_stdin
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        if self.close_stdin:
            self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.done.callback((bytes(self.out), bytes(self.err), reason.value.exitCode))


async def run(
    args: Sequence[str], stdin: bytes = b"", close_stdin: bool = True, timeout: float = 20
) -> Tuple[bytes, bytes, int]:
    """
    Run a program without blocking the reactor; (stdout, stderr, status).
    """
    program = require_program(args[0])
    runner = _Run(stdin, close_stdin)
    process = reactor.spawnProcess(runner, program, [program, *args[1:]], env=dict(os.environ))
    killer = reactor.callLater(timeout, process.signalProcess, "KILL")
    try:
        return await runner.done
    finally:
        if killer.active():
            killer.cancel()


async def s_client(port: int, *extra: str, stdin: bytes = b"") -> Tuple[str, int]:
    """
    C{openssl s_client} to the edge; waits for the server to close
    (C{-ign_eof}); its whole output as text, and its exit status.
    """
    out, err, code = await run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *extra],
        stdin=stdin,
    )
    return (out + err).decode("utf-8", "replace"), code


def client_hello(server_name: Optional[str]) -> bytes:
    """
    The ClientHello that OpenSSL sends for C{server_name}, from a memory BIO.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    connection = SSL.Connection(context, None)
    if server_name:
        connection.set_tlsext_host_name(server_name.encode("ascii"))
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)
