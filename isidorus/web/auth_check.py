"""The single sign-on answer for nginx's `auth_request`: who the browser is, and whether
they may pass to the service that asks. The one rule, shared by the `/auth/check` route
of the Starlette app and by the HTTP fast path that answers it before the app
(web/fast_path.py), so that both always say the same."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from starlette.requests import cookie_parser

from isidorus.ops import accounts as ops
from isidorus.web.base import COOKIE, SessionCache

ALLOW_HEADER = "x-isidorus-allow"


@dataclass(frozen=True)
class Verdict:
    """200 with the user's name and e-mail, 401 (not logged in) or 403 (not allowed)."""

    status: int
    user: str = ""
    email: str = ""

    def headers(self) -> dict[str, str]:
        """The headers nginx passes on to the service (`auth_request_set`)."""
        if self.status != 200:
            return {}
        return {"x-isidorus-user": self.user, "x-isidorus-email": self.email}


UNAUTHORIZED = Verdict(401)
FORBIDDEN = Verdict(403)
# a name and password to check first (Argon2: slow, so not on the event loop): verify()
VERIFY = Verdict(0)


def _basic_key(authorization: str) -> bytes:
    # what a Basic header is remembered by: never the password itself
    return hashlib.sha256(authorization.encode("latin-1", "replace")).digest()


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """The name and password of an `Authorization: Basic …` header; None for another."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep and name and password else None


class AuthCheck:
    """Answers one check from the request's Cookie header (the first one, as Starlette
    reads it) and X-Isidorus-Allow, the groups the service is open to (none named: any
    member; admins always pass); without a session, from an Authorization: Basic header
    whose session verify() opened (VERIFY until then). Sessions come from the process's
    SessionCache, so a logout, a revoked session or a disabled user is seen at once on
    SQLite. Runs on the event loop (one cached lookup, or one read of the database);
    errors of the state database propagate."""

    TOKENS = 10_000  # Cookie headers whose token is remembered

    def __init__(self, sessions: SessionCache) -> None:
        self.sessions = sessions
        self.tokens: dict[str, str] = {}
        # Authorization headers already checked (by their SHA-256), and their session:
        # the password costs its Argon2id once, and the session is then seen as any other
        # (ended by a logout elsewhere, a new password, a disabled account)
        self.basic: dict[bytes, str] = {}

    def __call__(
        self, cookie: str | None, allow: str | None, authorization: str | None = None
    ) -> Verdict:
        token = self.token(cookie) if cookie else ""
        session = self.sessions.find(token) if token else None
        if session is None and authorization:
            key = _basic_key(authorization)
            known = self.basic.get(key)
            session = self.sessions.find(known) if known else None
            if session is None:
                self.basic.pop(key, None)
                return VERIFY if basic_credentials(authorization) else UNAUTHORIZED
        if session is None:
            return UNAUTHORIZED
        user = session.user
        groups = {g.strip() for g in (allow or "").split(",")} - {""}
        if groups and not (user.is_admin or groups & set(user.groups)):
            return FORBIDDEN
        return Verdict(200, user.name, user.email)

    def token(self, cookie: str) -> str:
        """The session's token in a Cookie header, as Starlette reads it (a browser sends
        the same header with each request, so it is parsed once)."""
        token = self.tokens.get(cookie)
        if token is None:
            token = cookie_parser(cookie).get(COOKIE, "")
            if len(self.tokens) >= self.TOKENS:
                self.tokens.clear()
            self.tokens[cookie] = token
        return token

    def verify(self, authorization: str, address: str) -> None:
        """Check the name and password of a Basic header (Argon2id: in a thread), and
        remember the session it opens, so that the next call answers from it."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            return
        token = ops.password_session(self.sessions.db, *credentials, address)
        if token is not None:
            if len(self.basic) >= self.TOKENS:
                self.basic.clear()
            self.basic[_basic_key(authorization)] = token
