"""The REST API's OpenID Connect clients: the services that sign their users in through
isidorus (`isidorus oidc client …`). A client's secret is shown once, when it is made:
only its hash is kept. Removing a client stops its sign-ins and tokens at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from isidorus.oidc.clients import MAX_URI, Client
from isidorus.ops import oidc as ops
from isidorus.web.api import Auth, Db, ErrorBody, Name, PathName, Strict

router = APIRouter(prefix="/v1", tags=["oidc"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "The input breaks a rule (a redirect URI that is not HTTPS, a group that does "
        "not exist, a public client without PKCE).",
        404: "No such client.",
        409: "A client of that name exists already.",
    }
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


class ClientOut(BaseModel):
    name: str
    client_id: str
    public: bool = Field(description="A public client has no secret and proves itself by PKCE.")
    redirect_uris: list[str]
    allowed_groups: list[str] = Field(description="Open to these groups only; none: every member.")
    pkce_required: bool
    created_at: datetime

    @classmethod
    def of(cls, c: Client) -> ClientOut:
        return cls.model_validate(c.to_json())


class NewClientOut(ClientOut):
    client_secret: str | None = Field(
        description="The secret, shown this once (only its hash is kept); null for a public client."
    )


class ClientIn(Strict):
    name: Name
    redirect_uris: list[Annotated[str, Field(min_length=1, max_length=MAX_URI)]] = Field(
        min_length=1,
        max_length=20,
        description="Where the service receives the sign-in (exact match): https://, or "
        "http:// on a loopback address.",
        examples=[["https://git.example.org/user/oauth2/isidorus/callback"]],
    )
    allow: list[Name] = Field(
        [], max_length=100, description="Open it to these groups only (default: every member)."
    )
    public: bool = Field(False, description="An app that cannot keep a secret: PKCE only.")
    pkce_required: bool = Field(
        True,
        description="false lets a confidential client sign in without PKCE (for a service "
        "that cannot send it).",
    )


@router.get("/oidc/clients")
def list_clients(who: Auth, db: Db) -> list[ClientOut]:
    """The registered clients, by name (`isidorus oidc client list`)."""
    return [ClientOut.of(c) for c in ops.list_clients(db)]


@router.post("/oidc/clients", status_code=201, responses=_errors(400, 409))
def add_client(who: Auth, db: Db, body: ClientIn) -> NewClientOut:
    """Register a service (`isidorus oidc client add`); its secret is returned once."""
    new = ops.add_client(
        db,
        who.actor,
        body.name,
        body.redirect_uris,
        body.allow,
        public=body.public,
        pkce_required=body.pkce_required,
    )
    return NewClientOut(**ClientOut.of(new.client).model_dump(), client_secret=new.secret)


@router.get("/oidc/clients/{name}", responses=_errors(404))
def get_client(who: Auth, db: Db, name: PathName) -> ClientOut:
    """One client."""
    return ClientOut.of(ops.get_client(db, name))


@router.delete("/oidc/clients/{name}", status_code=204, responses=_errors(404))
def remove_client(who: Auth, db: Db, name: PathName) -> None:
    """Remove a client (`isidorus oidc client remove`): its sign-ins and tokens stop
    working at once."""
    ops.remove_client(db, who.actor, name)
