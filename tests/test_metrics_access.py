"""
Who may read C{/metrics} (it names every origin's address): anyone who
reaches an admin bound to loopback; a token's holder when the admin listens
elsewhere, unless the config says C{admin.metrics: public}. The start says
which applies. Real C{twistd spectrum}, real HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

import pytest

from adminkit import READ, document, echo_app
from conftest import free_port
from procs import NamedOrigin, greeting, start_twistd, write_config


def get(port: int, token: Optional[str] = None) -> Tuple[int, bytes, Dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.mark.parametrize(
    "listen, metrics, public, line",
    [
        ("tcp:{port}:interface=127.0.0.1", None, True, "admin: /metrics is open without a token (loopback only)"),
        ("tcp:{port}", None, False, "admin: /metrics needs a token: the admin listens on 0.0.0.0"),
        ("tcp:{port}", "public", True, "admin: /metrics is open without a token (admin.metrics: public)"),
        ("tcp:{port}:interface=127.0.0.1", "token", False, "admin: /metrics needs a token (admin.metrics: token)"),
    ],
)
def test_metrics_need_a_token_off_loopback(
    tmp_path: Any, listen: str, metrics: Optional[str], public: bool, line: str
) -> None:
    admin_port, edge_port = free_port(), free_port()
    origin = NamedOrigin("o")
    origin_port = origin.port
    data = document([echo_app("echo", edge_port, origin_port)])
    data["admin"]["listen"] = listen.format(port=admin_port)
    if metrics is not None:
        data["admin"]["metrics"] = metrics
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", [admin_port])
    try:
        proxy.wait_for_log(line)
        assert greeting(edge_port) == b"o"
        status, body, headers = get(admin_port)
        if public:
            assert status == 200 and f"127.0.0.1:{origin_port}".encode() in body
        else:
            assert status == 401, body
            assert headers.get("WWW-Authenticate") == 'Bearer realm="spectrum"'
            answer = json.loads(body)
            assert answer["success"] is False and "Authentication error" in answer["errors"][0]["message"]
            assert str(origin_port).encode() not in body
            assert get(admin_port, "wrong-token-0123456789")[0] == 401
        status, body, _ = get(admin_port, READ)
        assert status == 200 and f"127.0.0.1:{origin_port}".encode() in body
    finally:
        proxy.stop()
        origin.close()
