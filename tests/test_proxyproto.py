"""
PROXY protocol v1/v2 and Simple Proxy Protocol encoders and the inbound
decoder, checked against the byte layouts in the specifications.
"""

from __future__ import annotations

import pytest

from spectrum.proxy import proxyproto as pp

SIG = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])


def test_v1_tcp4_line() -> None:
    assert pp.encode_v1(("192.0.2.1", 51234), ("198.51.100.7", 443)) == (
        b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 443\r\n"
    )


def test_v1_tcp6_and_mixed_families_map_v4() -> None:
    assert pp.encode_v1(("2001:db8::1", 1), ("2001:db8::2", 2)) == b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
    # A v4 client on a v6 edge: one family, v4 mapped.
    assert pp.encode_v1(("192.0.2.1", 5), ("2001:db8::2", 6)) == b"PROXY TCP6 ::ffff:c000:201 2001:db8::2 5 6\r\n"


def test_encoders_drop_a_zone() -> None:
    # A peer on a link-local address comes with its interface
    # (fe80::1%eth0); the origin gets the address alone.
    assert pp.encode_v1(("fe80::1%eth0", 1), ("fe80::2%eth0", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    info, _ = pp.HeaderDecoder().feed(pp.encode_v2(("fe80::1%eth0", 1), ("::1", 2)))
    assert info.source == ("fe80::1", 1)
    client, _, _ = pp.decode_simple(pp.encode_simple(("fe80::1%eth0", 1), ("::1", 2)))
    assert client == ("fe80::1", 1)


def test_v2_tcp4_layout() -> None:
    header = pp.encode_v2(("127.0.0.7", 0x1234), ("10.0.0.1", 443), "tcp")
    assert header[:12] == SIG
    assert header[12] == 0x21  # version 2, command PROXY
    assert header[13] == 0x11  # AF_INET, STREAM
    assert header[14:16] == b"\x00\x0c"  # 12 bytes of addresses
    assert header[16:20] == bytes([127, 0, 0, 7])
    assert header[20:24] == bytes([10, 0, 0, 1])
    assert header[24:26] == b"\x12\x34"
    assert header[26:28] == (443).to_bytes(2, "big")
    assert len(header) == 28


def test_v2_udp4_and_udp6_layout() -> None:
    udp4 = pp.encode_v2(("127.0.0.7", 1), ("127.0.0.1", 2), "udp")
    assert udp4[13] == 0x12  # AF_INET, DGRAM
    udp6 = pp.encode_v2(("2001:db8::7", 1), ("::1", 2), "udp")
    assert udp6[13] == 0x22 and udp6[14:16] == b"\x00\x24" and len(udp6) == 16 + 36
    assert udp6[16:32] == bytes.fromhex("20010db8000000000000000000000007")
    assert udp6[48:52] == b"\x00\x01\x00\x02"


def test_v2_local() -> None:
    assert pp.encode_v2_local() == SIG + b"\x20\x00\x00\x00"
    assert pp.decode_v2(pp.encode_v2_local()) == pp.ProxyInfo(version=2)


def test_simple_header_layout() -> None:
    header = pp.encode_simple(("127.0.0.7", 40000), ("127.0.0.1", 53))
    assert len(header) == 38 == pp.SPP_LENGTH
    assert header[:2] == b"\x56\xec"
    assert header[2:18] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 7])
    assert header[18:34] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
    assert header[34:36] == (40000).to_bytes(2, "big")
    assert header[36:38] == (53).to_bytes(2, "big")
    client, proxy, payload = pp.decode_simple(header + b"hi")
    assert client == ("127.0.0.7", 40000) and proxy == ("127.0.0.1", 53) and payload == b"hi"
    reply = pp.reverse_simple(header)
    assert pp.decode_simple(reply)[:2] == (("127.0.0.1", 53), ("127.0.0.7", 40000))


def test_simple_ipv6_and_errors() -> None:
    header = pp.encode_simple(("2001:db8::5", 1), ("2001:db8::1", 2))
    assert header[2:18] == bytes.fromhex("20010db8000000000000000000000005")
    with pytest.raises(pp.ProxyHeaderError, match="magic"):
        pp.decode_simple(b"\x00\x00" + header[2:])
    with pytest.raises(pp.ProxyHeaderError, match="38"):
        pp.decode_simple(header[:20])


@pytest.mark.parametrize(
    "header, source",
    [
        (b"PROXY TCP4 127.0.0.7 127.0.0.1 5555 80\r\n", ("127.0.0.7", 5555)),
        (b"PROXY TCP6 2001:db8::7 ::1 5555 80\r\n", ("2001:db8::7", 5555)),
        (pp.encode_v2(("127.0.0.7", 5555), ("127.0.0.1", 80)), ("127.0.0.7", 5555)),
        (pp.encode_v2(("2001:db8::7", 5555), ("::1", 80)), ("2001:db8::7", 5555)),
    ],
)
def test_decoder_byte_by_byte(header: bytes, source: tuple) -> None:
    decoder = pp.HeaderDecoder()
    stream = header + b"GET / HTTP/1.0\r\n"
    for i in range(len(header) - 1):
        assert decoder.feed(stream[i : i + 1]) is None
    info, rest = decoder.feed(stream[len(header) - 1 :])
    assert info.source == source
    assert rest == b"GET / HTTP/1.0\r\n"


def test_decoder_v2_with_tlvs_and_unknown() -> None:
    base = pp.encode_v2(("127.0.0.7", 1), ("127.0.0.1", 2))
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    header = base[:14] + (12 + len(tlv)).to_bytes(2, "big") + base[16:] + tlv
    info, rest = pp.HeaderDecoder().feed(header + b"x")
    assert info.source == ("127.0.0.7", 1) and rest == b"x"
    # A TLV is read past, never carried onward: the origin's header is
    # made afresh from the addresses alone.
    injected = b"\x04\x00\x0d\nX-Injected:1"
    header = base[:14] + (12 + len(injected)).to_bytes(2, "big") + base[16:] + injected
    info, rest = pp.HeaderDecoder().feed(header)
    assert pp.encode_v1(info.source, info.dest) == b"PROXY TCP4 127.0.0.7 127.0.0.1 1 2\r\n"
    info, rest = pp.HeaderDecoder().feed(b"PROXY UNKNOWN\r\nabc")
    assert info == pp.ProxyInfo(version=1) and rest == b"abc"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GET / HTTP/1.1\r\n", "does not start with a PROXY"),
        (b"PROXY TCP4 127.0.0.1\r\n", "expected 'PROXY TCP4"),
        (b"PROXY TCP4 127.0.0.300 127.0.0.1 1 2\r\n", "not an IP address"),
        (b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "no zone"),
        (b"PROXY TCP6 fe80::1%\nX-Injected:1 ::1 1 2\r\n", "no zone"),
        (b"PROXY TCP4 127.0.0.1%lo 127.0.0.1 1 2\r\n", "no zone"),
        (b"PROXY TCP4 127.0.0.1 +127.0.0.1 1 2\r\n", "not an IP address"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 70000 2\r\n", "not a port"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n", "not a port"),
        (b"PROXY " + b"9" * 120, "longer than 107"),
        (SIG + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (SIG + b"\x22\x11\x00\x0c" + bytes(12), "unknown command"),
        (SIG + b"\x21\x11\x00\x04" + bytes(4), "need 12 bytes"),
        (SIG + b"\x21\x11\xff\xff", "more than 2048"),
    ],
)
def test_decoder_refuses(data: bytes, message: str) -> None:
    with pytest.raises(pp.ProxyHeaderError, match=message):
        pp.HeaderDecoder().feed(data)


def test_decoder_waits_for_partial_signature_then_refuses() -> None:
    decoder = pp.HeaderDecoder()
    assert decoder.feed(SIG[:5]) is None
    with pytest.raises(pp.ProxyHeaderError):
        decoder.feed(b"XYZ")
