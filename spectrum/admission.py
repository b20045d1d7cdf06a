"""
Admission: the one decision on who gets in, made for every port kind (plain
TCP, TLS-terminating, SNI-shared, behind an upstream's PROXY header, UDP) as
soon as the client's address is known, before any byte is read or answered,
any origin is dialled or any per-connection state is built:

  1. geo: the client's country and AS number from the MaxMind DB files in
     C{geoip};
  2. the IP access rules (L{spectrum.firewall}), unless the app has
     C{ip_firewall: false}: a block is refused with status 403;
  3. the app's C{limits} (L{spectrum.limits}): 431 (max_connections), 430
     (per_ip_connections) or 429 (per_ip_rate);
  4. further gates (the cluster-wide rate), each able to refuse.

An admitted connection holds a L{Ticket}; whatever happens to it later, the
lifecycle releases the ticket exactly once. A refusal is a L{Refusal} and
costs nothing more here. Everything is local and synchronous.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from twisted.logger import Logger

from spectrum import status as S
from spectrum.firewall import Firewall
from spectrum.geo import UNKNOWN_COUNTRY, GeoIP, GeoIPError
from spectrum.limits import ClientLimits
from spectrum.model import App, Config, Limits

#: A further gate: (app, client address) to L{None}, or (status, reason).
Gate = Callable[[App, str], Optional[Tuple[int, str]]]


def normalize_ip(host: str) -> str:
    """
    A client address in the one form rules, limits and records use: an
    IPv4-mapped IPv6 address, in any spelling (C{::ffff:198.51.100.7},
    C{::FFFF:c633:6407}, C{0:0:0:0:0:ffff:c633:6407}), is the IPv4 address
    it maps; anything else is returned as it is.
    """
    if ":" not in host:
        return host
    lowered = host.lower()
    if "ffff" not in lowered:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, lowered)
    except OSError:
        return host
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return host


class Ticket:
    """
    What admitting one connection took (its place in the app's limits), and
    what admission learnt about the client; L{release} gives the place back.
    """

    __slots__ = ("_limits", "ip", "country", "asn", "matched")

    def __init__(self, limits: Optional[ClientLimits], ip: str, country: str, asn: Optional[int], matched: str) -> None:
        self._limits = limits
        self.ip = ip
        self.country = country
        self.asn = asn
        self.matched = matched

    def release(self) -> None:
        """
        Give the place back; a second call does nothing.
        """
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.release(self.ip)


class Refusal:
    """
    Why a client was refused: the status, a reason, and which rule kind
    matched (C{ClientMatchedIpFirewall}) and which rule, if a rule decided.
    """

    __slots__ = ("status", "reason", "matched", "rule", "country", "asn")

    def __init__(
        self,
        status: int,
        reason: str,
        matched: str = "UNKNOWN",
        rule: str = "",
        country: str = UNKNOWN_COUNTRY,
        asn: Optional[int] = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.matched = matched
        self.rule = rule
        self.country = country
        self.asn = asn


Verdict = Union[Ticket, Refusal]


class Admission:
    """
    The rules, the geo databases and the gates; L{admit} decides.

    @ivar firewall: the rules in force (the index the rule owner keeps).
    @ivar gates: further checks after the local limits.
    @ivar origin_sockets: (local address, port, remote address, port) of
        every open origin connection of this process: a client whose
        (address, port, edge address, port) is one of them is this process
        talking to itself (a proxy loop), refused at accept.
    @ivar client_sockets: (address, port, edge address, port) of every open
        client connection -> its L{spectrum.proxy.lifecycle.Connection}: an
        origin connection that turns out to be one of them closes that loop
        when it connects after the accept.
    """

    log = Logger()

    def __init__(self, config: Optional[Config], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        if config is None:
            config = Config(apps=())
        self.origin_sockets: Set[Tuple[str, int, str, int]] = set()
        self.client_sockets: Dict[Tuple[str, int, str, int], Any] = {}
        self.firewall = Firewall(config.access_rules)
        self._geo_files = config.geoip
        self.geo = GeoIP(config.geoip.country_db, config.geoip.asn_db)
        self.gates: List[Gate] = []

    def admit(self, app: App, limits: Optional[ClientLimits], ip: str) -> Verdict:
        """
        Admit a client at C{ip} (already normalized) to C{app}, taking a
        place in C{limits} (the app's, or a shared port's), or refuse it.
        """
        geo = self.geo
        if geo.enabled:
            country, asn = geo.lookup(ip)
        else:
            country, asn = UNKNOWN_COUNTRY, None
        matched = "UNKNOWN"
        if app.ip_firewall:
            ruled = self._rules(app.name, ip, country, asn)
            if isinstance(ruled, Refusal):
                return ruled
            matched = ruled
        if limits is not None:
            refused = limits.admit(ip, app.limits, self.reactor.seconds())
            if refused is not None:
                return Refusal(refused[0], refused[1], matched, "", country, asn)
        for gate in self.gates:
            refused = gate(app, ip)
            if refused is not None:
                if limits is not None:
                    limits.release(ip)
                return Refusal(refused[0], refused[1], matched, "", country, asn)
        return Ticket(limits, ip, country, asn, matched)

    def admit_to_port(self, limits: ClientLimits, port_limits: Limits, ip: str) -> Verdict:
        """
        Admit a client at C{ip} to an edge port several apps share, before
        the app is known (its ClientHello not yet read): the global rules,
        and the port's own limit on connections in that state.
        """
        matched = self._rules("", ip, UNKNOWN_COUNTRY, None)
        if isinstance(matched, Refusal):
            return matched
        refused = limits.admit(ip, port_limits, self.reactor.seconds())
        if refused is not None:
            return Refusal(refused[0], refused[1], matched)
        return Ticket(limits, ip, UNKNOWN_COUNTRY, None, matched)

    def _rules(self, app: str, ip: str, country: str, asn: Optional[int]) -> Union[str, Refusal]:
        """
        The access rules' verdict for C{ip} in C{app}'s scope (C{""}: the
        global rules only): the kind of rule that matched when admitted
        (C{ClientMatchedIpFirewall}), else the refusal.
        """
        firewall = self.firewall
        if not len(firewall):
            return "UNKNOWN"
        try:
            decision = firewall.decide(app, ip, country, asn)
        except ValueError:
            return Refusal(S.FIREWALL, f"client address {ip!r} cannot be checked", "BLOCK_ERROR", "", country, asn)
        if decision.allowed:
            return decision.matched
        rule = decision.rule
        assert rule is not None
        reason = f"access rule {rule.id} ({rule.mode} {rule.target} {rule.value})"
        return Refusal(S.FIREWALL, reason, decision.matched, rule.id, country, asn)

    def configure(self, config: Config) -> None:
        """
        Take a new config: changed geo files are reopened (its rules reach
        the firewall through their owner, L{spectrum.rulebook.RuleBook}).
        """
        if config.geoip != self._geo_files:
            try:
                geo = GeoIP(config.geoip.country_db, config.geoip.asn_db)
            except GeoIPError as e:
                self.log.error("geoip: {error}; the previous databases stay in use", error=str(e))
                return
            old, self.geo = self.geo, geo
            self._geo_files = config.geoip
            old.close()

    def close(self) -> None:
        self.geo.close()
