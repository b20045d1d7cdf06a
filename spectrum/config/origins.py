"""
An app's origins: its pool (or C{origin_direct} URLs) and the pool's
health monitor.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import TYPE_CHECKING, Any

from spectrum.config.base import _Part
from spectrum.config.messages import _format_path, _show
from spectrum.model import Monitor, Origin, Pool, PortMapping, PortRange

if TYPE_CHECKING:
    from spectrum.config.messages import _Path


_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[^\]/]*\]|[^:/\[\]@?#]*)"
    r"(?::(?P<port>[^/?#]*))?/?$"
)


_MONITOR_COMMON = (
    "type",
    "interval",
    "timeout",
    "retries",
    "consecutive_up",
    "consecutive_down",
    "port",
    "passive_down",
)


_STREAM_KEYS = ("send", "expect", "expect_regex")


_HTTP_KEYS = ("path", "method", "expected_codes", "expected_body", "header", "allow_insecure", "ca")


_MONITOR_KEYS: dict[str, tuple[str, ...]] = {
    "tcp": _STREAM_KEYS,
    "tls": _STREAM_KEYS + ("allow_insecure", "ca"),
    "udp": _STREAM_KEYS,
    "smtp": (),
    "http": _HTTP_KEYS[:5],
    "https": _HTTP_KEYS,
}


class _OriginsPart(_Part):
    """
    The builder's part for an app's origins: its pool or C{origin_direct}
    URLs, the port mappings they imply, and the pool's monitor.
    """

    def pool(
        self,
        path: _Path,
        raw: dict[str, Any],
        name: str,
        protocol: str,
        ports: tuple[PortMapping, ...],
    ) -> tuple[Pool, tuple[PortMapping, ...]]:
        """
        The pool, and the port mappings (an C{origin_direct} URL with a port
        range sets the mapping's origin range).
        """
        if "origin_pool" in raw:
            spec = raw["origin_pool"]
            where = path + ("origin_pool",)
            origins: list[Origin] = []
            seen: dict[str, int] = {}
            for index, item in enumerate(spec["origins"]):
                here = where + ("origins", index)
                if item["name"] in seen:
                    raise self.fail(
                        here + ("name",),
                        f"duplicate origin name {_show(item['name'])} (also origins[{seen[item['name']]}])",
                    )
                seen[item["name"]] = index
                address = self.address(here + ("address",), item["address"], names=True)
                port = item.get("port")
                if port is not None:
                    port = int(port)
                    self.agree(here + ("port",), path, raw, port, ports)
                origins.append(
                    Origin(
                        name=item["name"],
                        address=address,
                        port=port,
                        weight=float(item.get("weight", 1.0)),
                        enabled=item.get("enabled", True),
                        drain=item.get("drain", False),
                    )
                )
            monitor = None
            if "monitor" in spec:
                monitor = self.monitor(where + ("monitor",), spec["monitor"])
            pool = Pool(
                name=spec.get("name", name),
                origins=tuple(origins),
                load_balancing=spec.get("load_balancing", "round_robin"),
                monitor=monitor,
                when_all_down=spec.get("when_all_down", "refuse"),
            )
            return pool, ports

        if "origin_dns" in raw:
            return self.origin_dns(path, raw, name, ports), ports

        origins = []
        url_range: tuple[PortRange, _Path] | None = None
        for index, url in enumerate(raw["origin_direct"]):
            here = path + ("origin_direct", index)
            origin, span = self.direct(here, url, protocol)
            if any(existing.name == origin.name for existing in origins):
                raise self.fail(here, f"{_show(url)} is given twice")
            if span is None:
                assert origin.port is not None
                self.agree(here, path, raw, origin.port, ports)
            elif url_range is None:
                url_range = (span, here)
            elif span != url_range[0]:
                raise self.fail(
                    here,
                    f"port range {span} differs from {url_range[0]} in {_format_path(url_range[1], '')}",
                )
            origins.append(origin)
        if url_range is not None:
            span, here = url_range
            if len(origins) != sum(1 for o in origins if o.port is None):
                raise self.fail(here, "give every origin_direct URL a port range, or none")
            if len(ports) != 1:
                raise self.fail(here, "a port range here needs exactly one edge port range")
            mapping = ports[0]
            if mapping.origin is not None and mapping.origin != span:
                raise self.fail(
                    here,
                    f"port range {span} conflicts with origin port {mapping.origin};"
                    " give the origin ports in one place",
                )
            if len(span) != len(mapping.edge):
                raise self.fail(
                    here,
                    f"range {span} has {len(span)} ports, destination has {len(mapping.edge)}",
                )
            ports = (PortMapping(mapping.edge, span),)
        return Pool(name=name, origins=tuple(origins)), ports

    def origin_dns(self, path: _Path, raw: dict[str, Any], name: str, ports: tuple[PortMapping, ...]) -> Pool:
        """
        Cloudflare's C{origin_dns}: one origin by name, on the origin port
        of each mapping (looked up for every connection).
        """
        where = path + ("origin_dns",)
        if any(mapping.origin is None for mapping in ports):
            raise self.fail(where, "needs origin_port: the port to connect to on that name")
        host = raw["origin_dns"]["name"]
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            address = self.hostname(where + ("name",), host)
        return Pool(name=name, origins=(Origin(name=address, address=address, port=None),))

    def direct(self, path: _Path, url: str, protocol: str) -> tuple[Origin, PortRange | None]:
        """
        One C{origin_direct} URL: the origin, and its port range when the URL
        gives a range rather than a port.
        """
        match = _URL.match(url)
        if match is None or (not match.group("host").startswith("[") and ":" in (match.group("port") or "")):
            if url.count(":") > 2 and "[" not in url:
                raise self.fail(
                    path,
                    f"{_show(url)}: an IPv6 address needs brackets, as in '{protocol}://[2001:db8::1]:22'",
                )
            raise self.fail(path, f"{_show(url)} is not a URL like '{protocol}://192.0.2.1:22'")
        scheme = match.group("scheme").lower()
        if scheme != protocol:
            raise self.fail(
                path,
                f"scheme {_show(scheme)} does not match the app's protocol {protocol}",
            )
        host = match.group("host")
        if host.startswith("["):
            try:
                address = str(ipaddress.IPv6Address(host[1:-1]))
            except ValueError:
                raise self.fail(path, f"{_show(host)} is not an IPv6 address") from None
            shown = f"[{address}]"
        elif not host:
            raise self.fail(path, f"{_show(url)} has no host")
        else:
            try:
                address = str(ipaddress.IPv4Address(host))
            except ValueError:
                address = self.hostname(path, host)
            shown = address
        port_text = match.group("port")
        if not port_text:
            raise self.fail(path, f"{_show(url)} has no port; add one, as in ':22'")
        span = self.port_range(path, port_text)
        name = f"{shown}:{span}"
        if len(span) == 1:
            return Origin(name=name, address=address, port=span.first), None
        return Origin(name=name, address=address, port=None), span

    def agree(
        self,
        where: _Path,
        path: _Path,
        raw: dict[str, Any],
        port: int,
        ports: tuple[PortMapping, ...],
    ) -> None:
        """
        Refuse an origin's own port that contradicts an origin port given in
        the app's port mappings.
        """
        for index, mapping in enumerate(ports):
            if mapping.origin is None or mapping.origin == PortRange(port, port):
                continue
            place = path + ("ports", index, "origin_port") if "ports" in raw else path + ("origin_port",)
            raise self.fail(
                where,
                f"port {port} conflicts with {_format_path(place, '')} {mapping.origin}; give the port in one place",
            )

    def monitor(self, path: _Path, raw: dict[str, Any]) -> Monitor:
        """
        A pool's health check; keys that the monitor's type would ignore
        are refused.
        """
        kind = raw.get("type", "tcp")
        allowed = set(_MONITOR_COMMON) | set(_MONITOR_KEYS[kind])
        for key in raw:
            if key not in allowed:
                users = [t for t, keys in _MONITOR_KEYS.items() if key in keys]
                raise self.fail(path + (key,), f"does not apply to a {kind} monitor (only to {', '.join(users)})")
        for key in ("interval", "timeout"):
            if key in raw and not math.isfinite(raw[key]):
                raise self.fail(path + (key,), f"expected seconds, got {raw[key]!r}")
        defaults = Monitor()
        interval = float(raw.get("interval", defaults.interval))
        timeout = float(raw.get("timeout", defaults.timeout))
        if timeout > interval:
            raise self.fail(
                path + ("timeout",), f"{_show(raw.get('timeout', timeout))} is longer than interval {interval:g}"
            )
        if "expect" in raw and "expect_regex" in raw:
            raise self.fail(path + ("expect_regex",), "give only one of expect, expect_regex")
        regex = None
        if "expect_regex" in raw:
            regex = raw["expect_regex"].encode("utf-8")
            try:
                re.compile(regex)
            except re.error as e:
                raise self.fail(path + ("expect_regex",), f"not a valid regular expression: {e}")
        if kind == "udp" and ("send" not in raw or not ("expect" in raw or "expect_regex" in raw)):
            raise self.fail(path, "a udp monitor needs send, and expect or expect_regex")
        headers = tuple(
            (name, (values,) if isinstance(values, str) else tuple(values))
            for name, values in raw.get("header", {}).items()
        )
        return Monitor(
            type=kind,
            interval=interval,
            timeout=timeout,
            retries=raw.get("retries", defaults.retries),
            consecutive_up=raw.get("consecutive_up", defaults.consecutive_up),
            consecutive_down=raw.get("consecutive_down", defaults.consecutive_down),
            port=raw.get("port"),
            send=raw["send"].encode("utf-8") if "send" in raw else None,
            expect=raw["expect"].encode("utf-8") if "expect" in raw else None,
            expect_regex=regex,
            path=raw.get("path", defaults.path),
            method=raw.get("method", defaults.method),
            expected_codes=raw.get("expected_codes", defaults.expected_codes),
            expected_body=raw.get("expected_body"),
            header=headers,
            allow_insecure=raw.get("allow_insecure", False),
            ca=raw.get("ca"),
            passive_down=raw.get("passive_down", defaults.passive_down),
        )
