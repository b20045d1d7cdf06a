"""
Cloudflare's own Python library (C{cloudflare} from PyPI), pointed at a
real C{twistd spectrum} with only its base URL and token changed: Spectrum
apps, access rules and analytics as a script written for Cloudflare does
them.
"""

from __future__ import annotations

from typing import Any, Iterator

import cloudflare
import pytest
import yaml

from conftest import free_port
from procs import Client, NamedOrigin, Twistd, start_twistd, wait_until

EDIT = "edit-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
ZONE = "local"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: Any) -> Iterator[Any]:
    """
    A twistd with no apps, its admin on a free loopback port; yields
    (Cloudflare client, read-only client, twistd, origin).
    """
    tmp_path = tmp_path_factory.mktemp("cloudflare")
    admin_port = free_port()
    config = {
        "zone": {"id": ZONE, "name": "example.com"},
        "apps": [],
        "admin": {
            "listen": f"tcp:{admin_port}:interface=127.0.0.1",
            "tokens": [
                {"name": "ops", "token": EDIT, "permissions": "edit"},
                {"name": "viewer", "token": READ, "permissions": "read"},
            ],
        },
    }
    path = tmp_path / "spectrum.yaml"
    path.write_text(yaml.safe_dump(config))
    origin = NamedOrigin("origin")
    proxy: Twistd = start_twistd(str(path), tmp_path / "twistd.log", [admin_port])
    base = f"http://127.0.0.1:{admin_port}/client/v4"
    client = cloudflare.Cloudflare(api_token=EDIT, base_url=base, max_retries=0)
    reader = cloudflare.Cloudflare(api_token=READ, base_url=base, max_retries=0)
    try:
        yield client, reader, proxy, origin
    finally:
        client.close()
        reader.close()
        proxy.kill()
        origin.close()


def test_spectrum_apps_create_list_get_update_delete(edge: Any) -> None:
    client, reader, proxy, origin = edge
    port = free_port()
    created = client.spectrum.apps.create(
        zone_id=ZONE,
        dns={"type": "ADDRESS", "name": "ssh.example.com"},
        protocol=f"tcp/{port}",
        traffic_type="direct",
        argo_smart_routing=False,
        edge_ips={"type": "static", "ips": ["127.0.0.1"]},
        origin_dns={"name": "localhost"},
        origin_port=origin.port,
        ip_firewall=True,
        proxy_protocol="off",
        tls="off",
    )
    assert created is not None
    app_id = created.id
    wait_until(lambda: _greets(port), what="the new app to relay")
    assert _greets(port) == b"origin"

    listed = [app.id for app in reader.spectrum.apps.list(zone_id=ZONE)]
    assert listed == [app_id]
    got = reader.spectrum.apps.get(app_id, zone_id=ZONE)
    assert got is not None and got.protocol == f"tcp/{port}"
    assert got.dns.name == "ssh.example.com"
    assert got.origin_dns.name == "localhost"
    assert got.edge_ips.ips == ["127.0.0.1"]

    second = NamedOrigin("second")
    try:
        updated = client.spectrum.apps.update(
            app_id,
            zone_id=ZONE,
            dns={"type": "ADDRESS", "name": "ssh.example.com"},
            protocol=f"tcp/{port}",
            edge_ips={"type": "static", "ips": ["127.0.0.1"]},
            origin_direct=[f"tcp://127.0.0.1:{second.port}"],
            traffic_type="direct",
        )
        assert updated is not None and updated.id == app_id
        wait_until(lambda: _greets(port) == b"second", what="the update to take")
    finally:
        second.close()

    deleted = client.spectrum.apps.delete(app_id, zone_id=ZONE)
    assert deleted is not None and deleted.id == app_id
    assert list(reader.spectrum.apps.list(zone_id=ZONE)) == []
    with pytest.raises(cloudflare.NotFoundError):
        reader.spectrum.apps.get(app_id, zone_id=ZONE)


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"traffic_type": "https"}, "traffic_type"),
        ({"argo_smart_routing": True}, "argo_smart_routing"),
        ({"origin_worker_id": "abc"}, "origin_worker_id"),
        ({"virtual_network_id": "abc"}, "virtual_network_id"),
        ({"origin_dns": {"name": "localhost", "type": "AAAA"}}, "AAAA"),
        ({"edge_ips": {"type": "static"}}, "edge_ips"),
        ({"origin_dns": {"name": "_ssh._tcp.example.com", "type": "SRV"}}, "SRV"),
    ],
)
def test_what_spectrum_cannot_honour_is_a_400_that_says_why(edge: Any, extra: Any, words: str) -> None:
    client, _, _, origin = edge
    body = {
        "zone_id": ZONE,
        "dns": {"type": "ADDRESS", "name": "x.example.com"},
        "protocol": f"tcp/{free_port()}",
        "edge_ips": {"type": "static", "ips": ["127.0.0.1"]},
        "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
    }
    if "origin_dns" in extra:
        del body["origin_direct"]
        body["origin_port"] = origin.port
    body.update(extra)
    with pytest.raises(cloudflare.BadRequestError) as raised:
        client.spectrum.apps.create(**body)
    message = raised.value.body[0]["message"] if isinstance(raised.value.body, list) else str(raised.value)
    assert words in message
    assert list(client.spectrum.apps.list(zone_id=ZONE)) == []


def test_access_rules_create_edit_list_delete(edge: Any) -> None:
    client, reader, _, _ = edge
    rule = client.firewall.access_rules.create(
        zone_id=ZONE,
        mode="block",
        configuration={"target": "ip", "value": "192.0.2.7"},
        notes="scanner",
    )
    assert rule is not None and rule.mode == "block"
    # The library's PATCH resends the configuration, unchanged.
    edited = client.firewall.access_rules.edit(
        rule.id,
        zone_id=ZONE,
        mode="whitelist",
        configuration={"target": "ip", "value": "192.0.2.7"},
        notes="a partner after all",
    )
    assert edited is not None and edited.mode == "whitelist" and edited.notes == "a partner after all"
    got = reader.firewall.access_rules.get(rule.id, zone_id=ZONE)
    assert got is not None and got.notes == "a partner after all"
    listed = reader.firewall.access_rules.list(zone_id=ZONE, configuration={"target": "ip", "value": "192.0.2.7"})
    assert [r.id for r in listed] == [rule.id]
    # A changed configuration is another rule, and says so.
    with pytest.raises(cloudflare.BadRequestError) as raised:
        client.firewall.access_rules.edit(
            rule.id, zone_id=ZONE, mode="block", configuration={"target": "ip", "value": "192.0.2.8"}
        )
    assert "configuration" in str(raised.value)
    deleted = client.firewall.access_rules.delete(rule.id, zone_id=ZONE)
    assert deleted is not None and deleted.id == rule.id
    assert list(reader.firewall.access_rules.list(zone_id=ZONE)) == []


def test_analytics_with_several_metrics(edge: Any) -> None:
    client, reader, _, origin = edge
    port = free_port()
    app = client.spectrum.apps.create(
        zone_id=ZONE,
        dns={"type": "ADDRESS", "name": "echo.example.com"},
        protocol=f"tcp/{port}",
        edge_ips={"type": "static", "ips": ["127.0.0.1"]},
        origin_direct=[f"tcp://127.0.0.1:{origin.port}"],
    )
    wait_until(lambda: _greets(port), what="the app to relay")
    for _ in range(2):
        conn = Client(port)
        assert conn.read_line() == b"origin"
        assert conn.exchange(b"hello") == b"hello"
        conn.finish()
        conn.close()

    def summary() -> Any:
        result = reader.spectrum.analytics.events.summaries.get(
            zone_id=ZONE,
            metrics=["count", "bytesIngress", "bytesEgress"],
            dimensions=["appID"],
            filters=f"appID=={app.id}",
        )
        return result if result and result.data and result.data[0].metrics[0] >= 3 else None

    result = wait_until(summary, what="the analytics to count three connections")
    count, ingress, egress = result.data[0].metrics
    assert count >= 3
    assert ingress > 0 and egress > ingress
    assert result.query.metrics == ["count", "bytesIngress", "bytesEgress"]
    bytime = reader.spectrum.analytics.events.bytimes.get(
        zone_id=ZONE, time_delta="minute", metrics=["count", "bytesEgress"]
    )
    assert bytime is not None and bytime.query.metrics == ["count", "bytesEgress"]


def _greets(port: int) -> Any:
    try:
        conn = Client(port, timeout=2.0)
    except OSError:
        return None
    try:
        return conn.read_line()
    except (OSError, EOFError):
        return None
    finally:
        conn.close()
