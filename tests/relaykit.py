"""
In-process pieces for relay tests: origins and clients on real loopback
sockets, and a SpectrumService built straight from model objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from spectrum.model import App, Config, Origin, Pool, PortMapping, PortRange, Timeouts
from spectrum.service import SpectrumService

from conftest import free_port


def make_app(
    name: str,
    origins: Sequence[Origin],
    edge_port: Optional[int] = None,
    edge_last: Optional[int] = None,
    origin_first: Optional[int] = None,
    load_balancing: str = "round_robin",
    ips: Sequence[str] = ("127.0.0.1",),
    timeouts: Timeouts = Timeouts(connect=2.0),
    origin_tries: int = 3,
) -> App:
    if edge_port is None:
        edge_port = free_port(ips[0])
    last = edge_port if edge_last is None else edge_last
    origin_range = None
    if origin_first is not None:
        origin_range = PortRange(origin_first, origin_first + (last - edge_port))
    return App(
        name=name,
        protocol="tcp",
        ips=tuple(ips),
        ports=(PortMapping(PortRange(edge_port, last), origin_range),),
        pool=Pool(name=name, origins=tuple(origins), load_balancing=load_balancing),
        timeouts=timeouts,
        origin_tries=origin_tries,
        id=name,
    )


class Proxy:
    """
    A started SpectrumService and the events it recorded.
    """

    def __init__(self, *apps: App, drain_timeout: float = 5.0) -> None:
        self.service = SpectrumService(Config(apps=apps), reactor=reactor, drain_timeout=drain_timeout)
        self.events: List[tuple] = []
        self.service.recorders.add(lambda kind, record: self.events.append((kind, record.as_event(kind))))
        self.service.startService()

    def port(self, app_name: str = "", index: int = 0) -> int:
        listeners = [
            listener
            for listener in self.service.listeners.values()
            if not app_name or any(runtime.app.name == app_name for runtime in listener.runtimes)
        ]
        return listeners[index].bound_port()

    def stop(self) -> defer.Deferred:
        return defer.ensureDeferred(_as_coroutine(self.service.stopService()))

    def kinds(self) -> List[str]:
        return [kind for kind, _ in self.events]


async def _as_coroutine(d: Any) -> Any:
    return await d


@implementer(IHalfCloseableProtocol)
class OriginServer(protocol.Protocol):
    """
    An origin: echoes, or answers with a fixed reply after the client's EOF,
    and keeps what it received.
    """

    def connectionMade(self) -> None:
        self.factory.accepted += 1
        self.factory.connections.append(self)
        self.received = bytearray()
        greeting = self.factory.greeting
        if greeting is not None:
            self.transport.write(greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.factory.echo:
            self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.factory.eofs += 1
        if self.factory.reply_after_eof is not None:
            self.transport.write(self.factory.reply_after_eof)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed.append(bytes(self.received))


class OriginFactory(protocol.Factory):
    protocol = OriginServer
    noisy = False

    def __init__(
        self, echo: bool = True, greeting: Optional[bytes] = None, reply_after_eof: Optional[bytes] = None
    ) -> None:
        self.echo = echo
        self.greeting = greeting
        self.reply_after_eof = reply_after_eof
        self.accepted = 0
        self.eofs = 0
        self.connections: List[OriginServer] = []
        self.closed: List[bytes] = []


def listen_origin(factory: OriginFactory, port: int = 0, host: str = "127.0.0.1") -> Any:
    return reactor.listenTCP(port, factory, interface=host)


@implementer(IHalfCloseableProtocol)
class Client(protocol.Protocol):
    """
    A client that collects what it receives; C{done} fires with it when the
    connection is closed.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.done: defer.Deferred = defer.Deferred()
        self.ready: defer.Deferred = defer.Deferred()
        self.eof = False

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(bytes(self.received))


async def connect_client(port: int, host: str = "127.0.0.1", bind: Optional[str] = None) -> Client:
    client = Client()
    factory = protocol.ClientFactory.forProtocol(lambda: client)
    reactor.connectTCP(host, port, factory, bindAddress=(bind, 0) if bind else None)
    await client.ready
    return client


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sleep(seconds: float) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(_sleep(seconds))


async def _sleep(seconds: float) -> None:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


@contextlib.contextmanager
def black_hole() -> Iterator[Tuple[str, int]]:
    """
    The address of a listening socket whose accept queue is full: a connect
    to it is never answered (the kernel drops the handshake), so it stays in
    progress until it times out.
    """
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listening.getsockname())
            fillers.append(s)
        yield listening.getsockname()
    finally:
        for s in fillers:
            s.close()
        listening.close()
