"""
Spectrum apps as the API shows and takes them.

An app is shown as its config document (Cloudflare's shape, C{protocol:
"tcp/22"}, C{dns}, C{origin_direct}, C{tls}, C{proxy_protocol},
C{ip_firewall}, or spectrum's richer one with C{ports} and C{origin_pool})
plus read-only fields: C{id}, C{created_on}, C{modified_on}, C{source}
(C{config} or C{api}), C{traffic_type}, C{argo_smart_routing}, C{listening}
(bound edge addresses) and C{origins} (each origin's live health).

A body for create or update is a config document for one app; the
read-only fields may be sent back as they were shown and are ignored.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from spectrum.model import App

#: Fields the API shows but nobody sets.
READ_ONLY = ("created_on", "modified_on", "source", "listening", "origins")
#: Cloudflare fields that only have one meaning here (the config refuses others).
FIXED = {"traffic_type": "direct", "argo_smart_routing": False}


class BodyError(ValueError):
    """
    An app body that cannot be used; C{str()} names the field.
    """


def app_document(body: Any, app_id: str, name: Optional[str]) -> Dict[str, Any]:
    """
    The config document for an app from a create (C{name} None) or update
    body.

    @raise BodyError: not an object, a read-only field with another value,
        or an id that is not this app's.
    """
    if not isinstance(body, dict):
        raise BodyError(f"the body must be a JSON object describing the app, got {_kind(body)}")
    document = copy.deepcopy(body)
    for key in READ_ONLY:
        document.pop(key, None)
    if "id" in document:
        if document["id"] != app_id:
            if name is None:
                raise BodyError("id: an app's id is chosen by spectrum; leave it out")
            raise BodyError(f"id: {document['id']!r} is not this app's id {app_id!r}")
    document["id"] = app_id
    if "name" not in document:
        if name is not None:
            document["name"] = name
        else:
            dns = document.get("dns")
            dns_name = dns.get("name") if isinstance(dns, dict) else None
            document["name"] = dns_name if isinstance(dns_name, str) and dns_name else f"app-{app_id[:8]}"
    return document


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


def app_shape(
    app: App,
    document: Optional[Dict[str, Any]],
    runtime: Any,
    listening: List[Dict[str, Any]],
    source: str,
    created_on: str,
    modified_on: str,
) -> Dict[str, Any]:
    """
    What the API shows for C{app}: its config document (or, lacking one, a
    document rebuilt from the model) and the read-only fields.
    """
    shown = copy.deepcopy(document) if document is not None else _rebuilt(app)
    shown["id"] = app.id
    shown.setdefault("name", app.name)
    for key, value in FIXED.items():
        shown.setdefault(key, value)
    shown["created_on"] = created_on
    shown["modified_on"] = modified_on
    shown["source"] = source
    shown["listening"] = listening
    shown["origins"] = origin_health(app, runtime)
    return shown


def origin_health(app: App, runtime: Any) -> List[Dict[str, Any]]:
    """
    Each origin of the app with whether it is up now (and, where the health
    checker runs, what it last saw).
    """
    checker = getattr(runtime, "health", None) if runtime is not None else None
    if checker is not None and hasattr(checker, "status"):
        return [dict(entry) for entry in checker.status()]
    result = []
    for origin in app.pool.origins:
        up = origin.enabled
        if runtime is not None:
            try:
                up = up and runtime.balancer.is_up(origin.name)
            except KeyError:
                pass
        result.append(
            {
                "name": origin.name,
                "address": origin.address,
                "port": origin.port,
                "enabled": origin.enabled,
                "monitored": False,
                "healthy": up,
            }
        )
    return result


def _rebuilt(app: App) -> Dict[str, Any]:
    """
    A config document for an app that came as a model, not a document.
    """
    document: Dict[str, Any] = {"name": app.name}
    if len(app.ports) == 1:
        mapping = app.ports[0]
        document["protocol"] = f"{app.protocol}/{mapping.edge}"
        if mapping.origin is not None:
            document["origin_port"] = mapping.origin.first if len(mapping.origin) == 1 else str(mapping.origin)
    else:
        document["protocol"] = app.protocol
        document["ports"] = [
            {"destination_port": str(m.edge), **({"origin_port": str(m.origin)} if m.origin else {})} for m in app.ports
        ]
    if app.dns_name:
        document["dns"] = {"type": app.dns_type, "name": app.dns_name}
    document["ips"] = list(app.ips)
    document["origin_pool"] = {
        "name": app.pool.name,
        "load_balancing": app.pool.load_balancing,
        "origins": [
            {"name": o.name, "address": o.address, **({"port": o.port} if o.port else {})} for o in app.pool.origins
        ],
    }
    document["tls"] = app.tls
    document["proxy_protocol"] = app.proxy_protocol
    document["ip_firewall"] = app.ip_firewall
    return document
