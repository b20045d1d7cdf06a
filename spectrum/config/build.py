"""
The top level of a config: the builder that puts the parts together, and
the settings of the whole (zone, store, access rules, GeoIP, admin, event
log, analytics).
"""

from __future__ import annotations

import ipaddress
import math
import os
from typing import TYPE_CHECKING, Any

from spectrum.config.apps import _AppsPart
from spectrum.config.loops import find_loop
from spectrum.config.messages import _show
from spectrum.model import (
    AccessRule,
    AdminSettings,
    AdminToken,
    AnalyticsSettings,
    Config,
    Egress,
    EventLogSettings,
    GeoIPFiles,
)
from spectrum.rules import RuleError, make_rule

if TYPE_CHECKING:
    from spectrum.config.messages import _Path


class _Builder(_AppsPart):
    """
    Turn schema-valid data into a L{Config}, making the checks the schema
    cannot; the first problem found, in file order, is raised.

    The parts, each in a module of its own: L{base <spectrum.config.base>}
    (state and single values), L{apps <spectrum.config.apps>},
    L{origins <spectrum.config.origins>}, L{tls <spectrum.config.tls>}.
    """

    def build(self) -> Config:
        zone = self.data.get("zone", {})
        zone_name = zone.get("name")
        if zone_name is not None:
            zone_name = self.hostname(("zone", "name"), zone_name)
        certificates = self.certificates()
        apps = tuple(self.app(("apps", index), raw) for index, raw in enumerate(self.data.get("apps", [])))
        geoip = self.geoip()
        self.sni_defaults(apps)
        self.shared_upstreams(apps)
        self.sniff_ports(apps)
        loop = find_loop(apps)
        if loop is not None:
            index, chain = loop
            raise self.fail(
                ("apps", index),
                f"its origins lead back to this spectrum's own edge, so a connection would loop: {chain}",
            )
        return Config(
            apps=apps,
            zone_id=zone.get("id", "local"),
            zone_name=zone_name,
            source=self.source,
            store=self.store(("store",), self.data.get("store", "memory")),
            node=self.data.get("node"),
            workers=_workers(self.data.get("workers", 1)),
            kernel_filter=_kernel_filter(self.data.get("kernel_filter", "auto")),
            access_rules=self.access_rules(geoip),
            geoip=geoip,
            admin=self.admin(),
            events=self.events(),
            analytics=AnalyticsSettings(**self.data.get("analytics", {})),
            certificates=certificates,
            resolvers=self.resolvers(),
            egress=self.egress(),
        )

    def egress(self) -> Egress:
        raw = self.data.get("egress")
        if raw is None:
            return Egress()
        networks: list[Any] = []
        families: dict[int, int] = {}
        for index, text in enumerate(raw.get("addresses", [])):
            where = ("egress", "addresses", index)
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise self.fail(where, f"{_show(text)} is not an address or a CIDR") from None
            if raw.get("bind", False):
                if network.num_addresses != 1 or "/" in text:
                    raise self.fail(where, f"{_show(text)}: with bind, give single addresses to connect from")
                if network.version in families:
                    raise self.fail(
                        where,
                        f"with bind, one address per family (IPv{network.version} is egress.addresses"
                        f"[{families[network.version]}])",
                    )
            families.setdefault(network.version, index)
            networks.append(network)
        if raw.get("bind", False) and not networks:
            raise self.fail(("egress", "bind"), "needs egress.addresses: the addresses to connect from")
        return Egress(networks=tuple(str(n) for n in networks), bind=raw.get("bind", False))

    def geoip(self) -> GeoIPFiles:
        raw = self.data.get("geoip", {})
        files: dict[str, str] = {}
        for key in ("country_db", "asn_db"):
            if key in raw:
                files[key] = self.relative(raw[key])
        return GeoIPFiles(**files)

    def access_rules(self, geoip: GeoIPFiles) -> tuple[AccessRule, ...]:
        rules: list[AccessRule] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(self.data.get("access_rules", [])):
            path: _Path = ("access_rules", index)
            app = raw.get("app")
            if app is not None and app not in self.names:
                raise self.fail(path + ("app",), f"no app is named {_show(app)}")
            target = raw["configuration"]["target"]
            try:
                rule = make_rule(
                    raw["mode"], target, raw["configuration"]["value"], raw.get("notes", ""), app, raw.get("id")
                )
            except RuleError as e:
                raise self.fail(path + ("configuration", "value"), str(e)) from None
            if target == "country" and geoip.country_db is None:
                raise self.fail(path + ("configuration", "target"), "country rules need geoip.country_db")
            if target == "asn" and geoip.asn_db is None:
                raise self.fail(path + ("configuration", "target"), "asn rules need geoip.asn_db")
            for earlier in rules:
                if (earlier.target, earlier.value, earlier.app) == (rule.target, rule.value, rule.app):
                    raise self.fail(
                        path,
                        f"{rule.target} {rule.value} is already in access_rules[{rules.index(earlier)}]"
                        + (f" for app {_show(app)}" if app else ""),
                    )
            if rule.id in seen:
                raise self.fail(path + ("id",), f"id {rule.id} is already used by access_rules[{seen[rule.id]}]")
            seen[rule.id] = index
            rules.append(rule)
        return tuple(rules)

    def admin(self) -> AdminSettings | None:
        if "admin" not in self.data:
            return None
        raw = dict(self.data["admin"])
        tokens = tuple(
            AdminToken(**dict(spec, token_file=self.relative(spec["token_file"]) if "token_file" in spec else None))
            for spec in raw.pop("tokens", [])
        )
        seen: dict[str, int] = {}
        for index, token in enumerate(tokens):
            if token.name in seen:
                raise self.fail(("admin", "tokens", index, "name"), f"duplicate token name {_show(token.name)}")
            seen[token.name] = index
            if token.token is not None and len(token.token.strip()) < 16:
                raise self.fail(("admin", "tokens", index, "token"), "a token needs at least 16 characters")
        if "state_file" in raw:
            raw["state_file"] = self.relative(raw["state_file"])
        settings = AdminSettings(tokens=tokens, **raw)
        from twisted.internet.endpoints import serverFromString

        try:
            # Parsing needs no reactor; listening happens at start.
            serverFromString(None, settings.listen)
        except (ValueError, TypeError) as e:
            raise self.fail(
                ("admin", "listen"),
                f"{_show(settings.listen)} is not a server endpoint like 'tcp:8080:interface=127.0.0.1' ({e})",
            ) from None
        return settings

    def events(self) -> EventLogSettings | None:
        raw = self.data.get("events")
        if raw is None:
            return None
        settings = dict(raw, path=self.relative(raw["path"]))
        if math.isnan(settings.get("flush_interval", 1.0)):
            raise self.fail(("events", "flush_interval"), "expected seconds, got nan")
        return EventLogSettings(**settings)

    def resolvers(self) -> tuple[tuple[str, int], ...]:
        servers = []
        for index, spec in enumerate(self.data.get("resolvers", [])):
            path: _Path = ("resolvers", index)
            host, port = spec, "53"
            if spec.startswith("["):
                host, _, rest = spec[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else rest or "53"
            elif spec.count(":") == 1:
                host, _, port = spec.partition(":")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise self.fail(path, f"expected ip, ip:port or [ipv6]:port, got {_show(spec)}")
            servers.append((self.address(path, host, names=False), int(port)))
        return tuple(servers)

    def store(self, path: _Path, url: str) -> str:
        if url != "memory":
            from spectrum.store.url import StoreURLError, parse_url

            try:
                parsed = parse_url(url)
            except StoreURLError as e:
                raise self.fail(path, str(e)) from None
            try:
                import txredisapi  # noqa: F401
            except ImportError as e:
                raise self.fail(
                    path,
                    f"{parsed.scheme}:// needs the Redis client library, which is not installed ({e}):"
                    " pip install 'spectrum-edge[redis]'",
                ) from None
        return url


def _workers(value: Any) -> int:
    """
    C{workers} as a count: C{auto} is one per core this process may run on.
    """
    return usable_cores() if value == "auto" else int(value)


def usable_cores() -> int:
    """
    The cores this process may run on (its CPU affinity, which a container's
    cpuset narrows; PyPy 3.9 has no C{sched_getaffinity}, so there the
    machine's count): what C{workers: auto} starts.
    """
    getaffinity = getattr(os, "sched_getaffinity", None)
    count = len(getaffinity(0)) if getaffinity else (os.cpu_count() or 1)
    return max(1, min(256, count))


def _kernel_filter(value: Any) -> str:
    """
    C{kernel_filter} as a word: YAML reads a bare C{on}/C{off} as a boolean.
    """
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)
