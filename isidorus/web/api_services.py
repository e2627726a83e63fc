"""The REST API's services: the catalog, the installed services, who may use each, their
logs and certificates, and the changes that take minutes (install, remove, upgrade, backup,
restore) run as background jobs.

A job is started by a POST that answers 202 with the job and its `Location`:
`/api/v1/services/{id}/job`, which tells how it goes until it ends (its lines, and how it
ended). The jobs are those of the admin area's Services pages (web/jobs.py): one at a time
on a service, whichever process, page or token asked for it, and each page sees the API's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from isidorus.errors import NotFoundError
from isidorus.ops import certificates as ops_certs
from isidorus.ops import service_backups as ops_backups
from isidorus.ops import services as ops
from isidorus.services.errors import ServiceError
from isidorus.services.manifest import ID_RE
from isidorus.web.api import PREFIX, Auth, Db, ErrorBody, Name, PathName, Strict
from isidorus.web.jobs import Job, Jobs
from isidorus.web.status import ListServices

Say = Callable[[str], None]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "The input breaks a rule (a domain or path that is not one).",
        404: "No such service (in the catalog, or installed), group or job.",
        409: "The change is refused as things stand: a job on the service runs, the service "
        "is installed already, the group is not allowed, or is the last one.",
    }
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


def _accepted() -> dict[int | str, dict[str, Any]]:
    return {
        202: {
            "description": "The job started; `Location` is where it tells how it goes.",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    }


# -- models


class CatalogEntryOut(BaseModel):
    id: str
    name: str
    description: str
    replaces: list[str]
    version: str
    sso: str = Field(description="How its users sign in: header, oidc, ldap or none.")


class ServiceOut(BaseModel):
    id: str
    name: str
    version: str
    url: str
    domain: str
    path: str
    state: str = Field(description="running, stopped, failed…; installing while it is.")
    health: str = Field(description='"ok", or what is wrong.')
    allow: list[str] = Field(description="The groups it is open to; none: every member.")
    replaces: list[str]


class AccessOut(BaseModel):
    id: str
    allow: list[str] = Field(description="The groups it is open to; none: every member.")


class RestartOut(BaseModel):
    id: str
    healthy: bool
    problem: str = Field(description='What is wrong after the restart; "" when healthy.')


class LogsOut(BaseModel):
    id: str
    lines: list[str]


class CertificateOut(BaseModel):
    domain: str
    services: list[str]
    issuer: str = Field(description="acme, self-signed, other (the operator's own) or none.")
    not_after: datetime | None
    days_left: int | None
    renewed: bool
    problem: str


class InstallIn(Strict):
    domain: str | None = Field(
        None, max_length=253, description="Where members reach it (default: ID.<host domain>)."
    )
    path: str = Field("/", max_length=200, description="Under this path of the domain.")
    allow: list[Name] = Field(
        [], max_length=100, description="Open it to these groups only (default: every member)."
    )


class RemoveIn(Strict):
    purge: bool = Field(
        False,
        description="Also delete its data, configuration, user and the packages its install added.",
    )


class RestoreIn(Strict):
    snapshot: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[0-9a-f]+$|^latest$",
        description="A snapshot of the service: its id, a unique prefix, or `latest`.",
    )


class JobOut(BaseModel):
    target: str = Field(
        description="The service it changes; for the host's jobs: nightly, backups, "
        "updates, upgrades or certificates."
    )
    action: str = Field(
        description="install, remove, upgrade, backup, restore; nightly, verify, prune, gc, "
        "scrub, repair-index, sync, apply, upgrade-all, renew."
    )
    actor: str
    state: str = Field(description="running, done, failed, or interrupted (its server stopped).")
    lines: list[str] = Field(description="What it said so far, step by step (the last 300).")
    note: str = Field(
        description="Once done: what it says at the end (an install's URL…); once failed: "
        "the one-line error."
    )
    result: dict[str, Any] | None = Field(
        description="Once ended, for the jobs that have one: what the command's `--json` "
        "prints (a verify's report, a prune's decisions…); null otherwise."
    )
    started_at: datetime
    finished_at: datetime | None
    url: str = Field(description="Where this job is told.")

    @classmethod
    def of(cls, job: Job, url: str) -> JobOut:
        return cls(
            target=job.service,
            action=job.action,
            actor=job.actor,
            state=job.state,
            lines=list(job.lines),
            note=job.note,
            result=job.result,
            started_at=datetime.fromtimestamp(job.started, UTC),
            finished_at=None if job.finished is None else datetime.fromtimestamp(job.finished, UTC),
            url=url,
        )


# -- what the app gives the endpoints


def data_dir(request: Request) -> str:
    return cast(str, request.app.state.data_dir)


def jobs(request: Request) -> Jobs:
    return cast(Jobs, request.app.state.jobs)


def list_services(request: Request) -> ListServices:
    return cast(ListServices, request.app.state.list_services)


def service_id(id: PathName) -> str:
    """A service's id as a URL names it; one that no service could have is not found."""
    if not re.fullmatch(ID_RE, id):
        raise NotFoundError(f"there is no service {id!r}: see `isidorus service catalog`")
    return id


DataDir = Annotated[str, Depends(data_dir)]
ServiceJobs = Annotated[Jobs, Depends(jobs)]
ServiceId = Annotated[str, Depends(service_id)]
GroupName = PathName

router = APIRouter(prefix="/v1", tags=["services"])


def job_url(service: str) -> str:
    return f"{PREFIX}/v1/services/{service}/job"


def start(
    response: Response,
    all_jobs: Jobs,
    service: str,
    action: str,
    actor: str,
    work: Callable[[Say], str],
) -> JobOut:
    """Start `work` as the job on `service`: the answer is 202, with the job's URL."""
    all_jobs.start(service, action, actor, work)
    job = all_jobs.get(service)
    assert job is not None
    response.headers["Location"] = job_url(service)
    return JobOut.of(job, job_url(service))


# -- the catalog and the installed services


@router.get("/services/catalog")
def catalog(who: Auth) -> list[CatalogEntryOut]:
    """Every service isidorus can install, built-in and the operator's own."""
    return [CatalogEntryOut.model_validate(m.to_json()) for m in ops.catalog()]


@router.get("/services/certificates")
def certificates(db: Db, who: Auth, where: DataDir) -> list[CertificateOut]:
    """The certificate of each domain the services are on: its issuer and its end (files
    only: no CA is asked)."""
    return [CertificateOut.model_validate(c.to_json()) for c in ops_certs.certificates(db, where)]


@router.get("/services")
def list_installed(
    db: Db, who: Auth, where: DataDir, found: Annotated[ListServices, Depends(list_services)]
) -> list[ServiceOut]:
    """The installed services, with their URL, state and health (checked now)."""
    return [ServiceOut.model_validate(s.to_json()) for s in found(db, where)]


@router.get("/services/{id}", responses=_errors(404))
def get_service(
    db: Db,
    who: Auth,
    where: DataDir,
    service: ServiceId,
    found: Annotated[ListServices, Depends(list_services)],
) -> ServiceOut:
    """One installed service, with its state and health (checked now)."""
    ops.get_installed(db, service)
    for s in found(db, where):
        if s.service.id == service:
            return ServiceOut.model_validate(s.to_json())
    raise NotFoundError(f"{service} is not installed: see `isidorus service list`")


@router.post("/services/{id}/allow/{group}", responses=_errors(404, 409))
def allow(
    db: Db, who: Auth, where: DataDir, all_jobs: ServiceJobs, service: ServiceId, group: GroupName
) -> AccessOut:
    """Open the service to the members of the group (once a group is named, only named
    groups' members get in)."""
    all_jobs.idle(service)
    s = ops.allow(db, where, service, group, who.actor)
    return AccessOut(id=s.id, allow=list(s.allow))


@router.delete("/services/{id}/allow/{group}", responses=_errors(404, 409))
def deny(
    db: Db, who: Auth, where: DataDir, all_jobs: ServiceJobs, service: ServiceId, group: GroupName
) -> AccessOut:
    """Close the service to the members of the group (the last group stays: without it
    every member would get in)."""
    all_jobs.idle(service)
    s = ops.deny(db, where, service, group, who.actor)
    return AccessOut(id=s.id, allow=list(s.allow))


@router.post("/services/{id}/restart", responses=_errors(404, 409))
def restart(
    db: Db, who: Auth, where: DataDir, all_jobs: ServiceJobs, service: ServiceId
) -> RestartOut:
    """Restart the service and wait for its health check: whether it passes."""
    all_jobs.idle(service)
    problem = ops.restart(db, where, service, who.actor)
    return RestartOut(id=service, healthy=not problem, problem=problem)


@router.get("/services/{id}/logs", responses=_errors(404))
def logs(
    db: Db,
    who: Auth,
    where: DataDir,
    service: ServiceId,
    lines: Annotated[int, Query(ge=1, le=100000, description="How many of the last lines.")] = 100,
) -> LogsOut:
    """The last lines the service wrote."""
    return LogsOut(id=service, lines=ops.logs(db, where, service, lines))


# -- the changes that take minutes: background jobs


@router.post(
    "/services/{id}/install",
    status_code=202,
    responses={**_accepted(), **_errors(400, 404, 409)},
)
def install(
    db: Db,
    who: Auth,
    where: DataDir,
    all_jobs: ServiceJobs,
    service: ServiceId,
    body: InstallIn,
    response: Response,
) -> JobOut:
    """Install the service from the catalog, start it and publish it behind nginx, in the
    background; the job's note is then the service's URL. What would stop the install
    before it changes anything (a service the catalog lacks, one installed already, a bad
    domain or path, a group that does not exist) is told at once instead."""
    options = ops.InstallOptions(service, body.domain, body.path, tuple(body.allow))
    ops.check_install(db, where, options)

    def work(say: Say) -> str:
        return ops.install(db, where, options, who.actor, say).url

    return start(response, all_jobs, service, "install", who.actor, work)


@router.post(
    "/services/{id}/remove", status_code=202, responses={**_accepted(), **_errors(404, 409)}
)
def remove(
    db: Db,
    who: Auth,
    where: DataDir,
    all_jobs: ServiceJobs,
    service: ServiceId,
    response: Response,
    body: RemoveIn | None = None,
) -> JobOut:
    """Stop and unpublish the service, in the background; its data stays unless `purge`.
    The job's note names what could not be removed."""
    ops.get_installed(db, service)
    purge = body.purge if body else False

    def work(say: Say) -> str:
        return "; ".join(ops.remove(db, where, service, purge, who.actor, say))

    return start(response, all_jobs, service, "remove", who.actor, work)


@router.post(
    "/services/{id}/upgrade", status_code=202, responses={**_accepted(), **_errors(404, 409)}
)
def upgrade(
    db: Db, who: Auth, where: DataDir, all_jobs: ServiceJobs, service: ServiceId, response: Response
) -> JobOut:
    """Upgrade the service to its catalog's version, backed up first, in the background;
    the job's note is then the version that runs. On failure the old version is put back
    with its data, and the failed job says so."""
    ops.get_installed(db, service)

    def work(say: Say) -> str:
        return ops.upgrade(db, where, service, who.actor, say).version

    return start(response, all_jobs, service, "upgrade", who.actor, work)


@router.post(
    "/services/{id}/backup", status_code=202, responses={**_accepted(), **_errors(404, 409)}
)
def backup(
    db: Db, who: Auth, where: DataDir, all_jobs: ServiceJobs, service: ServiceId, response: Response
) -> JobOut:
    """Snapshot the service's data and databases into the host's store, in the background;
    the job's note is then the snapshot's id."""
    ops.get_installed(db, service)

    def work(say: Say) -> str:
        return ops_backups.backup_service(db, where, service, who.actor, say).result.snapshot.id

    return start(response, all_jobs, service, "backup", who.actor, work)


@router.post(
    "/services/{id}/restore", status_code=202, responses={**_accepted(), **_errors(404, 409)}
)
def restore(
    db: Db,
    who: Auth,
    where: DataDir,
    all_jobs: ServiceJobs,
    service: ServiceId,
    body: RestoreIn,
    response: Response,
) -> JobOut:
    """Put the service back as it was in a snapshot of it, in the background; the job
    fails when the service is not healthy after it."""
    ops.get_installed(db, service)

    def work(say: Say) -> str:
        done = ops_backups.restore_service(db, where, service, body.snapshot, who.actor, say)
        if done.problem:
            raise ServiceError(f"{service} was restored but is not healthy: {done.problem}")
        return done.snapshot.id

    return start(response, all_jobs, service, "restore", who.actor, work)


# -- the jobs


@router.get("/services/{id}/job", responses=_errors(404))
def get_job(who: Auth, all_jobs: ServiceJobs, service: ServiceId) -> JobOut:
    """The last job on the service: running, or how it ended."""
    job = all_jobs.get(service)
    if job is None:
        raise NotFoundError(f"there is no job on {service}")
    return JobOut.of(job, job_url(service))


@router.delete("/services/{id}/job", status_code=204, responses=_errors(404, 409))
def clear_job(who: Auth, all_jobs: ServiceJobs, service: ServiceId) -> None:
    """Forget the last job on the service (refused while it runs)."""
    if all_jobs.get(service) is None:
        raise NotFoundError(f"there is no job on {service}")
    all_jobs.clear(service)
