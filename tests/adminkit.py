"""
An in-process spectrum with its admin site on a real loopback port, built
from a config file the way C{twistd spectrum} builds it (state file
included), and an HTTP client for it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import treq
import yaml
from twisted.internet import defer, reactor

from spectrum.admin.state import AdminState
from spectrum.compose import build

EDIT = "edit-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
EMAIL = "ops@example.com"


def document(apps: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    """
    A config document with an admin on a free loopback port and two tokens.
    """
    data: Dict[str, Any] = {
        "zone": {"id": "local", "name": "example.com"},
        "apps": apps,
        "admin": {
            "listen": "tcp:0:interface=127.0.0.1",
            "tokens": [
                {"name": "ops", "token": EDIT, "permissions": "edit", "email": EMAIL},
                {"name": "viewer", "token": READ, "permissions": "read"},
            ],
        },
    }
    data.update(extra)
    return data


def echo_app(name: str, edge_port: int, origin_port: int) -> Dict[str, Any]:
    return {
        "name": name,
        "protocol": f"tcp/{edge_port}",
        "ips": ["127.0.0.1"],
        "origin_direct": [f"tcp://127.0.0.1:{origin_port}"],
    }


class Admin:
    """
    A started service and its admin URL.
    """

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        state = AdminState(config_path.rsplit(".", 1)[0] + ".state.json")
        state.load()
        self.state = state
        config = state.loader()(config_path)
        self.service = build(config, reactor=reactor, drain_timeout=2.0, admin_state=state, loader=state.loader())
        self.events: List[Tuple[str, Dict[str, Any]]] = []
        self.service.recorders.add(lambda kind, record: self.events.append((kind, record.as_event(kind))))
        self.service.startService()
        assert self.service.admin is not None
        self.url = f"http://127.0.0.1:{self.service.admin.bound_port()}"

    @classmethod
    def from_document(cls, tmp_path: Any, data: Dict[str, Any], name: str = "spectrum.yaml") -> Admin:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return cls(str(path))

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: Optional[str] = EDIT,
        headers: Optional[Dict[str, str]] = None,
        raw: Optional[bytes] = None,
        content_type: Optional[str] = "application/json",
    ) -> Tuple[int, Dict[str, Any]]:
        """
        (HTTP status, decoded JSON) of one request.
        """
        sent: Dict[str, List[str]] = {}
        if token is not None:
            sent["Authorization"] = [f"Bearer {token}"]
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None and content_type is not None:
            sent["Content-Type"] = [content_type]
        for key, value in (headers or {}).items():
            sent[key] = [value]
        response = await treq.request(method, self.url + path, headers=sent, data=data, persistent=False)
        content = await response.content()
        try:
            decoded = json.loads(content)
        except ValueError:
            raise AssertionError(f"{method} {path}: not JSON: {content[:200]!r}") from None
        return response.code, decoded

    def stop(self) -> defer.Deferred:
        return defer.ensureDeferred(_wait(self.service.stopService()))


async def _wait(d: Any) -> Any:
    return await d
