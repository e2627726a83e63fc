"""OpenID Connect use cases: the registered services (clients), and the provider's
endpoints, each in one transaction; every change goes to the audit log.

The services catalog registers its services' clients through `add_client` and
`remove_client`, as the CLI does.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from isidorus.accounts.sessions import Session
from isidorus.oidc import clients as clients_
from isidorus.oidc.clients import Client
from isidorus.oidc.keys import jwks as jwks_of
from isidorus.oidc.keys import signing_key
from isidorus.oidc.provider import (
    AUTHORIZE_PATH,
    Answer,
    Provider,
    ProviderOptions,
    Request,
    metadata,
)
from isidorus.ops.accounts import CONFIG_NAME, audit
from isidorus.state.db import Database

__all__ = ["Answer", "NewClient", "ProviderOptions", "Request"]


@dataclass(frozen=True)
class NewClient:
    client: Client
    secret: str | None  # shown once; None for a public client


def issuer_of(config: dict[str, Any]) -> str:
    """The issuer: `url` from isidorus.toml, else https://DOMAIN."""
    url = str(config.get("url") or f"https://{config.get('domain', 'localhost')}")
    return url.rstrip("/")


def provider_options(data_dir: str) -> ProviderOptions:
    """The provider's issuer and signing key (made on first use). Raises InsecureIssuer
    for an issuer that is not HTTPS."""
    with open(os.path.join(data_dir, CONFIG_NAME), "rb") as f:
        config = tomllib.load(f)
    issuer = issuer_of(config)
    Provider.check_issuer(issuer)
    return ProviderOptions(issuer, signing_key(data_dir))


# -- clients


def add_client(
    db: Database,
    actor: str,
    name: str,
    redirect_uris: list[str] | tuple[str, ...],
    allowed_groups: list[str] | tuple[str, ...] = (),
    *,
    public: bool = False,
    pkce_required: bool = True,
) -> NewClient:
    """Register a service. Its secret is returned here and never again. Raises
    InvalidInput (a bad name, redirect URI or group) or ClientExists."""
    with db.write() as conn:
        client, secret = clients_.create_client(
            conn, name, redirect_uris, allowed_groups, public=public, pkce_required=pkce_required
        )
        flags = [f for f, on in (("public", public), ("no-pkce", not pkce_required)) if on]
        audit(conn, actor, "oidc.client.add", name, ",".join(flags))
        return NewClient(client, secret)


def list_clients(db: Database) -> list[Client]:
    with db.write() as conn:
        return clients_.list_clients(conn)


def get_client(db: Database, name: str) -> Client:
    with db.write() as conn:
        return clients_.get_client(conn, name)


def remove_client(db: Database, actor: str, name: str) -> None:
    """Remove a service's client: its codes and tokens stop working at once."""
    with db.write() as conn:
        clients_.delete_client(conn, name)
        audit(conn, actor, "oidc.client.remove", name)


# -- the provider's endpoints (the web calls these)


def discovery(options: ProviderOptions) -> dict[str, Any]:
    return metadata(options)


def jwks(options: ProviderOptions) -> dict[str, Any]:
    return jwks_of(options.key)


def authorize(
    db: Database, options: ProviderOptions, request: Request, session: Session | None
) -> Answer:
    """An authorization request in a login `session` (None: nobody is logged in). Raises
    BadAuthorizationRequest, LoginRequired or NotPermitted; anything else is answered
    to the client through the browser. A sign-in is written to the audit log."""
    with db.write() as conn:
        user = session.user if session else None
        auth_time = session.started_at if session else None
        answer = Provider(conn, options).authorize(request, user, auth_time)
        if answer.issued_to and user is not None:
            audit(conn, user.name, "oidc.sign-in", answer.issued_to)
        return answer


def token(db: Database, options: ProviderOptions, request: Request) -> Answer:
    with db.write() as conn:
        return Provider(conn, options).token(request)


def userinfo(db: Database, options: ProviderOptions, request: Request) -> Answer:
    with db.write() as conn:
        return Provider(conn, options).userinfo(request)


def redirect_origin(db: Database, next_path: str) -> str | None:
    """When a login page will send the browser on to an authorization request, the
    origin of the registered redirect URI it will end at (the login form's
    Content-Security-Policy must allow it), else None."""
    parts = urlsplit(next_path)
    if parts.path != AUTHORIZE_PATH:
        return None
    query = dict(parse_qsl(parts.query))
    with db.write() as conn:
        client = clients_.find_client(conn, query.get("client_id", ""))
    if client is None:
        return None
    uri = query.get("redirect_uri") or client.redirect_uris[0]
    if uri not in client.redirect_uris:
        return None
    target = urlsplit(uri)
    return f"{target.scheme}://{target.netloc}"
