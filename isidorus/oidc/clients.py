"""Clients: the services registered with the provider, and who may use them."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError

from isidorus.accounts.users import User, check_name
from isidorus.oidc.errors import ClientExists, InvalidInput, NoSuchClient
from isidorus.state.schema import groups, oidc_clients, oidc_codes, oidc_tokens

MAX_URI = 2000
# a host name or IP address and a port, no user info: the origin goes into a CSP header
_NETLOC_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


@dataclass(frozen=True)
class Client:
    id: int
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    allowed_groups: tuple[str, ...]  # empty: every member
    created_at: datetime
    pkce_required: bool = True
    secret_hash: str | None = field(default=None, repr=False)

    @property
    def public(self) -> bool:
        """A public client (a browser or phone app) has no secret and proves itself
        with PKCE alone."""
        return self.secret_hash is None

    def check_secret(self, secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(self.secret_hash, _hash(secret))

    def permits(self, user: User) -> bool:
        """Whether `user` may sign in to this client: enabled, and an admin, or the client
        is open to every member, or the user is in one of its groups."""
        if user.disabled:
            return False
        return (
            not self.allowed_groups
            or user.is_admin
            or bool(set(self.allowed_groups) & set(user.groups))
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "client_id": self.client_id,
            "public": self.public,
            "redirect_uris": list(self.redirect_uris),
            "allowed_groups": list(self.allowed_groups),
            "pkce_required": self.pkce_required,
            "created_at": self.created_at.isoformat(),
        }


def _hash(secret: str) -> str:
    # a secret is 32 random bytes, not a password: a plain SHA-256 cannot be reversed,
    # and a slow hash would only slow every token request
    return hashlib.sha256(secret.encode()).hexdigest()


def check_redirect_uri(uri: str) -> None:
    """A redirect URI must be absolute HTTPS (plain HTTP only on a loopback address,
    for trials), without a fragment."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or not host or len(uri) > MAX_URI or any(c.isspace() for c in uri):
        raise InvalidInput(
            f"{uri!r} is not a redirect URI: give an absolute URL such as "
            "https://git.example.org/user/oauth2/isidorus/callback"
        )
    if not _NETLOC_RE.fullmatch(parts.netloc):
        raise InvalidInput(f"the redirect URI {uri!r} must name a plain host (and port)")
    if parts.fragment or uri.endswith("#"):
        raise InvalidInput(f"the redirect URI {uri!r} must not have a fragment (#…)")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _loopback(host):
        return
    raise InvalidInput(f"the redirect URI {uri!r} must use https:// (http:// only on localhost)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(row: Any) -> Client:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return Client(
        row.id,
        row.client_id,
        row.name,
        tuple(json.loads(row.redirect_uris)),
        tuple(json.loads(row.allowed_groups)),
        created,
        bool(row.pkce_required),
        row.secret_hash,
    )


def create_client(
    conn: Connection,
    name: str,
    redirect_uris: list[str] | tuple[str, ...],
    allowed_groups: list[str] | tuple[str, ...] = (),
    *,
    public: bool = False,
    pkce_required: bool = True,
) -> tuple[Client, str | None]:
    """Register a client; returns it and its secret (None for a public client). The
    secret is not stored, only its hash: it is shown this once. Only a confidential
    client may be let off PKCE, for a service that cannot send it."""
    check_name(name, "client")
    if public and not pkce_required:
        raise InvalidInput("a public client has no secret, so it must use PKCE: drop --no-pkce")
    uris = list(dict.fromkeys(redirect_uris))
    if not uris:
        raise InvalidInput("a client needs at least one redirect URI (--redirect-uri)")
    for uri in uris:
        check_redirect_uri(uri)
    allowed = sorted(set(allowed_groups))
    known = {r[0] for r in conn.execute(select(groups.c.name).where(groups.c.name.in_(allowed)))}
    for g in allowed:
        if g not in known:
            raise InvalidInput(f"there is no group {g!r}: create it with `isidorus group add {g}`")
    secret = None if public else secrets.token_urlsafe(32)
    try:
        with conn.begin_nested():
            conn.execute(
                oidc_clients.insert().values(
                    client_id=secrets.token_urlsafe(16),
                    name=name,
                    secret_hash=None if secret is None else _hash(secret),
                    redirect_uris=json.dumps(uris),
                    allowed_groups=json.dumps(allowed),
                    pkce_required=pkce_required,
                    created_at=datetime.now(UTC),
                )
            )
    except IntegrityError:
        raise ClientExists(f"a client {name!r} exists already") from None
    return get_client(conn, name), secret


def get_client(conn: Connection, name: str) -> Client:
    row = conn.execute(select(oidc_clients).where(oidc_clients.c.name == name)).first()
    if row is None:
        raise NoSuchClient(f"there is no client {name!r}: see `isidorus oidc client list`")
    return _client(row)


def find_client(conn: Connection, client_id: str) -> Client | None:
    """The client of a client id, or None."""
    if not client_id or len(client_id) > 64:
        return None
    row = conn.execute(select(oidc_clients).where(oidc_clients.c.client_id == client_id)).first()
    return None if row is None else _client(row)


def find_client_by_pk(conn: Connection, pk: int) -> Client | None:
    row = conn.execute(select(oidc_clients).where(oidc_clients.c.id == pk)).first()
    return None if row is None else _client(row)


def list_clients(conn: Connection) -> list[Client]:
    return [_client(r) for r in conn.execute(select(oidc_clients).order_by(oidc_clients.c.name))]


def delete_client(conn: Connection, name: str) -> None:
    """Remove a client; its codes and access tokens stop working at once."""
    client = get_client(conn, name)
    conn.execute(delete(oidc_tokens).where(oidc_tokens.c.client == client.id))
    conn.execute(delete(oidc_codes).where(oidc_codes.c.client == client.id))
    conn.execute(delete(oidc_clients).where(oidc_clients.c.id == client.id))
