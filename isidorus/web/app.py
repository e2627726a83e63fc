"""The Starlette application: the groups of views, security headers, the one error handler."""

from __future__ import annotations

import gc
import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.ops import services
from isidorus.ops.monitoring import StoreWatch
from isidorus.web import i18n
from isidorus.web.admin import Admin
from isidorus.web.api import api_error, create_api, is_api
from isidorus.web.backups import BackupsAdmin
from isidorus.web.base import COOKIE, HERE, Host, content_security_policy, templates
from isidorus.web.i18n import gettext
from isidorus.web.jobs import Jobs
from isidorus.web.metrics import Metrics
from isidorus.web.oidc import Oidc
from isidorus.web.pages import Pages
from isidorus.web.services import ServicesAdmin
from isidorus.web.status import ListServices, StatusBoard

__all__ = ["COOKIE", "create_app"]


HEADERS = [
    (b"content-security-policy", content_security_policy().encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """No page may load anything from another host, be framed, or be sniffed. (A plain
    ASGI middleware: Starlette's BaseHTTPMiddleware costs more than `/auth/check` itself.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def handle_error(request: Request, exc: Exception) -> Response:
    """The one handler: JSON for the API, a page for browsers."""
    if is_api(request.url.path):
        return await api_error(request, exc)
    # an unexpected error reaches here outside LanguageMiddleware: choose again
    with i18n.use(i18n.choose(request, request.app.state.host.language)):
        headers = None
        if isinstance(exc, IsidorusError):
            status, message = exc.http_status, i18n.message_of(exc)
        elif isinstance(exc, HTTPException):
            status, headers = exc.status_code, exc.headers
            message = {
                404: gettext("there is no such page"),
                405: gettext("this page cannot do that"),
            }.get(status, str(exc.detail))
        else:
            status, message = 500, gettext("an internal error occurred")
        return templates.TemplateResponse(
            request,
            "error.html",
            {"message": message, "status": status, "host": None, "session": None},
            status_code=status,
            headers=headers,
        )


DATA_DIR_VARIABLE = "ISIDORUS_SERVE_DATA_DIR"


def app_from_environment() -> Starlette:
    """The app of one of `isidorus serve --workers N`'s processes."""
    app = create_app(os.environ[DATA_DIR_VARIABLE])
    settle()
    return app


def settle() -> None:
    """Once the app is built: what the process holds from now on (modules, templates,
    the app) is set apart from the garbage collector, whose full passes over it would
    otherwise stall every request now and then."""
    gc.collect()
    gc.freeze()


def create_app(data_dir: str, list_services: ListServices | None = None) -> Starlette:
    """The app over the host at `data_dir`; `list_services` checks the installed services
    (default: their process manager and health checks)."""
    host = Host.load(data_dir)
    i18n.catalogs()  # a broken catalog stops the start, not a visitor's page
    db = ops.open_state(data_dir)
    board = StatusBoard(db, data_dir, list_services or services.list_installed)
    watch = StoreWatch()  # the stores' snapshots, read again when they change
    pages = Pages(host, db, board)
    jobs = Jobs(data_dir)  # the services' background jobs: the admin area's and the API's
    routes: list[BaseRoute] = [
        *pages.routes(),
        *Admin(host, db).routes(),
        *ServicesAdmin(host, db, board, jobs).routes(),
        *BackupsAdmin(host, db, watch).routes(),
        *Metrics(host, db, board, watch).routes(),
        Mount("/api", app=create_api(db, data_dir, jobs, list_services)),
        *Oidc(host, db).routes(),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(i18n.LanguageMiddleware, default=host.language),
            Middleware(SecurityHeaders),
        ],
        exception_handlers={
            IsidorusError: handle_error,
            HTTPException: handle_error,
            500: handle_error,
        },
    )
    app.state.db = db
    app.state.host = host
    app.state.auth_check = pages.auth  # for the fast path (web/fast_path.py)
    return app
