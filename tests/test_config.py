"""
Tests for L{spectrum.config}: what an operator's file turns into, and the one
line an operator reads when the file is wrong.
"""

from __future__ import annotations

import copy
import json
import os

import jsonschema
import pytest
import yaml

from spectrum import config
from spectrum.config import ConfigError, default_config_path, load, parse
from spectrum.model import Origin, PortMapping, PortRange

# The seed's Spectrum app, exactly as the seed gives it.
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

SEED_YAML = """\
apps:
  - name: my-game-server
    protocol: TCP
    dns:
      type: CNAME
      name: game.example.com
    ips: ["198.51.100.10"]
    ports:
      - destination_port: 27015
        origin_port: 27015
    origin_pool:
      name: game-servers
      origins:
        - name: primary-game-server
          address: 192.168.1.100
          port: 27015
"""


def seed() -> dict:
    """
    A fresh copy of the seed's config, to break one thing in.
    """
    return {"apps": [copy.deepcopy(SEED_APP)]}


def error_of(data: object) -> str:
    """
    The text of the L{ConfigError} that C{data} raises; it must be one line.
    """
    with pytest.raises(ConfigError) as caught:
        parse(data)
    text = str(caught.value)
    assert "\n" not in text
    assert text == f"{caught.value.path}: {caught.value.message}"
    return text


def check_seed(cfg: config.Config) -> None:
    (app,) = cfg.apps
    assert app.name == "my-game-server"
    assert app.protocol == "tcp"
    assert app.dns_name == "game.example.com"
    assert app.dns_type == "CNAME"
    assert app.hostnames == ("game.example.com",)
    assert app.ips == ("198.51.100.10",)
    assert app.ports == (PortMapping(PortRange(27015, 27015), PortRange(27015, 27015)),)
    assert app.pool.name == "game-servers"
    assert app.pool.load_balancing == "round_robin"
    assert app.pool.origins == (Origin(name="primary-game-server", address="192.168.1.100", port=27015),)
    assert app.tls == "off"
    assert app.origin_tries == 3
    assert len(app.id) == 32
    assert cfg.zone_id == "local"


def test_schema_is_valid() -> None:
    """
    The shipped schema is itself a valid JSON Schema.
    """
    path = os.path.join(os.path.dirname(os.path.dirname(config.__file__)), "schema.json")
    with open(path) as f:
        schema = json.load(f)
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_seed_app_json(tmp_path) -> None:
    """
    The seed's app, as JSON, loads unchanged.
    """
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"apps": [SEED_APP]}))
    cfg = load(str(path))
    check_seed(cfg)
    assert cfg.source == str(path)


def test_seed_app_yaml(tmp_path) -> None:
    """
    The same app written as YAML loads to the same model.
    """
    assert yaml.safe_load(SEED_YAML) == {"apps": [SEED_APP]}
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    check_seed(load(str(path)))
    assert load(str(path)).apps == parse({"apps": [SEED_APP]}).apps


def test_app_id_stable() -> None:
    """
    Without an C{id}, an app's id comes from its name, the same every time;
    a given id is kept.
    """
    first = parse(seed()).apps[0].id
    assert first == parse(seed()).apps[0].id
    data = seed()
    data["apps"][0]["id"] = "023e105f4ecef8ad9ca31a8372d0c353"
    assert parse(data).apps[0].id == "023e105f4ecef8ad9ca31a8372d0c353"


def test_cloudflare_api_shape() -> None:
    """
    Cloudflare's API shape: edge port in the protocol, origin as a URL.
    """
    cfg = parse(
        {
            "zone": {"id": "example", "name": "Example.COM"},
            "apps": [
                {
                    "name": "ssh",
                    "protocol": "tcp/22",
                    "dns": {"type": "CNAME", "name": "SSH.example.com"},
                    "origin_direct": ["tcp://192.0.2.1:22"],
                }
            ],
        }
    )
    assert cfg.zone_id == "example"
    assert cfg.zone_name == "example.com"
    (app,) = cfg.apps
    assert app.protocol == "tcp"
    assert app.ips == ("0.0.0.0",)
    assert app.hostnames == ("ssh.example.com",)
    assert app.ports == (PortMapping(PortRange(22, 22)),)
    assert app.pool.name == "ssh"
    assert app.pool.origins == (Origin(name="192.0.2.1:22", address="192.0.2.1", port=22),)


def test_cloudflare_origin_direct_forms() -> None:
    """
    IPv6 and hostname URLs, and Cloudflare's C{origin_port} range with
    C{tcp/N-M}.
    """
    (app,) = parse(
        {
            "apps": [
                {
                    "name": "range",
                    "protocol": "tcp/1000-1019",
                    "origin_port": "2000-2019",
                    "origin_direct": [
                        "tcp://[2001:DB8::1]:2000-2019",
                        "tcp://Origin.Example:2000-2019",
                    ],
                }
            ]
        }
    ).apps
    assert app.ports == (PortMapping(PortRange(1000, 1019), PortRange(2000, 2019)),)
    assert app.mapping_for(1005).origin_port(1005) == 2005
    assert [o.port for o in app.pool.origins] == [None, None]
    # The range in the URLs alone says the same.
    (same,) = parse(
        {
            "apps": [
                {
                    "name": "range",
                    "protocol": "tcp/1000-1019",
                    "origin_direct": ["tcp://192.0.2.1:2000-2019"],
                }
            ]
        }
    ).apps
    assert same.ports == app.ports
    (app,) = parse(
        {
            "apps": [
                {
                    "name": "v6",
                    "protocol": "tcp/22",
                    "origin_direct": [
                        "tcp://[2001:DB8::1]:22",
                        "tcp://Origin.Example:2222",
                    ],
                }
            ]
        }
    ).apps
    assert [(o.name, o.address, o.port) for o in app.pool.origins] == [
        ("[2001:db8::1]:22", "2001:db8::1", 22),
        ("origin.example:2222", "origin.example", 2222),
    ]


def test_cloudflare_edge_ips_origin_dns_and_fixed_fields() -> None:
    """
    What Cloudflare's API sends loads from a config file too: C{edge_ips}
    (static as C{ips}, dynamic as every address), C{origin_dns} with
    C{origin_port}, C{traffic_type: direct}, C{argo_smart_routing: false}.
    """
    base = {
        "name": "ssh",
        "protocol": "tcp/2222",
        "traffic_type": "direct",
        "argo_smart_routing": False,
        "edge_ips": {"type": "static", "ips": ["127.0.0.1"]},
        "origin_dns": {"name": "Origin.Example", "ttl": 60, "type": ""},
        "origin_port": 22,
    }
    (app,) = parse({"apps": [base]}).apps
    assert app.ips == ("127.0.0.1",)
    assert app.ports == (PortMapping(PortRange(2222, 2222), PortRange(22, 22)),)
    assert app.pool.origins == (Origin(name="origin.example", address="origin.example", port=None),)
    dynamic = dict(base, edge_ips={"type": "dynamic", "connectivity": "ipv6"})
    assert parse({"apps": [dynamic]}).apps[0].ips == ("::",)
    dynamic = dict(base, edge_ips={"type": "dynamic"})
    assert parse({"apps": [dynamic]}).apps[0].ips == ("0.0.0.0", "::")


@pytest.mark.parametrize(
    "change, line",
    [
        ({"traffic_type": "https"}, "apps[0].traffic_type: spectrum relays bytes as they come: only 'direct'"),
        ({"argo_smart_routing": True}, "apps[0].argo_smart_routing: spectrum connects to origins straight"),
        ({"origin_worker_id": "x"}, "apps[0].origin_worker_id: spectrum runs no Cloudflare Workers"),
        ({"virtual_network_id": "x"}, "apps[0].virtual_network_id: spectrum has no Cloudflare Tunnel"),
        ({"origin_dns": {"name": "o.example", "type": "SRV"}}, "apps[0].origin_dns.type: spectrum looks up A and"),
        ({"origin_port": None}, "apps[0].origin_dns: needs origin_port"),
        ({"ips": ["127.0.0.1"]}, "apps[0].edge_ips: give the edge addresses once: ips or edge_ips"),
        ({"edge_ips": {"type": "static"}}, "apps[0].edge_ips: type static needs ips"),
        ({"edge_ips": {"type": "static", "ips": ["nowhere"]}}, "apps[0].edge_ips.ips[0]:"),
        ({"origin_direct": ["tcp://192.0.2.1:22"]}, "apps[0]: give only one of"),
    ],
)
def test_cloudflare_fields_spectrum_cannot_honour(change: dict, line: str) -> None:
    app = {
        "name": "ssh",
        "protocol": "tcp/2222",
        "edge_ips": {"type": "static", "ips": ["127.0.0.1"]},
        "origin_dns": {"name": "origin.example"},
        "origin_port": 22,
    }
    app.update(change)
    app = {key: value for key, value in app.items() if value is not None}
    assert error_of({"apps": [app]}).startswith(line)


def test_yaml_port_range(tmp_path) -> None:
    """
    A YAML config mapping a 20-port range onto another; YAML's bare C{off}
    reads as "off"; origin ports resolve through the mapping.
    """
    path = tmp_path / "spectrum.yml"
    path.write_text(
        """\
zone: {id: local, name: example.com}
apps:
  - name: game
    protocol: udp
    ips: ["127.0.0.1", "::1"]
    ports:
      - {destination_port: "30000-30019", origin_port: "40000-40019"}
      - {destination_port: 27015}
    origin_pool:
      name: game-servers
      load_balancing: least_connections
      origins:
        - {name: a, address: 192.0.2.10, weight: 2}
        - {name: b, address: Game-B.internal, enabled: false}
    tls: off
    proxy_protocol: off
    ip_firewall: false
    timeouts: {connect: 2, idle: 30}
    origin_tries: 2
"""
    )
    (app,) = load(str(path)).apps
    assert app.protocol == "udp"
    assert app.ips == ("127.0.0.1", "::1")
    assert app.ports[0] == PortMapping(PortRange(30000, 30019), PortRange(40000, 40019))
    assert len(app.edge_ports()) == 21
    assert app.mapping_for(30019).origin_port(30019) == 40019
    assert app.mapping_for(27015).origin_port(27015) is None
    assert app.pool.load_balancing == "least_connections"
    assert app.pool.origins[0].weight == 2.0
    assert app.pool.origins[1] == Origin(name="b", address="game-b.internal", enabled=False)
    assert (app.tls, app.proxy_protocol, app.ip_firewall) == ("off", "off", False)
    assert (app.timeouts.connect, app.timeouts.idle, app.timeouts.handshake) == (
        2.0,
        30.0,
        10.0,
    )
    assert app.origin_tries == 2


def test_shared_port_with_distinct_hostnames() -> None:
    """
    Two apps may share an edge port when each has its own hostnames.
    """
    data = seed()
    other = copy.deepcopy(SEED_APP)
    other.update(name="other", dns={"name": "other.example.com"}, ips=["0.0.0.0"])
    data["apps"].append(other)
    assert [app.name for app in parse(data).apps] == ["my-game-server", "other"]


def test_default_config() -> None:
    """
    The embedded default loads: SSH and Redis on loopback.
    """
    cfg = load(default_config_path())
    assert cfg.zone_id == "local"
    ssh, redis = cfg.apps
    assert (ssh.name, ssh.ips, ssh.edge_ports()) == ("ssh", ("127.0.0.1",), (2222,))
    assert ssh.mapping_for(2222).origin_port(2222) == 22
    assert ssh.pool.origins[0].address == "127.0.0.1"
    assert (redis.name, redis.edge_ports()) == ("redis", (6380,))
    assert redis.mapping_for(6380).origin_port(6380) == 6379


# Bad configs: one line each, naming the place.


def test_unknown_key() -> None:
    data = seed()
    data["apps"][0]["port"] = 22
    assert error_of(data) == "apps[0]: unknown key 'port' (did you mean 'ports'?)"


def test_unknown_top_level_key() -> None:
    assert error_of({"apps": [], "zones": {}}).startswith("config: unknown key 'zones'")


def test_tls_unknown_mode() -> None:
    data = seed()
    data["apps"][0]["tls"] = "on"
    assert error_of(data) == "apps[0].tls: expected one of 'off', 'flexible', 'full', 'strict'; got 'on'"


def test_wrong_type() -> None:
    data = seed()
    data["apps"][0]["origin_pool"]["origins"][0]["port"] = "x"
    assert error_of(data) == ("apps[0].origin_pool.origins[0].port: expected integer, got string 'x'")


def test_bad_range() -> None:
    data = seed()
    data["apps"][0]["ports"][0] = {"destination_port": "30-20"}
    assert error_of(data).startswith("apps[0].ports[0].destination_port: range 30-20 ")


def test_port_over_65535() -> None:
    data = seed()
    data["apps"][0]["ports"][0]["destination_port"] = 70000
    assert error_of(data) == ("apps[0].ports[0].destination_port: must be at most 65535, got 70000")
    data["apps"][0]["ports"][0] = {"destination_port": "65530-65536"}
    assert error_of(data).startswith("apps[0].ports[0].destination_port: port 65536 ")


def test_duplicate_name() -> None:
    data = seed()
    data["apps"].append(copy.deepcopy(SEED_APP))
    data["apps"][1]["ports"][0]["destination_port"] = 1
    assert error_of(data).startswith("apps[1].name: duplicate app name 'my-game-server'")


def test_overlapping_ports_without_sni() -> None:
    data = seed()
    data["apps"].append(
        {
            "name": "x",
            "protocol": "tcp",
            "ports": [{"destination_port": "27000-27100"}],
            "origin_direct": ["tcp://192.0.2.1:22"],
        }
    )
    assert error_of(data) == (
        "apps[1].ports[0].destination_port: 27015 on 0.0.0.0 is already used by"
        " app 'my-game-server'; apps may share an edge port only when each has"
        " distinct hostnames (dns.name, sni)"
    )


def test_overlapping_hostnames() -> None:
    data = seed()
    other = copy.deepcopy(SEED_APP)
    other.update(name="x", dns={"name": "other.example.com"}, sni=["*.EXAMPLE.com"])
    data["apps"].append(other)
    assert error_of(data).startswith("apps[1].ports[0].destination_port: 27015 on ")


def test_tcp_and_udp_share_a_port() -> None:
    data = seed()
    other = copy.deepcopy(SEED_APP)
    other.update(name="x", protocol="udp")
    data["apps"].append(other)
    assert len(parse(data).apps) == 2


def test_missing_origin() -> None:
    data = seed()
    del data["apps"][0]["origin_pool"]
    assert error_of(data) == "apps[0]: needs origin_pool or origin_direct or origin_dns"
    data["apps"][0]["origin_pool"] = {"name": "p", "origins": []}
    assert error_of(data).startswith("apps[0].origin_pool.origins: ")


def test_bad_address() -> None:
    data = seed()
    data["apps"][0]["origin_pool"]["origins"][0]["address"] = "192.168.1.300"
    assert error_of(data).startswith("apps[0].origin_pool.origins[0].address: ")
    data = seed()
    data["apps"][0]["ips"] = ["198.51.100.10", "game.example.com"]
    assert error_of(data).startswith("apps[0].ips[1]: 'game.example.com' is not an IP")


def test_origin_port_conflict() -> None:
    data = seed()
    data["apps"][0]["origin_pool"]["origins"][0]["port"] = 27016
    assert error_of(data).startswith("apps[0].origin_pool.origins[0].port: port 27016")


def test_origin_port_against_range() -> None:
    """
    An origin's own port cannot apply to a mapping that maps a range.
    """
    data = seed()
    data["apps"][0]["ports"][0] = {
        "destination_port": "27015-27016",
        "origin_port": "27015-27016",
    }
    assert error_of(data) == (
        "apps[0].origin_pool.origins[0].port: port 27015 conflicts with"
        " apps[0].ports[0].origin_port 27015-27016; give the port in one place"
    )


def test_protocol_ports_and_ports_list() -> None:
    data = seed()
    data["apps"][0]["protocol"] = "tcp/22"
    assert error_of(data).startswith("apps[0].ports: protocol 'tcp/22' ")


def test_range_length_mismatch() -> None:
    data = seed()
    data["apps"][0]["ports"].append({"destination_port": "30000-30009", "origin_port": "40000-40010"})
    assert error_of(data) == ("apps[0].ports[1].origin_port: range 40000-40010 has 11 ports, destination has 10")


@pytest.mark.parametrize(
    "url",
    [
        "192.0.2.1:22",
        "udp://192.0.2.1:22",
        "tcp://192.0.2.1",
        "tcp://2001:db8::1:22",
        "tcp://bad_host:22",
        "tcp://192.0.2.1:22/path",
    ],
)
def test_origin_direct_bad_url(url: str) -> None:
    data = {"apps": [{"name": "x", "protocol": "tcp/22", "origin_direct": ["tcp://h:1", url]}]}
    assert error_of(data).startswith("apps[0].origin_direct[1]: ")


def test_unreadable_file(tmp_path) -> None:
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: cannot read the file")
    assert "\n" not in str(caught.value)


def test_yaml_syntax_error(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apps:\n  - name: x\n    protocol: [tcp\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    text = str(caught.value)
    assert text.startswith(f"{path}: line ")
    assert "column" in text
    assert "\n" not in text


def test_yaml_duplicate_key(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("apps: []\napps: []\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert str(caught.value) == f"{path}: line 2, column 1: duplicate key 'apps'"


def test_json_syntax_error(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"apps": [}')
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert str(caught.value).startswith(f"{path}: line 1, column 11: ")


def test_not_a_mapping(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert str(caught.value) == f"{path}: expected a mapping at the top, got a list"


# The store, the node name and workers (issue 8).


def test_store_node_workers() -> None:
    config = parse({"apps": [], "store": "rediss://cache:6380/2?ca=/etc/ca.pem", "node": "edge-1", "workers": 4})
    assert (config.store, config.node, config.workers) == ("rediss://cache:6380/2?ca=/etc/ca.pem", "edge-1", 4)
    config = parse({"apps": []})
    assert (config.store, config.node, config.workers) == ("memory", None, 1)


def test_workers_auto_is_one_per_usable_core() -> None:
    """C{workers: auto} starts one worker per core this process may run on."""
    assert (
        parse({"apps": [], "workers": "auto"}).workers == len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("store", "mongodb://x", "store: expected memory or a redis://, rediss:// or redis+sentinel:// URL"),
        ("store", "redis://h:0/0", "store: 'redis://h:0/0': port '0' is not a number from 1 to 65535"),
        ("store", "redis://h/x", "store: 'redis://h/x': the database must be a number, as in /0"),
        ("store", "redis+sentinel://h:26379", "store: 'redis+sentinel://h:26379' names no Sentinel service"),
        ("workers", 0, "workers: must be at least 1, got 0"),
        ("workers", "2", "workers: expected a number from 1 to 256 or auto, got '2'"),
        ("workers", "all", "workers: expected a number from 1 to 256 or auto, got 'all'"),
        ("node", "edge 1", "node: expected letters, digits, '.', '-' or '_' (at most 64), got 'edge 1'"),
    ],
)
def test_bad_store_node_workers(key: str, value: object, message: str) -> None:
    assert error_of({"apps": [], key: value}).startswith(message)


def test_per_ip_rate_scope() -> None:
    data = seed()
    data["apps"][0]["limits"] = {"per_ip_rate": 5, "per_ip_rate_scope": "cluster"}
    assert parse(data).apps[0].limits.per_ip_rate_scope == "cluster"
    data["apps"][0]["limits"] = {"per_ip_rate": 5}
    assert parse(data).apps[0].limits.per_ip_rate_scope == "node"
    data["apps"][0]["limits"] = {"per_ip_rate_scope": "planet"}
    assert error_of(data).startswith("apps[0].limits.per_ip_rate_scope: ")


def test_kernel_filter_words_and_yaml_booleans() -> None:
    """
    C{kernel_filter} takes auto, on or off; YAML's bare on/off (booleans)
    mean the same words; anything else names the key.
    """
    assert parse(seed()).kernel_filter == "auto"
    for text, word in (("off", "off"), ("on", "on"), ('"off"', "off"), ("auto", "auto")):
        data = seed()
        data.update(yaml.safe_load(f"kernel_filter: {text}"))
        assert parse(data).kernel_filter == word
    data = seed()
    data["kernel_filter"] = "sometimes"
    assert error_of(data) == "kernel_filter: expected auto, on or off, got 'sometimes'"


def test_apps_sharing_a_port_agree_on_accept_proxy_protocol() -> None:
    """
    The PROXY header is read before the ClientHello that tells apps on a
    shared port apart, so they must agree on whether to read one.
    """
    data = seed()
    other = copy.deepcopy(SEED_APP)
    other.update(name="other", dns={"name": "other.example.com"})
    other["accept_proxy_protocol"] = {"trusted": ["10.0.0.0/8"]}
    data["apps"].append(other)
    assert error_of(data) == (
        "apps[1].accept_proxy_protocol: differs from that of app 'my-game-server', which shares an edge port with it"
    )


def _loop_app(name: str, port: object, origin: str, **extra: object) -> dict:
    app = {"name": name, "protocol": f"tcp/{port}", "ips": ["127.0.0.1"], "origin_direct": [origin]}
    app.update(extra)
    return app


LOOP = "its origins lead back to this spectrum's own edge, so a connection would loop: "


@pytest.mark.parametrize(
    "apps, expected",
    [
        (
            [_loop_app("a", 5000, "tcp://127.0.0.1:5000")],
            "apps[0]: " + LOOP + "'a' port 5000 -> 127.0.0.1:5000 ('a')",
        ),
        (
            [_loop_app("a", 5000, "tcp://127.0.0.1:6000"), _loop_app("b", 6000, "tcp://127.0.0.1:5000")],
            "apps[0]: " + LOOP + "'a' port 5000 -> 127.0.0.1:6000 ('b') -> 127.0.0.1:5000 ('a')",
        ),
        (
            [
                _loop_app("a", 5000, "tcp://127.0.0.1:9"),
                _loop_app("b", 6000, "tcp://127.0.0.1:7000"),
                _loop_app("c", 7000, "tcp://127.0.0.1:6000"),
            ],
            "apps[1]: " + LOOP + "'b' port 6000 -> 127.0.0.1:7000 ('c') -> 127.0.0.1:6000 ('b')",
        ),
        (
            [_loop_app("a", 5000, "tcp://localhost:5000", ips=["0.0.0.0"])],
            "apps[0]: " + LOOP + "'a' port 5000 -> localhost:5000 ('a')",
        ),
        (
            [_loop_app("a", 5000, "tcp://[::1]:5000", ips=["::"])],
            "apps[0]: " + LOOP + "'a' port 5000 -> [::1]:5000 ('a')",
        ),
        (
            # Two of its port mappings, each onto the other's edge port.
            [
                {
                    "name": "a",
                    "protocol": "tcp",
                    "ips": ["127.0.0.1"],
                    "ports": [
                        {"destination_port": 5000, "origin_port": 5001},
                        {"destination_port": 5001, "origin_port": 5000},
                    ],
                    "origin_pool": {"origins": [{"name": "o", "address": "127.0.0.1"}]},
                }
            ],
            "apps[0]: " + LOOP + "'a' port 5000 -> 127.0.0.1:5001 ('a') -> 127.0.0.1:5000 ('a')",
        ),
        (
            # No origin port: each edge port's own.
            [
                {
                    "name": "a",
                    "protocol": "udp",
                    "ports": [{"destination_port": "5000-5001"}],
                    "origin_pool": {"origins": [{"name": "o", "address": "127.0.0.1"}]},
                }
            ],
            "apps[0]: " + LOOP + "'a' port 5000 -> 127.0.0.1:5000 ('a')",
        ),
    ],
)
def test_proxy_loops_are_refused(apps: list, expected: str) -> None:
    """
    Issue 16, fault 7: an app whose origin is its own edge address, or
    apps pointing at each other, loaded; each connection then looped
    through spectrum until descriptors ran out.
    """
    assert error_of({"apps": apps}).startswith(expected)


def test_chains_and_other_addresses_are_not_loops() -> None:
    parse(
        {
            "apps": [
                # a -> b -> elsewhere
                _loop_app("a", 5000, "tcp://127.0.0.1:6000"),
                _loop_app("b", 6000, "tcp://192.0.2.1:6000"),
                # Another loopback address than the edge's; a hostname is not judged.
                _loop_app("c", 7000, "tcp://127.0.0.2:7000"),
                _loop_app("d", 8000, "tcp://edge.example.com:8000"),
                # Each port to the next, the last out of the range: a chain.
                _loop_app("r", "10000-10002", "tcp://127.0.0.1:10001-10003"),
                # A TCP app's origin on a UDP app's port.
                _loop_app("e", 9000, "udp://127.0.0.1:9001", protocol="udp/9000"),
                _loop_app("f", 9001, "tcp://127.0.0.1:9000"),
            ]
        }
    )


def test_resolvers() -> None:
    """
    C{resolvers} lists name servers as ip, ip:port or [ipv6]:port (port 53
    unless given); anything else names the entry.
    """
    assert parse(seed()).resolvers == ()
    data = seed()
    data["resolvers"] = ["127.0.0.1:5353", "10.0.0.53", "[::1]:53", "[2001:db8::1]", "::1"]
    assert parse(data).resolvers == (
        ("127.0.0.1", 5353),
        ("10.0.0.53", 53),
        ("::1", 53),
        ("2001:db8::1", 53),
        ("::1", 53),
    )
    for bad in ("dns.example", "127.0.0.1:99999", "[::1]x", "10.0.0.1:"):
        data["resolvers"] = ["127.0.0.1", bad]
        assert error_of(data).startswith("resolvers[1]: "), bad
