"""
Proxy loops: apps whose origins lead back to an edge address of the same
config.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from spectrum.model import App, Origin, PortRange


def _local_targets(origin: str) -> tuple[Any, ...]:
    """
    The addresses a connection to C{origin} (an address as the config gives
    it) goes to when it is this machine's: C{localhost} is both loopbacks,
    the unspecified address is loopback, and an IPv4-mapped IPv6 address is
    its IPv4 one. Another hostname is not known before it resolves: none.
    """
    if origin == "localhost":
        return (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    try:
        address = ipaddress.ip_address(origin)
    except ValueError:
        return ()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return (address,)


def find_loop(apps: Sequence[App]) -> tuple[int, str] | None:
    """
    A cycle of apps whose origins are edge addresses of this same config, in
    which a connection would be relayed back to itself until descriptors run
    out: (the index of its first app, the cycle as text), or L{None}.

    A chain that ends elsewhere (app A's origin is app B's edge, and B's
    origin is another machine) is fine. Origins count when given as
    addresses (or C{localhost}) that an edge address covers: the same
    address, or the wildcard of its family for a loopback origin. Where
    several apps share an edge port by hostname, a connection is taken to
    reach the apps with its app's hostnames.
    """
    # Edge addresses: (protocol, address) -> apps; (protocol, version) -> apps on the wildcard.
    exact: dict[tuple[str, Any], list[int]] = {}
    wildcard: dict[tuple[str, int], list[int]] = {}
    for b, app in enumerate(apps):
        for ip in app.ips:
            address = ipaddress.ip_address(ip)
            if address.is_unspecified:
                wildcard.setdefault((app.protocol, address.version), []).append(b)
            else:
                exact.setdefault((app.protocol, address), []).append(b)
    shared = set()
    for group in list(exact.values()) + list(wildcard.values()):
        if len(group) > 1:
            shared.update(group)

    # (app index, edge port) -> [(origin address, app index, edge port)]
    successors: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    for a, app in enumerate(apps):
        for origin in app.pool.origins:
            hit: set[int] = set()
            for address in _local_targets(origin.address):
                hit.update(exact.get((app.protocol, address), ()))
                if address.is_loopback:
                    hit.update(wildcard.get((app.protocol, address.version), ()))
            hit = {
                b
                for b in hit
                if b == a or b not in shared or not apps[b].hostnames or set(apps[b].hostnames) & set(app.hostnames)
            }
            for b in sorted(hit):
                for mapping in app.ports:
                    edge = mapping.edge
                    for other in apps[b].ports:
                        _link(successors, a, edge, mapping.origin, origin, b, other.edge)
    return _first_cycle(apps, successors)


def _link(
    successors: dict[tuple[int, int], list[tuple[str, int, int]]],
    a: int,
    edge: PortRange,
    mapped: PortRange | None,
    origin: Origin,
    b: int,
    other: PortRange,
) -> None:
    """
    Add the steps from app C{a}'s edge ports in C{edge} through C{origin}
    to app C{b}'s edge ports in C{other}.
    """
    if mapped is not None:
        # Edge port p goes to mapped.first + (p - edge.first).
        shift = mapped.first - edge.first
        low, high = max(mapped.first, other.first), min(mapped.last, other.last)
        for port in range(low, high + 1):
            successors.setdefault((a, port - shift), []).append((origin.address, b, port))
    elif origin.port is not None:
        if origin.port in other:
            for source in range(edge.first, edge.last + 1):
                successors.setdefault((a, source), []).append((origin.address, b, origin.port))
    else:
        # The edge port itself.
        for port in range(max(edge.first, other.first), min(edge.last, other.last) + 1):
            successors.setdefault((a, port), []).append((origin.address, b, port))


def _first_cycle(
    apps: Sequence[App], successors: dict[tuple[int, int], list[tuple[str, int, int]]]
) -> tuple[int, str] | None:
    done: set[tuple[int, int]] = set()
    for start in sorted(successors):
        if start in done:
            continue
        path = [start]
        via: list[str] = []  # via[i]: the origin address that led to path[i + 1]
        on_path = {start: 0}
        stack = [iter(successors[start])]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
                if via:
                    via.pop()
                continue
            address, b, port = step
            node = (b, port)
            if node in on_path:
                begin = on_path[node]
                first, first_port = path[begin]
                text = f"{apps[first].name!r} port {first_port}"
                for (b2, p2), hop in zip(path[begin + 1 :] + [node], via[begin:] + [address]):
                    host = f"[{hop}]" if ":" in hop else hop
                    text += f" -> {host}:{p2} ({apps[b2].name!r})"
                return first, text
            if node in done or node not in successors:
                done.add(node)
                continue
            on_path[node] = len(path)
            path.append(node)
            via.append(address)
            stack.append(iter(successors[node]))
    return None
