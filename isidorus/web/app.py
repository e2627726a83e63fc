"""The Starlette application: the groups of views, security headers, the one error handler."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.web.admin import Admin
from isidorus.web.base import COOKIE, HERE, Host, content_security_policy, templates
from isidorus.web.oidc import Oidc
from isidorus.web.pages import Pages

__all__ = ["COOKIE", "create_app"]


class SecurityHeaders(BaseHTTPMiddleware):
    """No page may load anything from another host, be framed, or be sniffed."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", content_security_policy())
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


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
    db = ops.open_state(data_dir)
    routes: list[BaseRoute] = [
        *Pages(host, db).routes(),
        *Admin(host, db).routes(),
        *Oidc(host, db).routes(),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={IsidorusError: handle_error, 500: handle_error},
    )
    app.state.db = db
    return app
