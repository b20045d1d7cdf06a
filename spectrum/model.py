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
MONITOR_TYPES = ("tcp", "tls", "http", "https", "smtp", "udp")
WHEN_ALL_DOWN = ("refuse", "try_all")
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
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
    #: no new connections; open ones continue (set from the config; the
    #: admin API drains through L{spectrum.health.HealthChecker.drain})
    drain: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Monitor:
    """
    A pool's health check, with the field names of Cloudflare's load
    balancer monitors; see L{spectrum.health}.

    @ivar port: the port to probe; L{None} for each origin's own.
    @ivar send: bytes written once connected (tcp, tls) or the datagram (udp).
    @ivar expect: bytes the answer must contain; C{expect_regex}: a pattern
        it must match instead.
    @ivar header: HTTP request headers, name and values.
    @ivar ca: a PEM file of CAs that verify tls/https origins (else the
        system's); C{allow_insecure} skips verification.
    @ivar passive_down: real connections that fail in a row (refused, timed
        out, reset before any byte) that mark an origin down until a probe
        passes; 0 turns passive health off.
    """

    type: str = "tcp"
    interval: float = 60.0
    timeout: float = 5.0
    retries: int = 2
    consecutive_up: int = 1
    consecutive_down: int = 1
    port: Optional[int] = None
    send: Optional[bytes] = None
    expect: Optional[bytes] = None
    expect_regex: Optional[bytes] = None
    path: str = "/"
    method: str = "GET"
    expected_codes: str = "200"
    expected_body: Optional[str] = None
    header: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    allow_insecure: bool = False
    ca: Optional[str] = None
    passive_down: int = 3


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Pool:
    """
    The origins of an app and how to spread connections over them.

    @ivar monitor: the health check; L{None} treats every origin as up.
    @ivar when_all_down: with no healthy origin, C{"refuse"} new connections
        or C{"try_all"} enabled origins anyway.
    """

    name: str
    origins: Tuple[Origin, ...]
    load_balancing: str = "round_robin"
    monitor: Optional[Monitor] = None
    when_all_down: str = "refuse"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Timeouts:
    """
    Seconds; 0 means none.
    """

    connect: float = 5.0
    idle: float = 0.0
    handshake: float = 10.0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Limits:
    """
    Limits on an app's clients, checked at the edge before any origin
    connection is opened; 0 means no limit.

    @ivar max_connections: open connections of the app at once.
    @ivar per_ip_connections: open connections from one client address.
    @ivar per_ip_rate: new connections per second from one client address
        (a token bucket holding one second's worth, at least one).
    """

    max_connections: int = 0
    per_ip_connections: int = 0
    per_ip_rate: float = 0.0
    #: "node": each node counts alone; "cluster": the nodes sharing a store
    #: count together (see L{spectrum.cluster.rate.ClusterRate})
    per_ip_rate_scope: str = "node"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CertificateFiles:
    """
    One edge certificate: PEM files (the certificate file may hold the chain
    after the leaf), as absolute paths.
    """

    certificate: str
    private_key: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TlsOptions:
    """
    How the edge terminates TLS for an app.

    @ivar min_version: the oldest TLS version accepted, C{"1.0"} to C{"1.3"}.
    @ivar ciphers: an OpenSSL cipher string (TLS 1.2 and older), or L{None}
        for OpenSSL's defaults.
    @ivar alpn: protocols the edge may select, in its order of preference.
    """

    min_version: str = "1.2"
    ciphers: Optional[str] = None
    alpn: Tuple[str, ...] = ()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ClientAuth:
    """
    Mutual TLS at the edge: clients need a certificate signed by C{ca}.
    """

    ca: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OriginTls:
    """
    TLS towards the origin.

    @ivar ca: PEM file of the CAs trusted for the origin (L{None}: the
        system store); used when the origin is verified.
    @ivar server_name: the name sent as SNI and verified; L{None} means the
        origin's own address.
    @ivar certificate: a client certificate for origins that demand one.
    """

    ca: Optional[str] = None
    server_name: Optional[str] = None
    certificate: Optional[str] = None
    private_key: Optional[str] = None


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
    limits: Limits = Limits()
    tls_options: TlsOptions = attr.Factory(TlsOptions)
    client_auth: Optional[ClientAuth] = None
    origin_tls: Optional[OriginTls] = None
    #: on an edge port shared by hostname, take the names no app claims
    sni_default: bool = False

    @property
    def terminates_tls(self) -> bool:
        """
        Whether the edge holds the TLS session with the client.
        """
        return self.tls != "off"

    @property
    def origin_tls_mode(self) -> str:
        """
        What the origin leg speaks: C{off} (plaintext), C{full} (TLS, not
        verified) or C{strict} (TLS, verified).
        """
        if self.tls in ("full", "strict"):
            return self.tls
        if self.tls == "off" and self.origin_tls is not None:
            return "strict"
        return "off"

    accept_proxy_protocol: Tuple[str, ...] = ()
    max_sessions: int = UDP_MAX_SESSIONS_DEFAULT
    per_ip_sessions: int = 0
    #: on an edge port shared by protocol, what this app takes: C{ssh},
    #: C{tls}, C{http}, C{minecraft} or C{any} (the rest); L{None} when the
    #: port is not shared by protocol
    sniff: Optional[str] = None
    #: C{sniff: any}: seconds of client silence before the app takes a
    #: connection whose server speaks first
    sniff_wait: float = 1.0
    #: C{sniff: minecraft}: what a player's server list shows for a name no
    #: app on the port has
    minecraft_unknown_message: str = "Unknown server"
    #: C{tls: flexible}: the protocol whose own request for TLS the edge
    #: answers (C{postgres}), or L{None} for TLS from the first byte
    starttls: Optional[str] = None
    #: with C{starttls}: relay clients that do not ask for TLS (else refused)
    allow_plaintext: bool = False

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
class AccessRule:
    """
    One IP access rule, in Cloudflare's terms (see L{spectrum.firewall}).

    @ivar mode: C{whitelist} or C{block}.
    @ivar target: C{ip}, C{ip6}, C{ip_range}, C{asn} or C{country}.
    @ivar value: the canonical form: an address, a network with its prefix
        length, C{AS64500}, or an upper-case country code (C{XX}: unknown).
    @ivar app: the name of the one app this rule applies to; L{None} for all.
    @ivar id: 32 hex digits; stable for a rule from the config.
    """

    mode: str
    target: str
    value: str
    notes: str = ""
    app: Optional[str] = None
    id: str = ""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class GeoIPFiles:
    """
    MaxMind DB files to look clients up in (absolute paths, or L{None}).
    """

    country_db: Optional[str] = None
    asn_db: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AdminToken:
    """
    One admin API token as configured: exactly one of C{token},
    C{token_env} (an environment variable) and C{token_file} gives it.

    @ivar permissions: C{read} or C{edit}.
    @ivar email: when set, C{X-Auth-Email} must match it.
    """

    name: str
    permissions: str = "read"
    token: Optional[str] = attr.ib(default=None, repr=False)
    token_env: Optional[str] = None
    token_file: Optional[str] = None
    email: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AdminSettings:
    """
    The admin listener (a Twisted server endpoint description).

    @ivar tokens: the API's tokens; with none, one is generated at start.
    @ivar state_file: where apps and rules made through the API are kept
        (absolute); L{None} for the default next to the config file.
    @ivar metrics: who may read C{/metrics}: C{"public"} anyone,
        C{"token"} a token's holder; L{None}: anyone when the admin listens
        on loopback only, else a token's holder.
    """

    listen: str = "tcp:8080:interface=127.0.0.1"
    tokens: Tuple[AdminToken, ...] = ()
    state_file: Optional[str] = None
    metrics: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class EventLogSettings:
    """
    The JSON-lines event log: where, when it rotates, how often it is written.
    """

    path: str
    max_bytes: int = 100 * 1024 * 1024
    max_files: int = 5
    flush_interval: float = 1.0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AnalyticsSettings:
    """
    How many minutes of per-minute analytics buckets are kept.
    """

    window_minutes: int = 60


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Egress:
    """
    The addresses origins see connections from (C{egress} in the config).

    @ivar networks: what C{/client/v4/ips} lists for this node, as CIDRs;
        empty: the node finds its own source addresses towards its origins.
    @ivar bind: origin connections leave from the address of the origin's
        family in C{networks} (each then a single address).
    """

    networks: Tuple[str, ...] = ()
    bind: bool = False

    def source_for(self, ipv6: bool) -> Optional[str]:
        """
        The address an origin connection of that family is bound to, if any.
        """
        if not self.bind:
            return None
        for network in self.networks:
            if (":" in network) == ipv6:
                return network.split("/", 1)[0]
        return None


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
    #: "memory" or a Redis URL (see L{spectrum.store.url})
    store: str = "memory"
    #: this node's name in per-node figures; L{None}: the host name
    node: Optional[str] = None
    #: processes sharing the listening ports
    workers: int = 1
    #: in-kernel shedding of refused sources: "auto", "on" or "off"
    kernel_filter: str = "auto"
    access_rules: Tuple[AccessRule, ...] = ()
    geoip: GeoIPFiles = GeoIPFiles()
    admin: Optional[AdminSettings] = None
    events: Optional[EventLogSettings] = None
    analytics: AnalyticsSettings = AnalyticsSettings()
    certificates: Tuple[CertificateFiles, ...] = ()
    #: name servers for origin names, as C{(ip, port)}; none: /etc/resolv.conf's
    resolvers: Tuple[Tuple[str, int], ...] = ()
    egress: Egress = Egress()

    def app(self, name: str) -> App:
        """
        The app called C{name}.

        @raise KeyError: there is none.
        """
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)
