"""
The API's requests and answers: Cloudflare's envelope and error codes, a
decoded request (L{Call}: path parameters, query, JSON body, token), the
body's checks and pagination. Nothing here knows a route.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.web.server import Request

from spectrum.admin import analytics_query as AQ

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


def respond(request: Request, status: int, body: bytes) -> bytes:
    """
    Send an API answer: the status, JSON, never cached.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if status == 401:
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="spectrum"')
    if request.method == b"HEAD":
        return b""
    return body


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
        #: the credential the request came with
        self.token: Any = None

    def list_arg(self, name: str) -> Optional[str]:
        """
        A list parameter, given once with commas or repeated (Cloudflare's
        clients repeat it: C{metrics=count&metrics=bytesIngress}).
        """
        values = self.query.get(name)
        return ",".join(values) if values else None

    def query_arg(self, name: str) -> Optional[str]:
        """
        An analytics query parameter; the list ones may be repeated.
        """
        return self.list_arg(name) if name in AQ.LIST_PARAMETERS else self.arg(name)

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
    content_type = (header(request, "content-type") or "").split(";", 1)[0].strip().lower()
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


def header(request: Request, name: str) -> Optional[str]:
    """
    A request header as text, or None if absent or empty. Bytes that are not
    UTF-8 are replaced (such a credential is then simply wrong): Twisted's
    own text accessor raises on them.
    """
    raw = request.getHeader(name.encode("ascii"))
    return raw.decode("utf-8", "replace") if raw else None
