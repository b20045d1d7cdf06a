"""
Edge ports shared by protocol without sockets: the first-bytes classifier
and the Minecraft handshake parser (pure), the config checks, and the gate
driven by a Clock with a StringTransport showing what the client sees.
"""

from __future__ import annotations

import json
from typing import Any, List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from spectrum import status as S
from spectrum.admission import Admission
from spectrum.config import ConfigError, parse
from spectrum.model import App, Config, Origin, Pool, PortMapping, PortRange, Timeouts
from spectrum.proxy import sniff
from spectrum.proxy.inbound import HeaderGate
from spectrum.proxy.port import PortFactory
from spectrum.proxy.sniff import HandshakeParser, NotMinecraft, classify
from spectrum.proxy.sniffgate import SniffGate
from spectrum.proxy.starttls import NotPostgres, NotSmtp, command_line, first_message, greeting_end
from spectrum.proxy.tcp import EdgeProtocol
from spectrum.proxy.tls import EdgeTls
from spectrum.record import Recorders
from spectrum.rules import make_rule
from spectrum.runtime import AppRuntime

from tlskit import client_hello


def handshake(address: str, state: int = 1, version: int = 767, port: int = 25565) -> bytes:
    return sniff.packet(
        0, sniff.varint(version) + sniff.string(address) + port.to_bytes(2, "big") + sniff.varint(state)
    )


# the classifier -------------------------------------------------------------


@pytest.mark.parametrize(
    "first, protocol",
    [
        (b"SSH-2.0-OpenSSH_9.2p1\r\n", "ssh"),
        (client_hello("a.example")[:5], "tls"),
        (b"GET / HTTP/1.1\r\n", "http"),
        (b"OPTIONS * HTTP/1.1\r\n", "http"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http"),
        (handshake("a.example")[:3], "minecraft"),
        # 22 bytes long: its first byte is a TLS record's.
        (handshake("a.example\0FML3\0", state=2)[:2], "minecraft"),
        # PostgreSQL's SSLRequest, Redis, MQTT CONNECT, a TLS 0x16 with no
        # version 3: none of those protocols.
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", "any"),
        (b"*1\r\n$4\r\nPING\r\n", "any"),
        (b"\x10\x1a\x00\x04MQTT", "any"),
        (b"\x16\x01", "any"),
        (b"GETX", "any"),
    ],
)
def test_classify(first: bytes, protocol: str) -> None:
    assert classify(first) == protocol


def test_classify_waits_while_a_signature_could_still_match() -> None:
    for partial in (b"", b"S", b"SSH", b"P", b"PU", b"PRI * HTTP/2", b"\x16", b"\x80"):
        assert classify(partial) is None, partial
    # A handshake of 71 bytes starts with 'G', like GET: the id byte tells.
    long = handshake("x" * 64)
    assert long[0] == ord("G") and classify(long[:1]) is None and classify(long[:2]) == "minecraft"


def test_classify_decides_within_its_bound() -> None:
    # Every answer comes by MAX_SNIFF bytes, whatever they are.
    for first in (b"PRI * HTTP/2.0" + b"x" * 10, b"\xff" * 20, b"SSH-" * 5, b"P" * 20):
        assert classify(first[: sniff.MAX_SNIFF]) is not None


# the Minecraft handshake -------------------------------------------------------


def test_handshake_in_pieces() -> None:
    data = handshake("Play.A.Example.", state=2, version=47, port=25570) + b"\x07\x00\x05Steve"
    parser = HandshakeParser()
    result = None
    for i in range(len(data)):
        result = parser.feed(data[i : i + 1])
        if result is not None:
            break
    assert result is not None
    assert (result.hostname, result.address, result.port, result.next_state, result.protocol_version) == (
        "play.a.example",
        "Play.A.Example.",
        25570,
        2,
        47,
    )
    assert result.size == len(handshake("Play.A.Example.", state=2, version=47, port=25570))


def test_forge_suffix_ignored_for_matching() -> None:
    parser = HandshakeParser()
    result = parser.feed(handshake("a.example\0FML3\0"))
    assert result is not None and result.hostname == "a.example" and result.address == "a.example\0FML3\0"


@pytest.mark.parametrize(
    "data, why",
    [
        (sniff.packet(1, b"\x00"), "id 1"),
        (sniff.packet(0, sniff.varint(47) + sniff.string("a") + b"\x00\x01" + sniff.varint(7)), "next state 7"),
        (sniff.packet(0, sniff.varint(47) + b"\x05ab"), "address length"),
        (sniff.packet(0, sniff.varint(47) + sniff.string("a") + b"\x00\x01\x01junk"), "after its fields"),
        (b"\xff\xff\xff\xff\xff\x01", "longer than 5 bytes"),
        (sniff.varint(5000) + b"\x00", "5000 bytes"),
        (sniff.packet(0, sniff.varint(47) + b"\x02\xff\xfe\x00\x01\x01"), "not UTF-8"),
    ],
)
def test_handshake_refused(data: bytes, why: str) -> None:
    with pytest.raises(NotMinecraft, match=why):
        HandshakeParser().feed(data)


def test_handshake_bound() -> None:
    # A declared length over the bound is refused at once; a flood after a
    # packet within it is not kept beyond the bound.
    with pytest.raises(NotMinecraft, match="100 bytes"):
        HandshakeParser(max_size=64).feed(sniff.varint(100))
    parser = HandshakeParser(max_size=64)
    assert parser.feed(sniff.varint(60) + b"\x00" * 30) is None
    with pytest.raises(NotMinecraft):
        parser.feed(b"\x00" * 100000)
    assert len(parser._data) <= 65


def test_status_response_is_a_status_packet() -> None:
    data = sniff.status_response("no such server", 767)
    packet_id, payload, size = sniff.read_packet(data)  # type: ignore[misc]
    assert packet_id == 0 and size == len(data)
    length, start = sniff.read_varint(payload, 0)
    document = json.loads(payload[start:])
    assert length == len(payload) - start
    assert document["description"] == {"text": "no such server"}
    assert document["version"]["protocol"] == 767


# config -------------------------------------------------------------------------


def app(name: str, port: int = 25565, **extra: Any) -> dict:
    spec = {
        "name": name,
        "protocol": "tcp",
        "ips": ["127.0.0.1"],
        "ports": [{"destination_port": port}],
        "origin_direct": ["tcp://127.0.0.1:9000"],
    }
    spec.update(extra)
    return spec


def error_of(*apps: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse({"apps": list(apps)})
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_config_protocols_share_a_port() -> None:
    config = parse(
        {
            "apps": [
                app("ssh", sniff="ssh"),
                app("web", sniff="http"),
                app("a", sniff="minecraft", dns={"name": "a.example"}, minecraft_unknown_message="nope"),
                app("b", sniff="minecraft", sni=["b.example", "*.b.example"], minecraft_unknown_message="nope"),
                app("rest", sniff="any", sniff_wait=0.5),
            ]
        }
    )
    assert [a.sniff for a in config.apps] == ["ssh", "http", "minecraft", "minecraft", "any"]
    assert config.apps[2].minecraft_unknown_message == "nope"
    assert config.apps[4].sniff_wait == 0.5


@pytest.mark.parametrize(
    "apps, message",
    [
        (
            [app("a", sniff="ssh"), app("b", sniff="ssh")],
            "apps[1].ports[0].destination_port: 25565 on 127.0.0.1 is already used by app 'a', which also takes ssh",
        ),
        (
            [app("a", sniff="minecraft", dns={"name": "a.example"}), app("b", sniff="minecraft", sni=["A.example"])],
            "apps[1].ports[0].destination_port: 25565 on 127.0.0.1 is already used by app 'a' with the same hostname",
        ),
        (
            [app("a", sniff="minecraft"), app("b", sniff="minecraft", sni=["b.example"])],
            "apps taking minecraft on one port each need distinct hostnames",
        ),
        (
            [app("a", sniff="ssh"), app("b", dns={"name": "b.example"})],
            "apps sharing an edge port by protocol each set sniff",
        ),
        ([app("a", sniff="http", tls="flexible")], "apps[0].tls: terminates TLS, so its clients start with TLS"),
        ([app("a", sniff="ssh", sniff_wait=1)], "apps[0].sniff_wait: applies only with sniff any"),
        ([app("a", sniff="any", minecraft_unknown_message="x")], "apps[0].minecraft_unknown_message: applies only"),
        ([app("a", sniff="any", sni_default=True)], "apps[0].sni_default: sniff any routes by no hostname"),
        ([app("a", sniff="mc")], "apps[0].sniff: expected one of 'ssh', 'tls', 'http', 'minecraft', 'any'; got 'mc'"),
        (
            [
                app("a", sniff="minecraft", sni=["a.example"]),
                app("b", sniff="minecraft", sni=["b.example"], minecraft_unknown_message="other"),
            ],
            "apps[1].minecraft_unknown_message: differs from that of app 'a'",
        ),
        ([app("a", starttls="postgres")], "apps[0].starttls: needs tls flexible"),
        ([app("a", tls="flexible", allow_plaintext=True)], "apps[0].allow_plaintext: applies only with starttls"),
        (
            [app("a", tls="flexible", starttls="smtp", allow_plaintext=True)],
            "apps[0].allow_plaintext: applies only with starttls postgres",
        ),
        (
            [app("a", tls="flexible", sni=["a.example"]), app("b", tls="flexible", starttls="smtp", sni=["b.example"])],
            "apps[1].ports[0].destination_port: 25565 on 127.0.0.1 is already used by app 'a'; an app with starttls"
            " cannot share its edge port",
        ),
        (
            [app("a", tls="flexible", starttls="postgres", sniff="tls")],
            "apps[0].starttls: cannot be told apart on a port shared by protocol",
        ),
    ],
)
def test_config_refuses(apps: List[dict], message: str) -> None:
    assert message in error_of(*apps)


# the gate ------------------------------------------------------------------------


def sniff_port(
    *apps: Tuple[str, str, Tuple[str, ...]],
    wait: float = 1.0,
    handshake_timeout: float = 5.0,
    block: str = "",
    trusted: Tuple[str, ...] = (),
) -> Any:
    reactor = MemoryReactorClock()
    admission = Admission(Config(access_rules=(make_rule("block", "ip", block),) if block else ()), reactor)
    recorders = Recorders()
    events: List[Tuple[str, Any]] = []
    recorders.add(lambda kind, record: events.append((kind, record.as_event(kind))))
    runtimes = []
    for index, (name, what, hostnames) in enumerate(apps):
        model = App(
            name=name,
            protocol="tcp",
            ips=("127.0.0.1",),
            ports=(PortMapping(PortRange(25565, 25565)),),
            pool=Pool(name=name, origins=(Origin(name="o", address="127.0.0.1", port=9000 + index),)),
            hostnames=hostnames,
            timeouts=Timeouts(handshake=handshake_timeout),
            id=name,
            sniff=what,
            sniff_wait=wait,
            minecraft_unknown_message="Unknown server here",
            accept_proxy_protocol=trusted,
        )
        runtimes.append(AppRuntime(model, recorders, reactor, admission))
    factory = PortFactory(runtimes, EdgeTls(reactor))
    gate = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    if block:
        return factory, reactor, events, gate, None
    assert isinstance(gate, HeaderGate if trusted else SniffGate)
    transport = StringTransport()
    gate.makeConnection(transport)
    return factory, reactor, events, gate, transport


def test_access_rules_run_at_accept_before_anything_is_read() -> None:
    factory, reactor, events, gate, transport = sniff_port(("s", "ssh", ()), ("rest", "any", ()), block="127.0.0.1")
    # No protocol at all: the socket is closed without a byte read.
    assert gate is None
    ((kind, event),) = events
    assert event["Status"] == S.FIREWALL and event["Application"] == ""
    assert reactor.getDelayedCalls() == [] and reactor.tcpClients == []


def test_silent_client_goes_to_any_after_the_wait() -> None:
    factory, reactor, events, gate, transport = sniff_port(("s", "ssh", ()), ("rest", "any", ()), wait=0.7)
    reactor.advance(0.6)
    assert reactor.tcpClients == []
    reactor.advance(0.2)
    ((host, port, *_),) = reactor.tcpClients
    assert port == 9001
    assert isinstance(transport.protocol, EdgeProtocol)
    assert transport.protocol.record.extra["ClientSniffedProtocol"] == "any"


def test_ssh_bytes_go_to_the_ssh_app_and_are_replayed() -> None:
    factory, reactor, events, gate, transport = sniff_port(("s", "ssh", ()), ("rest", "any", ()))
    gate.dataReceived(b"SS")
    assert reactor.tcpClients == []
    gate.dataReceived(b"H-2.0-x\r\n")
    ((host, port, *_),) = reactor.tcpClients
    assert port == 9000
    (connection,) = factory.runtimes[0].connections
    assert connection.preface == b"SSH-2.0-x\r\n"
    assert connection.named and connection.sniffed == ("ssh", "")


def test_behind_an_upstream_the_bytes_after_its_header_are_sniffed() -> None:
    factory, reactor, events, gate, transport = sniff_port(
        ("s", "ssh", ()), ("rest", "any", ()), trusted=("127.0.0.1",)
    )
    gate.dataReceived(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 25565\r\nSSH-2.0-x\r\n")
    ((host, port, *_),) = reactor.tcpClients
    assert port == 9000
    (connection,) = factory.runtimes[0].connections
    assert connection.client_ip == "198.51.100.7" and connection.preface == b"SSH-2.0-x\r\n"


def test_unknown_protocol_without_any_app_refused() -> None:
    factory, reactor, events, gate, transport = sniff_port(("s", "ssh", ()), ("w", "http", ()))
    gate.dataReceived(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    assert transport.disconnecting and reactor.tcpClients == []
    gate.connectionLost(None)  # type: ignore[arg-type]
    ((kind, event),) = events
    assert event["Status"] == S.INVALID_SNI and event["Reason"] == "no app on this port takes any"
    assert event["ClientSniffedProtocol"] == "any"


def test_no_bytes_before_the_handshake_timeout_refused() -> None:
    factory, reactor, events, gate, transport = sniff_port(("s", "ssh", ()), handshake_timeout=2.0)
    reactor.advance(2.1)
    assert transport.disconnecting
    ((kind, event),) = events
    assert event["Reason"] == "nothing naming an app after 2s"
    assert not factory.runtimes[0].connections


def test_unknown_minecraft_name_answered_then_closed() -> None:
    factory, reactor, events, gate, transport = sniff_port(("a", "minecraft", ("a.example",)))
    gate.dataReceived(handshake("nobody.example") + sniff.packet(0, b""))
    assert reactor.tcpClients == []
    packet_id, payload, size = sniff.read_packet(transport.value())  # type: ignore[misc]
    _, start = sniff.read_varint(payload, 0)
    assert json.loads(payload[start:])["description"] == {"text": "Unknown server here"}
    assert not transport.disconnecting
    gate.dataReceived(sniff.packet(1, b"12345678"))
    assert transport.value()[size:] == sniff.packet(1, b"12345678")
    assert transport.disconnecting
    gate.connectionLost(None)  # type: ignore[arg-type]
    ((kind, event),) = events
    assert event["Status"] == S.INVALID_SNI
    assert event["ClientSniffedHostname"] == "nobody.example"
    assert reactor.getDelayedCalls() == []


def test_unknown_minecraft_login_gets_a_disconnect() -> None:
    factory, reactor, events, gate, transport = sniff_port(("a", "minecraft", ("a.example",)))
    gate.dataReceived(handshake("b.example", state=2))
    assert transport.value() == sniff.login_disconnect("Unknown server here")
    assert transport.disconnecting


def test_not_minecraft_after_all_goes_to_any() -> None:
    factory, reactor, events, gate, transport = sniff_port(("a", "minecraft", ("a.example",)), ("rest", "any", ()))
    data = sniff.varint(20) + b"\x00\x2f" + b"\xff" * 20
    gate.dataReceived(data)
    ((host, port, *_),) = reactor.tcpClients
    assert port == 9001
    (connection,) = factory.runtimes[1].connections
    assert connection.preface == data


# STARTTLS parsers ------------------------------------------------------------------


def test_postgres_first_message() -> None:
    assert first_message(bytes.fromhex("0000000804d2")) is None
    assert first_message(bytes.fromhex("0000000804d2162f")) == ("ssl", 8)
    assert first_message(bytes.fromhex("0000000804d21630")) == ("gssenc", 8)
    startup = (16).to_bytes(4, "big") + (196608).to_bytes(4, "big") + b"user\0x\0\0"
    assert first_message(startup[:12]) is None
    assert first_message(startup) == ("startup", 16)
    assert first_message(b"\x16\x03\x01") == ("tls", 0)
    with pytest.raises(NotPostgres, match="first byte 0x47"):
        first_message(b"GET /")
    with pytest.raises(NotPostgres, match="first message of 100000 bytes"):
        first_message((100000).to_bytes(4, "big") + (196608).to_bytes(4, "big"))


def test_smtp_lines() -> None:
    assert command_line(b"ehlo client.example\r\nMAIL") == ("EHLO", "client.example", 21)
    assert command_line(b"STARTTLS") is None
    with pytest.raises(NotSmtp, match="longer than 512"):
        command_line(b"x" * 600)
    assert greeting_end(b"220-origin.example ESMTP\r\n220 ready\r\nrest") == 37
    assert greeting_end(b"220-origin") is None
    with pytest.raises(NotSmtp, match="554"):
        greeting_end(b"554 go away\r\n")
