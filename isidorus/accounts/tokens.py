"""API tokens: what scripts and programs present to the REST API instead of a password.

A token belongs to an admin and acts with that admin's rights. Its secret (`isi_` and 43
URL-safe characters) is shown once, when it is made; only its SHA-256 is stored, so a copy of
the database lets no one in. A token is refused once it expires, while its user is disabled,
and for good when the token or its user is removed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import IntegrityError

from isidorus.accounts.errors import AlreadyExists, InvalidInput, NoSuchAccount
from isidorus.accounts.users import User, check_name, find_row, get_user
from isidorus.state.schema import api_tokens, users

PREFIX = "isi_"  # tells an isidorus token at a glance, in a config file or a leak scanner
MAX_DAYS = 3650


@dataclass(frozen=True)
class ApiToken:
    name: str
    user: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "name": self.name,
            "user": self.user,
            "created_at": self.created_at.isoformat(),
            "last_used_at": iso(self.last_used_at),
            "expires_at": iso(self.expires_at),
            "expired": self.expired(),
        }


@dataclass(frozen=True)
class TokenUse:
    """A presented token that is live, and the user it acts for."""

    token: ApiToken
    user: User


def _key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _utc(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


_COLUMNS = (
    api_tokens.c.name,
    users.c.name.label("user"),
    api_tokens.c.created_at,
    api_tokens.c.last_used_at,
    api_tokens.c.expires_at,
)


def _token(row: Any) -> ApiToken:
    created = _utc(row.created_at)
    assert created is not None
    return ApiToken(row.name, row.user, created, _utc(row.last_used_at), _utc(row.expires_at))


def create_token(
    conn: Connection,
    name: str,
    user: str,
    *,
    expires_days: int | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token `name` for the admin `user`: (the token, its secret, to show once).
    Raises InvalidInput (bad name or days, a user who is not an enabled admin),
    NoSuchAccount, or AlreadyExists."""
    check_name(name, "token")
    if expires_days is not None and not 1 <= expires_days <= MAX_DAYS:
        raise InvalidInput(f"a token expires after 1 to {MAX_DAYS} days, not {expires_days}")
    row = find_row(conn, user)
    if not row.is_admin:
        raise InvalidInput(f"{user} is not an admin: only admins have API tokens")
    if row.disabled:
        raise InvalidInput(f"{user} is disabled: enable them first (`isidorus user enable`)")
    now = now or datetime.now(UTC)
    secret = PREFIX + secrets.token_urlsafe(32)
    expires = now + timedelta(days=expires_days) if expires_days is not None else None
    try:
        with conn.begin_nested():
            conn.execute(
                api_tokens.insert().values(
                    name=name,
                    user_id=row.id,
                    hash=_key(secret),
                    created_at=now,
                    last_used_at=None,
                    expires_at=expires,
                )
            )
    except IntegrityError:
        raise AlreadyExists(f"a token {name!r} exists already") from None
    return get_token(conn, name), secret


def get_token(conn: Connection, name: str) -> ApiToken:
    row = conn.execute(
        select(*_COLUMNS)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.name == name)
    ).first()
    if row is None:
        raise NoSuchAccount(f"there is no token {name!r}: see `isidorus token list`")
    return _token(row)


def list_tokens(conn: Connection) -> list[ApiToken]:
    rows = conn.execute(
        select(*_COLUMNS)
        .join(users, users.c.id == api_tokens.c.user_id)
        .order_by(api_tokens.c.name)
    )
    return [_token(r) for r in rows]


def delete_token(conn: Connection, name: str) -> None:
    get_token(conn, name)  # NoSuchAccount if there is none
    conn.execute(delete(api_tokens).where(api_tokens.c.name == name))


def delete_user_tokens(conn: Connection, user: str) -> None:
    row = find_row(conn, user)
    conn.execute(delete(api_tokens).where(api_tokens.c.user_id == row.id))


def find_token(conn: Connection, secret: str, *, now: datetime | None = None) -> TokenUse | None:
    """The live token of a secret, with its user, or None (unknown, expired, or the user
    is disabled). Records the time of use."""
    if not secret.startswith(PREFIX) or len(secret) > 100 or not secret.isascii():
        return None
    row = conn.execute(
        select(*_COLUMNS, api_tokens.c.id, users.c.disabled)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.hash == _key(secret))
    ).first()
    now = now or datetime.now(UTC)
    if row is None or row.disabled:
        return None
    token = _token(row)
    if token.expired(now):
        return None
    conn.execute(update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now))
    return TokenUse(
        ApiToken(token.name, token.user, token.created_at, now, token.expires_at),
        get_user(conn, token.user),
    )
