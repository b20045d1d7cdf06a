"""
The admin API of a running spectrum, from the shell: where it listens and
which token to send (from the options, the environment or the config
file), and a small blocking client for its Cloudflare-shaped envelope.

The address is C{--admin URL}, else C{SPECTRUM_ADMIN}, else the config
file's C{admin.listen} (with C{--config}), else the default admin address.
The token is C{--token}, else C{SPECTRUM_TOKEN}, else the token file a
spectrum without C{admin.tokens} generates beside its state file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Optional

DEFAULT_ADMIN = "http://127.0.0.1:8080"


class CommandError(Exception):
    """
    What the command prints, after C{spectrum: }, before it exits with 1.
    """


class AdminConfig:
    """
    The admin settings of a config file, read (not checked: the command may
    run as a user who cannot read the certificates the file names).
    """

    def __init__(self, path: Optional[str]) -> None:
        from spectrum.config import ConfigError, read

        self.path = path
        self.admin: Dict[str, Any] = {}
        if path is None:
            return
        try:
            document = read(path)
        except ConfigError as e:
            raise CommandError(str(e)) from None
        admin = document.get("admin") if isinstance(document, dict) else None
        if isinstance(admin, dict):
            self.admin = admin

    def url(self) -> Optional[str]:
        listen = self.admin.get("listen")
        if self.path is None or not self.admin:
            return None
        if not isinstance(listen, str):
            return DEFAULT_ADMIN
        return endpoint_url(listen)

    def token_file(self) -> str:
        from spectrum.admin.state import default_state_file, token_file_for

        state_file = self.admin.get("state_file")
        if isinstance(state_file, str) and self.path is not None:
            base = os.path.dirname(os.path.abspath(self.path))
            state_file = os.path.normpath(os.path.join(base, os.path.expanduser(state_file)))
        else:
            state_file = default_state_file(self.path)
        return token_file_for(state_file)


def endpoint_url(listen: str) -> str:
    """
    The URL that reaches a Twisted server endpoint (C{admin.listen}): TCP
    as C{http}, SSL as C{https}; a wildcard interface through loopback.

    @raise CommandError: an endpoint the command cannot reach (a UNIX
        socket, say).
    """
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", listen)]
    kind = parts[0].lower()
    positional = [part for part in parts[1:] if "=" not in part]
    named = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    port = named.get("port") or (positional[0] if positional else "")
    if kind not in ("tcp", "tcp6", "ssl") or not port.isdigit():
        raise CommandError(f"admin.listen {listen!r}: give --admin URL (the command reaches tcp and ssl endpoints)")
    host = named.get("interface", "")
    if host in ("", "0.0.0.0"):
        host = "::1" if kind == "tcp6" else "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}"


def admin_url(given: Optional[str], config: AdminConfig, environ: Mapping[str, str]) -> str:
    """
    The admin's base URL (no trailing slash).
    """
    url = given or environ.get("SPECTRUM_ADMIN") or config.url() or DEFAULT_ADMIN
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def admin_token(given: Optional[str], config: AdminConfig, environ: Mapping[str, str]) -> str:
    """
    The token to send.

    @raise CommandError: none was given and no token file can be read.
    """
    token = given or environ.get("SPECTRUM_TOKEN")
    if token:
        return token.strip()
    if config.admin.get("tokens"):
        raise CommandError(
            f"no admin token: {config.path} names the admin's tokens (admin.tokens); give one with --token or"
            " SPECTRUM_TOKEN"
        )
    path = config.token_file()
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except FileNotFoundError:
        raise CommandError(
            "no admin token: give --token, set SPECTRUM_TOKEN, or --config FILE of a spectrum that generated its"
            f" token (no token file at {path})"
        ) from None
    except OSError as e:
        raise CommandError(f"cannot read the admin token file {path}: {e.strerror or e}") from None
    if not token:
        raise CommandError(f"the admin token file {path} is empty")
    return token


class AdminClient:
    """
    Blocking calls to C{/client/v4} with a bearer token; each answers the
    envelope's C{result}, or raises L{CommandError} with the API's message.
    """

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 10.0,
        cafile: Optional[str] = None,
        insecure: bool = False,
    ) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.context: Optional[ssl.SSLContext] = None
        if url.startswith("https:"):
            self.context = ssl.create_default_context(cafile=cafile)
            if insecure:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def call(self, method: str, path: str, body: Any = None, query: Optional[Dict[str, Any]] = None) -> Any:
        return self.envelope(method, path, body, query)["result"]

    def envelope(self, method: str, path: str, body: Any = None, query: Optional[Dict[str, Any]] = None) -> Any:
        target = self.url + "/client/v4" + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(target, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                status, content = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, content = e.code, e.read()
        except urllib.error.URLError as e:
            reason = e.reason
            text = getattr(reason, "strerror", None) or str(reason)
            raise CommandError(f"cannot reach {self.url}: {text}") from None
        except (socket.timeout, TimeoutError):
            raise CommandError(f"cannot reach {self.url}: no answer within {self.timeout:g} seconds") from None
        except OSError as e:
            raise CommandError(f"cannot reach {self.url}: {e.strerror or e}") from None
        try:
            document = json.loads(content)
        except ValueError:
            raise CommandError(f"{self.url} answered {status} with something other than JSON") from None
        if not isinstance(document, dict) or "success" not in document:
            raise CommandError(f"{self.url} answered {status} with something other than the API's envelope")
        if not document["success"] or status >= 400:
            errors = document.get("errors") or [{}]
            message = "; ".join(str(error.get("message", "")) for error in errors if isinstance(error, dict))
            raise CommandError(f"{self.url} answered {status}: {message or 'no message'}")
        return document

    def list(self, path: str, query: Optional[Dict[str, Any]] = None) -> List[Any]:
        """
        Every item of a paginated list, page by page.
        """
        items: List[Any] = []
        page = 1
        while True:
            document = self.envelope("GET", path, query=dict(query or {}, page=page, per_page=1000))
            items.extend(document["result"] or [])
            info = document.get("result_info") or {}
            if page >= int(info.get("total_pages", 1)):
                return items
            page += 1

    def zone(self) -> Dict[str, Any]:
        """
        The zone this spectrum serves (its id names the API's paths).
        """
        zones = self.call("GET", "/zones")
        if not zones:
            raise CommandError(f"{self.url} serves no zone")
        zone: Dict[str, Any] = zones[0]
        return zone
