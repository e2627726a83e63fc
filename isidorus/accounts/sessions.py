"""Browser sessions: a random token in a cookie, its SHA-256 in the database.

Only the hash is stored, so a copy of the database does not let anyone log in. Each session
carries its own CSRF token for forms. Sessions end at logout, at expiry, and whenever the
user is disabled, removed, or changes password.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, select

from isidorus.accounts.users import User, find_row, get_user
from isidorus.state.schema import app_sessions, sessions, users

LIFETIME = timedelta(days=14)


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    started_at: datetime | None = None  # when the user logged in (OpenID's auth_time)


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    conn: Connection, name: str, *, now: datetime | None = None, app_password: int | None = None
) -> tuple[str, str]:
    """A new session for user `name`: (the cookie's token, the CSRF token). A session an
    app password opens ends with it (`app_password`: its id)."""
    row = find_row(conn, name)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = now or datetime.now(UTC)
    conn.execute(
        sessions.insert().values(
            id=_key(token), user_id=row.id, csrf=csrf, created_at=now, expires_at=now + LIFETIME
        )
    )
    if app_password is not None:
        conn.execute(
            app_sessions.insert().values(session_id=_key(token), app_password_id=app_password)
        )
    return token, csrf


def find_session(conn: Connection, token: str, *, now: datetime | None = None) -> Session | None:
    """The live session of a cookie token, or None (unknown, expired, or the user is
    disabled)."""
    if not token or len(token) > 100:
        return None
    row = conn.execute(
        select(
            sessions.c.csrf,
            sessions.c.created_at,
            sessions.c.expires_at,
            users.c.name,
            users.c.disabled,
        )
        .join(users, users.c.id == sessions.c.user_id)
        .where(sessions.c.id == _key(token))
    ).first()
    now = now or datetime.now(UTC)
    if row is None or row.disabled:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires <= now:
        return None
    started = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return Session(get_user(conn, row.name), row.csrf, started)


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(sessions).where(sessions.c.id == _key(token)))


def end_user_sessions(conn: Connection, name: str) -> None:
    row = find_row(conn, name)
    conn.execute(delete(sessions).where(sessions.c.user_id == row.id))
