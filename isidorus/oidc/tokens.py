"""What the provider issues: authorization codes and access tokens, stored by hash.

A code is good for one exchange, for the client, redirect URI and PKCE challenge it was
issued with, within CODE_LIFETIME. A code presented a second time revokes the access
tokens issued for it (RFC 6749, 4.1.2): it has leaked, and whoever holds the tokens may not
be the service. Used and expired rows are pruned as new ones are written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from isidorus.state.schema import oidc_codes, oidc_tokens

CODE_LIFETIME = timedelta(minutes=10)
TOKEN_LIFETIME = timedelta(hours=1)


def key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Code:
    id: str  # the hash of the code
    client: int
    user_id: int
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    auth_time: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class AccessToken:
    client: int
    user_id: int
    scope: str
    expires_at: datetime


def save_code(
    conn: Connection,
    code: str,
    *,
    client: int,
    user_id: int,
    redirect_uri: str,
    scope: str,
    nonce: str | None,
    code_challenge: str | None,
    auth_time: datetime | None,
    now: datetime | None = None,
) -> None:
    now = now or datetime.now(UTC)
    _prune(conn, now)
    conn.execute(
        oidc_codes.insert().values(
            id=key(code),
            client=client,
            user_id=user_id,
            redirect_uri=redirect_uri,
            scope=scope,
            nonce=nonce,
            code_challenge=code_challenge,
            auth_time=auth_time,
            created_at=now,
            expires_at=now + CODE_LIFETIME,
        )
    )


def find_code(
    conn: Connection, code: str, client: int, *, now: datetime | None = None
) -> Code | None:
    """The live code issued to `client`, or None. The row is locked until the transaction
    ends, so two exchanges of one code are serialised and the second sees it used. A used
    code revokes the tokens issued for it (the caller must commit)."""
    if not code or len(code) > 200:
        return None
    row = conn.execute(
        select(oidc_codes).where(oidc_codes.c.id == key(code)).with_for_update()
    ).first()
    if row is None or row.client != client:
        return None
    if row.used_at is not None:
        conn.execute(delete(oidc_tokens).where(oidc_tokens.c.code == row.id))
        return None
    if _aware(row.expires_at) <= (now or datetime.now(UTC)):
        return None
    return Code(
        row.id,
        row.client,
        row.user_id,
        row.redirect_uri,
        row.scope,
        row.nonce,
        row.code_challenge,
        None if row.auth_time is None else _aware(row.auth_time),
        _aware(row.created_at),
    )


def use_code(conn: Connection, code: Code, *, now: datetime | None = None) -> None:
    conn.execute(
        update(oidc_codes)
        .where(oidc_codes.c.id == code.id)
        .values(used_at=now or datetime.now(UTC))
    )


def nonce_seen(conn: Connection, client: int, nonce: str) -> bool:
    """Whether `client` was already issued a live code for this nonce (a replayed
    authorization request)."""
    row = conn.execute(
        select(oidc_codes.c.id).where(oidc_codes.c.client == client, oidc_codes.c.nonce == nonce)
    ).first()
    return row is not None


def save_token(
    conn: Connection,
    token: str,
    *,
    client: int,
    user_id: int,
    code: str,
    scope: str,
    now: datetime | None = None,
) -> datetime:
    """Store an access token (by hash) issued for the code of hash `code`; returns when it
    expires."""
    expires = (now or datetime.now(UTC)) + TOKEN_LIFETIME
    conn.execute(
        oidc_tokens.insert().values(
            id=key(token),
            client=client,
            user_id=user_id,
            code=code,
            scope=scope,
            expires_at=expires,
        )
    )
    return expires


def find_token(conn: Connection, token: str, *, now: datetime | None = None) -> AccessToken | None:
    """The live access token of this value, or None."""
    if not token or len(token) > 200:
        return None
    row: Any = conn.execute(select(oidc_tokens).where(oidc_tokens.c.id == key(token))).first()
    if row is None or _aware(row.expires_at) <= (now or datetime.now(UTC)):
        return None
    return AccessToken(row.client, row.user_id, row.scope, _aware(row.expires_at))


def _prune(conn: Connection, now: datetime) -> None:
    # a used code is kept while a token issued for it may live, so that a replay can
    # still revoke that token
    conn.execute(delete(oidc_codes).where(oidc_codes.c.expires_at < now - TOKEN_LIFETIME))
    conn.execute(delete(oidc_tokens).where(oidc_tokens.c.expires_at < now))
