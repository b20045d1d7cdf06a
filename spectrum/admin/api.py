"""
The v4 JSON API, in Cloudflare's shapes, so scripts written for Cloudflare
work with only the host changed.

Every answer, errors included, is Cloudflare's envelope::

    {"success": false, "errors": [{"code": 10000, "message": "..."}],
     "messages": [], "result": null, "result_info": null}

and never carries a traceback. Reads need a C{read} or C{edit} token;
mutations (POST, PUT, PATCH, DELETE) need an C{edit} token and, when they
have a body, C{Content-Type: application/json}, so no HTML form can forge
one.

Routes (C{{zone}} is C{zone.id} of the config, C{local} by default):

  - C{/client/v4/zones/{zone}/spectrum/apps[/{id}]}: list, create, get,
    update (PUT), delete;
  - C{/client/v4/user/firewall/access_rules/rules[/{id}]},
    C{/client/v4/zones/{zone}/firewall/access_rules/rules[/{id}]} and, per
    app, C{/client/v4/zones/{zone}/spectrum/apps/{app}/firewall/access_rules/rules[/{id}]}:
    list with filters, create, PATCH mode/notes, delete;
  - C{/client/v4/zones/{zone}/spectrum/analytics/aggregate/current},
    C{.../analytics/events/summary}, C{.../analytics/events/bytime};
  - spectrum's own: C{/client/v4/zones/{zone}/spectrum/health} (every
    origin's health and recent changes), C{.../spectrum/events} (recent
    connection events, refused ones apart) and C{.../spectrum/live} (open
    connections and byte totals, for live charts).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from spectrum.admin import analytics_query as AQ
from spectrum.admin.activity import RecentEvents, live_traffic
from spectrum.admin.apps import BodyError, app_document, app_shape, origin_health
from spectrum.admin.auth import Authenticator, AuthError, Backoff
from spectrum.admin.state import AdminState, StateError, describe_error, now_iso
from spectrum.config import ConfigError
from spectrum.errors import ListenError
from spectrum.rules import DuplicateRule, RuleError, make_rule

#: The most a request body may hold.
MAX_BODY = 1024 * 1024
MUTATIONS = (b"POST", b"PUT", b"PATCH", b"DELETE")

# Error codes (Cloudflare's where it has one for the case).
AUTH = 10000
NO_ROUTE = 7000
BAD_METHOD = 7001
BAD_ZONE = 7003
BAD_JSON = 6007
BAD_CONTENT_TYPE = 6003
BAD_REQUEST = 1004
NOT_FOUND = 1404
CONFLICT = 1409
DUPLICATE_RULE = 10009
READ_ONLY = 1403
TOO_LARGE = 1413
SLOW_DOWN = 10429
INTERNAL = 1500


class ApiError(Exception):
    """
    An answer other than success: HTTP status, error code and message.
    """

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def envelope(
    result: Any = None,
    result_info: Optional[Dict[str, Any]] = None,
    errors: Sequence[Dict[str, Any]] = (),
    messages: Sequence[Any] = (),
) -> Dict[str, Any]:
    """
    Cloudflare's response envelope.
    """
    return {
        "success": not errors,
        "errors": list(errors),
        "messages": list(messages),
        "result": result,
        "result_info": result_info,
    }


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), default=str, allow_nan=False).encode("utf-8")


def error_body(status: int, code: int, message: str) -> Tuple[int, bytes]:
    return status, encode(envelope(errors=[{"code": code, "message": message}]))


# Requests ------------------------------------------------------------------


class Call:
    """
    One API request, decoded: path parameters, query, body, token.
    """

    def __init__(self, request: Request, params: Dict[str, str]) -> None:
        self.request = request
        self.method = request.method.decode("ascii", "replace")
        self.params = params
        self.query: Dict[str, List[str]] = {}
        for key, values in (request.args or {}).items():
            try:
                self.query[key.decode("utf-8")] = [v.decode("utf-8") for v in values]
            except UnicodeDecodeError:
                raise ApiError(400, BAD_REQUEST, "query parameters must be UTF-8") from None
        self.body: Any = None
        self.has_body = False

    def arg(self, name: str, default: Optional[str] = None) -> Optional[str]:
        values = self.query.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise ApiError(400, BAD_REQUEST, f"{name}: give it once")
        return values[0]

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        text = self.arg(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ApiError(400, BAD_REQUEST, f"{name}: expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise ApiError(400, BAD_REQUEST, f"{name}: must be from {low} to {high}, got {value}")
        return value

    def choice_arg(self, name: str, choices: Sequence[str], default: Optional[str] = None) -> Optional[str]:
        text = self.arg(name, default)
        if text is not None and text not in choices:
            raise ApiError(400, BAD_REQUEST, f"{name}: expected one of {', '.join(choices)}; got {text!r}")
        return text

    def object_body(self, required: bool = True) -> Dict[str, Any]:
        if not self.has_body:
            if required:
                raise ApiError(400, BAD_JSON, "a JSON object body is required")
            return {}
        if not isinstance(self.body, dict):
            raise ApiError(400, BAD_REQUEST, f"the body must be a JSON object, got {_json_kind(self.body)}")
        return self.body


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(request: Request) -> Tuple[bool, Any]:
    """
    (whether there is a body, the decoded JSON).

    @raise ApiError: too large, not JSON, or not declared as JSON.
    """
    content = request.content
    raw = content.read(MAX_BODY + 1) if content is not None else b""
    if len(raw) > MAX_BODY or getattr(request, "too_large", False):
        raise ApiError(413, TOO_LARGE, f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return False, None
    content_type = (_header(request, "content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, BAD_CONTENT_TYPE, "a body must be sent with Content-Type: application/json")
    try:
        text = raw.decode("utf-8")
        return True, json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise ApiError(400, BAD_JSON, "malformed JSON in the request body: not UTF-8") from None
    except ValueError as e:
        raise ApiError(400, BAD_JSON, f"malformed JSON in the request body: {e}") from None
    except RecursionError:
        raise ApiError(400, BAD_JSON, "malformed JSON in the request body: nested too deeply") from None


def check_fields(body: Dict[str, Any], fields: Dict[str, Any], where: str = "") -> None:
    """
    Refuse unknown fields and fields of the wrong JSON type; C{fields} maps
    a name to a type or a tuple of types.
    """
    for key, value in body.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ApiError(400, BAD_REQUEST, f"{where}{key}: unknown field (expected {known})")
        expected = fields[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(_TYPE_NAMES[t] for t in types)
            raise ApiError(400, BAD_REQUEST, f"{where}{key}: expected {names}, got {_json_kind(value)}")


_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", bool: "a boolean", list: "a list"}


def paginate(items: List[Any], call: Call, default_per_page: int = 20) -> Tuple[List[Any], Dict[str, Any]]:
    page = call.int_arg("page", 1, 1, 1_000_000)
    per_page = call.int_arg("per_page", default_per_page, 1, 1000)
    total = len(items)
    chosen = items[(page - 1) * per_page : page * per_page]
    info = {
        "page": page,
        "per_page": per_page,
        "count": len(chosen),
        "total_count": total,
        "total_pages": max(1, math.ceil(total / per_page)),
    }
    return chosen, info


# The resource --------------------------------------------------------------

Handler = Callable[[Call], Any]


class AdminAPI(Resource):
    """
    C{/client/v4}: every route of the API (see the module docstring).

    @ivar service: the L{spectrum.service.SpectrumService} it manages.
    @ivar state: the config document and what the API made.
    @ivar auth: checks credentials; its tokens are set when the admin starts.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: Any, state: AdminState, auth: Authenticator, recent: RecentEvents) -> None:
        super().__init__()
        self.service = service
        self.state = state
        self.auth = auth
        self.recent = recent
        self.reactor = service.reactor
        self.started_on = now_iso(self.reactor.seconds())
        #: refuses a source address for a while after repeated wrong credentials
        self.backoff = Backoff(self.reactor.seconds)
        #: access rule id -> {"scope", "source", "created_on", "modified_on"}
        self.rule_meta: Dict[str, Dict[str, Any]] = {}
        zone = r"/zones/(?P<zone>[^/]+)"
        app = zone + r"/spectrum/apps/(?P<app>[^/]+)"
        rules = r"/firewall/access_rules/rules"
        routes: List[Tuple[str, Dict[str, Handler]]] = [
            (r"/zones", {"GET": self.list_zones}),
            (zone + r"/spectrum/apps", {"GET": self.list_apps, "POST": self.create_app}),
            (app, {"GET": self.get_app, "PUT": self.update_app, "DELETE": self.delete_app}),
            (r"/user" + rules, {"GET": self.list_rules, "POST": self.create_rule}),
            (r"/user" + rules + r"/(?P<rule>[^/]+)", {"PATCH": self.edit_rule, "DELETE": self.delete_rule}),
            (zone + rules, {"GET": self.list_rules, "POST": self.create_rule}),
            (zone + rules + r"/(?P<rule>[^/]+)", {"PATCH": self.edit_rule, "DELETE": self.delete_rule}),
            (app + rules, {"GET": self.list_rules, "POST": self.create_rule}),
            (app + rules + r"/(?P<rule>[^/]+)", {"PATCH": self.edit_rule, "DELETE": self.delete_rule}),
            (zone + r"/spectrum/analytics/aggregate/current", {"GET": self.aggregate_current}),
            (zone + r"/spectrum/analytics/events/summary", {"GET": self.events_summary}),
            (zone + r"/spectrum/analytics/events/bytime", {"GET": self.events_bytime}),
            (zone + r"/spectrum/health", {"GET": self.health}),
            (zone + r"/spectrum/events", {"GET": self.events}),
            (zone + r"/spectrum/live", {"GET": self.live}),
            (zone + r"/spectrum/cluster", {"GET": self.cluster}),
        ]
        self.routes: List[Tuple[re.Pattern[str], Dict[str, Handler]]] = [
            (re.compile("^" + pattern + "/?$"), methods) for pattern, methods in routes
        ]

    # dispatch ----------------------------------------------------------------

    def render(self, request: Request) -> bytes:
        try:
            status, body = self.answer(request)
        except Exception:
            self.log.failure("admin API: {method} {path} failed", method=request.method, path=request.path)
            status, body = error_body(500, INTERNAL, "internal error; the server log has the details")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="spectrum"')
        if request.method == b"HEAD":
            return b""
        return body

    def answer(self, request: Request) -> Tuple[int, bytes]:
        path = request.path.decode("utf-8", "replace")
        prefix = "/client/v4"
        method = request.method.decode("ascii", "replace").upper()
        try:
            headers = {name: _header(request, name) for name in ("authorization", "x-auth-key", "x-auth-email")}
            source = _source(request)
            wait = self.backoff.retry_after(source)
            if wait > 0:
                seconds = math.ceil(wait)
                request.setHeader(b"Retry-After", str(seconds).encode("ascii"))
                raise ApiError(429, SLOW_DOWN, f"too many failed authentications; retry in {seconds}s")
            try:
                self.auth.authenticate(headers, mutation=request.method in MUTATIONS)
            except AuthError as e:
                if e.status == 401 and (headers["authorization"] or headers["x-auth-key"]):
                    self.backoff.failed(source)
                    self.log.warn(
                        "admin: failed authentication from {source}: {reason}", source=source, reason=e.message
                    )
                raise ApiError(e.status, AUTH, f"Authentication error: {e.message}") from None
            self.backoff.succeeded(source)
            if not path.startswith(prefix):
                raise ApiError(404, NO_ROUTE, f"no route for {path}")
            rest = path[len(prefix) :]
            for pattern, methods in self.routes:
                match = pattern.match(rest)
                if match is None:
                    continue
                if method == "HEAD":
                    method = "GET"
                handler = methods.get(method)
                if handler is None:
                    raise ApiError(
                        405, BAD_METHOD, f"method {method} is not allowed here; use {', '.join(sorted(methods))}"
                    )
                params = match.groupdict()
                zone = params.get("zone")
                if zone is not None and zone != self.service.config.zone_id:
                    raise ApiError(
                        404, BAD_ZONE, f"no zone {zone!r}; this spectrum's zone is {self.service.config.zone_id!r}"
                    )
                call = Call(request, params)
                if request.method in MUTATIONS:
                    call.has_body, call.body = decode_body(request)
                result = handler(call)
                status = 200
                info = None
                if isinstance(result, tuple):
                    result, info = result
                return status, encode(envelope(result, info))
            raise ApiError(404, NO_ROUTE, f"no route for {path}")
        except ApiError as e:
            return error_body(e.status, e.code, e.message)

    # zones -----------------------------------------------------------------------

    def list_zones(self, call: Call) -> Any:
        config = self.service.config
        zone = {"id": config.zone_id, "name": config.zone_name, "status": "active"}
        return paginate([zone], call)

    # apps ----------------------------------------------------------------------

    def _listening(self) -> Dict[str, List[Dict[str, Any]]]:
        result: Dict[str, List[Dict[str, Any]]] = {}
        for (protocol, ip, _), listener in self.service.listeners.items():
            result.setdefault(listener.runtime.app.name, []).append(
                {"protocol": protocol, "ip": ip, "port": listener.bound_port()}
            )
        return result

    def _documents(self) -> Dict[str, Dict[str, Any]]:
        """
        app name -> its config document, for the file's apps and the API's.
        """
        result: Dict[str, Dict[str, Any]] = {}
        for document in self.state.base.get("apps") or []:
            if isinstance(document, dict) and isinstance(document.get("name"), str):
                result[document["name"]] = document
        for entry in self.state.apps.values():
            result[entry["app"]["name"]] = entry["app"]
        return result

    def _shape(self, app: Any, documents: Dict[str, Any], listening: Dict[str, Any]) -> Dict[str, Any]:
        entry = self.state.apps.get(app.id)
        if entry is not None:
            source, created, modified = "api", entry["created_on"], entry["modified_on"]
        else:
            source, created, modified = "config", self.started_on, self.started_on
        return app_shape(
            app,
            documents.get(app.name),
            self.service.runtimes.get(app.name),
            listening.get(app.name, []),
            source,
            created,
            modified,
        )

    def _app(self, app_id: str) -> Any:
        for app in self.service.config.apps:
            if app.id == app_id or (app.name == app_id):
                return app
        raise ApiError(404, NOT_FOUND, f"no app with id {app_id!r}")

    def list_apps(self, call: Call) -> Any:
        documents = self._documents()
        listening = self._listening()
        apps = [self._shape(app, documents, listening) for app in self.service.config.apps]
        order = call.choice_arg("order", ("name", "protocol", "app_id", "created_on", "modified_on", "dns"))
        direction = call.choice_arg("direction", ("asc", "desc"), "asc")
        if order is not None:
            key = "id" if order == "app_id" else order
            apps.sort(key=lambda a: json.dumps(a.get(key), sort_keys=True), reverse=direction == "desc")
        elif direction == "desc":
            apps.reverse()
        return paginate(apps, call)

    def get_app(self, call: Call) -> Any:
        app = self._app(call.params["app"])
        return self._shape(app, self._documents(), self._listening())

    def _commit_apps(self, apps: Dict[str, Dict[str, Any]], index_of: Optional[str]) -> None:
        """
        Check the config with C{apps} as the API's apps, write the state and
        apply it; nothing changes if any step fails.
        """
        if not self.state.base and self.service.config.apps and self.state.base_source is None:
            raise ApiError(409, CONFLICT, "this spectrum's config did not come from a document; apps are read-only")
        try:
            config = self.state.build(apps)
        except ConfigError as e:
            if index_of is not None:
                index = self.state.file_app_count() + list(apps).index(index_of)
                raise ApiError(400, BAD_REQUEST, describe_error(e, index)) from None
            raise ApiError(400, BAD_REQUEST, str(e)) from None
        config = _with_source(config, self.service.config)

        # Apply first (all or nothing), and only then write the state file:
        # a change the service refused leaves the file as it was.
        running = self.service.config
        try:
            self.service.apply(config)
        except ListenError as e:
            raise ApiError(409, CONFLICT, re.sub(r"^apps\[\d+\] ", "", str(e))) from None
        except ConfigError as e:
            raise ApiError(400, BAD_REQUEST, str(e)) from None
        except Exception as e:
            self.log.failure("admin API: the change could not be applied")
            raise ApiError(500, INTERNAL, f"the change could not be applied: {e}") from None
        previous = self.state.apps
        self.state.apps = apps
        try:
            self.state.save()
        except StateError as e:
            self.state.apps = previous
            try:
                self.service.apply(running)
            except Exception:
                self.log.failure("admin API: could not return to the config in force")
            raise ApiError(500, INTERNAL, str(e)) from None
        self._tell_cluster("apps")

    def create_app(self, call: Call) -> Any:
        app_id = uuid.uuid4().hex
        try:
            document = app_document(call.object_body(), app_id, None)
        except BodyError as e:
            raise ApiError(400, BAD_REQUEST, str(e)) from None
        now = now_iso(self.reactor.seconds())
        apps = dict(self.state.apps)
        apps[app_id] = {"app": document, "created_on": now, "modified_on": now}
        self._commit_apps(apps, app_id)
        return self.get_app(Call(call.request, {"app": app_id}))

    def _api_entry(self, app_id: str) -> Dict[str, Any]:
        app = self._app(app_id)
        entry = self.state.apps.get(app.id)
        if entry is None:
            raise ApiError(
                409, READ_ONLY, f"app {app.name!r} is defined in the config file; change it there and reload"
            )
        return entry

    def update_app(self, call: Call) -> Any:
        entry = self._api_entry(call.params["app"])
        app_id = entry["app"]["id"]
        try:
            document = app_document(call.object_body(), app_id, entry["app"]["name"])
        except BodyError as e:
            raise ApiError(400, BAD_REQUEST, str(e)) from None
        apps = dict(self.state.apps)
        apps[app_id] = dict(entry, app=document, modified_on=now_iso(self.reactor.seconds()))
        self._commit_apps(apps, app_id)
        return self.get_app(Call(call.request, {"app": app_id}))

    def delete_app(self, call: Call) -> Any:
        entry = self._api_entry(call.params["app"])
        check_fields(call.object_body(required=False), {})
        app_id = entry["app"]["id"]
        apps = {key: value for key, value in self.state.apps.items() if key != app_id}
        self._commit_apps(apps, None)
        return {"id": app_id}

    # access rules --------------------------------------------------------------

    @property
    def firewall(self) -> Any:
        admission = getattr(self.service, "admission", None)
        if admission is None:
            raise ApiError(404, NO_ROUTE, "this spectrum has no firewall")
        return admission.firewall

    def _scope(self, call: Call) -> Tuple[str, Optional[str]]:
        """
        (scope type, app name or None) of a rules route.
        """
        if "app" in call.params:
            return "app", self._app(call.params["app"]).name
        if "zone" in call.params:
            return "zone", None
        return "user", None

    def _rule_shape(self, rule: Any) -> Dict[str, Any]:
        meta = self.rule_meta.get(rule.id)
        if meta is None:
            meta = {
                "scope": "app" if rule.app else "zone",
                "source": "config",
                "created_on": self.started_on,
                "modified_on": self.started_on,
            }
        scope: Dict[str, Any] = {"type": meta["scope"]}
        if meta["scope"] == "zone":
            scope["id"] = self.service.config.zone_id
            if self.service.config.zone_name:
                scope["name"] = self.service.config.zone_name
        elif meta["scope"] == "app":
            scope["name"] = rule.app
        shown: Dict[str, Any] = {
            "id": rule.id,
            "mode": rule.mode,
            "allowed_modes": ["whitelist", "block"],
            "configuration": {"target": rule.target, "value": rule.value},
            "notes": rule.notes,
            "scope": scope,
            "source": meta["source"],
            "created_on": meta["created_on"],
            "modified_on": meta["modified_on"],
        }
        if rule.app:
            shown["app"] = rule.app
        return shown

    def list_rules(self, call: Call) -> Any:
        _, app = self._scope(call)
        rules = [rule for rule in self.firewall.rules if rule.app == app]
        mode = call.arg("mode")
        target = call.arg("configuration.target")
        value = call.arg("configuration.value")
        notes = call.arg("notes")
        match = call.choice_arg("match", ("all", "any"), "all")
        order = call.choice_arg("order", ("configuration.target", "configuration.value", "mode"))
        direction = call.choice_arg("direction", ("asc", "desc"), "asc")
        tests: List[Callable[[Any], bool]] = []
        if mode is not None:
            tests.append(lambda r: r.mode == mode)
        if target is not None:
            tests.append(lambda r: r.target == target)
        if value is not None:
            tests.append(lambda r: r.value.lower() == value.strip().lower())
        if notes is not None:
            tests.append(lambda r: notes.lower() in r.notes.lower())
        if tests:
            combine = all if match == "all" else any
            rules = [r for r in rules if combine(test(r) for test in tests)]
        if order is not None:
            field = {"configuration.target": "target", "configuration.value": "value", "mode": "mode"}[order]
            rules.sort(key=lambda r: getattr(r, field), reverse=direction == "desc")
        elif direction == "desc":
            rules.reverse()
        return paginate([self._rule_shape(r) for r in rules], call)

    def create_rule(self, call: Call) -> Any:
        scope, app = self._scope(call)
        body = call.object_body()
        check_fields(body, {"mode": str, "configuration": dict, "notes": str})
        if "mode" not in body or "configuration" not in body:
            raise ApiError(400, BAD_REQUEST, "mode and configuration are required")
        configuration = body["configuration"]
        check_fields(configuration, {"target": str, "value": (str, int)}, "configuration.")
        if "target" not in configuration or "value" not in configuration:
            raise ApiError(400, BAD_REQUEST, "configuration needs target and value")
        geoip = getattr(self.service.config, "geoip", None)
        target = configuration["target"]
        if target == "country" and getattr(geoip, "country_db", None) is None:
            raise ApiError(400, BAD_REQUEST, "configuration.target: country rules need geoip.country_db in the config")
        if target == "asn" and getattr(geoip, "asn_db", None) is None:
            raise ApiError(400, BAD_REQUEST, "configuration.target: asn rules need geoip.asn_db in the config")
        try:
            rule = make_rule(body["mode"], target, configuration["value"], body.get("notes", ""), app, uuid.uuid4().hex)
        except RuleError as e:
            text = str(e)
            where = (
                "mode"
                if text.startswith("mode")
                else "configuration.target"
                if text.startswith("target")
                else "configuration.value"
            )
            raise ApiError(400, BAD_REQUEST, f"{where}: {e}") from None
        try:
            rule = self.firewall.add(rule)
        except DuplicateRule as e:
            raise ApiError(409, DUPLICATE_RULE, f"duplicate of an existing rule: {e}") from None
        now = now_iso(self.reactor.seconds())
        self.rule_meta[rule.id] = {"scope": scope, "source": "api", "created_on": now, "modified_on": now}
        self._save_rules(undo=lambda: self._forget(rule.id))
        self.log.info(
            "access rule {id} added: {mode} {target} {value}",
            id=rule.id,
            mode=rule.mode,
            target=rule.target,
            value=rule.value,
        )
        return self._rule_shape(rule)

    def _forget(self, rule_id: str) -> None:
        self.firewall.remove(rule_id)
        self.rule_meta.pop(rule_id, None)

    def _api_rule(self, call: Call) -> Any:
        _, app = self._scope(call)
        try:
            rule = self.firewall.get(call.params["rule"])
        except KeyError:
            raise ApiError(404, NOT_FOUND, f"no access rule with id {call.params['rule']!r}") from None
        if rule.app != app:
            raise ApiError(404, NOT_FOUND, f"no access rule with id {rule.id!r} in this scope")
        if self.rule_meta.get(rule.id, {}).get("source") != "api":
            raise ApiError(409, READ_ONLY, f"access rule {rule.id} is defined in the config file; change it there")
        return rule

    def edit_rule(self, call: Call) -> Any:
        rule = self._api_rule(call)
        body = call.object_body()
        if "configuration" in body:
            raise ApiError(
                400, BAD_REQUEST, "configuration: a rule's target and value cannot change; delete it and add another"
            )
        check_fields(body, {"mode": str, "notes": str})
        if not body:
            raise ApiError(400, BAD_REQUEST, "give mode or notes to change")
        old = rule
        try:
            rule = self.firewall.update(rule.id, mode=body.get("mode"), notes=body.get("notes"))
        except RuleError as e:
            raise ApiError(400, BAD_REQUEST, f"mode: {e}") from None
        meta = self.rule_meta[rule.id]
        previous = meta["modified_on"]
        meta["modified_on"] = now_iso(self.reactor.seconds())

        def undo() -> None:
            self.firewall.update(old.id, mode=old.mode, notes=old.notes)
            meta["modified_on"] = previous

        self._save_rules(undo)
        return self._rule_shape(rule)

    def delete_rule(self, call: Call) -> Any:
        rule = self._api_rule(call)
        check_fields(call.object_body(required=False), {})
        meta = self.rule_meta.pop(rule.id)
        self.firewall.remove(rule.id)

        def undo() -> None:
            self.firewall.add(rule)
            self.rule_meta[rule.id] = meta

        self._save_rules(undo)
        return {"id": rule.id}

    def _save_rules(self, undo: Callable[[], None]) -> None:
        previous = self.state.rules
        self.state.rules = self.api_rules()
        try:
            self.state.save()
        except StateError as e:
            self.state.rules = previous
            undo()
            raise ApiError(500, INTERNAL, str(e)) from None
        self._tell_cluster("rules")

    def _tell_cluster(self, kind: str) -> None:
        # Other nodes sharing the store apply the change too (spectrum.cluster).
        cluster = getattr(self.service, "cluster", None)
        if cluster is not None:
            cluster.local_change(kind)

    def api_rules(self) -> List[Dict[str, Any]]:
        """
        The rules made through the API, as the state file keeps them.
        """
        result = []
        for rule in self.firewall.rules:
            meta = self.rule_meta.get(rule.id)
            if meta is None or meta["source"] != "api":
                continue
            result.append(
                {
                    "id": rule.id,
                    "mode": rule.mode,
                    "configuration": {"target": rule.target, "value": rule.value},
                    "notes": rule.notes,
                    "app": rule.app,
                    "scope": meta["scope"],
                    "created_on": meta["created_on"],
                    "modified_on": meta["modified_on"],
                }
            )
        return result

    def restore_rules(self) -> None:
        """
        Put the state file's rules (back) into the firewall: at start, and
        after a reload replaced the rule set with the config file's.
        """
        admission = getattr(self.service, "admission", None)
        if admission is None:
            return
        firewall = admission.firewall
        present = {rule.id for rule in firewall.rules}
        for stored in self.state.rules:
            try:
                if stored["id"] in present and stored["id"] in self.rule_meta:
                    continue
                configuration = stored["configuration"]
                rule = make_rule(
                    stored["mode"],
                    configuration["target"],
                    configuration["value"],
                    stored.get("notes", ""),
                    stored.get("app"),
                    stored["id"],
                )
                firewall.add(rule)
            except (KeyError, TypeError, RuleError, DuplicateRule) as e:
                self.log.warn("state file: access rule {rule!r} not restored: {error}", rule=stored, error=str(e))
                continue
            self.rule_meta[rule.id] = {
                "scope": stored.get("scope", "user"),
                "source": "api",
                "created_on": stored.get("created_on", self.started_on),
                "modified_on": stored.get("modified_on", self.started_on),
            }

    # analytics, health, events ---------------------------------------------------

    @property
    def analytics(self) -> Any:
        # With a shared store: the whole cluster's figures (spectrum.cluster).
        view = getattr(getattr(self.service, "cluster", None), "view", None)
        if view is not None:
            return view
        analytics = getattr(self.service, "analytics", None)
        if analytics is None:
            raise ApiError(404, NO_ROUTE, "this spectrum keeps no analytics")
        return analytics

    def _app_ids(self) -> Dict[str, str]:
        ids = {runtime.app.name: runtime.app.id for runtime in self.service.all_runtimes()}
        ids.update({app.name: app.id for app in self.service.config.apps})
        return ids

    def aggregate_current(self, call: Call) -> Any:
        wanted = call.arg("appID")
        ids = set(wanted.split(",")) if wanted else None
        return AQ.aggregate_current(self.analytics, self._app_ids(), ids, self.reactor.seconds())

    def events_summary(self, call: Call) -> Any:
        try:
            query = AQ.Query.from_args(call.arg, self.reactor.seconds(), self.analytics.window, bytime=False)
            return AQ.summary(self.analytics, self._app_ids(), query)
        except AQ.QueryError as e:
            raise ApiError(400, BAD_REQUEST, str(e)) from None

    def events_bytime(self, call: Call) -> Any:
        try:
            query = AQ.Query.from_args(call.arg, self.reactor.seconds(), self.analytics.window, bytime=True)
            return AQ.bytime(self.analytics, self._app_ids(), query)
        except AQ.QueryError as e:
            raise ApiError(400, BAD_REQUEST, str(e)) from None

    def health(self, call: Call) -> Any:
        apps = []
        changes: List[Dict[str, Any]] = []
        for app in self.service.config.apps:
            runtime = self.service.runtimes.get(app.name)
            apps.append({"id": app.id, "name": app.name, "origins": origin_health(app, runtime)})
            checker = getattr(runtime, "health", None)
            for event in getattr(checker, "history", ()) or ():
                item = event.as_dict() if hasattr(event, "as_dict") else dict(event)
                item["app"] = app.name
                changes.append(item)
        changes.sort(key=lambda item: item.get("time") or 0, reverse=True)
        limit = call.int_arg("limit", 100, 1, 1000)
        return {"apps": apps, "changes": changes[:limit]}

    def events(self, call: Call) -> Any:
        limit = call.int_arg("limit", 100, 1, 500)
        since = call.int_arg("since", 0, 0, 2**62)
        refused = call.choice_arg("refused", ("true", "false"), "false") == "true"
        return self.recent.recent(limit, refused_only=refused, since=since or None)

    def live(self, call: Call) -> Any:
        return {"time": self.reactor.seconds(), "apps": live_traffic(self.service, self.recent)}

    def cluster(self, call: Call) -> Any:
        """
        This node, the store, and each node's own figures and view of origin
        health (the analytics endpoints report the cluster's sums).
        """
        cluster = getattr(self.service, "cluster", None)
        if cluster is None:
            raise ApiError(404, NO_ROUTE, "this spectrum has no store")
        return cluster.status()


def _header(request: Request, name: str) -> Optional[str]:
    """
    A request header as text, or None if absent or empty. Bytes that are not
    UTF-8 are replaced (such a credential is then simply wrong): Twisted's
    own text accessor raises on them.
    """
    raw = request.getHeader(name.encode("ascii"))
    return raw.decode("utf-8", "replace") if raw else None


def _source(request: Request) -> str:
    """
    The address a request came from (its host), for the auth backoff.
    """
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or address)


def _with_source(config: Any, running: Any) -> Any:
    if config.source is None and running.source is not None:
        return attr.evolve(config, source=running.source)
    return config
