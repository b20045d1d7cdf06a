"""
The kernel filter (L{spectrum.kernel.shield}) loaded into this kernel: access
rules as eBPF socket filters on the edge sockets, real connections from
loopback sources, what the process accepted and what the kernel counted.

CI runs as root; without CAP_BPF these fail under CI=true and skip elsewhere.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, Optional, Tuple

import attr
import pytest
import pytest_twisted
from twisted.internet import threads

from spectrum import status as S
from spectrum.kernel import shield as shield_module
from spectrum.kernel.shield import KernelShield
from spectrum.model import AccessRule, Config
from spectrum.service import SpectrumService

from conftest import IN_CI
from edgekit import EdgeProxy, exchange, origin_at
from relaykit import OriginFactory, listen_origin, make_app, sleep
from udpkit import UDPOrigin, bind_client, listen_udp_origin, udp_app


def require_kernel_filter() -> None:
    shield = KernelShield("on")
    shield.close()
    if not shield.active:
        message = f"no kernel filter here: {shield.reason}"
        if IN_CI:
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)


def rule(id: str, mode: str, target: str, value: str, app: Optional[str] = None) -> AccessRule:
    return AccessRule(id=id, mode=mode, target=target, value=value, app=app)


def connects(port: int, source: str, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """
    Whether a TCP handshake from C{source} completes within C{timeout} (0.5 s:
    under the 1 s initial retransmission timeout, so one SYN is sent).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as client:
        client.bind((source, 0))
        client.settimeout(timeout)
        try:
            client.connect((host, port))
        except OSError:
            return False
        return True


def edge_port(proxy: Any) -> Any:
    (listener,) = proxy.service.listeners.values()
    return listener.listening


def kernel_drops(proxy: Any) -> Dict[Tuple[str, str], Tuple[int, int]]:
    return dict(proxy.service.shield.dropped())


@pytest_twisted.ensureDeferred
async def test_a_blocked_range_is_dropped_in_the_kernel_and_its_whitelisted_address_admitted() -> None:
    require_kernel_filter()
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = make_app("game", [origin_at(listening)])
    rules = (rule("r-block", "block", "ip_range", "127.1.0.0/16"), rule("r-allow", "whitelist", "ip", "127.1.2.3"))
    proxy = EdgeProxy(Config(apps=(app,), access_rules=rules, kernel_filter="on"))
    port = proxy.port()
    try:
        assert proxy.service.shield.active
        assert not await threads.deferToThread(connects, port, "127.1.0.5")
        assert await exchange(port, "127.1.2.3") == b"ping"
        assert await exchange(port, "127.0.0.9") == b"ping"
        # The blocked SYN never made a socket: two accepts, no refusal.
        assert edge_port(proxy).accepted == 2
        assert sum(proxy.service.refusals.totals.values()) == 0
        # One SYN sent, one dropped and counted against its rule.
        ((where, (packets, size)),) = kernel_drops(proxy).items()
        assert where == ("game", "r-block") and packets == 1 and size > 0
        # And /metrics says so.
        from spectrum.admin.metrics import AnalyticsCollector

        service = proxy.service
        collector = AnalyticsCollector(service.analytics, service.admission.firewall, service.refusals, service.shield)
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in collector.collect()
            for sample in family.samples
        }
        assert samples[("spectrum_kernel_dropped_total", (("app", "game"), ("reason", "rule r-block")))] == 1
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_rule_added_at_run_time_drops_the_next_syn_and_its_removal_admits_it() -> None:
    require_kernel_filter()
    origin = OriginFactory()
    listening = listen_origin(origin)
    proxy = EdgeProxy(Config(apps=(make_app("game", [origin_at(listening)]),), kernel_filter="on"))
    port = proxy.port()
    firewall = proxy.service.admission.firewall
    try:
        assert await exchange(port, "127.0.0.20") == b"ping"
        added = firewall.add(rule("", "block", "ip", "127.0.0.20"))
        assert not await threads.deferToThread(connects, port, "127.0.0.20")
        # An app's own rule: its scope only.
        firewall.add(rule("", "block", "ip", "127.0.0.21", app="game"))
        assert not await threads.deferToThread(connects, port, "127.0.0.21")
        firewall.remove(added.id)
        assert await exchange(port, "127.0.0.20") == b"ping"
        assert edge_port(proxy).accepted == 2
        drops = kernel_drops(proxy)
        assert drops[("game", added.id)][0] == 1
        assert sum(count for count, _ in drops.values()) == 2
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6_rules_in_the_kernel() -> None:
    require_kernel_filter()
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = attr.evolve(make_app("six", [origin_at(listening)]), ips=("::1",))
    proxy = EdgeProxy(Config(apps=(app,), access_rules=(rule("r6", "block", "ip6", "::1"),), kernel_filter="on"))
    port = proxy.port()
    try:
        assert not await threads.deferToThread(connects, port, "::1", "::1")
        assert edge_port(proxy).accepted == 0
        assert kernel_drops(proxy)[("six", "r6")][0] == 1
        proxy.service.admission.firewall.remove("r6")
        assert await threads.deferToThread(connects, port, "::1", "::1")
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_udp_datagrams_from_a_blocked_range_are_dropped_in_the_kernel() -> None:
    require_kernel_filter()
    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    app = udp_app("dns", [origin_at(oport.getHost().port)])
    rules = (rule("r-block", "block", "ip_range", "127.1.0.0/16"),)
    proxy = EdgeProxy(Config(apps=(app,), access_rules=rules, kernel_filter="on"))
    bad, bport = bind_client("127.1.0.7")
    good, gport = bind_client("127.0.0.8")
    try:
        for _ in range(5):
            bad.send(b"let me in", proxy.port())
        good.send(b"hello", proxy.port())
        assert await good.wait_for(1) == [b"hello"]
        assert await bad.wait_for(1, timeout=0.2) == []
        assert [data for data, _ in origin.received] == [b"hello"]
        # Not one reached the process; the kernel counted each.
        assert sum(proxy.service.refusals.totals.values()) == 0
        assert kernel_drops(proxy)[("dns", "r-block")][0] == 5
    finally:
        await proxy.stop()
        await bport.stopListening()
        await gport.stopListening()
        await oport.stopListening()


@pytest_twisted.ensureDeferred
async def test_when_loading_is_refused_auto_falls_back_and_on_refuses_to_start(monkeypatch: Any) -> None:
    monkeypatch.setattr(shield_module, "_refused_for_tests", True)
    monkeypatch.delenv("SPECTRUM_KERNEL_FILTER", raising=False)
    origin = OriginFactory()
    listening = listen_origin(origin)
    app = make_app("game", [origin_at(listening)])
    rules = (rule("r-block", "block", "ip_range", "127.1.0.0/16"),)
    proxy = EdgeProxy(Config(apps=(app,), access_rules=rules, kernel_filter="auto"))
    port = proxy.port()
    try:
        shield = proxy.service.shield
        assert not shield.active
        assert shield.describe() == (
            "kernel filter: off (not permitted: needs root or CAP_BPF and CAP_NET_ADMIN);"
            " refused sources are shed after accept"
        )
        # The userspace path: accepted, refused, counted.
        assert await exchange(port, "127.1.0.5") == b""
        await sleep(0.05)
        assert proxy.service.refusals.totals == {("game", "clientFiltered", S.FIREWALL, "r-block"): 1}
    finally:
        await proxy.stop()
    service = SpectrumService(Config(apps=(app,), kernel_filter="on"))
    with pytest.raises(SystemExit) as caught:
        service.privilegedStartService()
    assert str(caught.value) == (
        "spectrum: kernel_filter is on, but not permitted: needs root or CAP_BPF and CAP_NET_ADMIN"
    )
    assert not service.listeners
    await listening.stopListening()


def syn_burst(port: int, source: str, count: int, wait: float = 0.4) -> None:
    """
    C{count} non-blocking connects from C{source} at once, left for C{wait}
    seconds (under the 1 s SYN retransmission), then closed.
    """
    import time

    sockets = []
    try:
        for _ in range(count):
            client = socket.socket()
            client.setblocking(False)
            client.bind((source, 0))
            try:
                client.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            sockets.append(client)
        time.sleep(wait)
    finally:
        for client in sockets:
            client.close()


@pytest_twisted.ensureDeferred
async def test_per_ip_rate_in_the_kernel_admits_the_bucket_of_a_burst() -> None:
    require_kernel_filter()
    from spectrum.model import Limits

    origin = OriginFactory()
    listening = listen_origin(origin)
    app = attr.evolve(make_app("game", [origin_at(listening)]), limits=Limits(per_ip_rate=20))
    proxy = EdgeProxy(Config(apps=(app,), kernel_filter="on"))
    port = proxy.port()
    try:
        await threads.deferToThread(syn_burst, port, "127.0.0.33", 500)
        await sleep(0.2)
        # The bucket's size (and what it refilled during the burst) got in;
        # the rest never reached the accept queue.
        accepted = edge_port(proxy).accepted
        assert 20 <= accepted <= 30
        packets, _ = kernel_drops(proxy)[("game", "per_ip_rate")]
        assert packets == 500 - accepted
        # Another address has its own bucket.
        assert await exchange(port, "127.0.0.34") == b"ping"
    finally:
        await proxy.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_country_and_asn_rules_expand_from_the_geoip_databases(tmp_path: Any) -> None:
    require_kernel_filter()
    from spectrum.model import GeoIPFiles

    from geokit import write_asn_db, write_country_db

    country_db = write_country_db(str(tmp_path / "country.mmdb"), {"127.2.0.0/16": "FR", "127.3.0.0/16": "DE"})
    asn_db = write_asn_db(
        str(tmp_path / "asn.mmdb"), {"127.2.3.0/24": (64500, "Friendly"), "127.3.0.0/16": (64501, "X")}
    )
    origin = OriginFactory()
    listening = listen_origin(origin)
    rules = (rule("r-fr", "block", "country", "FR"), rule("r-as", "whitelist", "asn", "AS64500"))
    config = Config(
        apps=(make_app("game", [origin_at(listening)]),),
        access_rules=rules,
        geoip=GeoIPFiles(country_db=country_db, asn_db=asn_db),
        kernel_filter="on",
    )
    proxy = EdgeProxy(config)
    port = proxy.port()
    try:
        # France is blocked in the kernel; its whitelisted AS (more
        # specific than a country) and Germany are not.
        assert not await threads.deferToThread(connects, port, "127.2.0.5")
        assert await exchange(port, "127.2.3.4") == b"ping"
        assert await exchange(port, "127.3.0.9") == b"ping"
        assert edge_port(proxy).accepted == 2
        assert kernel_drops(proxy) == {("game", "r-fr"): (1, kernel_drops(proxy)[("game", "r-fr")][1])}
    finally:
        await proxy.stop()
        await listening.stopListening()


def test_auto_loads_the_filter_unless_the_environment_says_off(monkeypatch: Any) -> None:
    require_kernel_filter()
    monkeypatch.delenv("SPECTRUM_KERNEL_FILTER", raising=False)
    shield = KernelShield("auto")
    try:
        assert shield.active
        assert shield.describe().startswith("kernel filter: on")
    finally:
        shield.close()
    monkeypatch.setenv("SPECTRUM_KERNEL_FILTER", "off")
    shield = KernelShield("auto")
    assert not shield.active
    assert shield.describe() == (
        "kernel filter: off (SPECTRUM_KERNEL_FILTER=off in the environment); refused sources are shed after accept"
    )
    # "on" is the config's word: the environment does not turn it off.
    shield = KernelShield("on")
    try:
        assert shield.active
    finally:
        shield.close()


@pytest_twisted.ensureDeferred
async def test_udp_session_rate_stays_in_userspace_and_a_live_session_is_never_rated() -> None:
    """
    The kernel sees datagrams, not sessions: it leaves the rate of UDP
    sessions to userspace, so a session's own datagrams are never counted
    against C{per_ip_rate}, and new sessions over it are refused there.
    """
    require_kernel_filter()
    from spectrum.model import Limits

    origin = UDPOrigin()
    oport = listen_udp_origin(origin)
    app = attr.evolve(udp_app("game", [origin_at(oport.getHost().port)]), limits=Limits(per_ip_rate=2))
    proxy = EdgeProxy(Config(apps=(app,), kernel_filter="on"))
    clients = [bind_client("127.0.0.44") for _ in range(4)]
    try:
        assert proxy.service.shield.active
        (first, _), *others = clients
        # One session: 200 datagrams, a hundred times the rate, all relayed.
        for index in range(200):
            first.send(b"%d" % index, proxy.port())
        assert len(await first.wait_for(200)) == 200
        # Three more sessions from the same address at once: the bucket
        # (2, one taken) admits one; userspace refuses the others.
        for client, _ in others:
            client.send(b"new", proxy.port())
        answered = [await client.wait_for(1, timeout=0.3) for client, _ in others]
        assert sorted(len(got) for got in answered) == [0, 0, 1]
        assert proxy.service.refusals.totals == {("game", "clientFiltered", S.PER_IP_RATE, ""): 2}
        # Nothing of it was dropped in the kernel.
        assert kernel_drops(proxy) == {}
    finally:
        await proxy.stop()
        for _, port in clients:
            await port.stopListening()
        await oport.stopListening()
