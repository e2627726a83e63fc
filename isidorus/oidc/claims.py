"""What a service learns of the person who signs in: the claims, by scope.

`openid` gives `sub`; `profile` gives `preferred_username` (the login name) and `name`;
`email` gives `email` and `email_verified`; `groups` gives `groups` (the names of the
user's groups).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, select

from isidorus.accounts.users import User
from isidorus.state.schema import oidc_subjects

SCOPES = ("openid", "profile", "email", "groups")
CLAIMS = ("sub", "preferred_username", "name", "email", "email_verified", "groups")


def subject(conn: Connection, user: User) -> str:
    """The user's `sub`: made at their first sign-in to a service, then never changed.
    Not the login name nor the row id, which a later user could get again: a service
    must never take a new person for an old one."""
    row = conn.execute(
        select(oidc_subjects.c.sub).where(oidc_subjects.c.user_id == user.id)
    ).first()
    if row is not None:
        return str(row.sub)
    sub = str(uuid.uuid4())
    conn.execute(oidc_subjects.insert().values(user_id=user.id, sub=sub))
    return sub


def user_claims(conn: Connection, user: User, scope: str) -> dict[str, Any]:
    scopes = set(scope.split())
    claims: dict[str, Any] = {"sub": subject(conn, user)}
    if "profile" in scopes:
        claims["preferred_username"] = user.name
        claims["name"] = user.fullname or user.name
    if "email" in scopes:
        claims["email"] = user.email
        # members change their own address in the portal, and nobody checks it: a
        # service must not link accounts by it
        claims["email_verified"] = False
    if "groups" in scopes:
        claims["groups"] = list(user.groups)
    return claims
