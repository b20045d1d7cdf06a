"""
The SNI gate of L{spectrum.proxy.router} without sockets: a Clock drives the
ClientHello timeout, a StringTransport shows what the client sees.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from spectrum import status as S
from spectrum.model import App, Origin, Pool, PortMapping, PortRange, Timeouts
from spectrum.proxy.port import PortFactory
from spectrum.proxy.router import SniGate
from spectrum.proxy.tls import EdgeTls
from spectrum.record import Recorders
from spectrum.runtime import AppRuntime

from tlskit import client_hello


def shared_port(handshake: float = 3.0) -> Tuple[PortFactory, MemoryReactorClock, List[Tuple[str, Any]]]:
    reactor = MemoryReactorClock()
    recorders = Recorders()
    events: List[Tuple[str, Any]] = []
    recorders.add(lambda kind, record: events.append((kind, record.as_event(kind))))
    runtimes = []
    for name in ("a", "b"):
        app = App(
            name=name,
            protocol="tcp",
            ips=("127.0.0.1",),
            ports=(PortMapping(PortRange(8443, 8443)),),
            pool=Pool(name=name, origins=(Origin(name="o", address="127.0.0.1", port=9000),)),
            hostnames=(f"{name}.example",),
            timeouts=Timeouts(handshake=handshake),
            id=name,
        )
        runtimes.append(AppRuntime(app, recorders, reactor))
    return PortFactory(runtimes, EdgeTls(reactor)), reactor, events


def connect(factory: PortFactory) -> Tuple[Any, StringTransport]:
    gate = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert isinstance(gate, SniGate)
    transport = StringTransport()
    gate.makeConnection(transport)
    return gate, transport


def test_half_client_hello_closed_at_the_timeout() -> None:
    factory, reactor, events = shared_port(handshake=3.0)
    gate, transport = connect(factory)
    hello = client_hello("a.example")
    gate.dataReceived(hello[:100])
    reactor.advance(2.9)
    assert not transport.disconnecting
    reactor.advance(0.2)
    assert transport.disconnecting
    assert transport.value() == b""
    ((kind, event),) = events
    assert kind == "tlsError" and event["Status"] == S.INVALID_SNI
    assert event["Reason"] == "no complete ClientHello after 3s"
    # Nothing is left open, and no origin was dialled.
    assert not factory.runtime.connections and reactor.tcpClients == []


def test_oversized_client_hello_refused_at_the_bound() -> None:
    factory, reactor, events = shared_port()
    gate, transport = connect(factory)
    record = b"\x16\x03\x01\x40\x00" + b"\x01\xff\xff\xff" + b"\x00" * (16384 - 4)
    gate.dataReceived(record[:8000])
    assert not transport.disconnecting
    gate.dataReceived(record[8000:])
    assert transport.disconnecting
    ((kind, event),) = events
    assert event["Status"] == S.INVALID_SNI
    assert "over the 16384 byte bound" in event["Reason"]
    assert reactor.getDelayedCalls() == []


def test_known_name_dials_that_apps_origin_and_holds_the_hello() -> None:
    factory, reactor, events = shared_port()
    gate, transport = connect(factory)
    hello = client_hello("b.example")
    gate.dataReceived(hello)
    ((host, port, *_),) = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 9000)
    b = next(r for r in factory.runtimes if r.app.name == "b")
    (connection,) = b.connections
    edge = connection.leg
    # The gate stepped aside: app b's relay owns the transport, reads
    # nothing until its origin answers, and holds the ClientHello for it.
    assert transport.protocol is edge
    assert transport.producerState == "paused"
    assert edge._held == [hello]
    assert edge.record.extra["ClientTlsClientHelloServerName"] == "b.example"
    assert events == []
    # The handshake timer was cancelled when the name was known.
    assert reactor.getDelayedCalls() == []
