"""
The configuration model: immutable attrs classes built by L{spectrum.config}.

Everything that can change at run time (apps, pools, rules) is replaced as a
whole L{Config}; the service reconciles its listeners against the new one.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attr

PROTOCOLS = ("tcp", "udp")
LOAD_BALANCING = ("round_robin", "least_connections", "random", "hash")
TLS_MODES = ("off", "flexible", "full", "strict")
PROXY_PROTOCOLS = ("off", "v1", "v2", "simple")
#: A UDP session's idle timeout when the app gives none: UDP has no close,
#: so a session ends only by going quiet.
UDP_IDLE_DEFAULT = 60.0
#: The cap on an app's open UDP sessions when it gives none (each is a socket).
UDP_MAX_SESSIONS_DEFAULT = 10000


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PortRange:
    """
    An inclusive range of ports; a single port has C{first == last}.
    """

    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        if self.first == self.last:
            return str(self.first)
        return f"{self.first}-{self.last}"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PortMapping:
    """
    Edge ports mapped onto origin ports, offset by offset.

    @ivar origin: the origin ports, the same length as C{edge}; L{None} when
        each origin's own port applies (or, lacking one, the edge port).
    """

    edge: PortRange
    origin: Optional[PortRange] = None

    def origin_port(self, edge_port: int) -> Optional[int]:
        """
        The origin port that C{edge_port} maps to, or L{None} when the
        mapping leaves it to the origin.
        """
        if self.origin is None:
            return None
        return self.origin.first + (edge_port - self.edge.first)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Origin:
    """
    One server behind an app.

    @ivar address: an IPv4 or IPv6 literal, or a hostname resolved without
        blocking when a connection needs it.
    @ivar port: this origin's port for single-port mappings; L{None} to use
        the mapping's origin port (or the edge port).
    """

    name: str
    address: str
    port: Optional[int] = None
    weight: float = 1.0
    enabled: bool = True


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Pool:
    """
    The origins of an app and how to spread connections over them.
    """

    name: str
    origins: Tuple[Origin, ...]
    load_balancing: str = "round_robin"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Timeouts:
    """
    Seconds; 0 means none.
    """

    connect: float = 5.0
    idle: float = 0.0
    handshake: float = 10.0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class App:
    """
    One Spectrum application: edge addresses and ports, and the pool behind.

    @ivar ips: edge addresses to bind.
    @ivar hostnames: names that tell apps sharing an edge port apart
        (C{dns.name} and C{sni}), lower case.
    @ivar origin_tries: how many origins to try, in the balancer's order,
        before a connection is given up.
    @ivar accept_proxy_protocol: networks (CIDR) trusted to send a PROXY
        header in front of each connection (UDP: of each session's first
        datagram), whose declared client address then counts as the
        client's; empty when none is accepted.
    @ivar max_sessions: UDP: the most sessions open at once (0: no cap).
    @ivar per_ip_sessions: UDP: the most sessions one client address may
        have open (0: no cap).
    """

    name: str
    protocol: str
    ips: Tuple[str, ...]
    ports: Tuple[PortMapping, ...]
    pool: Pool
    dns_name: Optional[str] = None
    dns_type: str = "CNAME"
    hostnames: Tuple[str, ...] = ()
    tls: str = "off"
    proxy_protocol: str = "off"
    ip_firewall: bool = True
    timeouts: Timeouts = Timeouts()
    origin_tries: int = 3
    id: str = ""
    accept_proxy_protocol: Tuple[str, ...] = ()
    max_sessions: int = UDP_MAX_SESSIONS_DEFAULT
    per_ip_sessions: int = 0

    def mapping_for(self, edge_port: int) -> PortMapping:
        """
        The mapping that covers C{edge_port}.

        @raise KeyError: no mapping covers it.
        """
        for mapping in self.ports:
            if edge_port in mapping.edge:
                return mapping
        raise KeyError(edge_port)

    def edge_ports(self) -> Tuple[int, ...]:
        """
        Every edge port this app listens on, in order.
        """
        return tuple(port for mapping in self.ports for port in range(mapping.edge.first, mapping.edge.last + 1))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Config:
    """
    A whole, validated configuration.

    @ivar source: the file it was read from, for reloads and messages.
    """

    apps: Tuple[App, ...] = ()
    zone_id: str = "local"
    zone_name: Optional[str] = None
    source: Optional[str] = None

    def app(self, name: str) -> App:
        """
        The app called C{name}.

        @raise KeyError: there is none.
        """
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)
