"""Who may use which installed service: the services as the state database records them
now (no process or health check: cheap enough for every page), and the rule that
`/auth/check` applies to each request."""

from __future__ import annotations

from isidorus.accounts.users import User
from isidorus.services import installed
from isidorus.services.installed import Installed
from isidorus.state.db import Database


def installed_services(db: Database) -> list[Installed]:
    """Every service recorded, installed or being installed, by id."""
    with db.read() as conn:
        return installed.all_installed(conn)


def may_use(user: User, service: Installed) -> bool:
    """Whether nginx lets `user` in: admins always, anyone when no group is named, else
    the members of a named group (the same rule as /auth/check)."""
    return user.is_admin or not service.allow or bool(set(service.allow) & set(user.groups))


def usable_by(user: User, services: list[Installed]) -> list[Installed]:
    """The installed (not installing) services `user` may use."""
    return [s for s in services if s.state == "installed" and may_use(user, s)]
