"""What every view needs: the host, its state, the session of the request, pages,
cookies and checked forms."""

from __future__ import annotations

import os
import time
import tomllib
import weakref
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from isidorus.accounts.sessions import Session
from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.state.db import Database

HERE = os.path.dirname(__file__)
COOKIE = "isidorus_session"
CSRF_COOKIE = "isidorus_csrf"
templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))


class CsrfError(IsidorusError):
    http_status = 403


class Forbidden(IsidorusError):
    http_status = 403


@dataclass
class Host:
    """What the web needs to know of the host, from DATA_DIR/isidorus.toml."""

    data_dir: str
    domain: str = "localhost"
    name: str = "isidorus"
    contact: str = ""
    hosted_at: str = ""
    backups_at: str = ""
    secure_cookies: bool = False

    @classmethod
    def load(cls, data_dir: str) -> Host:
        path = os.path.join(data_dir, ops.CONFIG_NAME)
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        known = {
            k: doc[k]
            for k in ("domain", "name", "contact", "hosted_at", "backups_at", "secure_cookies")
            if k in doc
        }
        return cls(data_dir=data_dir, **known)

    @property
    def cookie_domain(self) -> str | None:
        # shared with the services on subdomains (not possible for a bare "localhost")
        return self.domain if "." in self.domain else None


class SessionCache:
    """Sessions already found, so that a burst of `/auth/check` (a page of a service and
    its assets) does not query the database each time. On SQLite an entry is good while
    the database's data_version is unchanged: any commit, by any process, empties it at
    once. Elsewhere, a write through this process empties it, and a change made by
    another process is seen within FALLBACK_TTL seconds."""

    TTL = 60.0  # and the session's own expiry is checked again at least this often
    FALLBACK_TTL = 1.0
    SIZE = 10_000

    _of: weakref.WeakKeyDictionary[Database, SessionCache] = weakref.WeakKeyDictionary()

    def __init__(self, db: Database) -> None:
        self.db = db
        self.entries: dict[str, tuple[Session, float, tuple[int, int]]] = {}

    @classmethod
    def of(cls, db: Database) -> SessionCache:
        """The one cache of `db`, shared by every group of views."""
        cache = cls._of.get(db)
        if cache is None:
            cache = cls._of[db] = cls(db)
        return cache

    def find(self, token: str) -> Session | None:
        now = time.monotonic()
        # taken before the lookup, so that a commit during it makes the entry stale
        version = self.db.data_version()
        mark = (self.db.generation, -1 if version is None else version)
        ttl = self.FALLBACK_TTL if version is None else self.TTL
        hit = self.entries.get(token)
        if hit is not None and hit[2] == mark and now - hit[1] < ttl:
            return hit[0]
        session = ops.session_of(self.db, token)
        if session is None:
            self.entries.pop(token, None)
            return None
        if len(self.entries) >= self.SIZE:
            self.entries.clear()
        self.entries[token] = (session, now, mark)
        return session


class Views:
    """The base of every group of views, over one host's state."""

    def __init__(self, host: Host, db: Database) -> None:
        self.host = host
        self.db = db
        self.sessions = SessionCache.of(db)

    def session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE, "")
        return self.sessions.find(token) if token else None

    def page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("session", self.session(request))
        return templates.TemplateResponse(
            request, template, {"host": self.host, **context}, status_code=status
        )

    def set_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=14 * 24 * 3600,
            httponly=True,
            samesite="lax",
            secure=self.host.secure_cookies,
            domain=self.host.cookie_domain,
        )

    async def form(self, request: Request, session: Session | None) -> dict[str, str]:
        """The posted form, once its CSRF token matches the session's (or, before login,
        the double-submit cookie)."""
        data = {k: str(v) for k, v in (await request.form()).items()}
        expected = session.csrf if session else request.cookies.get(CSRF_COOKIE, "")
        if not expected or data.get("csrf") != expected:
            raise CsrfError("the form has expired: reload the page and try again")
        return data

    def member(self, request: Request) -> Session | Response:
        """The session of a logged-in member, or the redirection to the login page."""
        session = self.session(request)
        if session is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return session

    def admin(self, request: Request) -> Session | Response:
        """The session of an admin, or the answer for anyone else (login, or 403)."""
        session = self.member(request)
        if isinstance(session, Session) and not session.user.is_admin:
            raise Forbidden("this page is for the host's admins")
        return session
