"""
C{spectrum status}, C{spectrum apps list} and C{spectrum rules
list|add|delete}: the admin API of a running spectrum, printed as plain
tables, or with C{--json} as the API's own objects.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from spectrum.cli.client import AdminClient, CommandError
from spectrum.cli.table import render, size

TARGETS = ("ip", "ip6", "ip_range", "asn", "country")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


# status ---------------------------------------------------------------------------


def status(client: AdminClient, as_json: bool) -> str:
    zone = client.zone()
    base = f"/zones/{zone['id']}/spectrum"
    apps = client.list(base + "/apps")
    live = (client.call("GET", base + "/live") or {}).get("apps") or {}
    cluster = _cluster(client, base)
    shown = []
    for app in apps:
        traffic = live.get(app.get("name")) or {}
        shown.append(
            {
                "id": app.get("id"),
                "name": app.get("name"),
                "protocol": _protocol(app),
                "listening": app.get("listening") or [],
                "origins": app.get("origins") or [],
                "connections": traffic.get("connections", 0),
                "bytes_ingress": traffic.get("bytes_ingress", 0),
                "bytes_egress": traffic.get("bytes_egress", 0),
            }
        )
    if as_json:
        return dumps({"admin": client.url, "zone": zone, "apps": shown, "cluster": cluster})
    listening = sum(1 for app in shown if app["listening"])
    open_connections = sum(int(app["connections"] or 0) for app in shown)
    origins = [origin for app in shown for origin in app["origins"]]
    where = f"zone {zone['id']}" + (f" ({zone['name']})" if zone.get("name") else "")
    lines = [
        f"spectrum at {client.url}, {where}: {_count(len(shown), 'app')}, {listening} listening,"
        f" {_count(open_connections, 'open connection')}; origins: {_health(origins)}"
    ]
    nodes = sorted((cluster or {}).get("nodes") or {})
    if len(nodes) > 1:
        store = (cluster or {}).get("store") or {}
        available = "available" if store.get("available") else "NOT AVAILABLE"
        lines.append(f"cluster of {len(nodes)} nodes ({', '.join(nodes)}), store {store.get('kind')} {available}")
    table = render(
        ("APP", "PROTOCOL", "LISTENING", "ORIGINS", "OPEN", "IN", "OUT"),
        [
            (
                app["name"],
                app["protocol"],
                _listening(app["listening"]),
                _health(app["origins"]),
                app["connections"],
                size(app["bytes_ingress"]),
                size(app["bytes_egress"]),
            )
            for app in shown
        ],
    )
    return "\n".join(lines) + "\n" + table


def _cluster(client: AdminClient, base: str) -> Optional[Dict[str, Any]]:
    try:
        result: Dict[str, Any] = client.call("GET", base + "/cluster")
    except CommandError:
        # An admin without a store (or an older spectrum) has no such route.
        return None
    return result


def _protocol(app: Dict[str, Any]) -> str:
    return str(app.get("protocol", "")).split("/", 1)[0].lower()


def _health(origins: List[Dict[str, Any]]) -> str:
    """
    C{2 up, 1 down, 1 not monitored}: an origin without a monitor is not
    said to be up.
    """
    up = down = unmonitored = disabled = 0
    for origin in origins:
        if not origin.get("enabled", True):
            disabled += 1
        elif not origin.get("monitored"):
            unmonitored += 1
        elif origin.get("healthy"):
            up += 1
        else:
            down += 1
    parts = [
        f"{count} {what}"
        for count, what in ((up, "up"), (down, "down"), (unmonitored, "not monitored"), (disabled, "disabled"))
        if count
    ]
    return ", ".join(parts) or "none"


def _listening(addresses: Iterable[Dict[str, Any]]) -> str:
    """
    C{127.0.0.1:2222,[::1]:30000-30009}: bound addresses, consecutive ports
    as one range.
    """
    by_host: Dict[Tuple[str, str], List[int]] = {}
    for entry in addresses:
        ip = str(entry.get("ip", ""))
        host = f"[{ip}]" if ":" in ip else ip
        by_host.setdefault((str(entry.get("protocol", "")), host), []).append(int(entry.get("port", 0)))
    shown = []
    for (_, host), ports in by_host.items():
        ports.sort()
        start = previous = ports[0]
        for port in ports[1:] + [-1]:
            if port == previous + 1:
                previous = port
                continue
            shown.append(f"{host}:{start}" if start == previous else f"{host}:{start}-{previous}")
            start = previous = port
    return ",".join(shown)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# apps -----------------------------------------------------------------------------


def apps_list(client: AdminClient, as_json: bool) -> str:
    zone = client.zone()
    apps = client.list(f"/zones/{zone['id']}/spectrum/apps")
    if as_json:
        return dumps(apps)
    return render(
        ("ID", "NAME", "PROTOCOL", "LISTENING", "ORIGINS", "SOURCE"),
        [
            (
                app.get("id"),
                app.get("name"),
                _protocol(app),
                _listening(app.get("listening") or []),
                ",".join(_origin(origin) for origin in app.get("origins") or []),
                app.get("source"),
            )
            for app in apps
        ],
    )


def _origin(origin: Dict[str, Any]) -> str:
    address = str(origin.get("address", ""))
    if ":" in address:
        address = f"[{address}]"
    port = origin.get("port")
    return f"{address}:{port}" if port else address


# rules ----------------------------------------------------------------------------

RULES = "/firewall/access_rules/rules"


def _all_rules(client: AdminClient, zone: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """
    (the rule's route, rule) of every rule: those for every app, then each
    app's own.
    """
    rules = [(f"/user{RULES}", rule) for rule in client.list(f"/user{RULES}")]
    for app in client.list(f"/zones/{zone['id']}/spectrum/apps"):
        route = f"/zones/{zone['id']}/spectrum/apps/{app['id']}{RULES}"
        rules.extend((route, rule) for rule in client.list(route))
    return rules


def _app_route(zone: Dict[str, Any], app: str) -> str:
    return f"/zones/{zone['id']}/spectrum/apps/{app}{RULES}"


def _rules_table(rules: List[Dict[str, Any]]) -> str:
    return render(
        ("ID", "MODE", "TARGET", "VALUE", "APP", "SOURCE", "NOTES"),
        [
            (
                rule.get("id"),
                rule.get("mode"),
                (rule.get("configuration") or {}).get("target"),
                (rule.get("configuration") or {}).get("value"),
                rule.get("app") or "*",
                rule.get("source"),
                rule.get("notes"),
            )
            for rule in rules
        ],
    )


def rules_list(client: AdminClient, app: Optional[str], as_json: bool) -> str:
    zone = client.zone()
    if app is None:
        rules = [rule for _, rule in _all_rules(client, zone)]
    else:
        rules = client.list(_app_route(zone, app))
    return dumps(rules) if as_json else _rules_table(rules)


def target_of(value: str) -> str:
    """
    The rule target a value names: an IPv4 or IPv6 address, a network, an
    AS number (C{AS64500} or C{64500}) or a two-letter country code.

    @raise CommandError: it names none of those.
    """
    try:
        return "ip" if ipaddress.ip_address(value).version == 4 else "ip6"
    except ValueError:
        pass
    if "/" in value:
        try:
            ipaddress.ip_network(value, strict=False)
            return "ip_range"
        except ValueError:
            pass
    if re.fullmatch(r"(?i)(as)?[0-9]+", value):
        return "asn"
    if re.fullmatch(r"[A-Za-z]{2}", value):
        return "country"
    raise CommandError(f"{value!r}: give --target ({', '.join(TARGETS[:-1])} or {TARGETS[-1]})")


def rules_add(
    client: AdminClient,
    mode: str,
    value: str,
    target: Optional[str],
    notes: Optional[str],
    app: Optional[str],
    as_json: bool,
) -> str:
    zone = client.zone()
    body: Dict[str, Any] = {"mode": mode, "configuration": {"target": target or target_of(value), "value": value}}
    if notes is not None:
        body["notes"] = notes
    route = f"/user{RULES}" if app is None else _app_route(zone, app)
    rule = client.call("POST", route, body)
    return dumps(rule) if as_json else _rules_table([rule])


def rules_delete(client: AdminClient, rule_id: str, app: Optional[str], as_json: bool) -> str:
    zone = client.zone()
    if app is not None:
        route = _app_route(zone, app)
    else:
        routes = [route for route, rule in _all_rules(client, zone) if rule.get("id") == rule_id]
        if not routes:
            raise CommandError(f"no access rule has id {rule_id!r}")
        route = routes[0]
    result = client.call("DELETE", f"{route}/{rule_id}")
    return dumps(result) if as_json else f"deleted access rule {rule_id}\n"
