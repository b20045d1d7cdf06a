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
from typing import Any, Callable, Dict, List, Optional, Tuple

import attr
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from spectrum.admin import analytics_query as AQ
from spectrum.admin.activity import RecentEvents, live_traffic
from spectrum.admin.apps import BodyError, app_document, app_shape, origin_health
from spectrum.admin.auth import Authenticator, AuthError, Backoff
from spectrum.admin.calls import (
    AUTH,
    BAD_METHOD,
    BAD_REQUEST,
    BAD_ZONE,
    CONFLICT,
    DUPLICATE_RULE,
    INTERNAL,
    MUTATIONS,
    NO_ROUTE,
    NOT_FOUND,
    READ_ONLY,
    SLOW_DOWN,
    ApiError,
    Call,
    check_fields,
    decode_body,
    encode,
    envelope,
    error_body,
    header,
    paginate,
    respond,
)
from spectrum.admin.state import AdminState, StateError, describe_error
from spectrum.config import ConfigError
from spectrum.errors import ListenError
from spectrum.rulebook import RuleBook
from spectrum.rules import DuplicateRule, RuleError, make_rule, now_iso

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

    def __init__(
        self, service: Any, state: AdminState, auth: Authenticator, recent: RecentEvents, shared: Any = None
    ) -> None:
        super().__init__()
        self.service = service
        #: this node's side of the store (L{spectrum.cluster.node.Cluster}), if it has one
        self.shared = shared
        self.state = state
        self.auth = auth
        self.recent = recent
        self.reactor = service.reactor
        self.started_on = now_iso(self.reactor.seconds())
        #: refuses a source address for a while after repeated wrong credentials
        self.backoff = Backoff(self.reactor.seconds)
        zone = r"/zones/(?P<zone>[^/]+)"
        app = zone + r"/spectrum/apps/(?P<app>[^/]+)"
        rules = r"/firewall/access_rules/rules"
        routes: List[Tuple[str, Dict[str, Handler]]] = [
            (r"/ips", {"GET": self.egress_ips}),
            (r"/user/tokens/verify", {"GET": self.verify_token}),
            (r"/zones", {"GET": self.list_zones}),
            (zone + r"/spectrum/apps", {"GET": self.list_apps, "POST": self.create_app}),
            (app, {"GET": self.get_app, "PUT": self.update_app, "DELETE": self.delete_app}),
            (r"/user" + rules, {"GET": self.list_rules, "POST": self.create_rule}),
            (
                r"/user" + rules + r"/(?P<rule>[^/]+)",
                {"GET": self.get_rule, "PATCH": self.edit_rule, "DELETE": self.delete_rule},
            ),
            (zone + rules, {"GET": self.list_rules, "POST": self.create_rule}),
            (
                zone + rules + r"/(?P<rule>[^/]+)",
                {"GET": self.get_rule, "PATCH": self.edit_rule, "DELETE": self.delete_rule},
            ),
            (app + rules, {"GET": self.list_rules, "POST": self.create_rule}),
            (
                app + rules + r"/(?P<rule>[^/]+)",
                {"GET": self.get_rule, "PATCH": self.edit_rule, "DELETE": self.delete_rule},
            ),
            (zone + r"/spectrum/analytics/aggregate/current", {"GET": self.aggregate_current}),
            (zone + r"/spectrum/analytics/events/summary", {"GET": self.events_summary}),
            (zone + r"/spectrum/analytics/events/bytime", {"GET": self.events_bytime}),
            (zone + r"/spectrum/health", {"GET": self.health}),
            (zone + r"/spectrum/events", {"GET": self.events}),
            (zone + r"/spectrum/live", {"GET": self.live}),
            (zone + r"/spectrum/cluster", {"GET": self.cluster}),
            (zone + r"/spectrum/kernel", {"GET": self.kernel}),
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
        return respond(request, status, body)

    def authenticate(self, request: Request) -> Any:
        """
        Check the request's credentials (a read token will do for a read),
        slowing down a source that keeps guessing; the token they name.

        @raise ApiError: 429 while the source must wait, 401 or 403.
        """
        headers = {name: header(request, name) for name in ("authorization", "x-auth-key", "x-auth-email")}
        source = _source(request)
        wait = self.backoff.retry_after(source)
        if wait > 0:
            seconds = math.ceil(wait)
            request.setHeader(b"Retry-After", str(seconds).encode("ascii"))
            raise ApiError(429, SLOW_DOWN, f"too many failed authentications; retry in {seconds}s")
        try:
            token = self.auth.authenticate(headers, mutation=request.method in MUTATIONS)
        except AuthError as e:
            if e.status == 401 and (headers["authorization"] or headers["x-auth-key"]):
                self.backoff.failed(source)
                self.log.warn("admin: failed authentication from {source}: {reason}", source=source, reason=e.message)
            raise ApiError(e.status, AUTH, f"Authentication error: {e.message}") from None
        self.backoff.succeeded(source)
        return token

    def answer(self, request: Request) -> Tuple[int, bytes]:
        path = request.path.decode("utf-8", "replace")
        prefix = "/client/v4"
        method = request.method.decode("ascii", "replace").upper()
        try:
            token = self.authenticate(request)
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
                call.token = token
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

    def verify_token(self, call: Call) -> Any:
        """
        Cloudflare's token check, with what the token may do (the page
        shows no write controls to a read-only token).
        """
        return {"id": call.token.name, "status": "active", "permissions": call.token.permissions}

    # egress --------------------------------------------------------------------

    def egress_ips(self, call: Call) -> Any:
        """
        Cloudflare's C{/ips}: the addresses origins see connections from,
        of every node sharing the store.
        """
        from spectrum.egress import listing, node_networks

        networks = set(node_networks(self.service.config))
        cluster = self.shared
        for published in (getattr(cluster, "egress_view", None) or {}).values():
            networks.update(published)
        return listing(networks)

    # zones -----------------------------------------------------------------------

    def list_zones(self, call: Call) -> Any:
        config = self.service.config
        zone = {"id": config.zone_id, "name": config.zone_name, "status": "active"}
        return paginate([zone], call)

    # apps ----------------------------------------------------------------------

    def _listening(self) -> Dict[str, List[Dict[str, Any]]]:
        result: Dict[str, List[Dict[str, Any]]] = {}
        for (protocol, ip, _), listener in self.service.listeners.items():
            for runtime in listener.runtimes:
                result.setdefault(runtime.app.name, []).append(
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
        # Its rules go with it, from the state file (written once, with the
        # apps), here and in the store: a later app of that name starts with
        # none. They leave the firewall only once the app is gone, so the
        # reload's hooks do not put them back from the store.
        book = self.rules
        leaving = book.made_for(self._app(app_id).name)
        previous = self.state.rules
        self.state.rules = list(book.documents(leaving).values())
        try:
            self._commit_apps(apps, None)
        except ApiError:
            self.state.rules = previous
            raise
        book.forget(leaving)
        return {"id": app_id}

    # access rules --------------------------------------------------------------

    @property
    def rules(self) -> RuleBook:
        """
        The access rules' owner (the file's and the API's).
        """
        return self.service.rules

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
        meta = self.rules.meta(rule)
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
        rules = self.rules.rules(app)
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
            rule = self.rules.create(rule, scope)
        except DuplicateRule as e:
            raise ApiError(409, DUPLICATE_RULE, f"duplicate of an existing rule: {e}") from None
        except StateError as e:
            raise ApiError(500, INTERNAL, str(e)) from None
        return self._rule_shape(rule)

    def _scoped_rule(self, call: Call) -> Any:
        _, app = self._scope(call)
        try:
            rule = self.rules.get(call.params["rule"])
        except KeyError:
            raise ApiError(404, NOT_FOUND, f"no access rule with id {call.params['rule']!r}") from None
        if rule.app != app:
            raise ApiError(404, NOT_FOUND, f"no access rule with id {rule.id!r} in this scope")
        return rule

    def get_rule(self, call: Call) -> Any:
        return self._rule_shape(self._scoped_rule(call))

    def _api_rule(self, call: Call) -> Any:
        rule = self._scoped_rule(call)
        if not self.rules.made(rule.id):
            raise ApiError(409, READ_ONLY, f"access rule {rule.id} is defined in the config file; change it there")
        return rule

    def edit_rule(self, call: Call) -> Any:
        rule = self._api_rule(call)
        body = dict(call.object_body())
        if "configuration" in body:
            # Cloudflare's clients send the configuration back with every PATCH.
            if not _same_configuration(body.pop("configuration"), rule):
                raise ApiError(
                    400,
                    BAD_REQUEST,
                    "configuration: a rule's target and value cannot change; delete it and add another",
                )
        check_fields(body, {"mode": str, "notes": str})
        if not body:
            raise ApiError(400, BAD_REQUEST, "give mode or notes to change")
        try:
            rule = self.rules.edit(rule.id, body.get("mode"), body.get("notes"))
        except RuleError as e:
            raise ApiError(400, BAD_REQUEST, f"mode: {e}") from None
        except StateError as e:
            raise ApiError(500, INTERNAL, str(e)) from None
        return self._rule_shape(rule)

    def delete_rule(self, call: Call) -> Any:
        rule = self._api_rule(call)
        check_fields(call.object_body(required=False), {})
        try:
            self.rules.delete(rule.id)
        except StateError as e:
            raise ApiError(500, INTERNAL, str(e)) from None
        return {"id": rule.id}

    def _tell_cluster(self, kind: str) -> None:
        # Other nodes sharing the store apply the change too (spectrum.cluster).
        if self.shared is not None:
            self.shared.local_change(kind)

    # analytics, health, events ---------------------------------------------------

    @property
    def analytics(self) -> Any:
        # With a shared store: the whole cluster's figures (spectrum.cluster).
        view = getattr(self.shared, "view", None)
        if view is not None:
            return view
        return self.service.analytics

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
            query = AQ.Query.from_args(call.query_arg, self.reactor.seconds(), self.analytics.window, bytime=False)
            return AQ.summary(self.analytics, self._app_ids(), query)
        except AQ.QueryError as e:
            raise ApiError(400, BAD_REQUEST, str(e)) from None

    def events_bytime(self, call: Call) -> Any:
        try:
            query = AQ.Query.from_args(call.query_arg, self.reactor.seconds(), self.analytics.window, bytime=True)
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
        if self.shared is None:
            raise ApiError(404, NO_ROUTE, "this spectrum has no store")
        return self.shared.status()

    def kernel(self, call: Call) -> Any:
        """
        The kernel filter: its mode, whether it is loaded (and why not), and
        what it dropped per app and reason.
        """
        return self.service.shield.status()


def _same_configuration(configuration: Any, rule: Any) -> bool:
    """
    Whether a PATCH's C{configuration} names C{rule}'s target and value
    (in any spelling the rule's canonical value has).
    """
    if not isinstance(configuration, dict) or set(configuration) != {"target", "value"}:
        return False
    try:
        given = make_rule(rule.mode, configuration["target"], configuration["value"], "", rule.app, rule.id)
    except (RuleError, TypeError):
        return False
    return (given.target, given.value) == (rule.target, rule.value)


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
