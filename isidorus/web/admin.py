"""The admin area: accounts, groups and the admin role; refused to members (403). (Its
Services pages are in services.py.)

Every form posts to its own URL and comes back to the page it was on; a refused change
(bad input, a name taken, the last admin) shows that page again with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from isidorus.accounts.errors import AccountError, InvalidInput
from isidorus.accounts.sessions import Session
from isidorus.ops import accounts as ops
from isidorus.ops import oidc, service_access
from isidorus.web.base import Views
from isidorus.web.i18n import gettext, message_of


@dataclass(frozen=True)
class PasswordShown:
    """A generated password, shown once on the answer page (never put in a URL)."""

    name: str
    password: str
    created: bool


Action = Callable[[Session, dict[str, str], dict[str, Any]], PasswordShown | str]


class Admin(Views):
    def routes(self) -> list[Route]:
        post = ["POST"]
        return [
            Route("/admin", self.index),
            Route("/admin/users", self.users),
            Route("/admin/users", self.post(self.add_user, self.users), methods=post),
            Route("/admin/users/{name}", self.user),
            *(
                Route(f"/admin/users/{{name}}/{what}", self.post(action, self.user), methods=post)
                for what, action in (
                    ("profile", self.user_profile),
                    ("password", self.user_password),
                    ("state", self.user_state),
                    ("role", self.user_role),
                    ("groups", self.user_groups),
                    ("remove", self.user_remove),
                    ("totp-off", self.user_totp_off),
                )
            ),
            Route("/admin/audit", self.audit),
            Route("/admin/groups", self.groups),
            Route("/admin/groups", self.post(self.add_group, self.groups), methods=post),
            Route("/admin/groups/{name}", self.group),
            Route(
                "/admin/groups/{name}/members",
                self.post(self.group_add_member, self.group),
                methods=post,
            ),
            Route(
                "/admin/groups/{name}/members/{user}/remove",
                self.post(self.group_remove_member, self.group),
                methods=post,
            ),
            Route(
                "/admin/groups/{name}/remove",
                self.post(self.group_remove, self.group),
                methods=post,
            ),
        ]

    def post(
        self, action: Action, page: Callable[..., Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form's endpoint: checks the admin and the CSRF token, runs `action`; its
        answer is a response, or the URL to go back to. A refused change shows `page`
        again with the reason."""

        async def endpoint(request: Request) -> Response:
            session = self.admin(request)
            if not isinstance(session, Session):
                return session
            form = await self.form(request, session)
            try:
                result = action(session, form, dict(request.path_params))
            except AccountError as exc:
                return await page(request, error=message_of(exc), status=exc.http_status)
            if isinstance(result, PasswordShown):
                page_ = self.page(request, "admin/password.html", session=session, shown=result)
                page_.headers["Cache-Control"] = "no-store"
                return page_
            return RedirectResponse(result, status_code=303)

        return endpoint

    def admin_page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        return self.page(request, template, status=status, session=session, **context)

    # -- pages
    async def index(self, request: Request) -> Response:
        return self.admin_page(
            request,
            "admin/index.html",
            users=ops.list_users(self.db),
            groups=ops.list_groups(self.db),
            clients=oidc.list_clients(self.db),
            services=service_access.installed_services(self.db),
        )

    async def audit(self, request: Request) -> Response:
        before = request.query_params.get("before", "")
        return self.admin_page(
            request,
            "admin/audit.html",
            page=ops.list_audit(
                self.db, limit=50, before=int(before) if before.isdigit() else None
            ),
        )

    async def users(self, request: Request, error: str = "", status: int = 200) -> Response:
        return self.admin_page(
            request,
            "admin/users.html",
            status=status,
            error=error,
            users=ops.list_users(self.db),
            groups=ops.list_groups(self.db),
        )

    async def user(self, request: Request, error: str = "", status: int = 200) -> Response:
        return self.admin_page(
            request,
            "admin/user.html",
            status=status,
            error=error,
            user=ops.get_user(self.db, request.path_params["name"]),
            groups=ops.list_groups(self.db),
        )

    async def groups(self, request: Request, error: str = "", status: int = 200) -> Response:
        return self.admin_page(
            request,
            "admin/groups.html",
            status=status,
            error=error,
            groups=ops.list_groups(self.db),
        )

    async def group(self, request: Request, error: str = "", status: int = 200) -> Response:
        group = ops.get_group(self.db, request.path_params["name"])
        return self.admin_page(
            request,
            "admin/group.html",
            status=status,
            error=error,
            group=group,
            others=[u.name for u in ops.list_users(self.db) if u.name not in group.members],
        )

    # -- changes
    def add_user(
        self, session: Session, form: dict[str, str], _: dict[str, Any]
    ) -> PasswordShown | str:
        name = form.get("name", "").strip().lower()
        password = form.get("password", "") or ops.new_password()
        ops.add_user(
            self.db,
            session.user.name,
            name,
            form.get("email", "").strip(),
            password,
            fullname=form.get("fullname", "").strip(),
            is_admin=form.get("admin") == "on",
        )
        if form.get("password"):
            return f"/admin/users/{name}?done=added"
        return PasswordShown(name, password, created=True)

    def user_profile(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        ops.update_profile(
            self.db,
            session.user.name,
            p["name"],
            fullname=form.get("fullname", ""),
            email=form.get("email", ""),
        )
        return f"/admin/users/{p['name']}?done=saved"

    def user_password(
        self, session: Session, form: dict[str, str], p: dict[str, Any]
    ) -> PasswordShown | str:
        password = ops.new_password()
        ops.set_password(self.db, session.user.name, p["name"], password)
        return PasswordShown(p["name"], password, created=False)

    def user_state(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        not_yourself(session, p["name"])
        ops.set_disabled(self.db, session.user.name, p["name"], form.get("state") == "disabled")
        return f"/admin/users/{p['name']}?done=state"

    def user_role(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        not_yourself(session, p["name"])
        ops.set_admin(self.db, session.user.name, p["name"], form.get("role") == "admin")
        return f"/admin/users/{p['name']}?done=role"

    def user_groups(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        chosen = [k.removeprefix("group:") for k, v in form.items() if k.startswith("group:")]
        ops.set_groups(self.db, session.user.name, p["name"], chosen)
        return f"/admin/users/{p['name']}?done=groups"

    def user_totp_off(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        ops.turn_off_totp(self.db, session.user.name, p["name"])
        return f"/admin/users/{p['name']}?done=saved"

    def user_remove(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        not_yourself(session, p["name"])
        if form.get("confirm", "").strip().lower() != p["name"]:
            raise InvalidInput(
                gettext("type %(name)s in the box to confirm the removal") % {"name": p["name"]}
            )
        ops.remove_user(self.db, session.user.name, p["name"])
        return "/admin/users?done=removed"

    def add_group(self, session: Session, form: dict[str, str], _: dict[str, Any]) -> str:
        name = form.get("name", "").strip().lower()
        ops.add_group(self.db, session.user.name, name, form.get("description", "").strip())
        return f"/admin/groups/{name}?done=added"

    def group_add_member(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        ops.add_member(self.db, session.user.name, p["name"], form.get("user", ""))
        return f"/admin/groups/{p['name']}?done=member"

    def group_remove_member(self, session: Session, _: dict[str, str], p: dict[str, Any]) -> str:
        ops.remove_member(self.db, session.user.name, p["name"], p["user"])
        return f"/admin/groups/{p['name']}?done=member"

    def group_remove(self, session: Session, form: dict[str, str], p: dict[str, Any]) -> str:
        if form.get("confirm", "").strip().lower() != p["name"]:
            raise InvalidInput(
                gettext("type %(name)s in the box to confirm the removal") % {"name": p["name"]}
            )
        ops.remove_group(self.db, session.user.name, p["name"])
        return "/admin/groups?done=removed"


def not_yourself(session: Session, name: str) -> None:
    """An admin does not lock themself out: another admin does that."""
    if name == session.user.name:
        raise InvalidInput(gettext("you cannot do this to your own account: ask another admin"))
