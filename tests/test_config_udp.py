"""
The configuration keys of UDP apps and the PROXY protocol: what they build,
and the one line an operator reads when they are wrong.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from spectrum.config import ConfigError, parse


def app(**extra: Any) -> dict:
    raw = {"name": "game", "protocol": "udp/27015", "origin_direct": ["udp://192.0.2.1:27015"]}
    raw.update(extra)
    return {"apps": [raw]}


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return str(caught.value)


def test_udp_defaults() -> None:
    (built,) = parse(app()).apps
    assert built.protocol == "udp"
    assert built.timeouts.idle == 60.0
    assert built.proxy_protocol == "off"
    assert (built.max_sessions, built.per_ip_sessions) == (10000, 0)
    assert built.accept_proxy_protocol == ()
    # TCP keeps no idle timeout unless given.
    (tcp,) = parse({"apps": [{"name": "t", "protocol": "tcp/22", "origin_direct": ["tcp://192.0.2.1:22"]}]}).apps
    assert tcp.timeouts.idle == 0.0


def test_udp_keys_build() -> None:
    data = yaml.safe_load(
        """
apps:
  - name: game
    protocol: udp
    ports: [{destination_port: "27015-27020"}]
    origin_direct: ["udp://192.0.2.1:27015-27020"]
    proxy_protocol: simple
    timeouts: {idle: 120}
    limits: {max_sessions: 500, per_ip_sessions: 4}
  - name: game-control
    protocol: tcp
    ports: [{destination_port: "27015-27020"}]
    origin_direct: ["tcp://192.0.2.1:27015-27020"]
    proxy_protocol: v2
    accept_proxy_protocol: {trusted: ["10.0.0.0/8", "2001:db8::1"]}
  - name: quiet
    protocol: udp/53
    origin_direct: ["udp://192.0.2.1:53"]
    proxy_protocol: off
"""
    )
    game, control, quiet = parse(data).apps
    assert game.proxy_protocol == "simple" and game.timeouts.idle == 120.0
    assert (game.max_sessions, game.per_ip_sessions) == (500, 4)
    assert control.proxy_protocol == "v2"
    assert control.accept_proxy_protocol == ("10.0.0.0/8", "2001:db8::1/128")
    assert quiet.proxy_protocol == "off"


@pytest.mark.parametrize(
    "data, message",
    [
        (app(proxy_protocol="v1"), "apps[0].proxy_protocol: v1 describes TCP connections only"),
        (
            {
                "apps": [
                    {
                        "name": "t",
                        "protocol": "tcp/22",
                        "origin_direct": ["tcp://192.0.2.1:22"],
                        "proxy_protocol": "simple",
                    }
                ]
            },
            "apps[0].proxy_protocol: simple (Simple Proxy Protocol) is for udp apps",
        ),
        (app(proxy_protocol="v3"), "apps[0].proxy_protocol: expected one of"),
        (app(limits={"max_sessions": -1}), "apps[0].limits.max_sessions: must be at least 0"),
        (
            app(limits={"per_ip_session": 3}),
            "apps[0].limits: unknown key 'per_ip_session' (did you mean 'per_ip_sessions'?)",
        ),
        (
            {
                "apps": [
                    {
                        "name": "t",
                        "protocol": "tcp/22",
                        "origin_direct": ["tcp://192.0.2.1:22"],
                        "limits": {"max_sessions": 3},
                    }
                ]
            },
            "apps[0].limits.max_sessions: counts UDP sessions; it applies to udp apps only",
        ),
        (
            {
                "apps": [
                    {
                        "name": "t",
                        "protocol": "tcp/22",
                        "origin_direct": ["tcp://192.0.2.1:22"],
                        "accept_proxy_protocol": {"trusted": ["10.0.0.0/33"]},
                    }
                ]
            },
            "apps[0].accept_proxy_protocol.trusted[0]: '10.0.0.0/33' is not an address or a CIDR",
        ),
        (
            {
                "apps": [
                    {
                        "name": "t",
                        "protocol": "tcp/22",
                        "origin_direct": ["tcp://192.0.2.1:22"],
                        "accept_proxy_protocol": {"trusted": []},
                    }
                ]
            },
            "apps[0].accept_proxy_protocol.trusted: needs at least 1 item",
        ),
        (
            {
                "apps": [
                    {
                        "name": "t",
                        "protocol": "tcp/22",
                        "origin_direct": ["tcp://192.0.2.1:22"],
                        "accept_proxy_protocol": {},
                    }
                ]
            },
            "apps[0].accept_proxy_protocol: missing key 'trusted'",
        ),
    ],
)
def test_bad_udp_and_proxy_keys_name_the_path(data: dict, message: str) -> None:
    assert error_of(data).startswith(message), error_of(data)


def test_tcp_and_udp_apps_may_share_a_port_number_but_two_udp_apps_may_not() -> None:
    both = {
        "apps": [
            {"name": "u", "protocol": "udp/5201", "origin_direct": ["udp://192.0.2.1:5201"]},
            {"name": "t", "protocol": "tcp/5201", "origin_direct": ["tcp://192.0.2.1:5201"]},
        ]
    }
    assert len(parse(both).apps) == 2
    both["apps"][1] = {"name": "u2", "protocol": "udp/5201", "origin_direct": ["udp://192.0.2.2:5201"]}
    assert "UDP apps cannot share an edge port" in error_of(both)
