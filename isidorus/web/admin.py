"""The admin area: accounts, groups and permissions; refused to members (403)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from isidorus.accounts.sessions import Session
from isidorus.ops import accounts as ops
from isidorus.web.base import Forbidden, Views


class Admin(Views):
    def routes(self) -> list[Route]:
        return [
            Route("/admin", self.index),
            Route("/admin/users/{name}/state", self.user_state, methods=["POST"]),
        ]

    async def index(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        return self.page(
            request,
            "admin.html",
            session=session,
            users=ops.list_users(self.db),
            groups=ops.list_groups(self.db),
        )

    async def user_state(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        form = await self.form(request, session)
        name = request.path_params["name"]
        if name == session.user.name:
            raise Forbidden("you cannot disable your own account")
        ops.set_disabled(self.db, session.user.name, name, form.get("state") == "disabled")
        return RedirectResponse("/admin", status_code=303)
