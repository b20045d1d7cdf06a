"""
IP access rules, with Cloudflare's semantics, and the index that decides a
client against them in a few microseconds however many rules there are.

A rule is C{{mode, configuration: {{target, value}}, notes}}:

  - modes: C{whitelist} (allow) and C{block};
  - targets: C{ip} (an IPv4 address), C{ip6} (an IPv6 address), C{ip_range}
    (an IPv4 or IPv6 network of any prefix length, host bits zero), C{asn}
    (C{AS64500} or C{64500}) and C{country} (an ISO 3166 alpha-2 code; C{XX}
    is a client whose country is unknown);
  - scope: every app, or the one app named by the rule's C{app}. An app with
    C{ip_firewall: false} is not checked against any rule.

Which rule decides (the precedence order)
-----------------------------------------

Of all the rules that match a client (the global ones and those of the
client's app together), the most specific one decides:

  1. address rules (C{ip}, C{ip6}, C{ip_range}): the longest prefix wins, so
     C{ip 192.0.2.7} (a /32) beats C{ip_range 192.0.2.0/24}, which beats
     C{ip_range 192.0.0.0/16}; any address rule beats the rules below;
  2. C{asn} rules;
  3. C{country} rules.

When rules of equal specificity match (C{ip 192.0.2.7} and C{ip_range
192.0.2.7/32}, or the same value in a global and in an app rule),
C{whitelist} beats C{block}. A rule's scope does not make it more specific.
A client no rule matches is admitted. A C{whitelist} decision admits the
client past the access rules only: the app's C{limits} still apply.

How it stays fast
-----------------

Address rules sit in one hash table per prefix length (per address family),
keyed by the masked network. Which lengths are probed for a client is
narrowed by the client's leading bits: at each level (chunks of the first
24, 16, 8 and 0 bits for IPv4; 112, 96, ... 16, 8 and 0 for IPv6) a
dictionary maps the chunks that hold prefixes to the lengths in use inside
them, longest first. A decision looks up the client's chunk at each level
and probes only the lengths listed there, stopping at the first hit (the
longest match). With 50,000 rules this is a few dictionary probes; even
prefixes of every length nested around one address cost at most one level
of lengths (16 for IPv6, 8 for IPv4) plus one probe per level. ASN and
country rules are one dictionary probe each. Nothing scans the rule list,
and adding or removing a rule touches only its own entries.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import attr

from spectrum.model import AccessRule
from spectrum.rules import (  # noqa: F401  (re-exported: the rules' values live in spectrum.rules)
    BLOCK,
    MODES,
    TARGETS,
    WHITELIST,
    DuplicateRule,
    RuleError,
    canonical_value,
    make_rule,
    rule_id,
)

#: C{ClientMatchedIpFirewall} when no rule matched, or the app has
#: C{ip_firewall: false} (Cloudflare's meaning of UNKNOWN).
UNMATCHED = "UNKNOWN"

_KIND = {"ip": "IP", "ip6": "IP", "ip_range": "IP", "asn": "ASN", "country": "COUNTRY"}

# Specificity ranks: any address rule beats an ASN rule, which beats a
# country rule; among address rules the prefix length counts.
_RANK_ADDRESS = 1000
_RANK_ASN = 500
_RANK_COUNTRY = 100

_MASKS_V4 = tuple(((1 << 32) - 1) ^ ((1 << (32 - length)) - 1) for length in range(33))
_MASKS_V6 = tuple(((1 << 128) - 1) ^ ((1 << (128 - length)) - 1) for length in range(129))


def matched_name(rule: AccessRule) -> str:
    """
    The C{ClientMatchedIpFirewall} value for a decision by C{rule}:
    C{BLOCK_IP}, C{BLOCK_COUNTRY}, C{WHITELIST_ASN}, ...
    """
    return f"{'WHITELIST' if rule.mode == WHITELIST else 'BLOCK'}_{_KIND[rule.target]}"


def _address(target: str, value: str) -> Tuple[int, int, int]:
    """
    (IP version, prefix length, network as an int) of an address rule.
    """
    network = ipaddress.ip_network(value)
    return network.version, network.prefixlen, int(network.network_address)


def address_int(ip: str) -> Tuple[int, int]:
    """
    (IP version, address as an int) of an address literal.

    @raise ValueError: it is not one.
    """
    try:
        if ":" in ip:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except OSError:
        raise ValueError(f"{ip!r} is not an IP address") from None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Decision:
    """
    What the rules say about one client.

    @ivar allowed: whether the client may go on (to the limits).
    @ivar rule: the rule that decided, or L{None} when none matched.
    @ivar matched: the C{ClientMatchedIpFirewall} value.
    """

    allowed: bool
    rule: Optional[AccessRule]
    matched: str

    @classmethod
    def by(cls, rule: AccessRule) -> Decision:
        return cls(rule.mode == WHITELIST, rule, matched_name(rule))


# Chunk widths (leading bits) of the levels of each family, longest first: a
# prefix of length L is listed under its chunk at the widest level not
# longer than L.
_LEVELS = {4: (24, 16, 8, 0), 6: (112, 96, 80, 64, 48, 32, 16, 8, 0)}
_BITS = {4: 32, 6: 128}

_Probe = Tuple[int, Dict[int, List[Decision]], int]


class _Family:
    """
    The address rules of one family in one scope.

    One hash table per prefix length, keyed by the masked network, holds the
    decisions for that network (whitelists first). Which lengths to probe
    for an address is narrowed by its leading bits: each level (a chunk
    width) maps the chunks that hold prefixes to the lengths in use there,
    longest first. A decision probes the address's chunk at each level and
    only the lengths listed for it, so with prefixes spread over the address
    space it probes a handful of tables, not every length in use.
    """

    def __init__(self, version: int) -> None:
        self.bits = _BITS[version]
        self.masks = _MASKS_V4 if version == 4 else _MASKS_V6
        self.tables: Dict[int, Dict[int, List[Decision]]] = {}
        # (shift, {chunk: [probe, ...]}) per level, longest chunks first
        self.levels: List[Tuple[int, Dict[int, List[_Probe]]]] = [(self.bits - width, {}) for width in _LEVELS[version]]
        # (level index, chunk, length) -> how many networks
        self.counts: Dict[Tuple[int, int, int], int] = {}

    def _level(self, length: int) -> int:
        for index, (shift, _) in enumerate(self.levels):
            if self.bits - shift <= length:
                return index
        raise AssertionError(length)  # pragma: no cover - the last level is width 0

    def entries(self, length: int, network: int, create: bool) -> Optional[List[Decision]]:
        table = self.tables.get(length)
        if table is None:
            if not create:
                return None
            table = self.tables[length] = {}
        entries = table.get(network)
        if entries is None and create:
            entries = table[network] = []
            level = self._level(length)
            shift, chunks = self.levels[level]
            chunk = network >> shift
            key = (level, chunk, length)
            count = self.counts.get(key, 0)
            self.counts[key] = count + 1
            if not count:
                probes = chunks.setdefault(chunk, [])
                probes.append((self.masks[length], table, length))
                probes.sort(key=lambda probe: -probe[2])
        return entries

    def discard(self, length: int, network: int) -> None:
        table = self.tables[length]
        del table[network]
        level = self._level(length)
        shift, chunks = self.levels[level]
        chunk = network >> shift
        key = (level, chunk, length)
        self.counts[key] -= 1
        if not self.counts[key]:
            del self.counts[key]
            probes = chunks[chunk]
            probes[:] = [probe for probe in probes if probe[2] != length]
            if not probes:
                del chunks[chunk]
        if not table:
            del self.tables[length]

    def match(self, address: int) -> Tuple[Optional[List[Decision]], int]:
        for shift, chunks in self.levels:
            if chunks:
                probes = chunks.get(address >> shift)
                if probes is not None:
                    for mask, table, length in probes:
                        found = table.get(address & mask)
                        if found is not None:
                            return found, length
        return None, -1


class _Rules:
    """
    The rules of one scope, indexed: address rules per family, and one table
    each for ASNs and countries. Each entry is a list of the decisions of
    the rules with that key, whitelists first, so its first one decides.
    """

    def __init__(self) -> None:
        self.v4 = _Family(4)
        self.v6 = _Family(6)
        self.asn: Dict[int, List[Decision]] = {}
        self.country: Dict[str, List[Decision]] = {}
        self.count = 0

    def _entries(self, rule: AccessRule, create: bool) -> Optional[List[Decision]]:
        target = rule.target
        if target == "asn":
            number = int(rule.value[2:])
            return self.asn.setdefault(number, []) if create else self.asn.get(number)
        if target == "country":
            return self.country.setdefault(rule.value, []) if create else self.country.get(rule.value)
        version, length, network = _address(target, rule.value)
        family = self.v4 if version == 4 else self.v6
        return family.entries(length, network, create)

    def same(self, rule: AccessRule) -> List[AccessRule]:
        """
        The rules with the same key as C{rule}.
        """
        entries = self._entries(rule, create=False) or []
        return [decision.rule for decision in entries if decision.rule is not None]

    def add(self, rule: AccessRule) -> None:
        entries = self._entries(rule, create=True)
        assert entries is not None
        decision = Decision.by(rule)
        if rule.mode == WHITELIST:
            entries.insert(0, decision)
        else:
            entries.append(decision)
        self.count += 1

    def remove(self, rule: AccessRule) -> None:
        entries = self._entries(rule, create=False)
        assert entries is not None
        entries[:] = [decision for decision in entries if decision.rule is not rule]
        self.count -= 1
        if entries:
            return
        target = rule.target
        if target == "asn":
            del self.asn[int(rule.value[2:])]
        elif target == "country":
            del self.country[rule.value]
        else:
            version, length, network = _address(target, rule.value)
            (self.v4 if version == 4 else self.v6).discard(length, network)

    def match(self, version: int, address: int, country: str, asn: Optional[int]) -> Tuple[Optional[Decision], int]:
        """
        The deciding decision of this scope and its rank, or (None, -1).
        """
        found, length = (self.v4 if version == 4 else self.v6).match(address)
        if found is not None:
            return found[0], _RANK_ADDRESS + length
        if asn is not None and self.asn:
            found = self.asn.get(asn)
            if found is not None:
                return found[0], _RANK_ASN
        if self.country:
            found = self.country.get(country)
            if found is not None:
                return found[0], _RANK_COUNTRY
        return None, -1


_NO_MATCH = Decision(True, None, UNMATCHED)


class Firewall:
    """
    The access rules in force, global and per app, indexed for decisions.

    The rule set can change at run time (a reload, the admin API): L{add},
    L{remove}, L{update} and L{replace} take effect for the next connection.
    """

    def __init__(self, rules: Iterable[AccessRule] = ()) -> None:
        self._rules: Dict[str, AccessRule] = {}
        self._global = _Rules()
        self._apps: Dict[str, _Rules] = {}
        #: called with the firewall after each change (the kernel filter's
        #: maps follow the rules this way)
        self.watchers: List[Callable[[Firewall], None]] = []
        self.replace(rules)

    # the rule set -----------------------------------------------------------

    @property
    def rules(self) -> Tuple[AccessRule, ...]:
        """
        Every rule, in the order they were added.
        """
        return tuple(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def get(self, id: str) -> AccessRule:
        """
        The rule with id C{id}.

        @raise KeyError: there is none.
        """
        return self._rules[id]

    def _scope(self, app: Optional[str]) -> _Rules:
        if app is None:
            return self._global
        scope = self._apps.get(app)
        if scope is None:
            scope = self._apps[app] = _Rules()
        return scope

    def add(self, rule: AccessRule) -> AccessRule:
        """
        Add C{rule}; one without an id gets a new random one.

        @return: the rule as stored (with its id, its value in canonical form).
        @raise RuleError: its mode, target or value is not usable.
        @raise DuplicateRule: a rule with this id, or this target, value and
            scope, is already there.
        """
        if rule.mode not in MODES or rule.target not in TARGETS:
            raise RuleError(f"{rule.mode} {rule.target} is not a rule (modes: whitelist, block)")
        value = canonical_value(rule.target, rule.value)
        if value != rule.value:
            rule = attr.evolve(rule, value=value)
        if not rule.id:
            rule = attr.evolve(rule, id=uuid.uuid4().hex)
        if rule.id in self._rules:
            raise DuplicateRule(f"a rule with id {rule.id} already exists")
        for existing in self._same(rule):
            raise DuplicateRule(
                f"rule {existing.id} already has {rule.target} {rule.value}"
                + (f" for app {rule.app}" if rule.app else "")
            )
        self._scope(rule.app).add(rule)
        self._rules[rule.id] = rule
        self._changed()
        return rule

    def _same(self, rule: AccessRule) -> List[AccessRule]:
        scope = self._apps.get(rule.app) if rule.app is not None else self._global
        if scope is None:
            return []
        return [same for same in scope.same(rule) if same.target == rule.target]

    def remove(self, id: str) -> AccessRule:
        """
        Remove the rule with id C{id} and return it.

        @raise KeyError: there is none.
        """
        rule = self._rules.pop(id)
        scope = self._scope(rule.app)
        scope.remove(rule)
        if rule.app is not None and not scope.count:
            del self._apps[rule.app]
        self._changed()
        return rule

    def update(self, id: str, mode: Optional[str] = None, notes: Optional[str] = None) -> AccessRule:
        """
        Change the mode or notes of the rule with id C{id} (its target and
        value are its identity); it keeps its place.

        @raise KeyError: there is none.
        @raise RuleError: C{mode} is not a mode.
        """
        old = self._rules[id]
        if mode is not None and mode not in MODES:
            raise RuleError(f"mode {mode!r} is not one of whitelist, block")
        new = attr.evolve(
            old,
            mode=old.mode if mode is None else mode,
            notes=old.notes if notes is None else notes,
        )
        scope = self._scope(old.app)
        scope.remove(old)
        scope.add(new)
        self._rules[id] = new
        self._changed()
        return new

    def replace(self, rules: Iterable[AccessRule]) -> None:
        """
        Make C{rules} the whole rule set, at once: the old set stays in force
        if any of the new rules is refused.

        @raise DuplicateRule: two of C{rules} are the same rule.
        """
        fresh = Firewall.__new__(Firewall)
        fresh.watchers = []
        fresh._rules = {}
        fresh._global = _Rules()
        fresh._apps = {}
        for rule in rules:
            fresh.add(rule)
        self._rules, self._global, self._apps = fresh._rules, fresh._global, fresh._apps
        self._changed()

    def _changed(self) -> None:
        for watcher in self.watchers:
            watcher(self)

    def uses(self, target: str) -> bool:
        """
        Whether any rule has target C{target} (geo lookups are skipped when
        no rule and no recorder needs them).
        """
        return any(rule.target == target for rule in self._rules.values())

    # deciding ---------------------------------------------------------------

    def decide(self, app: str, ip: str, country: str = "XX", asn: Optional[int] = None) -> Decision:
        """
        The decision for a client at C{ip} (from C{country}, in C{asn}) on
        app C{app}: the most specific matching rule, whitelist first at equal
        specificity (see the module docstring).

        @raise ValueError: C{ip} is not an address literal.
        """
        version, address = address_int(ip)
        best, rank = self._global.match(version, address, country, asn)
        scoped = self._apps.get(app)
        if scoped is not None:
            decision, scoped_rank = scoped.match(version, address, country, asn)
            if decision is not None and (
                best is None or scoped_rank > rank or (scoped_rank == rank and decision.allowed and not best.allowed)
            ):
                best = decision
        return _NO_MATCH if best is None else best
