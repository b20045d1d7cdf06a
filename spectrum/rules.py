"""
Access rules as values: the modes, targets and canonical forms, with
Cloudflare's semantics (L{spectrum.firewall} describes them and is their
index). Pure: the config loader, the admin API and the cluster check a rule
here without importing the data plane.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
from typing import Optional

from spectrum.model import AccessRule

WHITELIST = "whitelist"
BLOCK = "block"
MODES = (WHITELIST, BLOCK)
TARGETS = ("ip", "ip6", "ip_range", "asn", "country")

_ASN = re.compile(r"^(?:AS)?([0-9]{1,10})$", re.IGNORECASE)
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
#: IPv4-mapped IPv6 addresses: clients in it are matched as the IPv4
#: address (L{spectrum.admission.normalize_ip}), so a rule there never matches.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class RuleError(ValueError):
    """
    A rule that cannot be used; C{str()} is one sentence about the value.
    """


class DuplicateRule(RuleError):
    """
    A rule with the same target, value and scope is already there.
    """


def rule_id(target: str, value: str, app: Optional[str]) -> str:
    """
    The stable id of a rule from the config: the same target, value and
    scope give the same id on every load (and two such rules are duplicates).
    """
    key = f"{target}\0{value}\0{app or ''}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


def make_rule(
    mode: str,
    target: str,
    value: object,
    notes: str = "",
    app: Optional[str] = None,
    id: Optional[str] = None,
) -> AccessRule:
    """
    A checked rule with its value in canonical form.

    @param id: the rule's id; by default the stable one from L{rule_id}.

    @raise RuleError: the mode, target or value is not usable.
    """
    if mode not in MODES:
        raise RuleError(f"mode {mode!r} is not one of whitelist, block (challenges need HTTP)")
    if target not in TARGETS:
        raise RuleError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    canonical = canonical_value(target, value)
    return AccessRule(
        mode=mode,
        target=target,
        value=canonical,
        notes=notes,
        app=app,
        id=id or rule_id(target, canonical, app),
    )


def canonical_value(target: str, value: object) -> str:
    """
    C{value} for C{target} in canonical form.

    @raise RuleError: it is not a valid value for the target.
    """
    if target == "asn":
        match = _ASN.match(str(value).strip()) if isinstance(value, (str, int)) else None
        if match is None or isinstance(value, bool) or int(match.group(1)) > 0xFFFFFFFF:
            raise RuleError(f"{value!r} is not an AS number like AS64500")
        return f"AS{int(match.group(1))}"
    if not isinstance(value, str):
        raise RuleError(f"expected a string, got {value!r}")
    if target == "country":
        if not _COUNTRY.match(value):
            raise RuleError(f"{value!r} is not a two-letter country code (XX for unknown)")
        return value.upper()
    if target in ("ip", "ip6", "ip_range") and "%" in value:
        # A zone names an interface of this host; clients are matched by
        # their address alone, so such a rule could never match.
        bare, _, rest = value.partition("%")
        zone, _, prefix = rest.partition("/")
        write = bare + ("/" + prefix if prefix else "")
        raise RuleError(f"{value!r} has a zone (%{zone}); clients are matched without one: write {write}")
    if target in ("ip", "ip6"):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise RuleError(f"{value!r} is not an IP address") from None
        family = 4 if target == "ip" else 6
        if address.version != family:
            other = "ip6" if target == "ip" else "ip"
            raise RuleError(f"{value!r} is an IPv{address.version} address; use target {other}")
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            raise RuleError(
                f"{value!r} is an IPv4-mapped address; clients are matched as {mapped}: use target ip with {mapped}"
            )
        return str(address)
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise RuleError(f"{value!r} is not a network like 192.0.2.0/24 or 2001:db8::/32") from None
        raise RuleError(f"{value!r} has host bits set; did you mean {loose}?") from None
    if "/" not in value:
        raise RuleError(f"{value!r} has no prefix length; write {network}")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        first = network.network_address.ipv4_mapped
        ipv4 = ipaddress.IPv4Network(f"{first}/{network.prefixlen - 96}")
        raise RuleError(
            f"{value!r} is an IPv4-mapped range; clients are matched as IPv4: use target ip_range with {ipv4}"
        )
    return str(network)


def now_iso(seconds: float) -> str:
    """
    C{seconds} since the epoch as Cloudflare writes times (UTC, microseconds).
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
