"""
Store URLs: C{memory}, or where a Redis server is and how to reach it.
"""

from __future__ import annotations

from typing import Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import attr


class StoreURLError(ValueError):
    """
    A store URL that cannot be used; C{str()} says why in one sentence.
    """


@attr.s(frozen=True, auto_attribs=True)
class RedisURL:
    """
    Where the Redis server is and how to talk to it.
    """

    scheme: str
    hosts: Tuple[Tuple[str, int], ...]
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    service: Optional[str] = None
    ca: Optional[str] = None
    prefix: str = "spectrum"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def __str__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        service = f"/{self.service}" if self.service else ""
        return f"{self.scheme}://{hosts}{service}/{self.db}"


def parse_url(url: str) -> RedisURL:
    """
    Read a C{redis://}, C{rediss://} or C{redis+sentinel://} URL.

    @raise StoreURLError: it is none of these, or a part is malformed.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in ("redis", "rediss", "redis+sentinel"):
        raise StoreURLError(f"{url!r} is not memory, redis://, rediss:// or redis+sentinel://")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user, _, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or None
    default_port = 26379 if scheme == "redis+sentinel" else 6379
    hosts = []
    for item in netloc.split(","):
        host, port = item, default_port
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest.startswith(":"):
                port = _port(url, rest[1:])
        elif item.count(":") == 1:
            host, text = item.split(":")
            port = _port(url, text)
        if not host:
            raise StoreURLError(f"{url!r} names no host")
        hosts.append((host, port))
    path = [p for p in parts.path.split("/") if p]
    service = None
    if scheme == "redis+sentinel":
        if not path:
            raise StoreURLError(f"{url!r} names no Sentinel service (redis+sentinel://host:port/service/db)")
        service = path.pop(0)
    elif len(hosts) > 1:
        raise StoreURLError(f"{url!r} lists several hosts; only redis+sentinel:// takes a list")
    db = 0
    if path:
        if len(path) > 1 or not path[0].isdigit():
            raise StoreURLError(f"{url!r}: the database must be a number, as in /0")
        db = int(path[0])
    query = parse_qs(parts.query)
    unknown = set(query) - {"ca", "prefix"}
    if unknown:
        raise StoreURLError(f"{url!r}: unknown parameter {sorted(unknown)[0]!r} (ca, prefix)")
    ca = query.get("ca", [None])[-1]
    if ca and scheme != "rediss":
        raise StoreURLError(f"{url!r}: ca= needs rediss://")
    return RedisURL(
        scheme=scheme,
        hosts=tuple(hosts),
        db=db,
        username=username,
        password=password,
        service=service,
        ca=ca,
        prefix=query.get("prefix", ["spectrum"])[-1],
    )


def _port(url: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise StoreURLError(f"{url!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)
