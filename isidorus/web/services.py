"""The admin area's Services pages: the catalog, the installed services and who may use
each, their logs; installs, removals and restarts run as jobs (see jobs.py) and the page
follows them. Refused to members (403), like the rest of the admin area."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from isidorus.accounts.sessions import Session
from isidorus.errors import IsidorusError, NotFoundError, UsageError
from isidorus.ops import accounts
from isidorus.ops import service_access as access
from isidorus.ops import services as ops
from isidorus.services.errors import ServiceError
from isidorus.services.installed import Installed
from isidorus.services.manifest import ID_RE, Manifest
from isidorus.state.db import Database
from isidorus.web.base import Host, Views
from isidorus.web.i18n import N_, gettext, message_of
from isidorus.web.jobs import Job, Jobs
from isidorus.web.status import Status, StatusBoard

LOG_LINES = 100

# the words of the process manager and the manifests, as the pages show them
STATES = {
    "running": N_("running"),
    "starting": N_("starting"),
    "stopped": N_("stopped"),
    "failed": N_("failed"),
    "absent": N_("absent"),
    "unknown": N_("unknown"),
}
SIGN_IN = {
    "header": N_("single sign-on"),
    "oidc": N_("single sign-on (OpenID Connect)"),
    "ldap": N_("the host's password, through LDAP"),
    "none": N_("its own accounts"),
}


def service_id(request: Request) -> str:
    """The service a URL names (a catalog id, nothing that could name a file elsewhere)."""
    service = str(request.path_params["id"])
    if not re.fullmatch(ID_RE, service):
        raise NotFoundError(gettext("there is no service %(service)s") % {"service": service})
    return service


def state_word(state: str) -> str:
    return gettext(STATES[state]) if state in STATES else state


def sign_in_word(kind: str) -> str:
    return gettext(SIGN_IN[kind]) if kind in SIGN_IN else kind


@dataclass(frozen=True)
class Row:
    """An installed service as the admin pages show it."""

    service: Installed
    status: Status
    job: Job | None

    @property
    def interrupted(self) -> bool:
        """An install from this admin area whose server process stopped before its end."""
        return self.service.state == "installing" and (
            self.job is not None and self.job.state == "interrupted"
        )

    @property
    def state(self) -> str:
        if self.service.state == "installing":
            return gettext("interrupted") if self.interrupted else gettext("installing…")
        return state_word(self.status.process)

    @property
    def health(self) -> str:
        if self.service.state == "installing" or self.status.process == "unknown":
            return "—"
        return gettext("ok") if self.status.health == "ok" else self.status.health


@dataclass(frozen=True)
class Offer:
    """A service of the catalog, and whether it is here."""

    manifest: Manifest
    installed: Installed | None
    job: Job | None


Action = Callable[[Session, dict[str, str], str], str]


class ServicesAdmin(Views):
    def __init__(self, host: Host, db: Database, board: StatusBoard, jobs: Jobs) -> None:
        super().__init__(host, db)
        self.board = board
        self.jobs = jobs

    def routes(self) -> list[Route]:
        post = ["POST"]
        base = "/admin/services/{id}"
        return [
            Route("/admin/services", self.index),
            Route(base, self.service),
            Route(f"{base}/logs", self.logs),
            Route(f"{base}/install", self.install_form),
            Route(f"{base}/install", self.post(self.install, self.install_form), methods=post),
            Route(f"{base}/remove", self.remove_form),
            Route(f"{base}/remove", self.post(self.remove, self.remove_form), methods=post),
            Route(f"{base}/allow", self.post(self.allow, self.service), methods=post),
            Route(f"{base}/deny", self.post(self.deny, self.service), methods=post),
            Route(f"{base}/restart", self.post(self.restart, self.service), methods=post),
            Route(f"{base}/clear", self.post(self.clear, self.index), methods=post),
        ]

    def post(
        self, action: Action, page: Callable[..., Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form's endpoint: the admin and the CSRF token are checked, then `action` runs
        (in a worker thread: nginx is tested and reloaded, a job is started) and answers
        the URL to go back to. A refused change shows `page` again with the reason."""

        async def endpoint(request: Request) -> Response:
            session = self.admin(request)
            if not isinstance(session, Session):
                return session
            form = await self.form(request, session)
            service = service_id(request)
            try:
                url = await run_in_threadpool(action, session, form, service)
            except IsidorusError as exc:
                status = exc.http_status
                if type(exc) is ServiceError:  # a change refused as it stands
                    status = 409
                return await page(request, error=message_of(exc), status=status)
            return RedirectResponse(url, status_code=303)

        return endpoint

    async def rows(self) -> list[Row]:
        found = access.installed_services(self.db)
        statuses = await run_in_threadpool(self.board.fresh, found)
        return [
            Row(s, statuses.get(s.id, Status("unknown", "")), self.jobs.get(s.id)) for s in found
        ]

    def installed(self, service: str) -> Installed:
        for s in access.installed_services(self.db):
            if s.id == service:
                return s
        raise NotFoundError(gettext("%(service)s is not installed") % {"service": service})

    # -- pages
    async def index(self, request: Request, error: str = "", status: int = 200) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        rows = await self.rows()
        jobs = {j.service: j for j in self.jobs.all()}
        here = {r.service.id: r.service for r in rows}
        try:
            offers = [Offer(m, here.get(m.id), jobs.get(m.id)) for m in ops.catalog()]
        except IsidorusError as exc:  # a bad manifest of the operator's: say which
            offers, error = [], error or message_of(exc)
        return self.page(
            request,
            "admin/services.html",
            status=status,
            session=session,
            error=error,
            rows=rows,
            offers=offers,
            jobs=sorted(jobs.values(), key=lambda j: j.started, reverse=True),
            # installs from the command line show here too, without their progress
            refresh=any(j.running for j in jobs.values())
            or any(r.service.state == "installing" and not r.interrupted for r in rows),
            sign_in_word=sign_in_word,
        )

    async def service(self, request: Request, error: str = "", status: int = 200) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        service = service_id(request)
        row = next((r for r in await self.rows() if r.service.id == service), None)
        if row is None:
            raise NotFoundError(gettext("%(service)s is not installed") % {"service": service})
        groups = [g.name for g in accounts.list_groups(self.db)]
        return self.page(
            request,
            "admin/service.html",
            status=status,
            session=session,
            error=error,
            row=row,
            others=[g for g in groups if g not in row.service.allow],
            refresh=row.job is not None and row.job.running,
            sign_in_word=sign_in_word,
        )

    async def logs(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        service = self.installed(service_id(request))
        error, lines = "", []
        try:
            lines = await run_in_threadpool(
                ops.logs, self.db, self.host.data_dir, service.id, LOG_LINES
            )
        except IsidorusError as exc:  # journalctl or the log file out of reach
            error = message_of(exc)
        return self.page(
            request,
            "admin/service_logs.html",
            session=session,
            service=service,
            lines=lines,
            error=error,
            count=LOG_LINES,
        )

    async def install_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        service = service_id(request)
        manifest = next((m for m in ops.catalog() if m.id == service), None)
        if manifest is None:
            raise NotFoundError(
                gettext("there is no service %(service)s in the catalog") % {"service": service}
            )
        return self.page(
            request,
            "admin/service_install.html",
            status=status,
            session=session,
            error=error,
            manifest=manifest,
            groups=accounts.list_groups(self.db),
            default_domain=f"{manifest.id}.{self.host.domain}",
            sign_in_word=sign_in_word,
        )

    async def remove_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        return self.page(
            request,
            "admin/service_remove.html",
            status=status,
            session=session,
            error=error,
            service=self.installed(service_id(request)),
        )

    # -- changes
    def install(self, session: Session, form: dict[str, str], service: str) -> str:
        if any(s.id == service for s in access.installed_services(self.db)):
            raise ServiceError(
                gettext("%(service)s is installed already: remove it first to install it again")
                % {"service": service}
            )
        allow = tuple(sorted(k[len("group:") :] for k in form if k.startswith("group:")))
        options = ops.InstallOptions(
            service,
            domain=form.get("domain", "").strip().lower() or None,
            path=form.get("path", "").strip() or "/",
            allow=allow,
        )

        def work(say: Callable[[str], None]) -> str:
            return ops.install(self.db, self.host.data_dir, options, session.user.name, say).url

        self.jobs.start(service, "install", session.user.name, work)
        return "/admin/services"

    def remove(self, session: Session, form: dict[str, str], service: str) -> str:
        self.installed(service)
        if form.get("confirm", "").strip().lower() != service:
            raise UsageError(
                gettext("type %(name)s in the box to confirm the removal") % {"name": service}
            )
        purge = form.get("purge") == "on"

        def work(say: Callable[[str], None]) -> str:
            problems = ops.remove(
                self.db, self.host.data_dir, service, purge, session.user.name, say
            )
            return "; ".join(problems)

        self.jobs.start(service, "remove", session.user.name, work)
        return "/admin/services"

    def restart(self, session: Session, form: dict[str, str], service: str) -> str:
        self.installed(service)

        def work(say: Callable[[str], None]) -> str:
            problem = ops.restart(self.db, self.host.data_dir, service, session.user.name)
            if problem:
                raise ServiceError(problem)
            return ""

        self.jobs.start(service, "restart", session.user.name, work)
        return f"/admin/services/{service}"

    def _idle(self, service: str) -> None:
        self.jobs.idle(service)

    def allow(self, session: Session, form: dict[str, str], service: str) -> str:
        self._idle(service)
        ops.allow(self.db, self.host.data_dir, service, form.get("group", ""), session.user.name)
        return f"/admin/services/{service}?done=groups"

    def deny(self, session: Session, form: dict[str, str], service: str) -> str:
        self._idle(service)
        ops.deny(self.db, self.host.data_dir, service, form.get("group", ""), session.user.name)
        return f"/admin/services/{service}?done=groups"

    def clear(self, session: Session, form: dict[str, str], service: str) -> str:
        self.jobs.clear(service)
        return "/admin/services"
