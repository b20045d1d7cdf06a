"""
The config keys of edge protection and analytics: C{access_rules}, C{geoip},
app C{limits}, C{events}, C{admin}, C{analytics}; what they build, the one
line an operator reads when they are wrong, and what a reload does to them.
"""

from __future__ import annotations

import copy
import os

import pytest
import pytest_twisted
import yaml

from spectrum.config import ConfigError, load, parse
from spectrum.config_files import check_files
from spectrum.firewall import make_rule
from spectrum.model import AdminSettings, EventLogSettings, GeoIPFiles, Limits
from spectrum.service import SpectrumService

from conftest import free_port
from geokit import write_asn_db, write_country_db

SEED_APP = {
    "name": "my-game-server",
    "protocol": "TCP",
    "dns": {"type": "CNAME", "name": "game.example.com"},
    "ips": ["198.51.100.10"],
    "ports": [{"destination_port": 27015, "origin_port": 27015}],
    "origin_pool": {
        "name": "game-servers",
        "origins": [{"name": "primary-game-server", "address": "192.168.1.100", "port": 27015}],
    },
}


def seed() -> dict:
    return {"apps": [copy.deepcopy(SEED_APP)]}


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        # The config, then the files it names (the second pass, as a start does).
        check_files(parse(data))
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_everything_builds(tmp_path) -> None:
    os.mkdir(tmp_path / "geo")
    write_country_db(str(tmp_path / "geo" / "country.mmdb"), {"192.0.2.0/24": "DE"})
    write_asn_db(str(tmp_path / "geo" / "asn.mmdb"), {"192.0.2.0/24": (64500, "Example")})
    data = seed()
    data["apps"][0]["limits"] = {"max_connections": 100, "per_ip_connections": 5, "per_ip_rate": 2.5}
    data.update(
        {
            "access_rules": [
                {"mode": "block", "configuration": {"target": "ip_range", "value": "2001:db8::/32"}, "notes": "x"},
                {"mode": "whitelist", "configuration": {"target": "asn", "value": 64500}, "app": "my-game-server"},
                {
                    "id": "023e105f4ecef8ad9ca31a8372d0c353",
                    "mode": "block",
                    "configuration": {"target": "country", "value": "de"},
                },
            ],
            "geoip": {"country_db": "geo/country.mmdb", "asn_db": "geo/asn.mmdb"},
            "events": {"path": "events.jsonl", "max_bytes": 1048576, "max_files": 2},
            "admin": {},
            "analytics": {"window_minutes": 15},
        }
    )
    path = tmp_path / "spectrum.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load(str(path))
    assert cfg.apps[0].limits == Limits(max_connections=100, per_ip_connections=5, per_ip_rate=2.5)
    assert cfg.access_rules == (
        make_rule("block", "ip_range", "2001:db8::/32", notes="x"),
        make_rule("whitelist", "asn", "AS64500", app="my-game-server"),
        make_rule("block", "country", "DE", id="023e105f4ecef8ad9ca31a8372d0c353"),
    )
    # Paths are relative to the config file.
    assert cfg.geoip == GeoIPFiles(str(tmp_path / "geo" / "country.mmdb"), str(tmp_path / "geo" / "asn.mmdb"))
    assert cfg.events == EventLogSettings(path=str(tmp_path / "events.jsonl"), max_bytes=1048576, max_files=2)
    assert cfg.admin == AdminSettings(listen="tcp:8080:interface=127.0.0.1")
    assert cfg.analytics.window_minutes == 15


def test_defaults() -> None:
    cfg = parse(seed())
    assert cfg.apps[0].limits == Limits(0, 0, 0.0)
    assert (cfg.access_rules, cfg.geoip, cfg.admin, cfg.events) == ((), GeoIPFiles(), None, None)


def with_rule(rule: dict) -> dict:
    data = seed()
    data["access_rules"] = [rule]
    return data


def block(target: str, value: object) -> dict:
    return {"mode": "block", "configuration": {"target": target, "value": value}}


@pytest.mark.parametrize(
    "rule, expected",
    [
        (
            {"mode": "challenge", "configuration": {"target": "ip", "value": "192.0.2.1"}},
            "access_rules[0].mode: expected one of 'whitelist', 'block'; got 'challenge'",
        ),
        (
            block("ip_range", "10.0.0.1/8"),
            "access_rules[0].configuration.value: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        ),
        (
            block("ip", "2001:db8::1"),
            "access_rules[0].configuration.value: '2001:db8::1' is an IPv6 address; use target ip6",
        ),
        (
            block("hostname", "x"),
            "access_rules[0].configuration.target: expected one of 'ip', 'ip6', 'ip_range', 'asn', 'country';"
            " got 'hostname'",
        ),
        (dict(block("ip", "192.0.2.1"), app="nope"), "access_rules[0].app: no app is named 'nope'"),
        (block("country", "DE"), "access_rules[0].configuration.target: country rules need geoip.country_db"),
        (block("asn", "AS1"), "access_rules[0].configuration.target: asn rules need geoip.asn_db"),
        (dict(block("ip", "192.0.2.1"), scope="x"), "access_rules[0]: unknown key 'scope'"),
        (dict(block("ip", "192.0.2.1"), id="xyz"), "access_rules[0].id: expected 32 lower-case hex digits, got 'xyz'"),
    ],
)
def test_bad_rules(rule: dict, expected: str) -> None:
    assert error_of(with_rule(rule)) == expected


def test_duplicate_rules() -> None:
    data = seed()
    data["access_rules"] = [
        block("ip", "192.0.2.1"),
        {"mode": "whitelist", "configuration": {"target": "ip", "value": "192.0.2.1"}},
    ]
    assert error_of(data) == "access_rules[1]: ip 192.0.2.1 is already in access_rules[0]"
    # The same value for one app only is another rule.
    data["access_rules"][1]["app"] = "my-game-server"
    assert len(parse(data).access_rules) == 2


@pytest.mark.parametrize(
    "limits, expected",
    [
        ({"per_ip_connections": -1}, "apps[0].limits.per_ip_connections: must be at least 0, got -1"),
        ({"per_ip_rates": 1}, "apps[0].limits: unknown key 'per_ip_rates' (did you mean 'per_ip_rate'?)"),
        ({"max_connections": 1.5}, "apps[0].limits.max_connections: expected integer, got number 1.5"),
        ({"per_ip_rate": float("nan")}, "apps[0].limits.per_ip_rate: must be a finite number, got nan"),
    ],
)
def test_bad_limits(limits: dict, expected: str) -> None:
    data = seed()
    data["apps"][0]["limits"] = limits
    assert error_of(data) == expected


def test_bad_files_and_listeners(tmp_path) -> None:
    data = seed()
    data["geoip"] = {"country_db": str(tmp_path / "missing.mmdb")}
    assert error_of(data) == f"geoip.country_db: cannot open '{tmp_path}/missing.mmdb': no such file"
    (tmp_path / "junk.mmdb").write_bytes(b"junk" * 100)
    data["geoip"] = {"asn_db": str(tmp_path / "junk.mmdb")}
    assert error_of(data).startswith(f"geoip.asn_db: '{tmp_path}/junk.mmdb' is not a MaxMind DB file")

    data = seed()
    data["events"] = {"path": str(tmp_path / "no" / "such" / "events.jsonl")}
    assert error_of(data) == f"events.path: directory '{tmp_path}/no/such' does not exist"
    data["events"] = {"path": str(tmp_path)}
    assert error_of(data) == f"events.path: '{tmp_path}' is a directory; name a file"
    data["events"] = {"path": str(tmp_path / "e.jsonl"), "max_bytes": 10}
    assert error_of(data) == "events.max_bytes: must be at least 1024, got 10"
    data["events"] = {"max_files": 2}
    assert error_of(data) == "events: missing key 'path'"

    data = seed()
    data["admin"] = {"listen": "tcp:http"}
    assert error_of(data).startswith("admin.listen: 'tcp:http' is not a server endpoint like")
    data["admin"] = {"colour": "red"}
    assert error_of(data) == "admin: unknown key 'colour'"
    data = seed()
    data["analytics"] = {"window_minutes": 0}
    assert error_of(data) == "analytics.window_minutes: must be at least 1, got 0"


@pytest_twisted.ensureDeferred
async def test_reload_replaces_rules_only_when_the_file_changed_them(tmp_path) -> None:
    data = seed()
    data["apps"][0]["ips"] = ["127.0.0.1"]
    data["apps"][0]["ports"] = [{"destination_port": free_port(), "origin_port": 27015}]
    data["access_rules"] = [block("ip", "192.0.2.1")]
    path = tmp_path / "spectrum.yaml"
    path.write_text(yaml.safe_dump(data))
    service = SpectrumService(load(str(path)))
    service.startService()
    try:
        firewall = service.admission.firewall
        added = firewall.add(make_rule("block", "ip", "192.0.2.2", notes="added at run time"))
        # A reload that leaves access_rules alone keeps the rule added at run time.
        changed = copy.deepcopy(data)
        changed["apps"][0]["limits"] = {"per_ip_rate": 5}
        path.write_text(yaml.safe_dump(changed))
        assert service.reload()
        assert firewall.get(added.id) == added and len(firewall) == 2
        assert service.runtimes["my-game-server"].app.limits.per_ip_rate == 5
        # One that changes them makes the file's rules the rule set.
        changed["access_rules"] = [block("ip_range", "192.0.2.0/24")]
        path.write_text(yaml.safe_dump(changed))
        assert service.reload()
        assert [r.value for r in firewall.rules] == ["192.0.2.0/24"]
        assert not firewall.decide("my-game-server", "192.0.2.77").allowed
        # A bad rule is refused with the old rules kept.
        changed["access_rules"] = [block("ip", "192.0.2.300")]
        path.write_text(yaml.safe_dump(changed))
        assert not service.reload()
        assert [r.value for r in firewall.rules] == ["192.0.2.0/24"]
    finally:
        await service.stopService()
