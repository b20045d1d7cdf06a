"""
Who may use the admin API: bearer tokens with a permission (C{read} or
C{edit}), also accepted as Cloudflare's C{X-Auth-Key} (with C{X-Auth-Email},
which must match the token's email when it has one).

Tokens come from the config (C{admin.tokens}: the token itself, an
environment variable or a file). With none configured, a random edit token
is generated at start and written, readable by its owner only, to a file
next to the state file, so an admin site never runs without auth.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections import OrderedDict
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

import attr

from spectrum.fileio import read_regular, write_atomically
from spectrum.model import AdminToken

READ = "read"
EDIT = "edit"
PERMISSIONS = (READ, EDIT)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Token:
    """
    One credential of the admin API.

    @ivar secret: the token as sent by clients.
    @ivar email: when set, C{X-Auth-Email} must match it (case-insensitive).
    """

    name: str
    secret: str = attr.ib(repr=False)
    permissions: str = READ
    email: Optional[str] = None

    @property
    def can_edit(self) -> bool:
        return self.permissions == EDIT


class TokenError(Exception):
    """
    A configured token cannot be read; C{str()} is one line naming it.
    """


class AuthError(Exception):
    """
    A request that may not go on.

    @ivar status: 401 (who are you?) or 403 (not allowed).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def resolve(specs: Sequence[AdminToken], environ: Mapping[str, str] = os.environ) -> Tuple[Token, ...]:
    """
    The tokens named by C{specs}, read from the config, the environment or
    their files.

    @raise TokenError: one cannot be read, or is empty.
    """
    tokens = []
    for index, spec in enumerate(specs):
        where = f"admin.tokens[{index}] ({spec.name})"
        if spec.token is not None:
            secret = spec.token
        elif spec.token_env is not None:
            if spec.token_env not in environ:
                raise TokenError(f"{where}: environment variable {spec.token_env} is not set")
            secret = environ[spec.token_env]
        else:
            assert spec.token_file is not None
            try:
                secret = read_regular(spec.token_file).decode("utf-8")
            except OSError as e:
                raise TokenError(f"{where}: cannot read {spec.token_file}: {e.strerror or e}") from None
        secret = secret.strip()
        if len(secret) < 16:
            raise TokenError(f"{where}: a token needs at least 16 characters")
        tokens.append(Token(spec.name, secret, spec.permissions, spec.email))
    return tuple(tokens)


def generate(path: str) -> Token:
    """
    A new random edit token, written to C{path} (mode 0600, replacing what
    was there, through L{write_atomically}).
    """
    secret = secrets.token_urlsafe(32)
    write_atomically(path, secret + "\n")
    return Token("generated", secret, EDIT)


class Authenticator:
    """
    Checks a request's credentials against the tokens, in constant time.
    """

    def __init__(self, tokens: Iterable[Token]) -> None:
        self.tokens = tuple(tokens)

    def _find(self, secret: str) -> Optional[Token]:
        given = secret.encode("utf-8", "surrogateescape")
        found = None
        # Compare with every token, so timing tells nothing of which matched.
        for token in self.tokens:
            if hmac.compare_digest(given, token.secret.encode("utf-8")):
                found = token
        return found

    def authenticate(self, headers: Mapping[str, Optional[str]], mutation: bool) -> Token:
        """
        The token that C{headers} carry (C{authorization}, C{x-auth-key},
        C{x-auth-email}, lower-case keys).

        @raise AuthError: none, a wrong one, or a read token for a mutation.
        """
        authorization = headers.get("authorization")
        key = headers.get("x-auth-key")
        if authorization:
            scheme, _, secret = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise AuthError(401, "Authorization must be 'Bearer <token>'")
            token = self._find(secret.strip())
            if token is None:
                raise AuthError(401, "invalid token")
        elif key:
            email = (headers.get("x-auth-email") or "").strip()
            if not email:
                raise AuthError(401, "X-Auth-Key needs X-Auth-Email")
            token = self._find(key.strip())
            if token is None:
                raise AuthError(401, "invalid X-Auth-Key")
            if token.email is not None and token.email.lower() != email.lower():
                raise AuthError(401, "X-Auth-Email does not match this key")
        else:
            raise AuthError(401, "no credentials: send 'Authorization: Bearer <token>' or X-Auth-Email and X-Auth-Key")
        if mutation and not token.can_edit:
            raise AuthError(403, f"token {token.name!r} may only read")
        return token


class Backoff:
    """
    Slows down guessing: after C{free} wrong credentials from one source
    address, that address is refused (without checking what it sends) for
    C{base} seconds, doubling with each further failure up to C{ceiling}.
    A success forgets the address. At most C{max_sources} addresses are
    remembered (the least recently failing is forgotten first), so a flood
    of sources cannot grow memory without bound.

    @param clock: returns the time in seconds (C{reactor.seconds}).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        free: int = 20,
        base: float = 1.0,
        ceiling: float = 60.0,
        max_sources: int = 10000,
    ) -> None:
        self.clock = clock
        self.free = free
        self.base = base
        self.ceiling = ceiling
        self.max_sources = max_sources
        #: source -> [failures, refused until]
        self._sources: OrderedDict[str, List[float]] = OrderedDict()

    def retry_after(self, source: str) -> float:
        """
        Seconds until C{source} may try again; 0 when it may now.
        """
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        return max(0.0, entry[1] - self.clock())

    def failed(self, source: str) -> None:
        """
        C{source} sent wrong credentials.
        """
        entry = self._sources.pop(source, None)
        if entry is None:
            entry = [0, 0.0]
        entry[0] += 1
        over = entry[0] - self.free
        if over > 0:
            entry[1] = self.clock() + min(self.ceiling, self.base * 2 ** min(over - 1, 32))
        self._sources[source] = entry
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)

    def succeeded(self, source: str) -> None:
        """
        C{source} authenticated: forget its failures.
        """
        self._sources.pop(source, None)

    def __len__(self) -> int:
        return len(self._sources)
