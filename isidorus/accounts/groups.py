"""Groups and their members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError

from isidorus.accounts.errors import AlreadyExists, InvalidInput, NoSuchAccount
from isidorus.accounts.users import check_name
from isidorus.accounts.users import find_row as _user_row
from isidorus.state.schema import groups, memberships, users


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    description: str
    members: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "members": list(self.members)}


def _group_row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(groups).where(groups.c.name == name)).first()
    if row is None:
        raise NoSuchAccount(f"there is no group {name!r}: see `isidorus group list`")
    return row


def _group(conn: Connection, row: Any) -> Group:
    members = tuple(
        r[0]
        for r in conn.execute(
            select(users.c.name)
            .join(memberships, memberships.c.user_id == users.c.id)
            .where(memberships.c.group_id == row.id)
            .order_by(users.c.name)
        )
    )
    return Group(row.id, row.name, row.description, members)


def create_group(conn: Connection, name: str, description: str = "") -> Group:
    check_name(name, "group")
    if len(description) > 200:
        raise InvalidInput("the description is longer than 200 characters")
    try:
        with conn.begin_nested():
            conn.execute(groups.insert().values(name=name, description=description))
    except IntegrityError:
        raise AlreadyExists(f"a group {name!r} exists already") from None
    return get_group(conn, name)


def get_group(conn: Connection, name: str) -> Group:
    return _group(conn, _group_row(conn, name))


def list_groups(conn: Connection) -> list[Group]:
    return [_group(conn, r) for r in conn.execute(select(groups).order_by(groups.c.name))]


def delete_group(conn: Connection, name: str) -> None:
    row = _group_row(conn, name)
    conn.execute(delete(memberships).where(memberships.c.group_id == row.id))
    conn.execute(delete(groups).where(groups.c.id == row.id))


def add_member(conn: Connection, group: str, user: str) -> Group:
    g, u = _group_row(conn, group), _user_row(conn, user)
    exists = conn.execute(
        select(memberships).where(memberships.c.group_id == g.id, memberships.c.user_id == u.id)
    ).first()
    if exists is None:
        conn.execute(memberships.insert().values(group_id=g.id, user_id=u.id))
    return get_group(conn, group)


def remove_member(conn: Connection, group: str, user: str) -> Group:
    g, u = _group_row(conn, group), _user_row(conn, user)
    conn.execute(
        delete(memberships).where(memberships.c.group_id == g.id, memberships.c.user_id == u.id)
    )
    return get_group(conn, group)
