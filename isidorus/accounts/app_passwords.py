"""App passwords: a password of its own for each app a member signs in with on every
request (a calendar or contacts app on a phone), which cannot log in through a page.

Made by the member in the portal, shown once: 20 random letters and digits in groups of
four, easy to type on a phone, about 100 bits. Only its SHA-256 is stored (it is random,
not a word a person chose: a slow hash would add nothing), so a copy of the database lets
no one in. One is revoked on its own, and the sessions it opened end with it; all go with
their user. They are how a member with a second factor uses such apps, which cannot send
its code.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from isidorus.accounts.errors import InvalidInput, NoSuchAccount
from isidorus.accounts.users import find_row
from isidorus.state.schema import app_passwords, app_sessions, sessions, users

ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off a screen, typed
GROUPS, GROUP = 5, 4
MAX_PER_USER = 20
MAX_LABEL = 64


@dataclass(frozen=True)
class AppPassword:
    id: int
    label: str
    created_at: datetime
    last_used_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        used = self.last_used_at.isoformat() if self.last_used_at else None
        return {
            "id": self.id,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "last_used_at": used,
        }


def _key(secret: str) -> str:
    # typed on a phone: spaces and dashes between the groups, and capitals, do not count
    plain = "".join(c for c in secret.lower() if c not in " -")
    return hashlib.sha256(plain.encode()).hexdigest()


def _utc(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _of(row: Any) -> AppPassword:
    created = _utc(row.created_at)
    assert created is not None
    return AppPassword(row.id, row.label, created, _utc(row.last_used_at))


def create(conn: Connection, name: str, label: str) -> tuple[AppPassword, str]:
    """A new app password for the user `name`, labelled (the app, the phone); returns it
    and its secret, shown this once. InvalidInput for a label that is empty or too long,
    or a user who has MAX_PER_USER already; NoSuchAccount for an unknown user."""
    label = " ".join(label.split())
    if not label or len(label) > MAX_LABEL:
        raise InvalidInput(f"name the app in 1 to {MAX_LABEL} characters, like 'phone calendar'")
    row = find_row(conn, name)
    if row is None:
        raise NoSuchAccount(f"there is no user {name!r}")
    count = conn.execute(
        select(func.count()).select_from(app_passwords).where(app_passwords.c.user_id == row.id)
    ).scalar_one()
    if count >= MAX_PER_USER:
        raise InvalidInput(f"{name} has {MAX_PER_USER} app passwords: revoke one first")
    secret = "-".join(
        "".join(secrets.choice(ALPHABET) for _ in range(GROUP)) for _ in range(GROUPS)
    )
    new_id = conn.execute(
        app_passwords.insert().values(
            user_id=row.id, label=label, hash=_key(secret), created_at=datetime.now(UTC)
        )
    ).inserted_primary_key
    assert new_id is not None
    found = conn.execute(select(app_passwords).where(app_passwords.c.id == new_id[0])).one()
    return _of(found), secret


def list_for(conn: Connection, name: str) -> list[AppPassword]:
    """The user's app passwords, oldest first."""
    query = (
        select(app_passwords)
        .join(users, users.c.id == app_passwords.c.user_id)
        .where(users.c.name == name)
        .order_by(app_passwords.c.id)
    )
    return [_of(r) for r in conn.execute(query)]


def revoke(conn: Connection, name: str, password_id: int) -> AppPassword:
    """Take away one of the user's app passwords; NoSuchAccount when they have none of
    that id (another member's is not theirs to revoke)."""
    row = find_row(conn, name)
    found = None
    if row is not None:
        found = conn.execute(
            select(app_passwords).where(
                app_passwords.c.id == password_id, app_passwords.c.user_id == row.id
            )
        ).first()
    if row is None or found is None:
        raise NoSuchAccount(f"{name} has no app password {password_id}")
    opened = select(app_sessions.c.session_id).where(app_sessions.c.app_password_id == password_id)
    conn.execute(delete(sessions).where(sessions.c.id.in_(opened)))
    conn.execute(delete(app_passwords).where(app_passwords.c.id == password_id))
    return _of(found)


def check(conn: Connection, name: str, secret: str) -> int | None:
    """The id of the app password, when `secret` is one of the user's and the account is
    enabled (its use is noted); else None."""
    found = conn.execute(
        select(app_passwords.c.id, users.c.disabled)
        .join(users, users.c.id == app_passwords.c.user_id)
        .where(users.c.name == name, app_passwords.c.hash == _key(secret))
    ).first()
    if found is None or found.disabled:
        return None
    conn.execute(
        update(app_passwords)
        .where(app_passwords.c.id == found.id)
        .values(last_used_at=datetime.now(UTC))
    )
    return int(found.id)
