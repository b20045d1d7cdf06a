"""
Tests for L{spectrum.firewall} (rules, precedence, the index against a plain
list scan) and L{spectrum.geo} (lookups in generated MaxMind DB files).
"""

from __future__ import annotations

import ipaddress
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum.firewall import DuplicateRule, Firewall, RuleError, make_rule, matched_name
from spectrum.geo import GeoIP, GeoIPError
from spectrum.model import AccessRule

from geokit import write_asn_db, write_country_db


def test_precedence_most_specific_wins() -> None:
    fw = Firewall(
        [
            make_rule("block", "country", "DE"),
            make_rule("whitelist", "asn", "AS64500"),
            make_rule("block", "ip_range", "10.0.0.0/8"),
            make_rule("whitelist", "ip_range", "10.1.0.0/16"),
            make_rule("block", "ip_range", "10.1.2.0/24"),
            make_rule("whitelist", "ip", "10.1.2.3"),
        ]
    )
    assert fw.decide("a", "10.1.2.3", "DE", 64500).matched == "WHITELIST_IP"
    assert fw.decide("a", "10.1.2.4", "DE", 64500).matched == "BLOCK_IP"  # the /24
    assert fw.decide("a", "10.1.3.4", "DE", 64500).matched == "WHITELIST_IP"  # the /16
    assert fw.decide("a", "10.2.3.4", "DE", 64500).matched == "BLOCK_IP"  # the /8
    # No address rule: the ASN beats the country.
    assert fw.decide("a", "192.0.2.1", "DE", 64500).matched == "WHITELIST_ASN"
    assert fw.decide("a", "192.0.2.1", "DE", 64501).matched == "BLOCK_COUNTRY"
    decision = fw.decide("a", "192.0.2.1", "FR", 64501)
    assert (decision.allowed, decision.rule, decision.matched) == (True, None, "UNKNOWN")


def test_allow_beats_block_at_equal_specificity() -> None:
    # The same /32 as an ip rule and as a range; the same value globally
    # and for one app.
    fw = Firewall([make_rule("block", "ip", "192.0.2.7"), make_rule("whitelist", "ip_range", "192.0.2.7/32")])
    assert fw.decide("a", "192.0.2.7").allowed
    fw = Firewall([make_rule("whitelist", "country", "DE"), make_rule("block", "country", "DE", app="a")])
    assert fw.decide("a", "192.0.2.1", "DE").matched == "WHITELIST_COUNTRY"
    fw = Firewall([make_rule("block", "asn", "AS1"), make_rule("whitelist", "asn", "1", app="a")])
    assert fw.decide("a", "192.0.2.1", "XX", 1).allowed
    assert not fw.decide("b", "192.0.2.1", "XX", 1).allowed


def test_app_scope() -> None:
    fw = Firewall([make_rule("block", "ip_range", "192.0.2.0/24", app="ssh")])
    assert not fw.decide("ssh", "192.0.2.1").allowed
    assert fw.decide("redis", "192.0.2.1").allowed
    # A broader global whitelist does not beat the app's more specific block.
    fw.add(make_rule("whitelist", "ip_range", "192.0.0.0/16"))
    assert not fw.decide("ssh", "192.0.2.1").allowed
    # A more specific global whitelist does.
    fw.add(make_rule("whitelist", "ip", "192.0.2.1"))
    assert fw.decide("ssh", "192.0.2.1").allowed


def test_ipv6_any_prefix() -> None:
    fw = Firewall(
        [
            make_rule("block", "ip_range", "2001:db8::/32"),
            make_rule("whitelist", "ip_range", "2001:db8:0:2::/63"),
            make_rule("block", "ip6", "2001:DB8:0:3::5"),
            make_rule("block", "ip_range", "0.0.0.0/0"),
        ]
    )
    assert not fw.decide("a", "2001:db8:ffff::1").allowed
    assert fw.decide("a", "2001:db8:0:2::4").allowed
    assert fw.decide("a", "2001:db8:0:3::4").allowed  # inside the /63
    assert not fw.decide("a", "2001:db8:0:3::5").allowed
    assert fw.decide("a", "2001:db9::1").allowed  # v4 /0 says nothing about v6
    assert not fw.decide("a", "203.0.113.9").allowed


def test_values_are_canonical() -> None:
    assert make_rule("block", "asn", "as64500").value == "AS64500"
    assert make_rule("block", "asn", 64500).value == "AS64500"
    assert make_rule("block", "country", "de").value == "DE"
    assert make_rule("block", "ip6", "2001:0DB8::0001").value == "2001:db8::1"
    assert make_rule("block", "ip_range", "2001:db8::/32").value == "2001:db8::/32"
    # The id comes from target, value and scope, so a reload keeps it.
    assert make_rule("block", "ip", "192.0.2.1").id == make_rule("whitelist", "ip", "192.0.2.1").id
    assert make_rule("block", "ip", "192.0.2.1").id != make_rule("block", "ip", "192.0.2.1", app="a").id


@pytest.mark.parametrize(
    "target, value, message",
    [
        ("ip", "192.0.2", "'192.0.2' is not an IP address"),
        ("ip", "::1", "'::1' is an IPv6 address; use target ip6"),
        ("ip6", "192.0.2.1", "'192.0.2.1' is an IPv4 address; use target ip"),
        ("ip_range", "10.0.0.1/8", "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
        ("ip_range", "10.0.0.0", "'10.0.0.0' has no prefix length; write 10.0.0.0/32"),
        ("ip_range", "10.0.0.0/33", "'10.0.0.0/33' is not a network like 192.0.2.0/24 or 2001:db8::/32"),
        ("asn", "ASX", "'ASX' is not an AS number like AS64500"),
        ("asn", True, "True is not an AS number like AS64500"),
        ("country", "DEU", "'DEU' is not a two-letter country code (XX for unknown)"),
    ],
)
def test_bad_values(target: str, value: object, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        make_rule("block", target, value)
    assert str(caught.value) == message


def test_bad_mode() -> None:
    with pytest.raises(RuleError, match="challenges need HTTP"):
        make_rule("challenge", "ip", "192.0.2.1")


def test_add_remove_update_replace() -> None:
    fw = Firewall()
    with pytest.raises(RuleError):
        fw.add(AccessRule(mode="block", target="ip", value="192.0.2.x"))
    rule = fw.add(AccessRule(mode="block", target="ip6", value="2001:DB8::1"))
    assert rule.value == "2001:db8::1" and not fw.decide("a", "2001:db8::1").allowed
    fw.remove(rule.id)
    rule = fw.add(AccessRule(mode="block", target="ip", value="192.0.2.1"))
    assert len(rule.id) == 32 and fw.get(rule.id) == rule
    assert not fw.decide("a", "192.0.2.1").allowed
    with pytest.raises(DuplicateRule):
        fw.add(make_rule("whitelist", "ip", "192.0.2.1"))
    fw.update(rule.id, mode="whitelist", notes="office")
    assert fw.decide("a", "192.0.2.1").matched == "WHITELIST_IP"
    assert fw.get(rule.id).notes == "office"
    assert fw.remove(rule.id).mode == "whitelist"
    assert fw.decide("a", "192.0.2.1").matched == "UNKNOWN"
    assert len(fw) == 0
    with pytest.raises(KeyError):
        fw.remove(rule.id)

    fw.add(make_rule("block", "ip", "192.0.2.2"))
    before = fw.rules
    with pytest.raises(DuplicateRule):
        fw.replace([make_rule("block", "ip", "192.0.2.3"), make_rule("block", "ip", "192.0.2.3")])
    assert fw.rules == before  # a refused replacement changes nothing
    fw.replace([make_rule("block", "ip_range", "192.0.2.0/24")])
    assert fw.decide("a", "192.0.2.2").rule.value == "192.0.2.0/24"


def test_matched_names() -> None:
    names = {
        matched_name(make_rule(mode, target, value))
        for mode in ("block", "whitelist")
        for target, value in (("ip", "192.0.2.1"), ("ip6", "::1"), ("ip_range", "::/0"), ("asn", 1), ("country", "XX"))
    }
    assert names == {
        "BLOCK_IP",
        "BLOCK_ASN",
        "BLOCK_COUNTRY",
        "WHITELIST_IP",
        "WHITELIST_ASN",
        "WHITELIST_COUNTRY",
    }


def reference(rules: List[AccessRule], app: str, ip: str, country: str, asn: Optional[int]) -> Optional[str]:
    """
    The decision by a plain scan of every rule, straight from the
    documented order: the mode of the most specific match, whitelist first.
    """
    address = ipaddress.ip_address(ip)
    best = None
    for rule in rules:
        if rule.app not in (None, app):
            continue
        if rule.target in ("ip", "ip6", "ip_range"):
            network = ipaddress.ip_network(rule.value)
            if address.version != network.version or address not in network:
                continue
            rank = 1000 + network.prefixlen
        elif rule.target == "asn":
            if asn is None or rule.value != f"AS{asn}":
                continue
            rank = 500
        else:
            if rule.value != country:
                continue
            rank = 100
        key = (rank, rule.mode == "whitelist")
        if best is None or key > best:
            best = key
    if best is None:
        return None
    return "whitelist" if best[1] else "block"


_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_rule = st.one_of(
    st.tuples(st.just("ip_range"), st.integers(0, 2**8 - 1), st.integers(0, 8)).map(
        # Networks inside 10.0.0.0/24 so that random addresses hit them.
        lambda t: str(ipaddress.ip_network((0x0A000000 | t[1], 32 - t[2]), strict=False))
    ),
    st.integers(0, 255).map(lambda n: f"10.0.0.{n}"),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["block", "whitelist"]),
            st.one_of(
                _rule.map(lambda v: ("ip_range" if "/" in v else "ip", v)),
                st.sampled_from([("country", "DE"), ("country", "XX"), ("asn", "AS1"), ("asn", "AS2")]),
            ),
            st.sampled_from([None, "a", "b"]),
        ),
        max_size=40,
    ),
    st.lists(
        st.tuples(st.integers(0, 300), st.sampled_from(["DE", "FR", "XX"]), st.sampled_from([None, 1, 2])), max_size=20
    ),
)
def test_index_agrees_with_a_list_scan(raw_rules, clients) -> None:
    rules: List[AccessRule] = []
    fw = Firewall()
    for mode, (target, value), app in raw_rules:
        rule = make_rule(mode, target, value, app=app)
        try:
            fw.add(rule)
        except DuplicateRule:
            continue
        rules.append(rule)
    for last, country, asn in clients:
        ip = f"10.0.0.{last}" if last < 256 else f"10.0.{last - 255}.1"
        for app in ("a", "b", "c"):
            decision = fw.decide(app, ip, country, asn)
            expected = reference(rules, app, ip, country, asn)
            assert (decision.rule.mode if decision.rule else None) == expected
    # Removing every rule leaves an empty index.
    for rule in rules:
        fw.remove(rule.id)
    assert fw.decide("a", "10.0.0.1", "DE", 1).rule is None


def test_geo_lookups(tmp_path) -> None:
    country = write_country_db(str(tmp_path / "country.mmdb"), {"127.0.0.0/29": "DE", "2001:db8::/32": "jp"})
    asn = write_asn_db(str(tmp_path / "asn.mmdb"), {"127.0.0.8/29": (64500, "Example")})
    geo = GeoIP(country, asn)
    assert geo.lookup("127.0.0.1") == ("DE", None)
    assert geo.lookup("127.0.0.9") == ("XX", 64500)
    assert geo.lookup("2001:db8::1") == ("JP", None)
    assert geo.lookup("192.0.2.1") == ("XX", None)
    assert geo.lookup("not an address") == ("XX", None)
    geo.close()
    assert GeoIP().lookup("127.0.0.1") == ("XX", None)


def test_geo_bad_files(tmp_path) -> None:
    with pytest.raises(GeoIPError, match="no such file"):
        GeoIP(str(tmp_path / "missing.mmdb"))
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database" * 10)
    with pytest.raises(GeoIPError, match="is not a MaxMind DB file"):
        GeoIP(None, str(junk))
