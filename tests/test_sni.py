"""
The ClientHello parser of L{spectrum.proxy.sni}: real ClientHellos from
OpenSSL, fed in any pieces, and what it refuses.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from spectrum.proxy.sni import ClientHelloParser, NotClientHello, parse_client_hello

from tlskit import client_hello


def hello_with(server_name: str | None = None, alpn: list[bytes] | None = None) -> bytes:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        context.set_alpn_protos(alpn)
    connection = SSL.Connection(context, None)
    if server_name:
        connection.set_tlsext_host_name(server_name.encode("ascii"))
    connection.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def test_server_name_alpn_versions() -> None:
    hello = ClientHelloParser().feed(hello_with("Db.Example.COM", [b"h2", b"redis"]))
    assert hello is not None
    assert hello.server_name == "db.example.com"
    assert hello.alpn == ("h2", "redis")
    assert (3, 4) in hello.versions and (3, 3) in hello.versions


def test_no_server_name() -> None:
    hello = ClientHelloParser().feed(hello_with(None))
    assert hello is not None and hello.server_name is None


def test_byte_by_byte_answers_only_at_the_last_byte() -> None:
    data = client_hello("a.example")
    parser = ClientHelloParser()
    for index in range(len(data) - 1):
        assert parser.feed(data[index : index + 1]) is None
    hello = parser.feed(data[-1:])
    assert hello is not None and hello.server_name == "a.example"
    # Later bytes (the rest of the handshake) change nothing.
    assert parser.feed(b"\x17\x03\x03") is hello


def test_client_hello_split_over_two_records() -> None:
    data = client_hello("split.example")
    body = data[5:]
    first, second = body[:40], body[40:]
    records = b"\x16\x03\x01" + len(first).to_bytes(2, "big") + first
    records += b"\x16\x03\x01" + len(second).to_bytes(2, "big") + second
    hello = ClientHelloParser().feed(records)
    assert hello is not None and hello.server_name == "split.example"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake record (first byte 0x47)"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not a TLS handshake record (first byte 0x53)"),
        (b"\x80\x2e\x01\x03\x01", "SSLv2-style hello"),
        (b"\x16\x07", "unknown record version 7"),
        (b"\x16\x03\x01\x00\x00", "bad TLS record length 0"),
        (b"\x16\x03\x01\x50\x00", "bad TLS record length 20480"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "type 2, not ClientHello"),
    ],
)
def test_refused_at_once(data: bytes, message: str) -> None:
    with pytest.raises(NotClientHello, match=message.replace("(", r"\(").replace(")", r"\)")):
        ClientHelloParser().feed(data)


def test_garbage_refused_at_the_first_byte() -> None:
    with pytest.raises(NotClientHello):
        ClientHelloParser().feed(b"G")


def test_size_bound() -> None:
    data = client_hello("a.example")
    # The declared handshake length alone is over a small bound.
    with pytest.raises(NotClientHello, match="over the 100 byte bound"):
        ClientHelloParser(max_size=100).feed(data)
    # A client that sends records which never make up a ClientHello is cut
    # off at the bound, not buffered without end.
    parser = ClientHelloParser(max_size=1000)
    header = b"\x16\x03\x01\x40\x00" + b"\x01\xff\xff\xff"
    with pytest.raises(NotClientHello):
        parser.feed(header)
        for _ in range(100):
            parser.feed(b"\x00" * 100)


def test_truncated_inside_is_refused() -> None:
    data = bytearray(client_hello("a.example"))
    body = bytes(data[9:])
    # Claim a session id longer than the message.
    broken = body[:34] + b"\xff" + body[35:]
    with pytest.raises(NotClientHello, match="truncated"):
        parse_client_hello(broken)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40))
def test_any_split_gives_the_same_answer(sizes: list[int]) -> None:
    data = client_hello("pieces.example")
    parser = ClientHelloParser()
    position = 0
    result = None
    for size in sizes:
        if position >= len(data):
            break
        result = parser.feed(data[position : position + size])
        position += size
    if position < len(data):
        assert result is None
        result = parser.feed(data[position:])
    assert result is not None and result.server_name == "pieces.example"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_only_ever_raise_not_client_hello(data: bytes) -> None:
    for prefix in (b"", b"\x16\x03\x01" + len(data).to_bytes(2, "big") + b"\x01" + len(data).to_bytes(3, "big")):
        try:
            ClientHelloParser().feed(prefix + data)
        except NotClientHello:
            pass
