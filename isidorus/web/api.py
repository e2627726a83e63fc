"""The REST API, mounted at `/api`: the accounts commands under `/api/v1` (this module:
users and their app passwords, groups, tokens, the audit log), the services commands
(api_services.py), the host's operations (api_operations.py) and changes (api_host.py),
its store and remotes (api_backups.py, api_remotes.py) and OpenID Connect's clients
(api_oidc.py), described by the OpenAPI document at `/api/openapi.json`.

Callers present an admin's API token (`Authorization: Bearer isi_…`) and act with that
admin's rights; each change goes to the audit log as `api:<token name>`. Every endpoint
calls the same `isidorus.ops` function as the command line. Errors are JSON,
`{"error": "<one line>"}`: 400 a rule broken, 401 no valid token, 403 not allowed, 404 not
found, 409 exists already, 422 a request that does not fit the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, cast
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from isidorus import __version__
from isidorus.accounts.app_passwords import MAX_LABEL, AppPassword
from isidorus.accounts.audit import MAX_LIMIT, AuditEntry
from isidorus.accounts.errors import TokenRefused
from isidorus.accounts.groups import Group
from isidorus.accounts.passwords import MAX_LENGTH, MIN_LENGTH
from isidorus.accounts.tokens import MAX_DAYS, ApiToken
from isidorus.accounts.users import EMAIL_PATTERN, NAME_PATTERN, User
from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.ops import services as ops_services
from isidorus.ops import tokens as ops_tokens
from isidorus.ops.tokens import Caller
from isidorus.services.errors import ServiceError
from isidorus.state.db import Database
from isidorus.web.base import Forbidden
from isidorus.web.jobs import Jobs
from isidorus.web.status import ListServices

PREFIX = "/api"


def is_api(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The body of every error of the API; 401 says which scheme to use."""
    extra = dict(headers or {})
    if status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse({"error": message}, status_code=status, headers=extra)


# -- models: what the OpenAPI document describes


class ErrorBody(BaseModel):
    error: str = Field(description="One line: the cause and, where there is one, the fix.")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        max_length=32,
        description="1 to 32 lowercase letters, digits, '.', '_' or '-', starting with a letter",
        examples=["alice"],
    ),
]
Password = Annotated[
    str,
    Field(
        min_length=MIN_LENGTH,
        max_length=MAX_LENGTH,
        description=f"At least {MIN_LENGTH} characters, not containing the login name or "
        "e-mail, and not a run of the same few characters.",
    ),
]
# names in paths are not checked against the rules: a name that breaks them exists nowhere
PathName = Annotated[str, Path(min_length=1, max_length=200)]


class UserOut(BaseModel):
    name: str
    email: str
    fullname: str
    is_admin: bool
    disabled: bool
    totp: bool
    groups: list[str]
    created_at: datetime

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(
            name=u.name,
            email=u.email,
            fullname=u.fullname,
            is_admin=u.is_admin,
            disabled=u.disabled,
            totp=u.has_totp,
            groups=list(u.groups),
            created_at=_utc(u.created_at),
        )


class NewUserOut(UserOut):
    password: str | None = Field(
        description="The password made for the user, shown this once; null when one was given."
    )


class UserIn(Strict):
    name: Name
    email: str = Field(pattern=EMAIL_PATTERN, max_length=254, examples=["alice@example.org"])
    fullname: str = Field("", max_length=200)
    password: Password | None = Field(None, description="Omit it to have one made (returned once).")
    is_admin: bool = False


class PasswordIn(Strict):
    password: Password


class ProfileIn(Strict):
    email: str | None = Field(
        None, pattern=EMAIL_PATTERN, max_length=254, description="Omit it to keep it."
    )
    fullname: str | None = Field(None, max_length=200, description="Omit it to keep it.")


class AppPasswordOut(BaseModel):
    id: int
    label: str = Field(description="The app it is for, as named when it was made.")
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, a: AppPassword) -> AppPasswordOut:
        return cls(id=a.id, label=a.label, created_at=a.created_at, last_used_at=a.last_used_at)


class NewAppPasswordOut(AppPasswordOut):
    password: str = Field(description="The app password, shown this once: only its hash is kept.")


class AppPasswordIn(Strict):
    label: str = Field(
        min_length=1,
        max_length=MAX_LABEL,
        description="The app (and device) it is for.",
        examples=["phone calendar"],
    )


class GroupOut(BaseModel):
    name: str
    description: str
    members: list[str]

    @classmethod
    def of(cls, g: Group) -> GroupOut:
        return cls(name=g.name, description=g.description, members=list(g.members))


class GroupIn(Strict):
    name: Name
    description: str = Field("", max_length=200)


class TokenOut(BaseModel):
    name: str
    user: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    expired: bool

    @classmethod
    def of(cls, t: ApiToken) -> TokenOut:
        return cls(
            name=t.name,
            user=t.user,
            created_at=t.created_at,
            last_used_at=t.last_used_at,
            expires_at=t.expires_at,
            expired=t.expired(),
        )


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret, shown this once: only its hash is kept.")


class TokenIn(Strict):
    name: Name
    user: Name | None = Field(None, description="The admin it acts for (default: the caller).")
    expires_days: int | None = Field(
        None, ge=1, le=MAX_DAYS, description="Refused after this many days (default: never)."
    )


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="`cli:<login>`, a user's name, or `api:<token name>`.")
    action: str
    target: str
    detail: str

    @classmethod
    def of(cls, e: AuditEntry) -> AuditEntryOut:
        return cls(
            id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, detail=e.detail
        )


class AuditQuery(Strict):  # an unknown parameter (a typo) is refused, not ignored
    limit: int = Field(50, ge=1, le=MAX_LIMIT, description="How many entries, at most.")
    # (SQLite's integers end at 2**63 - 1)
    before: int | None = Field(None, ge=1, le=2**63 - 1, description="Only older entries.")


class AuditPageOut(BaseModel):
    entries: list[AuditEntryOut]
    next: str | None = Field(description="The URL of the next (older) page; null on the last.")


class MeOut(BaseModel):
    user: UserOut
    token: TokenOut


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "The input breaks a rule (a weak password, a token for one who is not an admin).",
        404: "No such user, group, token or app password.",
        409: "One of that name exists already; or the change would leave no enabled admin.",
    }
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


# -- who calls

bearer = HTTPBearer(
    auto_error=False, description="An admin's API token, made with `isidorus token add`."
)


def state(request: Request) -> Database:
    return cast(Database, request.app.state.db)


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    if credentials is None:
        raise TokenRefused("no API token: send the header `Authorization: Bearer <token>`")
    return ops_tokens.authenticate(state(request), credentials.credentials)


Db = Annotated[Database, Depends(state)]
Auth = Annotated[Caller, Depends(caller)]

# every endpoint may answer these
COMMON: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or one that is refused."},
    403: {
        "model": ErrorBody,
        "description": "The token's user is not an admin, or acts on their own account.",
    },
    422: {"model": ErrorBody, "description": "The request does not fit this document."},
}

router = APIRouter(prefix="/v1", responses=COMMON)


@router.get("/me", tags=["tokens"])
def me(who: Auth) -> MeOut:
    """The caller: the admin and the token the request was made with."""
    return MeOut(user=UserOut.of(who.user), token=TokenOut.of(who.token))


# -- users


@router.get("/users", tags=["users"])
def list_users(db: Db, who: Auth) -> list[UserOut]:
    """Every user, by name."""
    return [UserOut.of(u) for u in ops.list_users(db)]


@router.post("/users", status_code=201, tags=["users"], responses=_errors(400, 409))
def add_user(db: Db, who: Auth, body: UserIn) -> NewUserOut:
    """Add a user; without a password, one is made and returned once."""
    password = body.password or ops.new_password()
    u = ops.add_user(
        db,
        who.actor,
        body.name,
        body.email,
        password,
        fullname=body.fullname,
        is_admin=body.is_admin,
    )
    made = None if body.password else password
    return NewUserOut(**UserOut.of(u).model_dump(), password=made)


@router.get("/users/{name}", tags=["users"], responses=_errors(404))
def get_user(db: Db, who: Auth, name: PathName) -> UserOut:
    """One user."""
    return UserOut.of(ops.get_user(db, name))


def _not_self(who: Caller, name: str, what: str) -> None:
    if name == who.user.name:
        raise Forbidden(f"you cannot {what} your own account: ask another admin")


@router.delete("/users/{name}", status_code=204, tags=["users"], responses=_errors(404))
def remove_user(db: Db, who: Auth, name: PathName) -> None:
    """Remove a user, their group memberships, sessions and API tokens."""
    _not_self(who, name, "remove")
    ops.remove_user(db, who.actor, name)


@router.put("/users/{name}/password", status_code=204, tags=["users"], responses=_errors(400, 404))
def set_password(db: Db, who: Auth, name: PathName, body: PasswordIn) -> None:
    """Set a user's password; every session of theirs ends."""
    ops.set_password(db, who.actor, name, body.password)


@router.post("/users/{name}/disable", tags=["users"], responses=_errors(404))
def disable_user(db: Db, who: Auth, name: PathName) -> UserOut:
    """Stop a user from logging in anywhere (their data stays; their sessions end)."""
    _not_self(who, name, "disable")
    ops.set_disabled(db, who.actor, name, True)
    return UserOut.of(ops.get_user(db, name))


@router.post("/users/{name}/enable", tags=["users"], responses=_errors(404))
def enable_user(db: Db, who: Auth, name: PathName) -> UserOut:
    """Let a user log in again."""
    ops.set_disabled(db, who.actor, name, False)
    return UserOut.of(ops.get_user(db, name))


@router.patch("/users/{name}", tags=["users"], responses=_errors(400, 404))
def edit_user(db: Db, who: Auth, name: PathName, body: ProfileIn) -> UserOut:
    """Change a user's e-mail or full name (what is left out stays)."""
    return UserOut.of(
        ops.update_profile(db, who.actor, name, email=body.email, fullname=body.fullname)
    )


@router.post("/users/{name}/promote", tags=["users"], responses=_errors(404))
def promote_user(db: Db, who: Auth, name: PathName) -> UserOut:
    """Make a user an admin of the host (again changes nothing)."""
    ops.set_admin(db, who.actor, name, True)
    return UserOut.of(ops.get_user(db, name))


@router.post("/users/{name}/demote", tags=["users"], responses=_errors(404))
def demote_user(db: Db, who: Auth, name: PathName) -> UserOut:
    """Make an admin a member again (their API tokens are refused from then on); the last
    enabled admin cannot be."""
    _not_self(who, name, "demote")
    ops.set_admin(db, who.actor, name, False)
    return UserOut.of(ops.get_user(db, name))


@router.delete("/users/{name}/totp", status_code=204, tags=["users"], responses=_errors(404))
def turn_off_totp(db: Db, who: Auth, name: PathName) -> None:
    """Turn off a user's second factor (for one who lost their phone): they log in with
    their password alone until they turn it on again."""
    ops.turn_off_totp(db, who.actor, name)


# -- a member's app passwords


@router.get("/users/{name}/app-passwords", tags=["users"], responses=_errors(404))
def list_app_passwords(db: Db, who: Auth, name: PathName) -> list[AppPasswordOut]:
    """A user's app passwords, oldest first (never the passwords themselves)."""
    return [AppPasswordOut.of(a) for a in ops.list_app_passwords(db, name)]


@router.post(
    "/users/{name}/app-passwords", status_code=201, tags=["users"], responses=_errors(400, 404)
)
def add_app_password(db: Db, who: Auth, name: PathName, body: AppPasswordIn) -> NewAppPasswordOut:
    """Make an app password for a user, for one app that signs in with their name and
    password on every request (a calendar on a phone); it is returned once."""
    made, secret = ops.add_app_password(db, name, body.label, actor=who.actor)
    return NewAppPasswordOut(**AppPasswordOut.of(made).model_dump(), password=secret)


@router.delete(
    "/users/{name}/app-passwords/{id}", status_code=204, tags=["users"], responses=_errors(404)
)
def remove_app_password(
    db: Db, who: Auth, name: PathName, id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> None:
    """Revoke one of a user's app passwords: the sessions it opened end with it."""
    ops.remove_app_password(db, name, id, actor=who.actor)


# -- groups


@router.get("/groups", tags=["groups"])
def list_groups(db: Db, who: Auth) -> list[GroupOut]:
    """Every group with its members."""
    return [GroupOut.of(g) for g in ops.list_groups(db)]


@router.post("/groups", status_code=201, tags=["groups"], responses=_errors(400, 409))
def add_group(db: Db, who: Auth, body: GroupIn) -> GroupOut:
    """Add a group."""
    return GroupOut.of(ops.add_group(db, who.actor, body.name, body.description))


@router.get("/groups/{name}", tags=["groups"], responses=_errors(404))
def get_group(db: Db, who: Auth, name: PathName) -> GroupOut:
    """One group with its members."""
    return GroupOut.of(ops.get_group(db, name))


@router.delete("/groups/{name}", status_code=204, tags=["groups"], responses=_errors(404))
def remove_group(db: Db, who: Auth, name: PathName) -> None:
    """Remove a group (its members stay)."""
    ops.remove_group(db, who.actor, name)


@router.put("/groups/{name}/members/{user}", tags=["groups"], responses=_errors(404))
def add_member(db: Db, who: Auth, name: PathName, user: PathName) -> GroupOut:
    """Put a user in a group (nothing changes if they are in it already)."""
    return GroupOut.of(ops.add_member(db, who.actor, name, user))


@router.delete("/groups/{name}/members/{user}", tags=["groups"], responses=_errors(404))
def remove_member(db: Db, who: Auth, name: PathName, user: PathName) -> GroupOut:
    """Take a user out of a group."""
    return GroupOut.of(ops.remove_member(db, who.actor, name, user))


# -- tokens


@router.get("/tokens", tags=["tokens"])
def list_tokens(db: Db, who: Auth) -> list[TokenOut]:
    """Every API token (never their secrets)."""
    return [TokenOut.of(t) for t in ops_tokens.list_tokens(db)]


@router.post("/tokens", status_code=201, tags=["tokens"], responses=_errors(400, 404, 409))
def add_token(db: Db, who: Auth, body: TokenIn) -> NewTokenOut:
    """Make a token for an admin (the caller by default); its secret is returned once."""
    new = ops_tokens.add_token(
        db, who.actor, body.name, body.user or who.user.name, expires_days=body.expires_days
    )
    return NewTokenOut(**TokenOut.of(new.token).model_dump(), token=new.secret)


@router.delete("/tokens/{name}", status_code=204, tags=["tokens"], responses=_errors(404))
def remove_token(db: Db, who: Auth, name: PathName) -> None:
    """Remove a token: it is refused from the next request on."""
    ops_tokens.remove_token(db, who.actor, name)


# -- audit log


@router.get("/audit", tags=["audit"])
def list_audit(
    request: Request, db: Db, who: Auth, query: Annotated[AuditQuery, Query()]
) -> AuditPageOut:
    """The audit log, newest first, a page at a time: follow `next` for older entries."""
    page = ops.list_audit(db, limit=query.limit, before=query.before)
    nxt = None
    if page.next_before is not None:
        params = {"limit": query.limit, "before": page.next_before}
        nxt = f"{request.url.path}?{urlencode(params)}"
    return AuditPageOut(entries=[AuditEntryOut.of(e) for e in page.entries], next=nxt)


# -- the application


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request does not fit the API's description (see /api/openapi.json)"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    where = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
    if first.get("type") == "json_invalid":
        where = "body"
    msg = " ".join(str(first.get("msg", "invalid")).split())
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"


async def api_error(request: Request, exc: Exception) -> Response:
    """Every error of the API as JSON: the API's own, and those of the server around it
    (a path that reaches no route of the API is answered by the server, not by the API)."""
    if type(exc) is ServiceError:  # a change of a service refused as things stand
        return json_error(409, str(exc))
    if isinstance(exc, IsidorusError):
        return json_error(exc.http_status, str(exc))
    if isinstance(exc, RequestValidationError):
        return json_error(422, _validation_message(exc))
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        # FastAPI's, for a body it cannot even decode (bytes that are not UTF-8): as a
        # body that is not JSON, it does not fit the document
        return json_error(422, f"body: it is not JSON in UTF-8 (see {PREFIX}/openapi.json)")
    if isinstance(exc, HTTPException):
        path = quote(request.url.path)  # one line, whatever the path holds
        message = {
            404: f"there is no {path} in the API: see {PREFIX}/openapi.json",
            405: f"{path} does not take {request.method}: see {PREFIX}/openapi.json",
        }.get(exc.status_code, str(exc.detail))
        return json_error(exc.status_code, message, exc.headers)
    return json_error(500, "an internal error occurred")


def routers() -> list[APIRouter]:
    """Every router of the API: the host's (first: its paths under /services are not
    services'), this module's, the services', the operations', the backups', the
    remotes' and OpenID Connect's."""
    # they build on this module
    from isidorus.web import (
        api_backups,
        api_host,
        api_oidc,
        api_operations,
        api_remotes,
        api_services,
    )

    return [
        api_host.router,
        router,
        api_services.router,
        api_operations.router,
        api_backups.router,
        api_remotes.router,
        api_oidc.router,
    ]


def create_api(
    db: Database,
    data_dir: str,
    jobs: Jobs | None = None,
    list_services: ListServices | None = None,
) -> FastAPI:
    """The API as an application of its own, to mount at `/api`, over the host at
    `data_dir`: `jobs` are the services' background jobs (shared with the admin area's
    pages), `list_services` checks the installed services (default: as the command does)."""
    api = FastAPI(
        title="isidorus",
        version=__version__,
        summary="Accounts, groups, API tokens, the audit log, the services and the "
        "operations of an isidorus host.",
        openapi_url="/openapi.json",
        # the interactive pages load their scripts from a CDN: no page of isidorus may
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        exception_handlers={
            IsidorusError: api_error,
            HTTPException: api_error,
            RequestValidationError: api_error,
            500: api_error,
        },
    )
    api.state.db = db
    api.state.data_dir = data_dir
    api.state.jobs = jobs or Jobs(data_dir)
    api.state.host_jobs = Jobs(data_dir, "host-jobs")
    api.state.list_services = list_services or ops_services.list_installed
    for r in routers():
        api.include_router(r, responses=COMMON)
    return api
