"""The Starlette application: routes, security headers, and the one error handler."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from isidorus.accounts.errors import InvalidInput, LoginFailed
from isidorus.accounts.sessions import Session
from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.state.db import Database
from isidorus.web.ratelimit import Throttle

HERE = os.path.dirname(__file__)
COOKIE = "isidorus_session"
templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))


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


class SecurityHeaders(BaseHTTPMiddleware):
    """No page may load anything from another host, be framed, or be sniffed."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


class Web:
    """The views, over one host's state."""

    def __init__(self, host: Host, db: Database) -> None:
        self.host = host
        self.db = db
        self.user_throttle = Throttle(limit=5, window=15 * 60)
        self.address_throttle = Throttle(limit=30, window=15 * 60)

    # -- helpers
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
        domain = self.host.domain
        response.set_cookie(
            COOKIE,
            token,
            max_age=14 * 24 * 3600,
            httponly=True,
            samesite="lax",
            secure=self.host.secure_cookies,
            # shared with the services on subdomains (not possible for a bare "localhost")
            domain=domain if "." in domain else None,
        )

    async def form(self, request: Request, session: Session | None) -> dict[str, str]:
        """The posted form, once its CSRF token matches the session's (or, before login,
        the double-submit cookie)."""
        data = {k: str(v) for k, v in (await request.form()).items()}
        expected = session.csrf if session else request.cookies.get("isidorus_csrf", "")
        if not expected or data.get("csrf") != expected:
            raise CsrfError("the form has expired: reload the page and try again")
        return data

    # -- pages
    async def public(self, request: Request) -> Response:
        return self.page(request, "public.html")

    async def login_form(self, request: Request) -> Response:
        csrf = request.cookies.get("isidorus_csrf") or os.urandom(16).hex()
        response = self.page(
            request, "login.html", csrf=csrf, next=request.query_params.get("next", "/portal")
        )
        response.set_cookie(
            "isidorus_csrf", csrf, httponly=True, samesite="strict", secure=self.host.secure_cookies
        )
        return response

    async def login(self, request: Request) -> Response:
        form = await self.form(request, None)
        name = form.get("name", "").strip().lower()
        address = request.client.host if request.client else "?"
        nxt = form.get("next", "/portal")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/portal"  # never send a browser to another site after login
        if self.user_throttle.blocked(name) or self.address_throttle.blocked(address):
            return self.page(
                request,
                "login.html",
                status=429,
                csrf=form["csrf"],
                next=nxt,
                error="too many failed attempts: wait a quarter of an hour",
            )
        try:
            _user, token, _csrf = ops.login(self.db, name, form.get("password", ""))
        except LoginFailed as exc:
            self.user_throttle.failed(name)
            self.address_throttle.failed(address)
            return self.page(
                request,
                "login.html",
                status=401,
                csrf=form["csrf"],
                next=nxt,
                error=str(exc),
                name=name,
            )
        self.user_throttle.succeeded(name)
        response = RedirectResponse(nxt, status_code=303)
        self.set_cookie(response, token)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        if session is not None:
            await self.form(request, session)
            ops.logout(self.db, request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, domain=self.host.domain if "." in self.host.domain else None)
        return response

    async def portal(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return RedirectResponse("/login?next=/portal", status_code=303)
        return self.page(request, "portal.html", session=session)

    async def password(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return RedirectResponse("/login?next=/portal", status_code=303)
        form = await self.form(request, session)
        if form.get("new") != form.get("repeat"):
            return self.page(
                request,
                "portal.html",
                status=400,
                session=session,
                error="the two new passwords differ",
            )
        try:
            token, _csrf = ops.change_own_password(
                self.db, session.user.name, form.get("current", ""), form.get("new", "")
            )
        except LoginFailed:
            return self.page(
                request,
                "portal.html",
                status=400,
                session=session,
                error="the current password is wrong",
            )
        response = RedirectResponse("/portal?changed=1", status_code=303)
        self.set_cookie(response, token)
        return response

    async def profile(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return RedirectResponse("/login?next=/portal", status_code=303)
        form = await self.form(request, session)
        try:
            ops.update_own_profile(
                self.db,
                session.user.name,
                fullname=form.get("fullname", ""),
                email=form.get("email", ""),
            )
        except InvalidInput as exc:
            return self.page(request, "portal.html", status=400, session=session, error=str(exc))
        return RedirectResponse("/portal?saved=1", status_code=303)

    def admin_session(self, request: Request) -> Session | Response:
        """The session of an admin, or the answer for anyone else (login, or 403)."""
        session = self.session(request)
        if session is None:
            return RedirectResponse("/login?next=/admin", status_code=303)
        if not session.user.is_admin:
            raise Forbidden("this page is for the host's admins")
        return session

    async def admin(self, request: Request) -> Response:
        session = self.admin_session(request)
        if isinstance(session, Response):
            return session
        return self.page(
            request,
            "admin.html",
            session=session,
            users=ops.list_users(self.db),
            groups=ops.list_groups(self.db),
        )

    async def admin_user_state(self, request: Request) -> Response:
        session = self.admin_session(request)
        if isinstance(session, Response):
            return session
        form = await self.form(request, session)
        name = request.path_params["name"]
        if name == session.user.name:
            raise Forbidden("you cannot disable your own account")
        ops.set_disabled(self.db, session.user.name, name, form.get("state") == "disabled")
        return RedirectResponse("/admin", status_code=303)

    async def auth_check(self, request: Request) -> Response:
        """nginx auth_request: 200 for a permitted user (named in X-Isidorus-User), 401 when
        not logged in, 403 when logged in but not in a group the service allows (nginx
        sends them in X-Isidorus-Allow)."""
        session = self.session(request)
        if session is None:
            return Response(status_code=401)
        allow = [
            g.strip() for g in request.headers.get("x-isidorus-allow", "").split(",") if g.strip()
        ]
        user = session.user
        if allow and not (user.is_admin or set(allow) & set(user.groups)):
            return Response(status_code=403)
        return Response(
            status_code=200, headers={"X-Isidorus-User": user.name, "X-Isidorus-Email": user.email}
        )


class CsrfError(IsidorusError):
    http_status = 403


class Forbidden(IsidorusError):
    http_status = 403


async def handle_error(request: Request, exc: Exception) -> Response:
    """The one handler: JSON for the API, a page for browsers."""
    status = exc.http_status if isinstance(exc, IsidorusError) else 500
    message = str(exc) if isinstance(exc, IsidorusError) else "an internal error occurred"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"message": message, "status": status, "host": None, "session": None},
        status_code=status,
    )


def create_app(data_dir: str) -> Starlette:
    host = Host.load(data_dir)
    web = Web(host, ops.open_state(data_dir))
    routes = [
        Route("/", web.public),
        Route("/login", web.login_form, methods=["GET"]),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/portal", web.portal),
        Route("/portal/password", web.password, methods=["POST"]),
        Route("/portal/profile", web.profile, methods=["POST"]),
        Route("/admin", web.admin),
        Route("/admin/users/{name}/state", web.admin_user_state, methods=["POST"]),
        Route("/auth/check", web.auth_check),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={IsidorusError: handle_error, 500: handle_error},
    )
    app.state.web = web
    return app
