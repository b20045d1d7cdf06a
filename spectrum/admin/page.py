"""
The admin site's resource tree with the API: the root that routes to the
API, the page's static files, the OpenAPI description and JSON 404s.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from spectrum.admin.activity import RecentEvents
from spectrum.admin.api import AdminAPI
from spectrum.admin.auth import Authenticator, generate, resolve
from spectrum.admin.calls import NO_ROUTE, error_body
from spectrum.admin.state import default_state_file, service_state, token_file_for
from spectrum.model import AdminSettings

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC = os.path.join(HERE, "static")
OPENAPI = os.path.join(HERE, "openapi.json")

#: The page loads nothing from anywhere else, and nothing may frame it.
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
}


class StaticFile(File):
    """
    Static files with the page's security headers, and JSON 404s.
    """

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render(request)

    def getChild(self, path: bytes, request: Request) -> Any:
        # A NUL cannot name a file; FilePath.exists() raises on it (a 500).
        if b"\x00" in path:
            return NotFound()
        return super().getChild(path, request)

    def createSimilarFile(self, path: str) -> File:
        similar = StaticFile(path, self.defaultType, self.ignoredExts, self.registry)
        similar.processors = self.processors
        similar.indexNames = self.indexNames[:]
        similar.childNotFound = NotFound()  # type: ignore[assignment]
        return similar


class NotFound(Resource):
    """
    A 404 in the API's envelope.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        status, body = error_body(404, NO_ROUTE, f"no route for {request.path.decode('utf-8', 'replace')}")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return body


class Document(Resource):
    """
    One file, served as it is (the OpenAPI description).
    """

    isLeaf = True

    def __init__(self, path: str, content_type: bytes) -> None:
        super().__init__()
        self.path = path
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        with open(self.path, "rb") as f:
            return f.read()


class Root(Resource):
    """
    C{/}: the page; C{/client/v4/...}: the API; C{/openapi.json}; C{/static/}.

    @ivar api: the L{AdminAPI}.
    """

    log = Logger()

    def __init__(self, service: Any, shared: Any = None) -> None:
        super().__init__()
        self.service = service
        state = service_state(service)
        self.state = state
        self.recent = RecentEvents(service.reactor)
        service.recorders.add(self.recent)
        self.auth = Authenticator(())
        self.api = AdminAPI(service, state, self.auth, self.recent, shared)
        static = StaticFile(STATIC)
        static.childNotFound = NotFound()  # type: ignore[assignment]
        self.static = static
        self.putChild(b"static", static)
        self.putChild(b"client", self.api)
        self.putChild(b"openapi.json", Document(OPENAPI, b"application/json"))
        #: where a generated token was written, if one was
        self.token_file: Any = None

    def prepare(self, settings: AdminSettings) -> None:
        """
        Read the configured tokens (or generate one); called when the admin
        starts.

        @raise spectrum.admin.auth.TokenError: a token cannot be read.
        """
        if settings.tokens:
            self.auth.tokens = resolve(settings.tokens)
        elif not self.auth.tokens:
            state_file = self.state.path or default_state_file(self.service.config.source)
            self.token_file = token_file_for(state_file)
            self.auth.tokens = (generate(self.token_file),)
            self.log.info("admin: no tokens configured; an edit token was written to {path}", path=self.token_file)

    def getChild(self, name: bytes, request: Request) -> Resource:
        if name == b"":
            return self.static.getChild(b"index.html", request)
        if name in (b"app.js", b"style.css", b"favicon.svg"):
            return self.static.getChild(name, request)
        return NotFound()
