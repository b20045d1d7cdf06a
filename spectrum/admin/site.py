"""
The admin site and the service that listens for it.

The tree: C{/client/v4/...} the JSON API (L{spectrum.admin.api}),
C{/metrics} Prometheus, C{/openapi.json} the API's description, C{/} the
browser page (static files from C{spectrum/admin/static}, no build step).
Any other path gets a 404 in the API's envelope.
"""

from __future__ import annotations

import io
import ipaddress
from typing import Any, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from spectrum.admin.auth import TokenError
from spectrum.admin.metrics import AnalyticsCollector, metrics_resource
from spectrum.admin.state import StateError
from spectrum.analytics import Analytics
from spectrum.model import AdminSettings


class AdminListenError(Exception):
    """
    The admin listener could not be bound; C{str()} is one line.
    """


def admin_root(
    analytics: Analytics, firewall: Optional[Any] = None, service: Optional[Any] = None, shared: Any = None
) -> Resource:
    """
    The admin resource tree: C{/metrics}; with C{service}, the API, its
    description and the page too; with C{shared} (this node's side of the
    store), the cluster's figures and documents.
    """
    if service is None:
        root = Resource()
    else:
        from spectrum.admin.page import Root

        root = Root(service, shared)
    metrics = metrics_resource(
        AnalyticsCollector(
            analytics,
            firewall,
            refusals=getattr(service, "refusals", None),
            shield=getattr(service, "shield", None),
            event_log=getattr(service, "event_log", None),
            service=service,
            shared=shared,
        )
    )
    gate = MetricsGate(metrics, getattr(root, "api", None))
    root.putChild(b"metrics", gate)
    root.metrics = gate  # type: ignore[attr-defined]
    return root


class MetricsGate(Resource):
    """
    C{/metrics} (it names every origin's address): open to anyone while
    L{public}, else only with a token, checked as the API checks one.
    L{AdminService} decides once it has bound.
    """

    isLeaf = True

    def __init__(self, metrics: Resource, api: Any) -> None:
        super().__init__()
        self.metrics = metrics
        self.api = api
        self.public = api is None

    def render(self, request: Request) -> Any:
        if not self.public:
            from spectrum.admin.calls import ApiError, error_body, respond

            try:
                self.api.authenticate(request)
            except ApiError as e:
                return respond(request, *error_body(e.status, e.code, e.message))
        return self.metrics.render(request)


def metrics_access(setting: Optional[str], host: Any) -> Tuple[bool, str]:
    """
    Whether C{/metrics} is open without a token for C{admin.metrics}
    C{setting} and the admin's bound address, and the start's line saying so.
    """
    if setting == "public":
        return True, "admin: /metrics is open without a token (admin.metrics: public)"
    if setting == "token":
        return False, "admin: /metrics needs a token (admin.metrics: token)"
    address = getattr(host, "host", None)
    if address is not None and _loopback(address):
        return True, "admin: /metrics is open without a token (loopback only)"
    where = address if address is not None else host
    return False, (
        f"admin: /metrics needs a token: the admin listens on {where}, not loopback only"
        " (admin.metrics: public opens it)"
    )


class AdminRequest(Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body, in memory:
    Twisted would spool any declared length to a temporary file before a
    resource (and its auth check) sees the request, so anyone who can reach
    the port could fill the disk. The rest is read and dropped, and the API
    answers 413.
    """

    too_large = False
    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        from spectrum.admin.calls import MAX_BODY

        if length is not None and length > MAX_BODY:
            self.too_large = True
        # At most MAX_BODY + 1 bytes are kept: memory will do, never a file.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        from spectrum.admin.calls import MAX_BODY

        self._received += len(data)
        if self.too_large or self._received > MAX_BODY + 1:
            self.too_large = True
            return
        super().handleContentChunk(data)


class AdminSite(Site):
    """
    The admin's HTTP site; its access log leaves out successful reads, so a
    page polling every second does not flood the log, and keeps every change
    and every refusal.
    """

    requestFactory = AdminRequest

    def log(self, request: Any) -> None:
        if request.method in (b"GET", b"HEAD") and request.code < 400:
            return
        super().log(request)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class AdminService(Service):
    """
    Listens on C{admin.listen} (bound before privileges are dropped) and
    serves C{root}.
    """

    log = Logger()

    def __init__(self, settings: AdminSettings, root: Resource, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.settings = settings
        self.site = AdminSite(root)
        self.site.noisy = False
        self.site.displayTracebacks = False
        self.port: Any = None

    def _listen(self) -> None:
        if self.port is not None:
            return
        endpoint = serverFromString(self.reactor, self.settings.listen)
        results: List[Any] = []
        endpoint.listen(self.site).addBoth(results.append)
        if not results:  # pragma: no cover - every stream endpoint here is synchronous
            raise AdminListenError(f"admin.listen: {self.settings.listen!r} did not bind at once")
        result = results[0]
        if isinstance(result, Failure):
            why = getattr(result.value, "socketError", None) or result.value
            text = getattr(why, "strerror", None) or str(why)
            raise AdminListenError(f"admin.listen: cannot listen on {self.settings.listen!r}: {text}")
        self.port = result
        host = self.port.getHost()
        secure = self.settings.listen.split(":", 1)[0].lower() in ("ssl", "tls")
        where = f"{host.host}:{host.port}" if hasattr(host, "port") else str(getattr(host, "name", host))
        # The edge's listening lines have the same form.
        self.log.info("admin: listening on {where} ({protocol})", where=where, protocol="https" if secure else "http")
        if not secure and hasattr(host, "port") and not _loopback(host.host):
            self.log.warn(
                "admin: {where} is reachable beyond this host without TLS: tokens and answers cross the network"
                ' in the clear; listen on an ssl: endpoint (README: "The admin over TLS")',
                where=where,
            )
        gate = getattr(self.site.resource, "metrics", None)
        if isinstance(gate, MetricsGate) and gate.api is not None:
            gate.public, line = metrics_access(self.settings.metrics, host)
            self.log.info(line)

    def privilegedStartService(self) -> None:
        try:
            self._prepare()
            self._listen()
        except AdminListenError as e:
            # One line and exit status 1, not a traceback out of twistd
            # (which prints it: logging it too would tell it twice).
            raise SystemExit(f"spectrum: {e}") from None
        super().privilegedStartService()

    def _prepare(self) -> None:
        # Tokens (read or generated) and the API's saved rules, before the
        # port opens.
        prepare = getattr(self.site.resource, "prepare", None)
        if prepare is not None:
            try:
                prepare(self.settings)
            except (TokenError, StateError) as e:
                raise AdminListenError(str(e)) from None

    def startService(self) -> None:
        if self.port is None:
            self._prepare()
        self._listen()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def bound_port(self) -> int:
        return self.port.getHost().port
