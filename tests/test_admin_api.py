"""
The admin API on a real loopback port, against a running spectrum: the
seed's curl, auth, bad bodies, apps made and removed through the API,
access rules, analytics and the state file across a restart.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import pytest_twisted
from twisted.internet import reactor, utils
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol

from spectrum import status as S

from adminkit import EDIT, EMAIL, READ, Admin, document, echo_app
from conftest import free_port, require_program
from relaykit import OriginFactory, connect_client, listen_origin, sleep

ZONE = "/client/v4/zones/local"
USER_RULES = "/client/v4/user/firewall/access_rules/rules"
ZONE_RULES = ZONE + "/firewall/access_rules/rules"
APPS = ZONE + "/spectrum/apps"


class World:
    """
    An echo origin, a spectrum with one app in front of it, and its admin.
    """

    def __init__(self, tmp_path: Any, **extra: Any) -> None:
        self.origin = OriginFactory()
        self.origin_port = listen_origin(self.origin)
        self.edge_port = free_port()
        data = document([echo_app("echo", self.edge_port, self.origin_port.getHost().port)], **extra)
        self.tmp_path = tmp_path
        self.admin = Admin.from_document(tmp_path, data)

    async def close(self) -> None:
        await self.admin.stop()
        await self.origin_port.stopListening()


@pytest_twisted.async_yield_fixture
async def world(tmp_path: Any) -> Any:
    made: List[World] = []

    def make(**extra: Any) -> World:
        w = World(tmp_path, **extra)
        made.append(w)
        return w

    yield make
    for w in made:
        await w.close()


async def echo_through(port: int, bind: str = "127.0.0.1", payload: bytes = b"ping") -> bytes:
    client = await connect_client(port, bind=bind)
    client.transport.write(payload)
    for _ in range(100):
        if len(client.received) >= len(payload) or client.done.called:
            break
        await sleep(0.01)
    client.transport.loseConnection()
    await client.done
    return bytes(client.received)


async def refused(port: int) -> bool:
    """
    Whether a connection to the port is refused (nothing listens).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
    try:
        connected = await endpoint.connect(Factory.forProtocol(Protocol))
    except ConnectionRefusedError:
        return True
    connected.transport.loseConnection()
    return False


def envelope_ok(body: Dict[str, Any]) -> None:
    assert set(body) == {"success", "errors", "messages", "result", "result_info"}


def error_of(body: Dict[str, Any]) -> str:
    envelope_ok(body)
    assert body["success"] is False
    assert body["result"] is None
    assert body["errors"] and all(set(e) == {"code", "message"} for e in body["errors"])
    text = body["errors"][0]["message"]
    assert "Traceback" not in text
    return text


# The seed's curl -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_seed_curl_blocks_the_address_on_the_next_connection(world: Any) -> None:
    curl = require_program("curl")
    w = world()
    # Before: 127.0.0.9 gets through.
    assert await echo_through(w.edge_port, bind="127.0.0.9") == b"ping"

    # The seed's call, with only the host changed.
    out, err, code = await utils.getProcessOutputAndValue(
        curl,
        [
            "-sS",
            "-X",
            "POST",
            w.admin.url + "/client/v4/user/firewall/access_rules/rules",
            "-H",
            f"X-Auth-Email: {EMAIL}",
            "-H",
            f"X-Auth-Key: {EDIT}",
            "-H",
            "Content-Type: application/json",
            "--data",
            '{"mode":"block","configuration":{"target":"ip","value":"127.0.0.9"},"notes":"seed"}',
        ],
        reactor=reactor,
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["success"] is True, answer
    assert answer["result"]["configuration"] == {"target": "ip", "value": "127.0.0.9"}
    assert answer["result"]["mode"] == "block"
    rule_id = answer["result"]["id"]

    # The very next connection from that address is refused; others pass.
    assert await echo_through(w.edge_port, bind="127.0.0.9") == b""
    assert await echo_through(w.edge_port, bind="127.0.0.1") == b"ping"
    refused = [e for kind, e in w.admin.events if kind == "clientFiltered"]
    assert len(refused) == 1
    assert refused[0]["ClientIP"] == "127.0.0.9"
    assert refused[0]["Status"] == S.FIREWALL
    assert refused[0]["ClientMatchedIpFirewall"] == "BLOCK_IP"
    assert rule_id in refused[0]["Reason"]

    # The refusal shows in the API's recent events.
    status, body = await w.admin.call("GET", ZONE + "/spectrum/events?refused=true", token=READ)
    assert status == 200
    assert [e["ClientIP"] for e in body["result"]] == ["127.0.0.9"]

    # Deleting the rule lets the address in again.
    status, body = await w.admin.call("DELETE", f"{USER_RULES}/{rule_id}")
    assert status == 200 and body["result"] == {"id": rule_id}
    assert await echo_through(w.edge_port, bind="127.0.0.9") == b"ping"


# Auth -------------------------------------------------------------------------

RULE = {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.7"}}


@pytest_twisted.ensureDeferred
async def test_no_wrong_or_read_token_changes_nothing(world: Any) -> None:
    w = world()
    firewall = w.admin.service.admission.firewall
    cases = [
        ({"token": None}, 401, "no credentials"),
        ({"token": "wrong-token-0123456789abcdef"}, 401, "invalid token"),
        ({"token": None, "headers": {"Authorization": "Basic abc"}}, 401, "Bearer"),
        ({"token": None, "headers": {"X-Auth-Email": EMAIL, "X-Auth-Key": "nope-0123456789abcdef"}}, 401, "invalid"),
        ({"token": None, "headers": {"X-Auth-Email": "other@example.com", "X-Auth-Key": EDIT}}, 401, "does not match"),
        ({"token": None, "headers": {"X-Auth-Key": EDIT}}, 401, "X-Auth-Email"),
        ({"token": READ}, 403, "may only read"),
    ]
    for kwargs, expected, words in cases:
        for method, path, body in [
            ("POST", USER_RULES, RULE),
            ("POST", ZONE_RULES, RULE),
            ("POST", APPS, echo_app("x", free_port(), 9)),
        ]:
            status, answer = await w.admin.call(method, path, body, **kwargs)
            assert status == expected, (kwargs, path, answer)
            message = error_of(answer)
            assert words in message, message
            assert answer["errors"][0]["code"] == 10000
    assert len(firewall) == 0
    assert [app.name for app in w.admin.service.config.apps] == ["echo"]
    assert not (w.tmp_path / "spectrum.state.json").exists()

    # Updates and deletes of existing objects are refused the same way.
    made_port = free_port()
    status, made = await w.admin.call("POST", APPS, echo_app("made", made_port, w.origin_port.getHost().port))
    status, rule = await w.admin.call("POST", USER_RULES, RULE)
    app_id, rule_id = made["result"]["id"], rule["result"]["id"]
    state = (w.tmp_path / "spectrum.state.json").read_text()
    for kwargs, expected in [
        ({"token": None}, 401),
        ({"token": "wrong-token-0123456789abcdef"}, 401),
        ({"token": READ}, 403),
    ]:
        for method, path, body in [
            ("PUT", f"{APPS}/{app_id}", echo_app("made", free_port(), 9)),
            ("DELETE", f"{APPS}/{app_id}", None),
            ("PATCH", f"{USER_RULES}/{rule_id}", {"mode": "whitelist"}),
            ("DELETE", f"{USER_RULES}/{rule_id}", None),
        ]:
            status, answer = await w.admin.call(method, path, body, **kwargs)
            assert status == expected, (method, path, answer)
            error_of(answer)
    assert (w.tmp_path / "spectrum.state.json").read_text() == state
    assert firewall.get(rule_id).mode == "block"
    assert await echo_through(made_port) == b"ping"
    status, _ = await w.admin.call("DELETE", f"{USER_RULES}/{rule_id}")
    assert status == 200

    # Reads: no token is refused, the read token may.
    status, answer = await w.admin.call("GET", APPS, token=None)
    assert status == 401 and error_of(answer)
    status, answer = await w.admin.call("GET", APPS, token=READ)
    assert status == 200 and answer["success"] is True
    # The edit token by X-Auth-Email/X-Auth-Key mutates.
    status, answer = await w.admin.call(
        "POST", USER_RULES, RULE, token=None, headers={"X-Auth-Email": EMAIL, "X-Auth-Key": EDIT}
    )
    assert status == 200, answer
    assert len(firewall) == 1


# Bad bodies -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_mutation_refuses_bad_bodies_with_400(world: Any) -> None:
    w = world()
    status, made = await w.admin.call("POST", APPS, echo_app("made", free_port(), w.origin_port.getHost().port))
    assert status == 200, made
    app_id = made["result"]["id"]
    status, rule = await w.admin.call("POST", USER_RULES, RULE)
    assert status == 200
    rule_id = rule["result"]["id"]
    status, app_rule = await w.admin.call("POST", f"{APPS}/{app_id}/firewall/access_rules/rules", RULE)
    assert status == 200, app_rule
    app_rule_id = app_rule["result"]["id"]
    before_state = (w.tmp_path / "spectrum.state.json").read_text()
    loop_port = free_port()

    endpoints = [
        ("POST", APPS, {"protocol": 22, "origin_direct": ["tcp://127.0.0.1:1"]}, "protocol: expected tcp, udp"),
        ("POST", APPS, {"protocol": "tcp/1"}, "needs origin_pool or origin_direct"),
        ("POST", APPS, echo_app("loop", loop_port, loop_port), "so a connection would loop"),
        ("POST", APPS, "tcp/22", "must be a JSON object"),
        ("POST", APPS, dict(echo_app("u", free_port(), 9), colour="red"), "unknown key 'colour'"),
        ("PUT", f"{APPS}/{app_id}", {"protocol": "tcp/1", "origin_direct": "tcp://127.0.0.1:1"}, "origin_direct"),
        ("PUT", f"{APPS}/{app_id}", dict(echo_app("made", free_port(), 9), extra=1), "unknown key 'extra'"),
        ("DELETE", f"{APPS}/{app_id}", {"cascade": "none"}, "unknown field"),
        (
            "POST",
            USER_RULES,
            {"mode": "block", "configuration": {"target": "ip", "value": 7}},
            "configuration.value: expected a string",
        ),
        (
            "POST",
            USER_RULES,
            {"mode": "block", "configuration": {"target": "ip", "value": "1.2.3"}},
            "not an IP address",
        ),
        (
            "POST",
            USER_RULES,
            {"mode": "block", "configuration": {"target": "ip6", "value": "::ffff:127.0.0.9"}},
            "configuration.value: '::ffff:127.0.0.9' is an IPv4-mapped address; clients are matched as 127.0.0.9:"
            " use target ip with 127.0.0.9",
        ),
        (
            "POST",
            f"{APPS}/{app_id}/firewall/access_rules/rules",
            {"mode": "block", "configuration": {"target": "ip6", "value": "fe80::1%eth0"}},
            "configuration.value: 'fe80::1%eth0' has a zone (%eth0); clients are matched without one: write fe80::1",
        ),
        (
            "POST",
            USER_RULES,
            {"mode": 1, "configuration": {"target": "ip", "value": "127.0.0.2"}},
            "mode: expected a string",
        ),
        ("POST", USER_RULES, dict(RULE, colour="red"), "colour: unknown field"),
        (
            "POST",
            USER_RULES,
            {"mode": "challenge", "configuration": {"target": "ip", "value": "127.0.0.2"}},
            "challenge",
        ),
        (
            "POST",
            ZONE_RULES,
            {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.2", "x": 1}},
            "x: unknown",
        ),
        ("POST", ZONE_RULES, {"mode": "block"}, "required"),
        (
            "POST",
            f"{APPS}/{app_id}/firewall/access_rules/rules",
            {"mode": "block", "configuration": "ip"},
            "configuration",
        ),
        ("PATCH", f"{USER_RULES}/{rule_id}", {"mode": "allow"}, "mode"),
        ("PATCH", f"{USER_RULES}/{rule_id}", {"notes": 5}, "notes: expected a string"),
        ("PATCH", f"{USER_RULES}/{rule_id}", {"configuration": {"target": "ip", "value": "1.2.3.4"}}, "cannot change"),
        ("PATCH", f"{APPS}/{app_id}/firewall/access_rules/rules/{app_rule_id}", {"when": "now"}, "when: unknown field"),
        ("DELETE", f"{USER_RULES}/{rule_id}", {"cascade": "none"}, "unknown field"),
        ("DELETE", f"{APPS}/{app_id}/firewall/access_rules/rules/{app_rule_id}", [1], "JSON object"),
    ]
    for method, path, body, words in endpoints:
        status, answer = await w.admin.call(method, path, body)
        assert status == 400, (method, path, body, answer)
        message = error_of(answer)
        assert words in message, (method, path, message)
        # Malformed JSON, and a body not declared as JSON.
        status, answer = await w.admin.call(method, path, raw=b'{"mode": "block",')
        assert status == 400, (method, path, answer)
        assert "malformed JSON" in error_of(answer)
        assert answer["errors"][0]["code"] == 6007
        status, answer = await w.admin.call(method, path, raw=b'{"a": 1, "a": 2}')
        assert status == 400 and "duplicate key" in error_of(answer)
        status, answer = await w.admin.call(
            method, path, raw=b"mode=block", content_type="application/x-www-form-urlencoded"
        )
        assert status == 415, (method, path, answer)
        assert "application/json" in error_of(answer)

    # Nothing changed.
    assert (w.tmp_path / "spectrum.state.json").read_text() == before_state
    firewall = w.admin.service.admission.firewall
    assert sorted(r.id for r in firewall.rules) == sorted([rule_id, app_rule_id])
    assert firewall.get(rule_id).mode == "block"
    assert [app.name for app in w.admin.service.config.apps] == ["echo", "made"]


@pytest_twisted.ensureDeferred
async def test_unknown_routes_methods_and_zones_answer_in_the_envelope(world: Any) -> None:
    w = world()
    for method, path, status_expected, code in [
        ("GET", "/client/v4/nothing", 404, 7000),
        ("GET", "/client/v4/zones/elsewhere/spectrum/apps", 404, 7003),
        ("PATCH", APPS, 405, 7001),
        ("PUT", USER_RULES + "/abc", 405, 7001),
        ("DELETE", USER_RULES + "/0123", 404, 1404),
        ("GET", APPS + "/nope", 404, 1404),
        ("GET", "/nowhere", 404, 7000),
        ("GET", "/static/missing.js", 404, 7000),
    ]:
        status, answer = await w.admin.call(method, path)
        assert status == status_expected, (method, path, answer)
        error_of(answer)
        assert answer["errors"][0]["code"] == code


# Apps --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_created_app_accepts_within_a_second_and_delete_keeps_open_connections(world: Any) -> None:
    w = world()
    port = free_port()
    body = {
        "protocol": f"tcp/{port}",
        "dns": {"type": "CNAME", "name": "made.example.com"},
        "ips": ["127.0.0.1"],
        "origin_direct": [f"tcp://127.0.0.1:{w.origin_port.getHost().port}"],
        "proxy_protocol": "off",
        "ip_firewall": True,
        "tls": "off",
        "traffic_type": "direct",
    }
    started = time.monotonic()
    status, answer = await w.admin.call("POST", APPS, body)
    assert status == 200, answer
    assert await echo_through(port) == b"ping"
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    app = answer["result"]
    assert app["name"] == "made.example.com"
    assert app["protocol"] == f"tcp/{port}"
    assert app["source"] == "api"
    assert app["listening"] == [{"protocol": "tcp", "ip": "127.0.0.1", "port": port}]
    assert app["origins"][0]["healthy"] is True
    assert app["created_on"].endswith("Z") and app["created_on"] == app["modified_on"]

    # GET shows the same app; the list has both.
    status, got = await w.admin.call("GET", f"{APPS}/{app['id']}", token=READ)
    assert got["result"] == app
    status, listed = await w.admin.call("GET", APPS, token=READ)
    assert [a["name"] for a in listed["result"]] == ["echo", "made.example.com"]
    assert listed["result_info"]["total_count"] == 2

    # An open connection survives the delete; new ones are refused.
    client = await connect_client(port)
    client.transport.write(b"before")
    await sleep(0.1)
    status, deleted = await w.admin.call("DELETE", f"{APPS}/{app['id']}")
    assert status == 200 and deleted["result"] == {"id": app["id"]}
    assert await refused(port)
    client.transport.write(b"+after")
    await sleep(0.2)
    assert bytes(client.received) == b"before+after"
    client.transport.loseConnection()
    await client.done
    status, answer = await w.admin.call("GET", f"{APPS}/{app['id']}")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_every_app_on_an_sni_shared_port_shows_it_listening(world: Any) -> None:
    w = world()
    port = free_port()
    origin = w.origin_port.getHost().port
    listening = [{"protocol": "tcp", "ip": "127.0.0.1", "port": port}]
    for name in ("a.example.com", "b.example.com"):
        body = dict(echo_app(name, port, origin), dns={"type": "CNAME", "name": name})
        status, made = await w.admin.call("POST", APPS, body)
        assert status == 200, made
        assert made["result"]["listening"] == listening
    status, listed = await w.admin.call("GET", APPS, token=READ)
    shown = {a["name"]: a["listening"] for a in listed["result"]}
    assert shown == {
        "echo": [{"protocol": "tcp", "ip": "127.0.0.1", "port": w.edge_port}],
        "a.example.com": listening,
        "b.example.com": listening,
    }


@pytest_twisted.ensureDeferred
async def test_hash_pool_weights_are_bounded_and_checked(world: Any) -> None:
    """
    Issue 16, fault 6: weight 50000 on a C{hash} pool made through the API
    stopped all relaying for seconds (a ring of 100 points per unit of
    weight); 1e400 (infinity) answered 500 and stayed in the state file.
    """
    w = world()
    origin_port = w.origin_port.getHost().port
    port = free_port()

    def body(weight: str) -> bytes:
        # Raw JSON: json.dumps cannot write 1e400, which reads as infinity.
        origins = (
            f'[{{"name": "heavy", "address": "127.0.0.1", "port": {origin_port}, "weight": {weight}}},'
            f' {{"name": "light", "address": "127.0.0.1", "port": {origin_port}}}]'
        )
        return (
            f'{{"protocol": "tcp/{port}", "dns": {{"type": "CNAME", "name": "hashed.example.com"}},'
            f' "ips": ["127.0.0.1"], "origin_pool": {{"load_balancing": "hash", "origins": {origins}}}}}'
        ).encode()

    state = w.tmp_path / "spectrum.state.json"
    before = state.read_text() if state.exists() else None
    for weight, words in [
        ("1e400", "origins[0].weight: must be a finite number, got inf"),
        ("2000000", "origins[0].weight: must be at most 1000000, got 2000000"),
        ("0", "origins[0].weight: must be more than 0, got 0"),
    ]:
        status, answer = await w.admin.call("POST", APPS, raw=body(weight))
        assert status == 400, (weight, answer)
        message = error_of(answer)
        assert words in message and "\n" not in message, message
    assert (state.read_text() if state.exists() else None) == before
    assert [app.name for app in w.admin.service.config.apps] == ["echo"]

    started = time.monotonic()
    status, answer = await w.admin.call("POST", APPS, raw=body("50000"))
    assert status == 200, answer
    assert await echo_through(port) == b"ping"
    assert await echo_through(w.edge_port) == b"ping"
    assert time.monotonic() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_update_reconciles_and_config_apps_are_read_only(world: Any) -> None:
    w = world()
    first, second = free_port(), free_port()
    origin = w.origin_port.getHost().port
    status, answer = await w.admin.call("POST", APPS, echo_app("moving", first, origin))
    app = answer["result"]
    assert await echo_through(first) == b"ping"
    # GET -> PUT round trip with a new port: read-only fields are ignored.
    changed = dict(app, protocol=f"tcp/{second}")
    status, answer = await w.admin.call("PUT", f"{APPS}/{app['id']}", changed)
    assert status == 200, answer
    assert answer["result"]["listening"][0]["port"] == second
    assert answer["result"]["created_on"] == app["created_on"]
    assert await echo_through(second) == b"ping"
    assert await refused(first)

    # A port clash is refused with the config's own words, nothing changes.
    status, answer = await w.admin.call("POST", APPS, echo_app("clash", w.edge_port, origin))
    assert status == 400
    assert "already used by app 'echo'" in error_of(answer)

    # The file's apps are read-only here.
    echo_id = w.admin.service.config.app("echo").id
    status, answer = await w.admin.call("DELETE", f"{APPS}/{echo_id}")
    assert status == 409 and "config file" in error_of(answer)
    assert await echo_through(w.edge_port) == b"ping"


@pytest_twisted.ensureDeferred
async def test_api_apps_and_rules_survive_a_restart(tmp_path: Any) -> None:
    origin = OriginFactory()
    origin_port = listen_origin(origin)
    edge = free_port()
    data = document([echo_app("echo", edge, origin_port.getHost().port)])
    admin = Admin.from_document(tmp_path, data)
    made_port = free_port()
    try:
        status, app = await admin.call("POST", APPS, echo_app("kept", made_port, origin_port.getHost().port))
        assert status == 200
        status, rule = await admin.call("POST", ZONE_RULES, dict(RULE, notes="kept"))
        assert status == 200
        status, _ = await admin.call("PATCH", f"{ZONE_RULES}/{rule['result']['id']}", {"mode": "whitelist"})
        assert status == 200
    finally:
        await admin.stop()

    again = Admin.from_document(tmp_path, data)
    try:
        assert await echo_through(made_port) == b"ping"
        status, listed = await again.call("GET", APPS)
        kept = [a for a in listed["result"] if a["name"] == "kept"][0]
        assert kept["id"] == app["result"]["id"] and kept["source"] == "api"
        status, rules = await again.call("GET", ZONE_RULES)
        assert [(r["id"], r["mode"], r["notes"]) for r in rules["result"]] == [
            (rule["result"]["id"], "whitelist", "kept")
        ]
        assert again.service.admission.firewall.get(rule["result"]["id"]).mode == "whitelist"
    finally:
        await again.stop()
        await origin_port.stopListening()


# Access rules -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rule_list_filters_order_and_pages(world: Any) -> None:
    w = world()
    values = ["127.0.0.20", "127.0.0.21", "127.0.0.22", "10.0.0.0/8"]
    for index, value in enumerate(values):
        target = "ip_range" if "/" in value else "ip"
        mode = "whitelist" if index == 1 else "block"
        status, answer = await w.admin.call(
            "POST",
            USER_RULES,
            {"mode": mode, "configuration": {"target": target, "value": value}, "notes": f"n{index}"},
        )
        assert status == 200, answer

    async def values_of(query: str) -> List[str]:
        status, answer = await w.admin.call("GET", USER_RULES + query, token=READ)
        assert status == 200, answer
        return [r["configuration"]["value"] for r in answer["result"]]

    assert await values_of("?mode=whitelist") == ["127.0.0.21"]
    assert await values_of("?configuration.target=ip_range") == ["10.0.0.0/8"]
    assert await values_of("?configuration.value=127.0.0.22") == ["127.0.0.22"]
    assert await values_of("?notes=N3") == ["10.0.0.0/8"]
    assert await values_of("?mode=whitelist&notes=n3&match=any") == ["127.0.0.21", "10.0.0.0/8"]
    assert await values_of("?mode=whitelist&notes=n3") == []
    assert await values_of("?order=configuration.value&direction=desc") == sorted(values, reverse=True)
    assert await values_of("?per_page=2&page=2") == values[2:]
    status, answer = await w.admin.call("GET", USER_RULES + "?per_page=3", token=READ)
    assert answer["result_info"] == {"page": 1, "per_page": 3, "count": 3, "total_count": 4, "total_pages": 2}
    status, answer = await w.admin.call("GET", USER_RULES + "?page=zero", token=READ)
    assert status == 400 and "page" in error_of(answer)
    # A duplicate is refused.
    status, answer = await w.admin.call(
        "POST", USER_RULES, {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.20"}}
    )
    assert status == 409 and "duplicate" in error_of(answer)


@pytest_twisted.ensureDeferred
async def test_patch_mode_takes_effect_on_the_next_connection(world: Any) -> None:
    w = world()
    status, answer = await w.admin.call(
        "POST", ZONE_RULES, {"mode": "block", "configuration": {"target": "ip_range", "value": "127.0.0.0/24"}}
    )
    rule_id = answer["result"]["id"]
    assert answer["result"]["scope"] == {"type": "zone", "id": "local", "name": "example.com"}
    assert await echo_through(w.edge_port, bind="127.0.0.5") == b""
    status, answer = await w.admin.call(
        "PATCH", f"{ZONE_RULES}/{rule_id}", {"mode": "whitelist", "notes": "open again"}
    )
    assert status == 200 and answer["result"]["notes"] == "open again"
    assert answer["result"]["modified_on"] >= answer["result"]["created_on"]
    assert await echo_through(w.edge_port, bind="127.0.0.5") == b"ping"


@pytest_twisted.ensureDeferred
async def test_per_app_rules_apply_to_that_app_only(world: Any) -> None:
    w = world()
    other = free_port()
    status, made = await w.admin.call("POST", APPS, echo_app("other", other, w.origin_port.getHost().port))
    other_id = made["result"]["id"]
    status, answer = await w.admin.call(
        "POST",
        f"{APPS}/{other_id}/firewall/access_rules/rules",
        {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.11"}},
    )
    assert status == 200, answer
    assert answer["result"]["scope"]["type"] == "app" and answer["result"]["app"] == "other"
    assert await echo_through(other, bind="127.0.0.11") == b""
    assert await echo_through(w.edge_port, bind="127.0.0.11") == b"ping"
    status, listed = await w.admin.call("GET", USER_RULES)
    assert listed["result"] == []


@pytest_twisted.ensureDeferred
async def test_deleting_an_app_deletes_its_rules(world: Any) -> None:
    w = world()
    port = free_port()
    origin = w.origin_port.getHost().port
    status, made = await w.admin.call("POST", APPS, echo_app("gone", port, origin))
    first = made["result"]["id"]
    status, answer = await w.admin.call(
        "POST",
        f"{APPS}/{first}/firewall/access_rules/rules",
        {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.1"}},
    )
    assert status == 200, answer
    assert await echo_through(port) == b""
    status, _ = await w.admin.call("DELETE", f"{APPS}/{first}")
    assert status == 200
    saved = json.loads((w.tmp_path / "spectrum.state.json").read_text())
    assert saved["access_rules"] == [] and saved["apps"] == []
    assert all(rule.app != "gone" for rule in w.admin.service.admission.firewall.rules)

    # A new app of that name starts with no rules, and lets everyone in.
    status, made = await w.admin.call("POST", APPS, echo_app("gone", port, origin))
    second = made["result"]["id"]
    status, listed = await w.admin.call("GET", f"{APPS}/{second}/firewall/access_rules/rules")
    assert status == 200 and listed["result"] == []
    assert await echo_through(port) == b"ping"


# Analytics, health, live ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_analytics_endpoints_count_what_went_through(world: Any) -> None:
    w = world()
    for _ in range(3):
        assert await echo_through(w.edge_port, payload=b"x" * 1000) == b"x" * 1000
    status, answer = await w.admin.call(
        "POST", USER_RULES, {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.9"}}
    )
    assert await echo_through(w.edge_port, bind="127.0.0.9") == b""
    await sleep(0.05)
    echo_id = w.admin.service.config.app("echo").id

    status, answer = await w.admin.call(
        "GET",
        ZONE + "/spectrum/analytics/events/summary?metrics=count,bytesIngress,bytesEgress,durationAvg&dimensions=appID",
    )
    assert status == 200, answer
    result = answer["result"]
    assert result["data"] == [{"dimensions": [echo_id], "metrics": [7, 3000, 3000, result["data"][0]["metrics"][3]]}]
    assert result["totals"]["count"] == 7
    assert result["query"]["dimensions"] == ["appID"]

    status, answer = await w.admin.call(
        "GET", ZONE + "/spectrum/analytics/events/summary?dimensions=event&sort=-count&filters=event!=connect"
    )
    assert status == 200, answer
    assert answer["result"]["data"] == [
        {"dimensions": ["disconnect"], "metrics": [3]},
        {"dimensions": ["clientFiltered"], "metrics": [1]},
    ]

    status, answer = await w.admin.call(
        "GET", ZONE + "/spectrum/analytics/events/bytime?metrics=count,bytesIngress&time_delta=minute"
    )
    assert status == 200, answer
    result = answer["result"]
    assert result["totals"] == {"count": 7, "bytesIngress": 3000}
    assert len(result["data"][0]["metrics"][0]) == len(result["time_intervals"])
    assert sum(result["data"][0]["metrics"][0]) == 7

    for query, words in [
        ("?metrics=bogus", "bogus"),
        ("?dimensions=event&metrics=bytesIngress", "not split by event"),
        ("?since=yesterday", "since"),
        ("?filters=coloName==SFO", "filters"),
        ("?limit=0", "limit"),
        ("?sort=count", None),
    ]:
        status, answer = await w.admin.call("GET", ZONE + "/spectrum/analytics/events/summary" + query)
        if words is None:
            assert status == 200
        else:
            assert status == 400 and words in error_of(answer), (query, answer)
    status, answer = await w.admin.call("GET", ZONE + "/spectrum/analytics/events/bytime?time_delta=century")
    assert status == 400 and "time_delta" in error_of(answer)

    status, answer = await w.admin.call("GET", ZONE + "/spectrum/analytics/aggregate/current")
    assert status == 200
    assert answer["result"] == [
        {
            "appID": echo_id,
            "bytesIngress": 3000,
            "bytesEgress": 3000,
            "connections": 0,
            "durationAvg": answer["result"][0]["durationAvg"],
        }
    ]


@pytest_twisted.ensureDeferred
async def test_live_counts_bytes_of_open_connections(world: Any) -> None:
    w = world()
    client = await connect_client(w.edge_port)
    client.transport.write(b"y" * 5000)
    await sleep(0.2)
    status, answer = await w.admin.call("GET", ZONE + "/spectrum/live", token=READ)
    assert status == 200
    live = answer["result"]["apps"]["echo"]
    assert live["connections"] == 1
    assert live["bytes_ingress"] == 5000 and live["bytes_egress"] == 5000
    client.transport.loseConnection()
    await client.done
    status, answer = await w.admin.call("GET", ZONE + "/spectrum/health", token=READ)
    assert status == 200
    origins = answer["result"]["apps"][0]["origins"]
    assert origins[0]["healthy"] is True


@pytest_twisted.ensureDeferred
async def test_page_and_openapi_are_served(world: Any) -> None:
    import treq

    w = world()
    response = await treq.get(w.admin.url + "/", persistent=False)
    page = (await response.content()).decode()
    assert response.code == 200
    assert '<script src="/app.js"' in page
    assert "script-src 'self'" in response.headers.getRawHeaders("content-security-policy")[0]
    for name in ("app.js", "style.css"):
        response = await treq.get(w.admin.url + "/" + name, persistent=False)
        assert response.code == 200 and await response.content()
    response = await treq.get(w.admin.url + "/openapi.json", persistent=False)
    spec = json.loads(await response.content())
    assert spec["openapi"].startswith("3.")
    assert "/client/v4/user/firewall/access_rules/rules" in spec["paths"]


@pytest_twisted.ensureDeferred
async def test_reload_keeps_api_apps_and_rules_even_when_the_file_changes_its_rules(world: Any) -> None:
    import yaml

    w = world()
    made = free_port()
    status, _ = await w.admin.call("POST", APPS, echo_app("made", made, w.origin_port.getHost().port))
    assert status == 200
    status, rule = await w.admin.call(
        "POST", USER_RULES, {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.9"}}
    )
    assert status == 200
    path = w.admin.config_path
    with open(path) as f:
        data = yaml.safe_load(f)
    data["access_rules"] = [{"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.8"}}]
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    assert w.admin.service.reload() is True
    firewall = w.admin.service.admission.firewall
    assert sorted(r.value for r in firewall.rules) == ["127.0.0.8", "127.0.0.9"]
    assert await echo_through(made) == b"ping"
    assert await echo_through(w.edge_port, bind="127.0.0.9") == b""
    assert await echo_through(w.edge_port, bind="127.0.0.8") == b""
    status, listed = await w.admin.call("GET", USER_RULES)
    assert {(r["configuration"]["value"], r["source"]) for r in listed["result"]} == {
        ("127.0.0.8", "config"),
        ("127.0.0.9", "api"),
    }
    # The file's rule is read-only here.
    config_rule = [r for r in listed["result"] if r["source"] == "config"][0]
    status, answer = await w.admin.call("DELETE", f"{USER_RULES}/{config_rule['id']}")
    assert status == 409 and "config file" in error_of(answer)


@pytest_twisted.ensureDeferred
async def test_a_failing_handler_answers_500_in_the_envelope_without_a_traceback(
    world: Any, no_logged_errors: List[dict]
) -> None:
    w = world()

    def broken(call: Any) -> Any:
        raise RuntimeError("secret internals")

    api = w.admin.service.admin.site.resource.api
    for _, methods in api.routes:
        if "GET" in methods and methods["GET"] == api.list_zones:
            methods["GET"] = broken
    status, answer = await w.admin.call("GET", "/client/v4/zones", token=READ)
    assert status == 500
    message = error_of(answer)
    assert message == "internal error; the server log has the details"
    assert "secret internals" not in json.dumps(answer)
    # The failure went to the log (and only there).
    assert any("secret internals" in str(e.get("log_failure")) for e in no_logged_errors)
    no_logged_errors.clear()


@pytest_twisted.ensureDeferred
async def test_a_change_the_service_cannot_apply_leaves_the_state_file_as_it_was(
    world: Any, no_logged_errors: List[dict]
) -> None:
    """
    The state file is written only after the service committed the change:
    an apply that fails in any way (here, one that raises what a bug would)
    answers JSON and leaves the file, the apps and later creates as they were.
    """
    w = world()
    state = w.tmp_path / "spectrum.state.json"
    before = state.read_text() if state.exists() else None
    service = w.admin.service
    apply = service.apply

    def broken(config: Any) -> None:
        raise KeyError("a bug")

    service.apply = broken
    try:
        status, answer = await w.admin.call("POST", APPS, echo_app("doomed", free_port(), 9))
    finally:
        service.apply = apply
    assert status == 500 and "could not be applied" in error_of(answer)
    assert (state.read_text() if state.exists() else None) == before
    assert [app.name for app in service.config.apps] == ["echo"]
    # The traceback of the bug was logged; it is expected here.
    assert any("could not be applied" in str(e.get("log_format", "")) for e in no_logged_errors)
    no_logged_errors.clear()
    status, answer = await w.admin.call("POST", APPS, echo_app("next", free_port(), w.origin_port.getHost().port))
    assert status == 200, answer
    assert "next" in state.read_text()
