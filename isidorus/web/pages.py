"""The pages of visitors and members: the public page, login and logout, the portal, and
the single sign-on answer for nginx."""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from isidorus.accounts.errors import InvalidInput, LoginFailed
from isidorus.accounts.sessions import Session
from isidorus.ops import accounts as ops
from isidorus.ops import oidc
from isidorus.state.db import Database
from isidorus.web.base import COOKIE, CSRF_COOKIE, Host, Views, content_security_policy
from isidorus.web.ratelimit import Throttle


def safe_next(value: str) -> str:
    """Where to go after login: a path of this host, never another site."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/portal"
    return value


class Pages(Views):
    def __init__(self, host: Host, db: Database) -> None:
        super().__init__(host, db)
        self.user_throttle = Throttle(limit=5, window=15 * 60)
        self.address_throttle = Throttle(limit=30, window=15 * 60)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.public),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/portal", self.portal),
            Route("/portal/password", self.password, methods=["POST"]),
            Route("/portal/profile", self.profile, methods=["POST"]),
            Route("/auth/check", self.auth_check),
        ]

    async def public(self, request: Request) -> Response:
        return self.page(request, "public.html")

    async def login_form(self, request: Request) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or os.urandom(16).hex()
        response = self.login_page(
            request, safe_next(request.query_params.get("next", "")), csrf=csrf
        )
        response.set_cookie(
            CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=self.host.secure_cookies
        )
        return response

    async def login(self, request: Request) -> Response:
        form = await self.form(request, None)
        name = form.get("name", "").strip().lower()
        address = request.client.host if request.client else "?"
        nxt = safe_next(form.get("next", ""))
        if self.user_throttle.blocked(name) or self.address_throttle.blocked(address):
            return self.login_page(
                request,
                nxt,
                status=429,
                csrf=form["csrf"],
                error="too many failed attempts: wait a quarter of an hour",
            )
        try:
            _user, token, _csrf = ops.login(self.db, name, form.get("password", ""))
        except LoginFailed as exc:
            self.user_throttle.failed(name)
            self.address_throttle.failed(address)
            return self.login_page(
                request, nxt, status=401, csrf=form["csrf"], error=str(exc), name=name
            )
        self.user_throttle.succeeded(name)
        response = RedirectResponse(nxt, status_code=303)
        self.set_cookie(response, token)
        return response

    def login_page(self, request: Request, nxt: str, status: int = 200, **context: Any) -> Response:
        response = self.page(request, "login.html", status=status, next=nxt, **context)
        # a login on the way to a service's sign-in ends in a redirection to that service,
        # which the form's CSP must allow
        origin = oidc.redirect_origin(self.db, nxt)
        if origin:
            response.headers["Content-Security-Policy"] = content_security_policy((origin,))
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        if session is not None:
            await self.form(request, session)
            ops.logout(self.db, request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, domain=self.host.cookie_domain)
        return response

    async def portal(self, request: Request) -> Response:
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        return self.page(request, "portal.html", session=session)

    async def password(self, request: Request) -> Response:
        session = self.member(request)
        if not isinstance(session, Session):
            return session
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
        session = self.member(request)
        if not isinstance(session, Session):
            return session
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
