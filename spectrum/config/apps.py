"""
One app: its protocol, edge addresses and ports (and whom it shares them
with), limits, PROXY protocol settings and timeouts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from spectrum.config.base import _Bound
from spectrum.config.messages import _format_path, _show
from spectrum.config.names import _addresses_overlap, _hostnames_overlap, _share_a_port
from spectrum.config.origins import _OriginsPart
from spectrum.config.sniff import _SniffPart
from spectrum.config.tls import _TlsPart
from spectrum.model import (
    UDP_IDLE_DEFAULT,
    UDP_MAX_SESSIONS_DEFAULT,
    App,
    Limits,
    PortMapping,
    PortRange,
    Timeouts,
)

if TYPE_CHECKING:
    from spectrum.config.messages import _Path


DEFAULT_IPS = ("0.0.0.0",)
#: Cloudflare's dynamic edge_ips: every address of this host, per connectivity.
DYNAMIC_IPS = {"ipv4": ("0.0.0.0",), "ipv6": ("::",), "all": ("0.0.0.0", "::")}


class _AppsPart(_OriginsPart, _TlsPart, _SniffPart):
    """
    The builder's part for apps: each app in file order (L{app}, which
    uses the origins and TLS parts), then the checks across apps (edge
    ports shared by hostname, SNI defaults, PROXY headers on shared ports).
    """

    def app(self, path: _Path, raw: dict[str, Any]) -> App:
        name = raw["name"]
        if name in self.names:
            raise self.fail(
                path + ("name",),
                f"duplicate app name {_show(name)} (also {_format_path(self.names[name], 'config')})",
            )
        self.names[name] = path

        protocol, implied = self.protocol(path, raw)
        ports = self.ports(path, raw, implied)
        ips = tuple(self.ips(path, raw))
        dns = raw.get("dns")
        dns_name = self.hostname(path + ("dns", "name"), dns["name"], wildcard=True) if dns else None
        hostnames: list[str] = [dns_name] if dns_name else []
        for index, sni in enumerate(raw.get("sni", [])):
            host = self.hostname(path + ("sni", index), sni, wildcard=True)
            if host not in hostnames:
                hostnames.append(host)

        pool, ports = self.pool(path, raw, name, protocol, ports)
        sniff = self.sniff(path, raw, protocol)
        self.edge(path, raw, name, protocol, ips, ports, tuple(hostnames), sniff["sniff"] or "", "starttls" in raw)

        app_id = raw.get("id") or hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
        id_path = path + (("id",) if "id" in raw else ("name",))
        if app_id in self.ids:
            raise self.fail(
                id_path,
                f"id {_show(app_id)} is already used by {_format_path(self.ids[app_id][:2], 'config')}",
            )
        self.ids[app_id] = id_path

        timeouts = raw.get("timeouts", {})
        for key, seconds in timeouts.items():
            if math.isnan(seconds):
                # The schema's minimum lets NaN through: it compares false.
                raise self.fail(path + ("timeouts", key), "expected seconds, got nan")
        defaults = Timeouts()
        return App(
            name=name,
            protocol=protocol,
            ips=ips,
            ports=ports,
            pool=pool,
            dns_name=dns_name,
            dns_type=dns.get("type", "CNAME") if dns else "CNAME",
            hostnames=tuple(hostnames),
            **self.tls(path, raw, protocol),
            **self.relay_options(path, raw, protocol),
            **sniff,
            ip_firewall=raw.get("ip_firewall", True),
            timeouts=Timeouts(
                connect=float(timeouts.get("connect", defaults.connect)),
                idle=float(timeouts.get("idle", UDP_IDLE_DEFAULT if protocol == "udp" else defaults.idle)),
                handshake=float(timeouts.get("handshake", defaults.handshake)),
            ),
            origin_tries=int(raw.get("origin_tries", 3)),
            id=app_id,
            limits=self.limits(path, raw),
        )

    def limits(self, path: _Path, raw: dict[str, Any]) -> Limits:
        limits = raw.get("limits", {})
        rate = limits.get("per_ip_rate", 0)
        if math.isnan(rate) or math.isinf(rate):
            raise self.fail(path + ("limits", "per_ip_rate"), f"expected connections per second, got {rate}")
        return Limits(
            max_connections=limits.get("max_connections", 0),
            per_ip_connections=limits.get("per_ip_connections", 0),
            per_ip_rate=float(rate),
            per_ip_rate_scope=limits.get("per_ip_rate_scope", "node"),
        )

    def relay_options(self, path: _Path, raw: dict[str, Any], protocol: str) -> dict[str, Any]:
        """
        The PROXY protocol settings and UDP session caps, checked against
        the app's protocol.
        """
        mode = raw.get("proxy_protocol", "off") or "off"
        if mode == "v1" and protocol == "udp":
            raise self.fail(
                path + ("proxy_protocol",),
                "v1 describes TCP connections only; use v2 or simple for a udp app",
            )
        if mode == "simple" and protocol != "udp":
            raise self.fail(
                path + ("proxy_protocol",),
                "simple (Simple Proxy Protocol) is for udp apps; use v1 or v2 for tcp",
            )
        trusted: list[str] = []
        if "accept_proxy_protocol" in raw:
            where = path + ("accept_proxy_protocol",)
            for index, text in enumerate(raw["accept_proxy_protocol"]["trusted"]):
                try:
                    network = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise self.fail(where + ("trusted", index), f"{_show(text)} is not an address or a CIDR") from None
                trusted.append(str(network))
        limits = raw.get("limits", {})
        for key in ("max_sessions", "per_ip_sessions"):
            if key in limits and protocol != "udp":
                raise self.fail(path + ("limits", key), "counts UDP sessions; it applies to udp apps only")
        return {
            "proxy_protocol": mode,
            "accept_proxy_protocol": tuple(trusted),
            "max_sessions": int(limits.get("max_sessions", UDP_MAX_SESSIONS_DEFAULT)),
            "per_ip_sessions": int(limits.get("per_ip_sessions", 0)),
        }

    def protocol(self, path: _Path, raw: dict[str, Any]) -> tuple[str, PortRange | None]:
        """
        The protocol, and the edge ports when it has them (C{tcp/22}).
        """
        text = raw["protocol"].lower()
        protocol, _, ports = text.partition("/")
        if not ports:
            return protocol, None
        return protocol, self.port_range(path + ("protocol",), ports)

    def ports(self, path: _Path, raw: dict[str, Any], implied: PortRange | None) -> tuple[PortMapping, ...]:
        if implied is not None:
            if "ports" in raw:
                raise self.fail(
                    path + ("ports",),
                    f"protocol {_show(raw['protocol'])} already gives the edge ports;"
                    f" remove ports or use protocol '{raw['protocol'].partition('/')[0]}'",
                )
            origin = None
            if "origin_port" in raw:
                origin = self.origin_range(path + ("origin_port",), raw["origin_port"], implied)
            return (PortMapping(implied, origin),)

        if "origin_port" in raw:
            raise self.fail(
                path + ("origin_port",),
                "goes with a protocol like 'tcp/22'; with ports, give origin_port in each of ports[]",
            )
        if "ports" not in raw:
            raise self.fail(
                path,
                "no edge ports; give ports, or a protocol with ports like 'tcp/22'",
            )
        mappings: list[PortMapping] = []
        for index, item in enumerate(raw["ports"]):
            where = path + ("ports", index)
            edge = self.port_range(where + ("destination_port",), item["destination_port"])
            for other, earlier in enumerate(mappings):
                if edge.first <= earlier.edge.last and earlier.edge.first <= edge.last:
                    port = max(edge.first, earlier.edge.first)
                    raise self.fail(
                        where + ("destination_port",),
                        f"{port} is already in {_format_path(path + ('ports', other), '')}",
                    )
            origin = None
            if "origin_port" in item:
                origin = self.origin_range(where + ("origin_port",), item["origin_port"], edge)
            mappings.append(PortMapping(edge, origin))
        return tuple(mappings)

    def ips(self, path: _Path, raw: dict[str, Any]) -> Iterable[str]:
        key = "ips"
        given = raw.get("ips")
        if "edge_ips" in raw:
            where = path + ("edge_ips",)
            if "ips" in raw:
                raise self.fail(where, "give the edge addresses once: ips or edge_ips")
            edge_ips = raw["edge_ips"]
            if edge_ips["type"] == "dynamic":
                if "ips" in edge_ips:
                    raise self.fail(where + ("ips",), "goes with type static; dynamic binds every address of this host")
                return DYNAMIC_IPS[edge_ips.get("connectivity", "all")]
            if "connectivity" in edge_ips:
                raise self.fail(where + ("connectivity",), "goes with type dynamic; static binds the ips given")
            if "ips" not in edge_ips:
                raise self.fail(where, "type static needs ips")
            key, given = "edge_ips", edge_ips["ips"]
        if given is None:
            return DEFAULT_IPS
        result: list[str] = []
        for index, text in enumerate(given):
            where = path + ((key, "ips", index) if key == "edge_ips" else (key, index))
            ip = self.address(where, text, names=False)
            for earlier in result:
                if _addresses_overlap(ip, earlier):
                    raise self.fail(where, f"{ip} overlaps {earlier}, given before it")
            result.append(ip)
        return result

    def edge(
        self,
        path: _Path,
        raw: dict[str, Any],
        name: str,
        protocol: str,
        ips: tuple[str, ...],
        ports: tuple[PortMapping, ...],
        hostnames: tuple[str, ...],
        sniff: str = "",
        starttls: bool = False,
    ) -> None:
        """
        Refuse an edge address and port that an earlier app already has,
        unless both apps can be told apart by protocol or hostname.
        """
        for index, mapping in enumerate(ports):
            if "ports" in raw:
                where = path + ("ports", index, "destination_port")
            else:
                where = path + ("protocol",)
            for ip in ips:
                for other in self.bound:
                    problem = self.clash(protocol, ip, mapping.edge, hostnames, other, sniff, starttls)
                    if problem:
                        raise self.fail(where, problem)
        for mapping in ports:
            for ip in ips:
                self.bound.append(_Bound(protocol, ip, mapping.edge, name, hostnames, sniff, starttls))

    @staticmethod
    def clash(
        protocol: str,
        ip: str,
        edge: PortRange,
        hostnames: tuple[str, ...],
        other: _Bound,
        sniff: str = "",
        starttls: bool = False,
    ) -> str | None:
        """
        Why binding C{edge} on C{ip} collides with an earlier app, if it does.
        """
        if other.protocol != protocol or not _addresses_overlap(ip, other.ip):
            return None
        if edge.first > other.edge.last or other.edge.first > edge.last:
            return None
        port = max(edge.first, other.edge.first)
        used = f"{port} on {ip} is already used by app {_show(other.app)}"
        if protocol == "udp":
            return f"{used}; UDP apps cannot share an edge port"
        if starttls or other.starttls:
            return f"{used}; an app with starttls cannot share its edge port"
        if sniff or other.sniff:
            problem = _SniffPart.sniff_clash(used, sniff, hostnames, other)
            if problem is not None:
                return problem or None
        if not hostnames or not other.hostnames:
            return f"{used}; apps may share an edge port only when each has distinct hostnames (dns.name, sni)"
        for host in hostnames:
            for other_host in other.hostnames:
                if host == other_host:
                    return f"{used} with the same hostname {_show(host)}"
                if _hostnames_overlap(host, other_host):
                    return f"{used}, whose hostname {_show(other_host)} overlaps {_show(host)}"
        return None

    def sni_defaults(self, apps: tuple[App, ...]) -> None:
        """
        A default app must share its edge port, and one port has at most one.
        """
        for index, app in enumerate(apps):
            if not app.sni_default:
                continue
            where = ("apps", index, "sni_default")
            shared = False
            for other_index, other in enumerate(apps):
                if other is app or other.protocol != app.protocol or other.sniff != app.sniff:
                    continue
                common = [
                    (ip, port)
                    for ip in app.ips
                    for port in app.edge_ports()
                    if any(_addresses_overlap(ip, o) for o in other.ips) and port in other.edge_ports()
                ]
                if not common:
                    continue
                shared = True
                if other.sni_default and other_index < index:
                    ip, port = common[0]
                    raise self.fail(
                        where,
                        f"app {_show(other.name)} is already the default on {ip}:{port}; a port has one default app",
                    )
            if not shared and not app.sniff:
                raise self.fail(where, "applies only on an edge port shared with other apps by hostname")

    def shared_upstreams(self, apps: tuple[App, ...]) -> None:
        """
        Apps sharing an edge port agree on C{accept_proxy_protocol}: the
        header is read before the ClientHello that tells them apart.
        """
        for index, app in enumerate(apps):
            for other in apps[:index]:
                if other.protocol != app.protocol or other.accept_proxy_protocol == app.accept_proxy_protocol:
                    continue
                if _share_a_port(app, other):
                    raise self.fail(
                        ("apps", index, "accept_proxy_protocol"),
                        f"differs from that of app {_show(other.name)}, which shares an edge port with it",
                    )
