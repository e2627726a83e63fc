"""What every view needs: the host, its state, the session of the request, pages,
cookies and checked forms."""

from __future__ import annotations

import os
import tomllib
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


def content_security_policy(form_targets: tuple[str, ...] = ()) -> str:
    """No page may load anything from another host, be framed, or post a form elsewhere;
    `form_targets` are origins a form's submission may be redirected to (browsers apply
    form-action to the redirections that follow a submission)."""
    targets = " ".join(["'self'", *form_targets])
    return (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )


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


class Views:
    """The base of every group of views, over one host's state."""

    def __init__(self, host: Host, db: Database) -> None:
        self.host = host
        self.db = db

    def session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE, "")
        return ops.session_of(self.db, token) if token else None

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
