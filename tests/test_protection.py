"""
Edge protection on real loopback sockets: access rules by address, range,
country and ASN (from generated MaxMind DB files) and the per-app limits.
Clients bind to distinct loopback addresses (127.0.0.9, 127.0.0.10, ...);
the origin counts what it accepts, so a refusal that reached it shows.
"""

from __future__ import annotations

from typing import Any

import attr
import pytest_twisted

from spectrum import status as S
from spectrum.firewall import make_rule
from spectrum.model import Config, GeoIPFiles, Limits

from edgekit import EdgeProxy, exchange, origin_at, start_client, wait_until
from geokit import write_asn_db, write_country_db
from relaykit import OriginFactory, listen_origin, make_app, sleep


@pytest_twisted.ensureDeferred
async def test_block_ip_then_range_then_whitelist_overrides() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = make_app("guarded", [origin_at(listening)])
    proxy = EdgeProxy(Config(apps=(app,), access_rules=(make_rule("block", "ip", "127.0.0.9"),)))
    port = proxy.port()
    try:
        # A block on its address.
        assert await exchange(port, "127.0.0.9") == b""
        assert origin.accepted == 0
        assert await exchange(port, "127.0.0.10") == b"ping"
        assert origin.accepted == 1
        (refused,) = proxy.of_kind("clientFiltered")
        assert refused["ClientIP"] == "127.0.0.9"
        assert refused["Status"] == 403 == S.FIREWALL
        assert refused["ClientMatchedIpFirewall"] == "BLOCK_IP"
        assert refused["OriginIP"] is None and refused["OriginBytes"] == 0

        # A block on a /24 containing it (and 127.0.0.10); 127.0.1.9 is outside.
        proxy.firewall.replace([make_rule("block", "ip_range", "127.0.0.0/24")])
        assert await exchange(port, "127.0.0.9") == b""
        assert await exchange(port, "127.0.0.10") == b""
        assert await exchange(port, "127.0.1.9") == b"ping"
        assert origin.accepted == 2

        # A whitelist on its address overrides the broader block; the rest
        # of the /24 stays blocked.
        proxy.firewall.add(make_rule("whitelist", "ip", "127.0.0.9", notes="the office"))
        assert await exchange(port, "127.0.0.9") == b"ping"
        assert await exchange(port, "127.0.0.10") == b""
        assert await exchange(port, "127.0.1.9") == b"ping"
        assert origin.accepted == 4

        await sleep(0.05)
        filtered = proxy.of_kind("clientFiltered")
        assert [(e["ClientIP"], e["ClientMatchedIpFirewall"]) for e in filtered] == [
            ("127.0.0.9", "BLOCK_IP"),
            ("127.0.0.9", "BLOCK_IP"),
            ("127.0.0.10", "BLOCK_IP"),
            ("127.0.0.10", "BLOCK_IP"),
        ]
        admitted = [(e["ClientIP"], e["ClientMatchedIpFirewall"]) for e in proxy.of_kind("connect")]
        assert admitted == [
            ("127.0.0.10", "UNKNOWN"),
            ("127.0.1.9", "UNKNOWN"),
            ("127.0.0.9", "WHITELIST_IP"),
            ("127.0.1.9", "UNKNOWN"),
        ]
        # The origin saw exactly the admitted connections, nothing else.
        assert origin.accepted == len(admitted) == len(origin.closed)
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_app_scope_and_ip_firewall_off() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    guarded = make_app("guarded", [origin_at(listening)])
    open_app = attr.evolve(make_app("open", [origin_at(listening)]), ip_firewall=False)
    other = make_app("other", [origin_at(listening)])
    rules = (
        make_rule("block", "ip_range", "127.0.0.0/8"),  # every app
        make_rule("block", "ip", "127.0.0.10", app="other"),
        make_rule("whitelist", "ip_range", "127.0.0.8/29", app="guarded"),
    )
    proxy = EdgeProxy(Config(apps=(guarded, open_app, other), access_rules=rules))
    try:
        assert await exchange(proxy.port("guarded"), "127.0.0.10") == b"ping"  # its whitelist
        assert await exchange(proxy.port("guarded"), "127.0.0.20") == b""  # the global block
        assert await exchange(proxy.port("open"), "127.0.0.20") == b"ping"  # ip_firewall: false
        assert await exchange(proxy.port("other"), "127.0.0.10") == b""
        assert origin.accepted == 2
        await sleep(0.05)
        by_app = {(e["Application"], e["ClientIP"]): e for _, e in proxy.events if _ != "connect"}
        assert by_app[("open", "127.0.0.20")]["IpFirewall"] is False
        assert by_app[("open", "127.0.0.20")]["ClientMatchedIpFirewall"] == "UNKNOWN"
        assert by_app[("other", "127.0.0.10")]["Reason"].startswith("access rule ")
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_country_and_asn_rules(tmp_path) -> None:
    country_db = write_country_db(
        str(tmp_path / "country.mmdb"), {"127.0.0.8/30": "DE", "127.0.0.12/30": "FR", "127.0.1.0/24": "US"}
    )
    asn_db = write_asn_db(
        str(tmp_path / "asn.mmdb"), {"127.0.0.0/24": (64500, "Example"), "127.0.1.0/24": (64501, "Other")}
    )
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = make_app("geo", [origin_at(listening)])
    config = Config(
        apps=(app,),
        geoip=GeoIPFiles(country_db=country_db, asn_db=asn_db),
        access_rules=(make_rule("block", "country", "DE"),),
    )
    proxy = EdgeProxy(config)
    port = proxy.port()
    try:
        assert await exchange(port, "127.0.0.9") == b""  # DE
        assert await exchange(port, "127.0.0.13") == b"ping"  # FR
        refused = proxy.of_kind("clientFiltered")[-1]
        assert (refused["ClientCountry"], refused["ClientAsn"]) == ("DE", 64500)
        assert refused["ClientMatchedIpFirewall"] == "BLOCK_COUNTRY"

        # An ASN rule, and XX for addresses the country database lacks.
        proxy.firewall.replace([make_rule("block", "asn", "AS64501"), make_rule("block", "country", "XX")])
        assert await exchange(port, "127.0.1.5") == b""  # US, AS64501
        assert proxy.of_kind("clientFiltered")[-1]["ClientMatchedIpFirewall"] == "BLOCK_ASN"
        assert await exchange(port, "127.0.2.5") == b""  # no country: XX
        refused = proxy.of_kind("clientFiltered")[-1]
        assert (refused["ClientCountry"], refused["ClientAsn"], refused["ClientMatchedIpFirewall"]) == (
            "XX",
            None,
            "BLOCK_COUNTRY",
        )
        assert await exchange(port, "127.0.0.9") == b"ping"  # DE, AS64500: no rule now

        # An address whitelist beats a country block; an ASN whitelist beats it too.
        proxy.firewall.replace(
            [
                make_rule("block", "country", "DE"),
                make_rule("block", "country", "US"),
                make_rule("whitelist", "ip", "127.0.0.10"),
                make_rule("whitelist", "asn", 64501),
            ]
        )
        assert await exchange(port, "127.0.0.10") == b"ping"
        assert await exchange(port, "127.0.0.11") == b""
        assert await exchange(port, "127.0.1.7") == b"ping"
        await sleep(0.05)
        matched = [(e["ClientIP"], e["ClientMatchedIpFirewall"]) for e in proxy.of_kind("connect")[-2:]]
        assert matched == [("127.0.0.10", "WHITELIST_IP"), ("127.0.1.7", "WHITELIST_ASN")]
        assert origin.accepted == len(proxy.of_kind("connect")) == 4
    finally:
        await proxy.stop()
        await listening.stopListening()


BURST = 500


def refused_count(proxy: Any) -> int:
    """
    Every refused connection the service counted (records are sampled).
    """
    return sum(proxy.service.refusals.totals.values())


@pytest_twisted.ensureDeferred
async def test_per_ip_connections_under_a_burst() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = attr.evolve(make_app("limited", [origin_at(listening)]), limits=Limits(per_ip_connections=5))
    proxy = EdgeProxy(Config(apps=(app,)))
    port = proxy.port()
    clients = []
    try:
        clients = [start_client(port, "127.0.0.9") for _ in range(BURST)]
        # Another address, in the middle of the burst, is served normally.
        assert await exchange(port, "127.0.0.10", b"other client") == b"other client"
        # Every refusal is counted; records are sampled (the first 20 per
        # app and second).
        await wait_until(lambda: refused_count(proxy) == BURST - 5, what="the burst's refusals")
        assert proxy.service.refusals.totals == {("limited", "clientFiltered", S.PER_IP_CONNECTIONS, ""): BURST - 5}
        refused = proxy.of_kind("clientFiltered")
        assert 0 < len(refused) <= BURST - 5
        assert {e["Status"] for e in refused} == {S.PER_IP_CONNECTIONS}
        assert {e["ClientIP"] for e in refused} == {"127.0.0.9"}
        # The origin saw the other client and five from the burst.
        assert origin.accepted == 6
        assert [e["ClientIP"] for e in proxy.of_kind("connect")].count("127.0.0.9") == 5
        # Closing the five frees their places.
        for client in clients:
            if client.transport is not None and client.transport.connected:
                client.transport.loseConnection()
        await wait_until(lambda: len(proxy.of_kind("disconnect")) == 6, what="the five to close")
        assert await exchange(port, "127.0.0.9") == b"ping"
        assert origin.accepted == 7
    finally:
        for client in clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_per_ip_rate_under_a_burst() -> None:
    rate = 20
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = attr.evolve(make_app("limited", [origin_at(listening)]), limits=Limits(per_ip_rate=rate))
    proxy = EdgeProxy(Config(apps=(app,)))
    port = proxy.port()
    clients = []
    try:
        clients = [start_client(port, "127.0.0.9") for _ in range(BURST)]
        assert await exchange(port, "127.0.0.10", b"other client") == b"other client"
        await wait_until(
            lambda: refused_count(proxy) + len(proxy.of_kind("connect")) == BURST + 1,
            what="every attempt to be decided",
        )
        burst = [e for _, e in proxy.events if e["ClientIP"] == "127.0.0.9"]
        admitted = [e for e in proxy.of_kind("connect") if e["ClientIP"] == "127.0.0.9"]
        refused = proxy.of_kind("clientFiltered")
        assert {e["Status"] for e in refused} == {S.PER_IP_RATE}
        assert set(proxy.service.refusals.totals) == {("limited", "clientFiltered", S.PER_IP_RATE, "")}
        assert len(admitted) + refused_count(proxy) == BURST
        # One second's worth at once, then the rate: never more.
        elapsed = max(e["ConnectTimestamp"] for e in burst) - min(e["ConnectTimestamp"] for e in burst)
        assert rate <= len(admitted) <= rate + rate * elapsed + 1
        assert origin.accepted == len(admitted) + 1
        # A token comes back after 1/rate seconds.
        await sleep(2.0 / rate)
        assert await exchange(port, "127.0.0.9") == b"ping"
    finally:
        for client in clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_max_connections() -> None:
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = attr.evolve(make_app("small", [origin_at(listening)]), limits=Limits(max_connections=2))
    proxy = EdgeProxy(Config(apps=(app,)))
    port = proxy.port()
    first = start_client(port, "127.0.0.9")
    second = start_client(port, "127.0.0.10")
    try:
        await first.ready
        await second.ready
        await wait_until(lambda: origin.accepted == 2, what="two connections")
        assert await exchange(port, "127.0.0.11") == b""
        assert proxy.of_kind("clientFiltered")[-1]["Status"] == S.MAX_CONNECTIONS
        first.transport.loseConnection()
        await first.done
        await wait_until(lambda: len(proxy.of_kind("disconnect")) == 1, what="the first to close")
        assert await exchange(port, "127.0.0.11") == b"ping"
        assert origin.accepted == 3
    finally:
        second.transport.loseConnection()
        await second.done
        await proxy.stop()
        await listening.stopListening()
