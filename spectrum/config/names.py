"""
Hostnames and edge addresses: what is a name, and which names and
addresses overlap.
"""

from __future__ import annotations

import re
from typing import Any

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _is_hostname(name: str, wildcard: bool = False) -> bool:
    """
    Whether C{name} (lower case, no trailing dot) is a hostname per RFC 1123;
    the last label may not be all digits, so a mistyped IPv4 literal is not
    taken for a name.  With C{wildcard}, a leading C{*.} label is allowed.
    """
    if wildcard and name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)


def _hostnames_overlap(a: str, b: str) -> bool:
    """
    Whether one ClientHello could name both C{a} and C{b} (C{*.x} covers
    one label in front of C{x}).
    """
    if a == b:
        return True
    for pattern, name in ((a, b), (b, a)):
        if pattern.startswith("*.") and not name.startswith("*."):
            head, _, rest = name.partition(".")
            if head and rest == pattern[2:]:
                return True
    return False


def _addresses_overlap(a: str, b: str) -> bool:
    """
    Whether binding edge addresses C{a} and C{b} (normalized literals) on one
    port would collide: the wildcard of a family covers that family. The
    listeners bind IPv6 addresses IPv6-only, so C{::} leaves IPv4 alone.
    """
    if a == b:
        return True
    v6a, v6b = ":" in a, ":" in b
    if v6a != v6b:
        return False
    wildcard = "::" if v6a else "0.0.0.0"
    return wildcard in (a, b)


def _share_a_port(app: Any, other: Any) -> bool:
    """
    Whether two apps listen on a common address and edge port.
    """
    if not any(_addresses_overlap(ip, o) for ip in app.ips for o in other.ips):
        return False
    ports = set(other.edge_ports())
    return any(port in ports for port in app.edge_ports())
