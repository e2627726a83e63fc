"""API token use cases: make, list and remove tokens, and know who calls the API.

Every change is written to the audit log with its actor; a call made with a token acts as
`api:<token name>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from isidorus.accounts import tokens
from isidorus.accounts.errors import NotAnAdmin, TokenRefused
from isidorus.accounts.tokens import ApiToken
from isidorus.accounts.users import User
from isidorus.ops.accounts import audit
from isidorus.state.db import Database


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once: only its hash is kept


@dataclass(frozen=True)
class Caller:
    """Who calls the API: an admin, through one of their tokens."""

    user: User
    token: ApiToken

    @property
    def actor(self) -> str:
        return f"api:{self.token.name}"


def add_token(
    db: Database, actor: str, name: str, user: str, *, expires_days: int | None = None
) -> NewToken:
    """Make token `name` for the admin `user`, expiring after `expires_days` (never when
    None). Raises InvalidInput, NoSuchAccount or AlreadyExists."""
    with db.write() as conn:
        token, secret = tokens.create_token(conn, name, user, expires_days=expires_days)
        audit(conn, actor, "token.add", name, user)
        return NewToken(token, secret)


def list_tokens(db: Database) -> list[ApiToken]:
    with db.write() as conn:
        return tokens.list_tokens(conn)


def remove_token(db: Database, actor: str, name: str) -> None:
    """Remove token `name`: it is refused from the next request on. NoSuchAccount if
    there is none."""
    with db.write() as conn:
        token = tokens.get_token(conn, name)
        tokens.delete_token(conn, name)
        audit(conn, actor, "token.remove", name, token.user)


def authenticate(db: Database, secret: str) -> Caller:
    """The caller presenting `secret`. Raises TokenRefused (unknown, expired, or the user
    is disabled) or NotAnAdmin (the user is no longer an admin)."""
    with db.write() as conn:
        found = tokens.find_token(conn, secret)
    if found is None:
        raise TokenRefused(
            "the API token is unknown, expired or its user disabled: "
            "make a new one with `isidorus token add`"
        )
    if not found.user.is_admin:
        raise NotAnAdmin(f"the API token's user {found.user.name} is not an admin")
    return Caller(found.user, found.token)
