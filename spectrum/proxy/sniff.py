"""
What a client's first bytes say, for edge ports shared by protocol.

Pure and sans-IO, bounded like the ClientHello parser: L{classify} names
the protocol of a connection's first bytes (or asks for more), and
L{HandshakeParser} reads a Minecraft (Java edition) handshake packet for
the server address the player typed. Nothing here holds more than
L{MAX_HANDSHAKE} bytes of a Minecraft client or L{MAX_SNIFF} bytes of any
other before it decides.
"""

from __future__ import annotations

import json
from typing import Optional, Tuple

import attr

SSH = "ssh"
TLS = "tls"
HTTP = "http"
MINECRAFT = "minecraft"
ANY = "any"
#: what an edge port shared by protocol can tell apart, in the config's words
PROTOCOLS = (SSH, TLS, HTTP, MINECRAFT, ANY)

#: bytes L{classify} may need before it decides (the longest signature)
MAX_SNIFF = 16

#: A handshake packet: a VarInt length, id 0, a VarInt protocol version,
#: the address (a string of at most 255 characters, 4 bytes each at most in
#: UTF-8, with its VarInt length), a port and the next state. Forge's
#: suffixes fit, and BungeeCord's IP forwarding does not come from players.
MAX_HANDSHAKE = 1 + 5 + 3 + 1024 + 2 + 5 + 3
#: the most bytes a status or login packet may take at the edge's own answer
MAX_PACKET = 2048

_HTTP_METHODS = tuple(
    method + b" "
    for method in (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")
) + (b"PRI * HTTP/2.0",)
_SIGNATURES = ((b"SSH-", SSH),) + tuple((method, HTTP) for method in _HTTP_METHODS)

STATUS = 1
LOGIN = 2
TRANSFER = 3


class NotMinecraft(ValueError):
    """
    The bytes are not a Minecraft handshake this edge can route.
    """


def classify(data: bytes) -> Optional[str]:
    """
    The protocol the first bytes C{data} of a connection speak: C{ssh},
    C{tls}, C{http}, C{minecraft}, or C{any} (none of those); L{None} while
    more bytes could still change the answer.
    """
    if not data:
        return None
    if data[0] == 0x16:
        # A TLS handshake record: 0x16, then version 3.x (a Minecraft
        # handshake of 22 bytes starts with 0x16 too, then its id 0).
        if len(data) < 2:
            return None
        if data[1] == 3:
            return TLS
    for signature, protocol in _SIGNATURES:
        if data.startswith(signature):
            return protocol
        if signature.startswith(data[: len(signature)]):
            return None
    return _minecraft_start(data)


def _minecraft_start(data: bytes) -> Optional[str]:
    """
    Whether C{data} starts like a handshake packet: a VarInt length within
    the bound, then packet id 0.
    """
    try:
        length, used = read_varint(data, 0)
    except NeedMore:
        return None
    except NotMinecraft:
        return ANY
    if not 0 < length <= MAX_HANDSHAKE:
        return ANY
    if len(data) == used:
        return None
    return MINECRAFT if data[used] == 0 else ANY


class NeedMore(Exception):
    """
    The bytes so far end inside the value being read.
    """


def read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    """
    A VarInt (at most 5 bytes, 32 bits) at C{pos}: its value and the
    position after it.

    @raise NeedMore: the bytes end inside it.
    @raise NotMinecraft: it is longer than 5 bytes.
    """
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            raise NeedMore()
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 31:
                value -= 1 << 32
            return value, pos
    raise NotMinecraft("a VarInt is longer than 5 bytes")


def varint(value: int) -> bytes:
    """
    C{value} (a 32-bit integer) as a VarInt.
    """
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def packet(packet_id: int, payload: bytes) -> bytes:
    """
    One uncompressed packet: its length, id and payload.
    """
    body = varint(packet_id) + payload
    return varint(len(body)) + body


def string(text: str) -> bytes:
    """
    A protocol string: its UTF-8 length as a VarInt, then the bytes.
    """
    raw = text.encode("utf-8")
    return varint(len(raw)) + raw


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Handshake:
    """
    What routing needs from a handshake packet.

    @ivar hostname: the address the player typed, for matching: lower case,
        without a trailing dot or what follows a NUL (Forge's C{FML} marks).
    @ivar address: the address field as sent.
    @ivar next_state: 1 (status, a server-list ping), 2 (login) or 3
        (transfer).
    @ivar size: the packet's bytes, length included.
    """

    protocol_version: int
    hostname: str
    address: str
    port: int
    next_state: int
    size: int


class HandshakeParser:
    """
    Reads the handshake packet from bytes fed in any pieces.
    """

    def __init__(self, max_size: int = MAX_HANDSHAKE) -> None:
        self.max_size = max_size
        self._data = bytearray()
        self.result: Optional[Handshake] = None

    def feed(self, data: bytes) -> Optional[Handshake]:
        """
        Take the client's next bytes.

        @return: the handshake once complete (and on every later call),
            else L{None}.
        @raise NotMinecraft: the bytes are not a handshake, or it is larger
            than C{max_size}.
        """
        if self.result is not None:
            return self.result
        buffer = self._data
        buffer += data[: self.max_size + 1 - len(buffer)]
        try:
            length, start = read_varint(bytes(buffer[:5]), 0)
        except NeedMore:
            return None
        if length <= 0 or start + length > self.max_size:
            raise NotMinecraft(f"a first packet of {length} bytes is not a handshake")
        if len(buffer) < start + length:
            if len(buffer) > self.max_size:
                raise NotMinecraft(f"no handshake in the first {self.max_size} bytes")
            return None
        self.result = parse_handshake(bytes(buffer[start : start + length]), start + length)
        return self.result


def parse_handshake(body: bytes, size: int) -> Handshake:
    """
    Parse a handshake packet's id and fields (C{body}, after its length).

    @raise NotMinecraft: it is malformed.
    """
    try:
        packet_id, pos = read_varint(body, 0)
        if packet_id != 0:
            raise NotMinecraft(f"first packet has id {packet_id}, not the handshake's 0")
        version, pos = read_varint(body, pos)
        length, pos = read_varint(body, pos)
        if not 0 <= length <= 1020 or pos + length + 2 > len(body):
            raise NotMinecraft(f"bad server address length {length}")
        try:
            address = body[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise NotMinecraft("the server address is not UTF-8") from None
        pos += length
        port = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        next_state, pos = read_varint(body, pos)
    except NeedMore:
        raise NotMinecraft("handshake packet truncated") from None
    if pos != len(body):
        raise NotMinecraft("handshake packet has bytes after its fields")
    if next_state not in (STATUS, LOGIN, TRANSFER):
        raise NotMinecraft(f"unknown next state {next_state}")
    return Handshake(version, hostname_of(address), address, port, next_state, size)


def hostname_of(address: str) -> str:
    """
    The name to route on in a handshake's address: Forge and FML add
    C{"\\0FML\\0"} (and more) after it; a trailing dot means the same name.
    """
    name = address.partition("\0")[0].rstrip(".").lower()
    if not name or any(c <= " " or c == "\x7f" for c in name):
        return ""
    return name


def read_packet(data: bytes, max_size: int = MAX_PACKET) -> Optional[Tuple[int, bytes, int]]:
    """
    The first whole packet in C{data}: its id, payload and size; L{None}
    while it is incomplete.

    @raise NotMinecraft: it is malformed or larger than C{max_size}.
    """
    try:
        length, start = read_varint(data, 0)
    except NeedMore:
        return None
    if length <= 0 or start + length > max_size:
        raise NotMinecraft(f"packet of {length} bytes")
    if len(data) < start + length:
        return None
    try:
        packet_id, pos = read_varint(data[: start + length], start)
    except NeedMore:
        raise NotMinecraft("packet id truncated") from None
    return packet_id, data[pos : start + length], start + length


def status_response(message: str, protocol_version: int) -> bytes:
    """
    A status response (packet 0 of the status state) whose description is
    C{message}: what a player's server list shows for a name no app has.
    """
    document = {
        "version": {"name": "spectrum", "protocol": protocol_version},
        "players": {"max": 0, "online": 0},
        "description": {"text": message},
    }
    return packet(0, string(json.dumps(document)))


def login_disconnect(message: str) -> bytes:
    """
    A login disconnect (packet 0 of the login state) with C{message}.
    """
    return packet(0, string(json.dumps({"text": message})))
