"""
Read a configuration file (YAML or JSON), check it, and build the model.

Checking happens in two passes: L{schema.json <spectrum>} first (shapes,
types, unknown keys), then the checks a schema cannot express (port ranges,
address literals, edge ports shared between apps).  Every problem is raised
as one L{ConfigError} whose text names the place in the file::

    apps[1].ports[0].origin_port: range 40000-40010 has 11 ports, destination has 10

Like the PROXY protocol and SNI parsers, this is pure: no reactor, no I/O
beyond reading the file named to L{load}, and no import of the data plane.
The files a config names (certificates, CA files, GeoIP databases, the event
log's directory) are checked after parsing, by L{spectrum.config_files}.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from spectrum.model import (
    UDP_IDLE_DEFAULT,
    UDP_MAX_SESSIONS_DEFAULT,
    AccessRule,
    AdminSettings,
    AdminToken,
    AnalyticsSettings,
    App,
    CertificateFiles,
    ClientAuth,
    Config,
    EventLogSettings,
    GeoIPFiles,
    Limits,
    Monitor,
    Origin,
    OriginTls,
    Pool,
    PortMapping,
    PortRange,
    Timeouts,
    TlsOptions,
)
from spectrum.rules import RuleError, make_rule

if TYPE_CHECKING:
    # Where a value sits in the document: keys and list indexes.
    _PathPart = str | int
    _Path = tuple[_PathPart, ...]

DEFAULT_IPS = ("0.0.0.0",)


class ConfigError(Exception):
    """
    A configuration that cannot be used.

    C{str(error)} is one line, C{"<path>: <message>"}, where the path names
    the place in the file (C{apps[1].ports[0].origin_port}) or, for problems
    with the file as a whole, the file itself.

    @ivar path: where the problem is.
    @ivar message: what it is.
    """

    def __init__(self, path: str, message: str) -> None:
        # One line, whatever the wording underneath produced.
        self.path = " ".join(path.split())
        self.message = " ".join(message.split())
        super().__init__(f"{self.path}: {self.message}")

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def default_config_path() -> str:
    """
    The path of the configuration that ships with the package, used when
    none is given: two loopback apps (SSH and Redis).
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.yaml")


def load(path: str) -> Config:
    """
    Read, check and build the configuration in the file C{path}.

    C{.json} files are read as JSON; anything else as YAML (which JSON is
    nearly a subset of).

    @raise ConfigError: the file cannot be read or decoded, or what it holds
        is not a valid configuration.
    """
    name = os.fspath(path)
    return parse(read(name), source=name)


def read(path: str) -> object:
    """
    The decoded document in the file C{path} (JSON by extension, else YAML),
    not yet checked: what L{load} hands to L{parse}. A file holding one app
    object (C{{"name": ..., "protocol": "tcp/22", ...}}, as Cloudflare
    shows an app) reads as a config with that one app.

    @raise ConfigError: the file cannot be read or decoded.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(name, f"cannot read the file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(name, f"not UTF-8 text (byte {e.start})") from None
    if os.path.splitext(name)[1].lower() == ".json":
        document = _decode_json(name, text)
    else:
        document = _decode_yaml(name, text)
    # "protocol" is an app's key, never a config's.
    if isinstance(document, dict) and "protocol" in document and "apps" not in document:
        return {"apps": [document]}
    return document


def parse(data: object, source: str | None = None) -> Config:
    """
    Check and build the configuration from an already decoded object (a
    mapping as JSON or YAML would give).

    @param source: where C{data} came from, kept on the L{Config} and used
        as the path of problems with the whole document.

    @raise ConfigError: C{data} is not a valid configuration.
    """
    top = source or "config"
    if data is None:
        raise ConfigError(top, "the configuration is empty")
    if not isinstance(data, dict):
        raise ConfigError(top, f"expected a mapping at the top, got {_got(data)}")
    _refuse_non_finite(data, [], top)
    validator = _validator()
    error = best_match(validator.iter_errors(data))
    if error is not None:
        raise ConfigError(_format_path(error.absolute_path, top), _describe(error))
    return _Builder(data, source).build()


def _refuse_non_finite(value: object, path: list[_PathPart], top: str) -> None:
    """
    @raise ConfigError: a number in C{value} is infinite or not a number
        (YAML's C{.inf} and C{.nan}; JSON's C{Infinity}, C{NaN}, or C{1e400},
        which reads as infinity), which no check by range can catch.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(_format_path(path, top), f"must be a finite number, got {_show(value)}")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, path + [key], top)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(item, path + [index], top)


# Decoding


class _UniqueKeyLoader(yaml.SafeLoader):
    """
    A safe loader that refuses a key given twice in one mapping, which
    plain YAML would settle silently by keeping the last.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_show(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _decode_yaml(name: str, text: str) -> object:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(name, f"{where}{problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(name, f"invalid YAML: {e}") from None


def _decode_json(name: str, text: str) -> object:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise ConfigError(name, f"duplicate key {_show(key)}")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(name, f"line {e.lineno}, column {e.colno}: {e.msg}") from None


# Schema errors, worded for a person


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    schema = json.loads(resources.files("spectrum").joinpath("schema.json").read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


_TYPE_NAMES = {
    "object": "mapping",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _show(value: object) -> str:
    """
    A short rendering of a value from the file, as its author wrote it.
    """
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return "'" + text.replace("\n", "\\n") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "a " + _type_name(value)


def _got(value: object) -> str:
    if isinstance(value, (str, bool, int, float)):
        return f"{_type_name(value)} {_show(value)}"
    return _show(value)


def _format_path(parts: Iterable[_PathPart], top: str) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or top


def _describe(error: ValidationError) -> str:
    keyword = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}

    if keyword in ("type", "pattern", "anyOf", "enum"):
        # A hint in the schema says it better than the keyword can.
        hinted: ValidationError | None = error
        while hinted is not None:
            if isinstance(hinted.schema, dict) and "x-message" in hinted.schema:
                return str(hinted.schema["x-message"]).format(value=_show(value))
            hinted = hinted.parent

    if keyword == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = [key for key in value if key not in known]
        if len(extra) == 1:
            close = difflib.get_close_matches(str(extra[0]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"unknown key {_show(extra[0])}{hint}"
        return "unknown keys " + ", ".join(_show(key) for key in extra)
    if keyword == "required":
        missing = [key for key in error.validator_value if key not in value]
        return "missing key " + ", ".join(_show(key) for key in missing)
    if keyword == "oneOf" and all(set(branch) == {"required"} for branch in error.validator_value):
        keys = [key for branch in error.validator_value for key in branch["required"]]
        if error.context:
            return "needs " + " or ".join(keys)
        return "give only one of " + ", ".join(keys)
    if keyword == "type":
        expected = error.validator_value
        if isinstance(expected, str):
            expected = [expected]
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in expected)
        return f"expected {names}, got {_got(value)}"
    if keyword == "enum":
        choices = ", ".join(_show(choice) for choice in error.validator_value)
        return f"expected one of {choices}; got {_show(value)}"
    if keyword == "minimum":
        return f"must be at least {error.validator_value}, got {_show(value)}"
    if keyword == "maximum":
        return f"must be at most {error.validator_value}, got {_show(value)}"
    if keyword == "exclusiveMinimum":
        return f"must be more than {error.validator_value}, got {_show(value)}"
    if keyword == "minItems":
        count = error.validator_value
        return f"needs at least {count} item{'s' if count != 1 else ''}"
    if keyword == "minLength":
        return "must not be empty"
    if keyword == "pattern":
        return f"{_show(value)} is not in the expected form"
    return str(error.message)


# Semantic checks and building


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_RANGE = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")
_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[^\]/]*\]|[^:/\[\]@?#]*)"
    r"(?::(?P<port>[^/?#]*))?/?$"
)


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


class _Bound(NamedTuple):
    """
    An edge address and port range that an app binds.
    """

    protocol: str
    ip: str
    edge: PortRange
    app: str
    hostnames: tuple[str, ...]


class _Builder:
    """
    Turn schema-valid data into a L{Config}, making the checks the schema
    cannot; the first problem found, in file order, is raised.
    """

    def __init__(self, data: dict[str, Any], source: str | None) -> None:
        self.data = data
        self.source = source
        # What earlier apps bind.
        self.bound: list[_Bound] = []
        self.names: dict[str, _Path] = {}
        self.ids: dict[str, _Path] = {}

    def fail(self, path: Sequence[_PathPart], message: str) -> ConfigError:
        return ConfigError(_format_path(path, self.source or "config"), message)

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
            workers=self.data.get("workers", 1),
            kernel_filter=_kernel_filter(self.data.get("kernel_filter", "auto")),
            access_rules=self.access_rules(geoip),
            geoip=geoip,
            admin=self.admin(),
            events=self.events(),
            analytics=AnalyticsSettings(**self.data.get("analytics", {})),
            certificates=certificates,
        )

    # Edge protection and observability

    def relative(self, text: str) -> str:
        """
        A path from the file, made absolute against the file's directory.
        """
        base = os.path.dirname(os.path.abspath(self.source)) if self.source else os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(text)))

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
                    " pip install 'spectrum[redis]'",
                ) from None
        return url

    # Leaves

    def hostname(self, path: _Path, name: str, wildcard: bool = False) -> str:
        folded = name.lower().removesuffix(".")
        if not _is_hostname(folded, wildcard):
            raise self.fail(path, f"{_show(name)} is not a valid hostname")
        return folded

    def address(self, path: _Path, text: str, names: bool) -> str:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if names:
            folded = text.lower().removesuffix(".")
            if _is_hostname(folded):
                return folded
            raise self.fail(path, f"{_show(text)} is neither an IP address nor a valid hostname")
        raise self.fail(path, f"{_show(text)} is not an IP address")

    def port_range(self, path: _Path, value: float | str) -> PortRange:
        if isinstance(value, (int, float)):
            port = int(value)
            return PortRange(port, port)
        match = _RANGE.match(value)
        if match is None:
            raise self.fail(path, f"{_show(value)} is not a port or a range like 1000-2000")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        for port in (first, last):
            if not 1 <= port <= 65535:
                raise self.fail(path, f"port {port} is outside 1-65535")
        if first > last:
            raise self.fail(path, f"range {value} is backwards; write {last}-{first}")
        return PortRange(first, last)

    def origin_range(self, path: _Path, value: float | str, edge: PortRange) -> PortRange:
        origin = self.port_range(path, value)
        if len(origin) != len(edge):
            raise self.fail(
                path,
                f"range {origin} has {len(origin)} port{'s' if len(origin) != 1 else ''}, destination has {len(edge)}",
            )
        return origin

    # The app

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
        self.edge(path, raw, name, protocol, ips, ports, tuple(hostnames))

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
        if "ips" not in raw:
            return DEFAULT_IPS
        result: list[str] = []
        for index, text in enumerate(raw["ips"]):
            where = path + ("ips", index)
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
    ) -> None:
        """
        Refuse an edge address and port that an earlier app already has,
        unless both apps can be told apart by hostname.
        """
        for index, mapping in enumerate(ports):
            if "ports" in raw:
                where = path + ("ports", index, "destination_port")
            else:
                where = path + ("protocol",)
            for ip in ips:
                for other in self.bound:
                    problem = self.clash(protocol, ip, mapping.edge, hostnames, other)
                    if problem:
                        raise self.fail(where, problem)
        for mapping in ports:
            for ip in ips:
                self.bound.append(_Bound(protocol, ip, mapping.edge, name, hostnames))

    @staticmethod
    def clash(
        protocol: str,
        ip: str,
        edge: PortRange,
        hostnames: tuple[str, ...],
        other: _Bound,
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
        if not hostnames or not other.hostnames:
            return f"{used}; apps may share an edge port only when each has distinct hostnames (dns.name, sni)"
        for host in hostnames:
            for other_host in other.hostnames:
                if host == other_host:
                    return f"{used} with the same hostname {_show(host)}"
                if _hostnames_overlap(host, other_host):
                    return f"{used}, whose hostname {_show(other_host)} overlaps {_show(host)}"
        return None

    # Origins

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

    # TLS

    def file(self, path: _Path, name: str) -> str:
        """
        A file named in the config, as an absolute path (relative ones are
        relative to the config file).
        """
        name = os.path.expanduser(name)
        if not os.path.isabs(name) and self.source:
            name = os.path.join(os.path.dirname(os.path.abspath(self.source)), name)
        return os.path.abspath(name)

    def certificates(self) -> tuple[CertificateFiles, ...]:
        """
        The edge certificates' files (read by L{spectrum.config_files}).
        """
        result = []
        for index, raw in enumerate(self.data.get("certificates", [])):
            where = ("certificates", index)
            files = CertificateFiles(
                certificate=self.file(where + ("certificate",), raw["certificate"]),
                private_key=self.file(where + ("private_key",), raw["private_key"]),
            )
            result.append(files)
        return tuple(result)

    def tls(self, path: _Path, raw: dict[str, Any], protocol: str) -> dict[str, Any]:
        """
        The app's TLS fields: mode, edge options, client auth, origin TLS.
        """
        mode = raw.get("tls", "off") or "off"
        terminates = mode != "off"
        if (terminates or "origin_tls" in raw) and protocol != "tcp":
            key = "tls" if terminates else "origin_tls"
            raise self.fail(path + (key,), f"TLS needs protocol tcp, not {protocol}")
        edge_only = "applies only when the edge terminates TLS (tls: flexible, full or strict)"
        options = TlsOptions()
        if "tls_options" in raw:
            if not terminates:
                raise self.fail(path + ("tls_options",), edge_only)
            spec = raw["tls_options"]
            version = spec.get("min_version", options.min_version)
            if isinstance(version, float):
                version = f"{version:.1f}"
            ciphers = spec.get("ciphers")
            alpn = tuple(spec.get("alpn", ()))
            for index, name in enumerate(alpn):
                if not name.isascii():
                    raise self.fail(path + ("tls_options", "alpn", index), f"{_show(name)} is not ASCII")
            options = TlsOptions(min_version=str(version), ciphers=ciphers, alpn=alpn)
        client_auth = None
        if "client_auth" in raw:
            if not terminates:
                raise self.fail(path + ("client_auth",), edge_only)
            client_auth = ClientAuth(ca=self.file(path + ("client_auth", "ca"), raw["client_auth"]["ca"]))
        origin_tls = None
        if "origin_tls" in raw:
            origin_tls = self.origin_tls(path + ("origin_tls",), raw["origin_tls"], mode)
        return {
            "tls": mode,
            "tls_options": options,
            "client_auth": client_auth,
            "origin_tls": origin_tls,
            "sni_default": raw.get("sni_default", False),
        }

    def origin_tls(self, path: _Path, spec: dict[str, Any], mode: str) -> OriginTls:
        if mode == "flexible":
            raise self.fail(path, "tls flexible speaks plaintext to the origin; use full or strict for TLS to it")
        ca = None
        if "ca" in spec:
            if mode == "full":
                raise self.fail(path + ("ca",), "tls full does not verify the origin; use strict to verify it")
            ca = self.file(path + ("ca",), spec["ca"])
        server_name = None
        if "server_name" in spec:
            server_name = self.address(path + ("server_name",), spec["server_name"], names=True)
        certificate = private_key = None
        if ("certificate" in spec) != ("private_key" in spec):
            missing = "private_key" if "certificate" in spec else "certificate"
            raise self.fail(path, f"missing key {_show(missing)}: a client certificate needs both")
        if "certificate" in spec:
            certificate = self.file(path + ("certificate",), spec["certificate"])
            private_key = self.file(path + ("private_key",), spec["private_key"])
        return OriginTls(ca=ca, server_name=server_name, certificate=certificate, private_key=private_key)

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
                if other is app or other.protocol != app.protocol:
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
            if not shared:
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
                if not any(_addresses_overlap(ip, o) for ip in app.ips for o in other.ips):
                    continue
                ports = set(other.edge_ports())
                if any(port in ports for port in app.edge_ports()):
                    raise self.fail(
                        ("apps", index, "accept_proxy_protocol"),
                        f"differs from that of app {_show(other.name)}, which shares an edge port with it",
                    )


def _kernel_filter(value: Any) -> str:
    """
    C{kernel_filter} as a word: YAML reads a bare C{on}/C{off} as a boolean.
    """
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


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
