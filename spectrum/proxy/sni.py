"""
A TLS ClientHello parser for routing by SNI without decrypting.

Pure and sans-IO: feed it the client's first bytes as they arrive; it answers
L{None} until the whole ClientHello is in, then a L{ClientHello}. Anything
that is not a ClientHello raises L{NotClientHello} at the first byte that
proves it, and a ClientHello larger than the bound raises it too, so a client
cannot make the edge hold more than C{max_size} bytes before it is routed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attr

#: Bytes a ClientHello may take before the parser gives up. Real ones are
#: a few hundred bytes, about 2 KiB with a post-quantum key share.
MAX_CLIENT_HELLO = 16384

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
#: TLS records carry at most 2^14 bytes of plaintext.
_MAX_RECORD = 16384


class NotClientHello(ValueError):
    """
    The bytes are not the start of a TLS connection this edge can route.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ClientHello:
    """
    What routing needs from a ClientHello.

    @ivar server_name: the SNI host name, lower case, or L{None} when the
        client sent none.
    @ivar alpn: the protocols the client offered, in its order.
    @ivar versions: the versions offered, as (major, minor) pairs: the
        C{supported_versions} extension's, or the legacy version alone.
    """

    server_name: Optional[str]
    alpn: Tuple[str, ...] = ()
    versions: Tuple[Tuple[int, int], ...] = ()


class ClientHelloParser:
    """
    Reassembles the ClientHello from TLS records fed in any pieces.
    """

    def __init__(self, max_size: int = MAX_CLIENT_HELLO) -> None:
        self.max_size = max_size
        self._records = bytearray()
        self._handshake = bytearray()
        self._fed = 0
        self.result: Optional[ClientHello] = None

    def feed(self, data: bytes) -> Optional[ClientHello]:
        """
        Take the next bytes from the client.

        @return: the ClientHello once complete (and on every later call),
            else L{None}.
        @raise NotClientHello: the bytes cannot be a ClientHello, or it is
            larger than C{max_size}.
        """
        if self.result is not None:
            return self.result
        self._fed += len(data)
        self._records += data
        records = self._records
        while True:
            if records and records[0] != _HANDSHAKE:
                if records[0] & 0x80:
                    raise NotClientHello("SSLv2-style hello; TLS 1.0 or newer is required")
                raise NotClientHello(f"not a TLS handshake record (first byte 0x{records[0]:02x})")
            if len(records) >= 2 and records[1] != 3:
                raise NotClientHello(f"unknown record version {records[1]}")
            if len(records) < 5:
                break
            length = int.from_bytes(records[3:5], "big")
            if length == 0 or length > _MAX_RECORD:
                raise NotClientHello(f"bad TLS record length {length}")
            if len(records) < 5 + length:
                break
            self._handshake += records[5 : 5 + length]
            del records[: 5 + length]
            hello = self._parse_handshake()
            if hello is not None:
                self.result = hello
                return hello
        if self._fed > self.max_size:
            raise NotClientHello(f"no complete ClientHello in the first {self.max_size} bytes")
        if len(self._handshake) >= 1 and self._handshake[0] != _CLIENT_HELLO:
            raise NotClientHello(f"first handshake message is type {self._handshake[0]}, not ClientHello")
        return None

    def _parse_handshake(self) -> Optional[ClientHello]:
        handshake = self._handshake
        if handshake[0] != _CLIENT_HELLO:
            raise NotClientHello(f"first handshake message is type {handshake[0]}, not ClientHello")
        if len(handshake) < 4:
            return None
        length = int.from_bytes(handshake[1:4], "big")
        if length + 4 > self.max_size:
            raise NotClientHello(f"ClientHello of {length} bytes is over the {self.max_size} byte bound")
        if len(handshake) < 4 + length:
            return None
        return parse_client_hello(bytes(handshake[4 : 4 + length]))


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > self.end:
            raise NotClientHello(f"ClientHello truncated in {what}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> _Reader:
        length = self.number(size, what)
        start = self.pos
        self.take(length, what)
        return _Reader(self.data, start, start + length)

    def left(self) -> int:
        return self.end - self.pos

    def take_all(self) -> bytes:
        return self.take(self.left(), "value")


def parse_client_hello(body: bytes) -> ClientHello:
    """
    Parse the body of a ClientHello handshake message (after its 4-byte
    header).

    @raise NotClientHello: it is malformed.
    """
    reader = _Reader(body)
    legacy = reader.take(2, "version")
    reader.take(32, "random")
    reader.vector(1, "session id")
    reader.vector(2, "cipher suites")
    reader.vector(1, "compression methods")
    server_name: Optional[str] = None
    alpn: Tuple[str, ...] = ()
    versions: Tuple[Tuple[int, int], ...] = ((legacy[0], legacy[1]),)
    if reader.left() == 0:
        return ClientHello(None, alpn, versions)
    extensions = reader.vector(2, "extensions")
    seen = set()
    while extensions.left():
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, "extension")
        if kind in seen:
            raise NotClientHello(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(data)
        elif kind == _EXT_ALPN:
            names = data.vector(2, "ALPN list")
            found = []
            while names.left():
                found.append(names.vector(1, "ALPN name").take_all().decode("ascii", "replace"))
            alpn = tuple(found)
        elif kind == _EXT_SUPPORTED_VERSIONS:
            listed = data.vector(1, "supported versions")
            pairs = []
            while listed.left():
                pair = listed.take(2, "supported versions")
                pairs.append((pair[0], pair[1]))
            versions = tuple(pairs)
    return ClientHello(server_name, alpn, versions)


def _server_name(data: _Reader) -> Optional[str]:
    names = data.vector(2, "server name list")
    while names.left():
        kind = names.number(1, "server name type")
        value = names.vector(2, "server name").take_all()
        if kind == 0:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                raise NotClientHello("server name is not ASCII") from None
            if not text or any(c <= " " or c == "\x7f" for c in text):
                raise NotClientHello("server name is empty or has control characters")
            return text.rstrip(".").lower()
    return None
