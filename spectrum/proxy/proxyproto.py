"""
The PROXY protocol (HAProxy's v1 and v2) and Cloudflare's Simple Proxy
Protocol: how an edge tells its origin who the client really is.

Everything here is pure: encoders are functions from addresses to bytes, and
L{HeaderDecoder} is a sans-IO parser (C{feed(bytes)}) raising one exception
type, L{ProxyHeaderError}. The relays in L{spectrum.proxy.tcp},
L{spectrum.proxy.udp} and L{spectrum.proxy.inbound} only move bytes.

References:
  - U{https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt}
  - U{https://developers.cloudflare.com/spectrum/reference/simple-proxy-protocol-header/}
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Optional, Tuple, Union

import attr

#: The twelve bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: v1's longest line, CRLF included (the spec's 107).
V1_MAX_LENGTH = 107
#: The most address and TLV bytes a v2 header may declare before the
#: decoder gives up (the spec allows 65535; real senders use a few hundred).
V2_MAX_LENGTH = 2048

#: Simple Proxy Protocol's magic number and fixed header length.
SPP_MAGIC = 0x56EC
SPP_LENGTH = 38

_V2_PROXY = 0x21
_V2_LOCAL = 0x20
_V2_FAMILY = {
    (4, "tcp"): 0x11,
    (4, "udp"): 0x12,
    (6, "tcp"): 0x21,
    (6, "udp"): 0x22,
}
_SPP = struct.Struct("!H16s16sHH")
#: What a declared v1 address may be made of.
_ADDRESS_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")

Address = Tuple[str, int]
_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class ProxyHeaderError(Exception):
    """
    A PROXY header that is malformed, too long, or not there at all; the
    text says which, in one line.
    """


def _pair(source_ip: str, dest_ip: str) -> Tuple[int, _IP, _IP]:
    """
    Both addresses in one family: IPv4 when both are, otherwise IPv6 with
    IPv4 addresses mapped (a v4 client on a dual-stack edge).
    """
    source = _unscoped(source_ip)
    dest = _unscoped(dest_ip)
    if source.version == dest.version:
        return source.version, source, dest
    return 6, _as_v6(source), _as_v6(dest)


def _unscoped(text: str) -> _IP:
    """
    The address C{text} without its zone (C{fe80::1%eth0} is C{fe80::1}):
    a zone names an interface of this host and means nothing to an origin.
    """
    return ipaddress.ip_address(text.partition("%")[0])


def _as_v6(address: _IP) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address("::ffff:" + str(address))


def encode_v1(source: Address, dest: Address) -> bytes:
    """
    A v1 (text) header for a TCP connection from C{source} to C{dest}, each
    an C{(ip, port)} pair: C{PROXY TCP4 192.0.2.1 198.51.100.1 51234 443\\r\\n}.
    """
    version, src, dst = _pair(source[0], dest[0])
    return f"PROXY TCP{version} {src} {dst} {source[1]} {dest[1]}\r\n".encode("ascii")


def encode_v2(source: Address, dest: Address, transport: str = "tcp") -> bytes:
    """
    A v2 (binary) PROXY header, command PROXY, for a C{transport} (C{"tcp"}
    for STREAM or C{"udp"} for DGRAM) flow from C{source} to C{dest}.
    """
    version, src, dst = _pair(source[0], dest[0])
    family = _V2_FAMILY[(version, transport)]
    body = src.packed + dst.packed + struct.pack("!HH", source[1], dest[1])
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def encode_v2_local() -> bytes:
    """
    A v2 header with command LOCAL: the connection is the sender's own (a
    health check), and the receiver keeps the real addresses.
    """
    return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)


def encode_simple(client: Address, proxy: Address) -> bytes:
    """
    The 38-byte Simple Proxy Protocol header for a datagram from C{client}
    received by the edge at C{proxy}: magic 0x56EC, both addresses as
    16-byte IPv6 (IPv4 mapped), then the client's and the edge's ports.
    """
    return _SPP.pack(
        SPP_MAGIC,
        _as_v6(_unscoped(client[0])).packed,
        _as_v6(_unscoped(proxy[0])).packed,
        client[1],
        proxy[1],
    )


def decode_simple(datagram: bytes) -> Tuple[Address, Address, bytes]:
    """
    Split a datagram that starts with a Simple Proxy Protocol header into
    C{(client, proxy, payload)}; IPv4-mapped addresses come back as IPv4.

    @raise ProxyHeaderError: it is too short or has the wrong magic number.
    """
    if len(datagram) < SPP_LENGTH:
        raise ProxyHeaderError(f"simple proxy protocol: {len(datagram)} bytes, the header alone is {SPP_LENGTH}")
    magic, client, proxy, client_port, proxy_port = _SPP.unpack_from(datagram)
    if magic != SPP_MAGIC:
        raise ProxyHeaderError(f"simple proxy protocol: magic 0x{magic:04X}, expected 0x{SPP_MAGIC:04X}")
    return (
        (_unmap(ipaddress.IPv6Address(client)), client_port),
        (_unmap(ipaddress.IPv6Address(proxy)), proxy_port),
        datagram[SPP_LENGTH:],
    )


def reverse_simple(header: bytes) -> bytes:
    """
    The header of a reply to a datagram that carried C{header}: the two
    addresses and the two ports swapped.
    """
    magic, client, proxy, client_port, proxy_port = _SPP.unpack_from(header)
    return _SPP.pack(magic, proxy, client, proxy_port, client_port)


def _unmap(address: ipaddress.IPv6Address) -> str:
    mapped = address.ipv4_mapped
    return str(mapped if mapped is not None else address)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyInfo:
    """
    What a PROXY header declared.

    @ivar version: 1 or 2.
    @ivar source: the client's C{(ip, port)}, or L{None} when the header
        declares none (v1 C{UNKNOWN}, v2 C{LOCAL}, or an address family
        other than IPv4/IPv6): the connection's own address then stands.
    @ivar dest: the address the client connected to, likewise.
    @ivar transport: C{"tcp"}, C{"udp"}, or L{None} when unspecified.
    """

    version: int
    source: Optional[Address] = None
    dest: Optional[Address] = None
    transport: Optional[str] = None


class HeaderDecoder:
    """
    An incremental decoder of one PROXY header (v1 or v2) at the start of a
    stream.

    Feed it bytes as they arrive; L{feed} returns L{None} while it needs
    more, then C{(info, rest)} where C{rest} is what followed the header.
    Memory is bounded: a header longer than the spec allows (or than
    L{V2_MAX_LENGTH}) is an error, not a wait.
    """

    __slots__ = ("_buffer", "max_v2_length")

    def __init__(self, max_v2_length: int = V2_MAX_LENGTH) -> None:
        self._buffer = b""
        self.max_v2_length = max_v2_length

    def feed(self, data: bytes) -> Optional[Tuple[ProxyInfo, bytes]]:
        """
        Take the next bytes of the stream.

        @raise ProxyHeaderError: the stream does not start with a valid header.
        """
        buffer = self._buffer = self._buffer + data
        size = len(buffer)
        head = min(size, len(V2_SIGNATURE))
        if buffer[:head] == V2_SIGNATURE[:head]:
            if size < 16:
                return None
            length = int.from_bytes(buffer[14:16], "big")
            if length > self.max_v2_length:
                raise ProxyHeaderError(f"PROXY v2 header declares {length} bytes, more than {self.max_v2_length}")
            if size < 16 + length:
                return None
            return decode_v2(buffer[: 16 + length]), buffer[16 + length :]
        head = min(size, 6)
        if buffer[:head] == b"PROXY "[:head]:
            end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
            if end == -1:
                if size >= V1_MAX_LENGTH:
                    raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
                return None
            return decode_v1(buffer[: end + 2]), buffer[end + 2 :]
        raise ProxyHeaderError("the stream does not start with a PROXY protocol header")


def _ip(text: str, version: int) -> str:
    # Only digits, hex, dots and colons: ipaddress takes anything after a
    # '%' as an IPv6 zone (a newline included), and a zone names one of the
    # sender's interfaces, nothing a client address can carry onward.
    if not text or not _ADDRESS_CHARACTERS.issuperset(text):
        raise ProxyHeaderError(f"PROXY v1: {text[:45]!r} is not an IP address (no zone, no other characters)")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: {text[:45]!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IPv{version} address")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1: {text[:8]!r} is not a port")
    return int(text)


def decode_v1(line: bytes) -> ProxyInfo:
    """
    Decode one whole v1 line, CRLF included.

    @raise ProxyHeaderError: it is malformed.
    """
    if not line.endswith(b"\r\n") or len(line) > V1_MAX_LENGTH:
        raise ProxyHeaderError("PROXY v1: no CRLF within 107 bytes")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1: the line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[0] == "PROXY" and parts[1] == "UNKNOWN":
        return ProxyInfo(version=1)
    if len(parts) != 6 or parts[0] != "PROXY" or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1: expected 'PROXY TCP4|TCP6 src dst sport dport', got {text[:60]!r}")
    version = 4 if parts[1] == "TCP4" else 6
    return ProxyInfo(
        version=1,
        source=(_ip(parts[2], version), _port(parts[4])),
        dest=(_ip(parts[3], version), _port(parts[5])),
        transport="tcp",
    )


def decode_v2(header: bytes) -> ProxyInfo:
    """
    Decode one whole v2 header (signature, fixed part, addresses and TLVs).

    @raise ProxyHeaderError: it is malformed.
    """
    if len(header) < 16 or header[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("PROXY v2: bad signature")
    version_command, family, length = struct.unpack_from("!BBH", header, 12)
    if len(header) != 16 + length:
        raise ProxyHeaderError(f"PROXY v2: declares {length} bytes after the fixed part, has {len(header) - 16}")
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2: version {version_command >> 4}, expected 2")
    command = version_command & 0x0F
    if command == 0:
        return ProxyInfo(version=2)
    if command != 1:
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    transport = {0: None, 1: "tcp", 2: "udp"}.get(family & 0x0F, "?")
    if transport == "?":
        raise ProxyHeaderError(f"PROXY v2: unknown transport {family & 0x0F}")
    address_family = family >> 4
    body = header[16:]
    if address_family == 1:
        if length < 12:
            raise ProxyHeaderError(f"PROXY v2: IPv4 addresses need 12 bytes, got {length}")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyInfo(
            version=2,
            source=(str(ipaddress.IPv4Address(src)), sport),
            dest=(str(ipaddress.IPv4Address(dst)), dport),
            transport=transport,
        )
    if address_family == 2:
        if length < 36:
            raise ProxyHeaderError(f"PROXY v2: IPv6 addresses need 36 bytes, got {length}")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyInfo(
            version=2,
            source=(_unmap(ipaddress.IPv6Address(src)), sport),
            dest=(_unmap(ipaddress.IPv6Address(dst)), dport),
            transport=transport,
        )
    if address_family in (0, 3):
        # UNSPEC or UNIX: nothing an IP edge can use; the receiver keeps
        # the connection's own addresses, as the spec asks.
        return ProxyInfo(version=2, transport=transport)
    raise ProxyHeaderError(f"PROXY v2: unknown address family {address_family}")


def header_for(mode: str, source: Address, dest: Address, transport: str = "tcp") -> bytes:
    """
    The header an app's C{proxy_protocol} mode puts in front of a stream
    (C{v1}, C{v2}) or a UDP session's first datagram (C{v2}); C{b""} for
    C{off}. C{simple} is per datagram: see L{encode_simple}.
    """
    if mode == "v1":
        return encode_v1(source, dest)
    if mode == "v2":
        return encode_v2(source, dest, transport)
    return b""
