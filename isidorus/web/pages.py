"""The pages of visitors and members: the public page, login and logout, the portal, and
the single sign-on answer for nginx."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from isidorus.accounts import totp
from isidorus.accounts.errors import InvalidInput, LoginFailed, NoSuchAccount
from isidorus.accounts.sessions import Session
from isidorus.errors import NotFoundError
from isidorus.ops import accounts as ops
from isidorus.ops import monitoring, oidc
from isidorus.ops import service_access as access
from isidorus.state.db import Database
from isidorus.web import i18n
from isidorus.web.auth_check import ALLOW_HEADER, UNAUTHORIZED, VERIFY, AuthCheck
from isidorus.web.base import (
    COOKIE,
    CSRF_COOKIE,
    Host,
    StateMemo,
    Views,
    content_security_policy,
    safe_next,
    safe_next_url,
)
from isidorus.web.i18n import gettext, message_of
from isidorus.web.status import Status, StatusBoard

__all__ = ["Pages", "safe_next", "safe_next_url"]

PENDING_COOKIE = "isidorus_pending"


class Throttled(Exception):
    """Logins are refused for a while (carries what the login page needs)."""

    def __init__(self, csrf: str, next: str) -> None:
        self.csrf, self.next = csrf, next


class Pages(Views):
    def __init__(self, host: Host, db: Database, board: StatusBoard) -> None:
        super().__init__(host, db)
        self.board = board
        self.memo = StateMemo(db)
        self.auth = AuthCheck(self.sessions)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.public),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/login/code", self.login_code, methods=["POST"]),
            Route("/portal/totp", self.totp_setup, methods=["GET"]),
            Route("/portal/totp", self.totp_on, methods=["POST"]),
            Route("/portal/totp/off", self.totp_off, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/portal", self.portal),
            Route("/portal/password", self.password, methods=["POST"]),
            Route("/portal/profile", self.profile, methods=["POST"]),
            Route("/portal/app-passwords", self.app_password_add, methods=["POST"]),
            Route(
                "/portal/app-passwords/{id:int}/revoke", self.app_password_revoke, methods=["POST"]
            ),
            Route("/auth/check", self.auth_check),
            Route("/lang/{code}", self.switch_language),
        ]

    async def public(self, request: Request) -> Response:
        every = self.memo.get("services", lambda: access.installed_services(self.db))
        found = [s for s in every if s.state == "installed"]
        if not found or self.board.warm():
            statuses = self.board.cached(found)
        else:  # the first visit of this process waits for the services' check
            statuses = await run_in_threadpool(self.board.cached, found)
        shown = [(s, statuses.get(s.id, Status("unknown", ""))) for s in found]
        offsite = self.memo.get("offsite", lambda: monitoring.last_offsite_copy(self.db))
        return self.page(request, "public.html", services=shown, offsite=offsite)

    async def login_form(self, request: Request) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or os.urandom(16).hex()
        response = self.login_page(
            request,
            "login.html",
            csrf=csrf,
            next=self.next_of(request.query_params.get("next", "")),
        )
        response.set_cookie(
            CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=self.host.secure_cookies
        )
        return response

    async def attempt(self, request: Request) -> tuple[dict[str, str], str, str, str]:
        """The posted login form (its CSRF checked), the name, the address and where to
        go next; raises Throttled while logins are refused for the name or address."""
        form = await self.form(request, None)
        name = form.get("name", "").strip().lower()
        address = request.client.host if request.client else "?"
        nxt = self.next_of(form.get("next", ""))
        if ops.login_blocked(self.db, name, address):
            raise Throttled(form["csrf"], nxt)
        return form, name, address, nxt

    def next_of(self, value: str) -> str:
        """Where the login goes next: a page here, or a service on the host's domain."""
        return safe_next_url(value, self.host.domain, allow_http=not self.host.secure_cookies)

    def throttled(self, request: Request, exc: Throttled) -> Response:
        return self.login_page(
            request,
            "login.html",
            status=429,
            csrf=exc.csrf,
            next=exc.next,
            error=gettext("too many failed attempts: wait a quarter of an hour"),
        )

    async def login(self, request: Request) -> Response:
        try:
            form, name, address, nxt = await self.attempt(request)
        except Throttled as exc:
            return self.throttled(request, exc)
        try:
            result = ops.login(self.db, name, form.get("password", ""))
        except LoginFailed as exc:
            ops.login_failed(self.db, name, address)
            return self.login_page(
                request,
                "login.html",
                status=401,
                csrf=form["csrf"],
                next=nxt,
                error=message_of(exc),
                name=name,
            )
        if result.needs_code:
            # the throttle is not reset: only a whole login (password and code) does that
            response = self.login_page(
                request, "login_code.html", csrf=form["csrf"], next=nxt, name=name
            )
            response.set_cookie(
                PENDING_COOKIE,
                result.token,
                max_age=300,
                path="/login",
                httponly=True,
                samesite="strict",
                secure=self.host.secure_cookies,
            )
            return response
        return self.logged_in(name, result.token, nxt)

    async def login_code(self, request: Request) -> Response:
        try:
            form, name, address, nxt = await self.attempt(request)
        except Throttled as exc:
            return self.throttled(request, exc)
        pending = request.cookies.get(PENDING_COOKIE, "")
        try:
            result = ops.login_code(self.db, name, pending, form.get("code", ""))
        except LoginFailed as exc:
            ops.login_failed(self.db, name, address)
            again = str(exc).startswith("wrong code")
            return self.login_page(
                request,
                "login_code.html" if again else "login.html",
                status=401,
                csrf=form["csrf"],
                next=nxt,
                name=name,
                error=message_of(exc),
            )
        response = self.logged_in(name, result.token, nxt)
        response.delete_cookie(PENDING_COOKIE, path="/login")
        return response

    def logged_in(self, name: str, token: str, nxt: str) -> Response:
        ops.login_succeeded(self.db, name)
        response = RedirectResponse(nxt, status_code=303)
        self.set_cookie(response, token)
        return response

    def login_page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        """The login form or its second step, on the way to `context["next"]`."""
        response = self.page(request, template, status=status, **context)
        nxt = context["next"]
        # a login on the way to a service ends in a redirection to it (its sign-in's
        # redirect URI, or the address nginx sent the visitor from), which the form's CSP
        # must allow: browsers apply form-action to the redirections after a submission
        origins = [oidc.redirect_origin(self.db, nxt)]
        if not nxt.startswith("/"):
            target = urlsplit(nxt)
            origins.append(f"{target.scheme.lower()}://{target.netloc.lower()}")
        allowed = tuple(dict.fromkeys(o for o in origins if o))
        if allowed:
            response.headers["Content-Security-Policy"] = content_security_policy(allowed)
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
        return self.portal_page(request, session)

    def portal_page(
        self,
        request: Request,
        session: Session,
        status: int = 200,
        error: str = "",
        new_app_password: tuple[str, str] | None = None,
    ) -> Response:
        every = self.memo.get("services", lambda: access.installed_services(self.db))
        mine = access.usable_by(session.user, every)
        return self.page(
            request,
            "portal.html",
            status=status,
            session=session,
            error=error,
            services=mine,
            # kept while the state is unchanged, like the services: the portal is read often
            app_passwords=self.memo.get(
                f"app-passwords:{session.user.name}",
                lambda: ops.list_app_passwords(self.db, session.user.name),
            ),
            new_app_password=new_app_password,
        )

    async def app_password_add(self, request: Request) -> Response:
        """A new app password, shown on the page this once (never in an address)."""
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        form = await self.form(request, session)
        try:
            made, secret = ops.add_app_password(self.db, session.user.name, form.get("label", ""))
        except InvalidInput as exc:
            return self.portal_page(request, session, status=400, error=message_of(exc))
        response = self.portal_page(request, session, new_app_password=(made.label, secret))
        response.headers["Cache-Control"] = "no-store"  # a secret: not kept by the browser
        return response

    async def app_password_revoke(self, request: Request) -> Response:
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        await self.form(request, session)
        try:
            ops.remove_app_password(self.db, session.user.name, request.path_params["id"])
        except NoSuchAccount:
            return self.portal_page(
                request, session, status=404, error=gettext("there is no such app password")
            )
        return RedirectResponse("/portal?revoked=1", status_code=303)

    async def password(self, request: Request) -> Response:
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        form = await self.form(request, session)
        if form.get("new") != form.get("repeat"):
            return self.portal_page(
                request,
                session,
                status=400,
                error=gettext("the two new passwords differ"),
            )
        try:
            token, _csrf = ops.change_own_password(
                self.db, session.user.name, form.get("current", ""), form.get("new", "")
            )
        except LoginFailed:
            return self.portal_page(
                request,
                session,
                status=400,
                error=gettext("the current password is wrong"),
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
            ops.update_profile(
                self.db,
                session.user.name,
                session.user.name,
                fullname=form.get("fullname", ""),
                email=form.get("email", ""),
            )
        except InvalidInput as exc:
            return self.portal_page(request, session, status=400, error=message_of(exc))
        return RedirectResponse("/portal?saved=1", status_code=303)

    async def totp_setup(self, request: Request, error: str = "", status: int = 200) -> Response:
        """The page that shows a new secret (and its QR code) to scan."""
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        secret = request.query_params.get("secret") or totp.new_secret()
        uri = totp.setup_uri(secret, session.user.name, self.host.name)
        response = self.page(
            request,
            "totp.html",
            status=status,
            session=session,
            secret=secret,
            uri=uri,
            qr=totp.qr_svg(uri),
            error=error,
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def totp_on(self, request: Request) -> Response:
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        form = await self.form(request, session)
        try:
            ops.turn_on_totp(
                self.db, session.user.name, form.get("secret", ""), form.get("code", "")
            )
        except InvalidInput as exc:
            return self.page(
                request,
                "totp.html",
                status=400,
                session=session,
                secret=form.get("secret", ""),
                uri=totp.setup_uri(form.get("secret", ""), session.user.name, self.host.name)
                if form.get("secret")
                else "",
                qr="",
                error=message_of(exc),
            )
        return RedirectResponse("/portal?totp=on", status_code=303)

    async def totp_off(self, request: Request) -> Response:
        session = self.member(request)
        if not isinstance(session, Session):
            return session
        form = await self.form(request, session)
        try:
            ops.turn_off_totp(
                self.db, session.user.name, session.user.name, form.get("password", "")
            )
        except LoginFailed:
            return self.portal_page(
                request,
                session,
                status=400,
                error=gettext("the password is wrong: the second factor stays on"),
            )
        return RedirectResponse("/portal?totp=off", status_code=303)

    async def switch_language(self, request: Request) -> Response:
        """A visitor chooses a language: kept in a cookie for a year, then back to the page
        they were on (a path of this host only)."""
        code = request.path_params["code"]
        if code not in i18n.LANGUAGES:
            raise NotFoundError(gettext("there is no language %(code)s here") % {"code": code})
        response = RedirectResponse(
            safe_next(request.query_params.get("next", ""), "/"), status_code=303
        )
        response.set_cookie(
            i18n.COOKIE,
            code,
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="lax",
            secure=self.host.secure_cookies,
        )
        return response

    async def auth_check(self, request: Request) -> Response:
        """nginx auth_request: 200 for a permitted user (named in X-Isidorus-User), 401 when
        not logged in, 403 when logged in but not in a group the service allows (nginx
        sends them in X-Isidorus-Allow). `isidorus serve` answers most of these before the
        app (web/fast_path.py), by the same rule."""
        cookie, allow = request.headers.get("cookie"), request.headers.get(ALLOW_HEADER)
        authorization = request.headers.get("authorization")
        verdict = self.auth(cookie, allow, authorization)
        if verdict is VERIFY and authorization:
            # nginx passes the client's address (X-Forwarded-For): logins are throttled by it
            address = request.client.host if request.client else "?"
            await run_in_threadpool(self.auth.verify, authorization, address)
            verdict = self.auth(cookie, allow, authorization)
        if verdict is VERIFY:
            verdict = UNAUTHORIZED
        return Response(status_code=verdict.status, headers=verdict.headers())
