"""The Starlette application: the groups of views, security headers, the one error handler."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.web.admin import Admin
from isidorus.web.api import api_error, create_api, is_api
from isidorus.web.base import COOKIE, HERE, Host, templates
from isidorus.web.pages import Pages

__all__ = ["COOKIE", "create_app"]


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


async def handle_error(request: Request, exc: Exception) -> Response:
    """The one handler: JSON for the API, a page for browsers."""
    if is_api(request.url.path):
        return await api_error(request, exc)
    headers = None
    if isinstance(exc, IsidorusError):
        status, message = exc.http_status, str(exc)
    elif isinstance(exc, HTTPException):
        status, headers = exc.status_code, exc.headers
        message = {404: "there is no such page", 405: "this page cannot do that"}.get(
            status, str(exc.detail)
        )
    else:
        status, message = 500, "an internal error occurred"
    return templates.TemplateResponse(
        request,
        "error.html",
        {"message": message, "status": status, "host": None, "session": None},
        status_code=status,
        headers=headers,
    )


def create_app(data_dir: str) -> Starlette:
    host = Host.load(data_dir)
    db = ops.open_state(data_dir)
    routes: list[BaseRoute] = [
        *Pages(host, db).routes(),
        *Admin(host, db).routes(),
        Mount("/api", app=create_api(db)),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            IsidorusError: handle_error,
            HTTPException: handle_error,
            500: handle_error,
        },
    )
    app.state.db = db
    return app
