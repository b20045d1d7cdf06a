"""
Edge protection: the checks every new connection passes before an origin
is chosen, attached to each app's L{AppRuntime.checks}:

  1. geo: the client's country and AS number from the MaxMind DB files in
     C{geoip} (recorded as C{ClientCountry}, C{ClientAsn});
  2. the IP access rules (L{spectrum.firewall}), unless the app has
     C{ip_firewall: false}: a block is refused with status 403 and
     C{ClientMatchedIpFirewall} says which kind of rule decided;
  3. the app's C{limits} (L{spectrum.limits}): refused with 431
     (max_connections), 430 (per_ip_connections) or 429 (per_ip_rate).

A refused connection is closed at once: no origin connection is opened.
Everything here is local and synchronous; nothing waits on the network.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.logger import Logger

from spectrum import status as S
from spectrum.firewall import Firewall
from spectrum.geo import UNKNOWN_COUNTRY, GeoIP, GeoIPError
from spectrum.limits import ClientLimits
from spectrum.model import Config
from spectrum.record import CONNECT, ConnectionRecord
from spectrum.runtime import AppRuntime


class Protection:
    """
    The firewall, the geo databases and the limit state of every app, and
    the edge check that uses them.

    @ivar firewall: the rules in force; replace or edit it at run time.
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.firewall = Firewall(config.access_rules)
        self._rules_from = config.access_rules
        self._geo_files = config.geoip
        self.geo = GeoIP(config.geoip.country_db, config.geoip.asn_db)
        # Admitted connections not yet closed, and whose limits they count in.
        self._admitted: Dict[ConnectionRecord, ClientLimits] = {}

    def install(self, service: Any) -> None:
        """
        Attach to a L{spectrum.service.SpectrumService}: a check on each new
        app runtime, a recorder to count closes, a hook for new configs.
        """
        service.runtime_hooks.append(self.attach)
        service.recorders.add(self.closed)
        service.config_hooks.append(self.configure)

    def attach(self, runtime: AppRuntime) -> None:
        """
        Give a new app runtime its check, with limit state of its own.
        """
        limits = ClientLimits()

        def edge_check(runtime: AppRuntime, record: ConnectionRecord) -> Optional[int]:
            return self.check(runtime, record, limits)

        runtime.checks.append(edge_check)

    def check(self, runtime: AppRuntime, record: ConnectionRecord, limits: ClientLimits) -> Optional[int]:
        """
        L{None} to admit the connection, or the status it is refused with.
        """
        app = runtime.app
        ip = record.client_ip
        extra = record.extra
        geo = self.geo
        if geo.enabled:
            country, asn = geo.lookup(ip)
        else:
            country, asn = UNKNOWN_COUNTRY, None
        extra["ClientCountry"] = country
        extra["ClientAsn"] = asn
        extra["IpFirewall"] = app.ip_firewall
        firewall = self.firewall
        if app.ip_firewall and len(firewall):
            try:
                decision = firewall.decide(app.name, ip, country, asn)
            except ValueError:
                record.firewall = "BLOCK_ERROR"
                record.reason = f"client address {ip!r} cannot be checked"
                return S.FIREWALL
            record.firewall = decision.matched
            if not decision.allowed:
                rule = decision.rule
                assert rule is not None
                record.reason = f"access rule {rule.id} ({rule.mode} {rule.target} {rule.value})"
                return S.FIREWALL
        refusal = limits.admit(ip, app.limits, self.reactor.seconds())
        if refusal is not None:
            status, record.reason = refusal
            return status
        self._admitted[record] = limits
        return None

    def closed(self, kind: str, record: ConnectionRecord) -> None:
        """
        The recorder: a closing event frees the connection's place.
        """
        if kind == CONNECT:
            return
        limits = self._admitted.pop(record, None)
        if limits is not None:
            limits.release(record.client_ip)

    def configure(self, config: Config) -> None:
        """
        Take a new config: its rules replace the rule set when they differ
        from the last config's (so rules added at run time survive a reload
        that left C{access_rules} alone), and changed geo files are reopened.
        """
        if config.access_rules != self._rules_from:
            self.firewall.replace(config.access_rules)
            self._rules_from = config.access_rules
            self.log.info("access rules: {count} in force", count=len(self.firewall))
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
