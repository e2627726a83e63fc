"""The REST API's operations of the host: the jobs history (runs), `doctor`, the pending
updates, the schedule of the nightly job, and the nightly job itself, started as a
background job (see api_services.py) whose `Location` is `/api/v1/nightly/job`.

The host's jobs (the nightly job, the store's, updates, every service's upgrade, the
certificates' renewal) are started, told and forgotten here (start_host_job, host_job,
clear_host_job), each at its own URL (HOST_JOBS), one of each at a time.

Each reads the configuration file as the command line does (jobs_config.host_config).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from isidorus.errors import IsidorusError, NotFoundError
from isidorus.ops import doctor as ops_doctor
from isidorus.ops import jobs_config, runs
from isidorus.ops import nightly as ops_nightly
from isidorus.ops import schedule as ops_schedule
from isidorus.ops import updates as ops_updates
from isidorus.web.api import PREFIX, Auth, Db, ErrorBody, Strict
from isidorus.web.api_services import DataDir, JobOut, Say, ServiceJobs, job_url
from isidorus.web.jobs import Busy, Jobs, Work

NIGHTLY = "nightly"  # the nightly job's name among the host's jobs
NIGHTLY_URL = f"{PREFIX}/v1/nightly/job"


@dataclass(frozen=True)
class HostJob:
    """One of the host's jobs, as the API tells it (GET and DELETE at `url`)."""

    url: str  # where it is told
    what: str  # what it is, in a few words: "a nightly job"
    none: str  # why there is none to tell
    tag: str = "operations"  # its endpoints' group in the OpenAPI document
    kept: str = ""  # what stays once it is forgotten


RUNS_URL = f"{PREFIX}/v1/runs"
HOST_JOBS = {
    NIGHTLY: HostJob(
        NIGHTLY_URL,
        "a nightly job",
        f"no nightly job was started here: the jobs history is at {RUNS_URL}",
        kept="its run stays in the jobs history",
    ),
    "backups": HostJob(
        f"{PREFIX}/v1/backups/job",
        "a job on the host's store",
        "no job on the host's store was started here",
        tag="backups",
    ),
    "updates": HostJob(
        f"{PREFIX}/v1/updates/job",
        "an update",
        f"no update was started here: the jobs history is at {RUNS_URL}",
        kept="its run stays in the jobs history",
    ),
    "upgrades": HostJob(
        f"{PREFIX}/v1/services/upgrade/job",
        "an upgrade of every service",
        "no upgrade of every service was started here",
        tag="services",
    ),
    "certificates": HostJob(
        f"{PREFIX}/v1/services/certificates/job",
        "a renewal of the certificates",
        "no renewal of the certificates was started here",
        tag="services",
    ),
}

router = APIRouter(prefix="/v1", tags=["operations"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "The configuration file breaks a rule.",
        404: "No such run, or no nightly job started here.",
        409: "A nightly job runs already.",
    }
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


def host_jobs(request: Request) -> Jobs:
    return cast(Jobs, request.app.state.host_jobs)


HostJobs = Annotated[Jobs, Depends(host_jobs)]


def accepted(why409: str) -> dict[int | str, dict[str, Any]]:
    """The answers of a POST that starts one of the host's jobs."""
    return {
        202: {
            "description": "The job started; `Location` is where it tells how it goes.",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        409: {"model": ErrorBody, "description": why409},
    }


def start_host_job(
    response: Response, all_jobs: Jobs, name: str, action: str, actor: str, work: Work
) -> JobOut:
    """Start `work` as the host's job `name`: the answer is 202, with the job's URL in
    `Location`. Busy (409) while the last job of that name runs, wherever it was started,
    naming it."""
    known = HOST_JOBS[name]
    try:
        all_jobs.start(name, action, actor, work)
    except Busy:
        raise busy(all_jobs, name) from None
    job = all_jobs.get(name)
    assert job is not None
    response.headers["Location"] = known.url
    return JobOut.of(job, known.url)


def busy(all_jobs: Jobs, name: str) -> Busy:
    """The 409 of a change refused while the host's job `name` runs, naming it."""
    known = HOST_JOBS[name]
    running = all_jobs.get(name)
    who = f" ({running.action}, by {running.actor})" if running is not None else ""
    return Busy(f"{known.what} runs already{who}: wait for its end, told at {known.url}")


def host_job(all_jobs: Jobs, name: str) -> JobOut:
    """The last of the host's jobs `name`; NotFoundError when there is none."""
    job = all_jobs.get(name)
    if job is None:
        raise NotFoundError(HOST_JOBS[name].none)
    return JobOut.of(job, HOST_JOBS[name].url)


def clear_host_job(all_jobs: Jobs, name: str) -> None:
    """Forget the last of the host's jobs `name` (Busy while it runs)."""
    host_job(all_jobs, name)
    try:
        all_jobs.clear(name)
    except Busy:
        raise busy(all_jobs, name) from None


# -- models (the shapes of the commands' --json)


class StepOut(BaseModel):
    step: str = Field(description="state, dump, backup, prune, gc, sync, verify, upgrade…")
    target: str = Field(description='What it worked on: a service, a remote; "" for the host.')
    status: str = Field(description="ok, failed or skipped.")
    started_at: datetime
    seconds: float
    bytes: int = Field(description="New bytes stored, or sent.")
    error: str
    detail: dict[str, Any]


class RunOut(BaseModel):
    id: int
    kind: str = Field(description="nightly, update or copy.")
    status: str = Field(description="running, ok, failed or interrupted.")
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    bytes: int
    errors: int
    steps: list[StepOut]


class RunLogOut(RunOut):
    log: list[str] = Field(description="What the run said, line by line.")


class RunsQuery(Strict):  # an unknown parameter (a typo) is refused, not ignored
    kind: Literal["nightly", "update", "copy"] | None = Field(
        None, description="Only runs of this kind."
    )
    limit: int = Field(20, ge=1, le=1000, description="How many runs, latest first.")


class FindingOut(BaseModel):
    check: str
    severity: str = Field(description="ok, info, warning or critical.")
    message: str
    fix: str = Field(description='What to do; "" when nothing is to be done.')


class DoctorOut(BaseModel):
    worst: str = Field(description="The worst severity among the findings.")
    findings: list[FindingOut]


class PackageUpdateOut(BaseModel):
    name: str
    installed: str
    candidate: str
    security: bool
    origins: list[str]


class ServiceUpdateOut(BaseModel):
    id: str
    version: str
    catalog_version: str


class UpdatesOut(BaseModel):
    refreshed: bool = Field(description="Always false here: apt's lists are read as they are.")
    packages: list[PackageUpdateOut]
    services: list[ServiceUpdateOut]


class ScheduleOut(BaseModel):
    kind: str = Field(description='"systemd timer", "isidorus scheduler", or "none".')
    time: str
    random_delay_seconds: float
    state: str
    next_due: datetime | None
    last_run: RunOut | None


# -- the jobs history


@router.get("/runs", tags=["operations"])
def list_runs(who: Auth, db: Db, query: Annotated[RunsQuery, Query()]) -> list[RunOut]:
    """The runs of the nightly job and of updates, latest first, with their steps."""
    found = runs.list_runs(db, kind=query.kind, limit=query.limit)
    return [RunOut.model_validate(r.to_json(with_log=False)) for r in found]


@router.get("/runs/{id}", responses=_errors(404))
def get_run(who: Auth, db: Db, id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> RunLogOut:
    """One run, with its steps and its log."""
    return RunLogOut.model_validate(runs.get_run(db, id).to_json())


# -- the host's state


@router.get("/doctor", responses=_errors(400))
def doctor(who: Auth, db: Db, where: DataDir) -> DoctorOut:
    """Diagnose the host, as `isidorus doctor` does: disks, certificates, services,
    backups, remotes, clock, DNS, updates, notifications."""
    conf, jobs, remotes = jobs_config.host_config()
    findings = ops_doctor.diagnose(db, where, conf, jobs, remotes)
    return DoctorOut(
        worst=ops_doctor.worst(findings),
        findings=[FindingOut.model_validate(f.to_json()) for f in findings],
    )


@router.get("/updates", responses=_errors(400))
def updates(who: Auth, db: Db) -> UpdatesOut:
    """The pending Debian and service upgrades, security ones marked, from apt's lists as
    they are (`isidorus update check` refreshes them first)."""
    return UpdatesOut.model_validate(ops_updates.check_updates(db, refresh=False).to_json())


@router.get("/schedule", responses=_errors(400))
def schedule(who: Auth, db: Db, where: DataDir) -> ScheduleOut:
    """How the nightly job is scheduled, when it runs next, and how its last run went."""
    conf, jobs, _remotes = jobs_config.host_config()
    return ScheduleOut.model_validate(ops_schedule.status(db, where, conf, jobs.nightly).to_json())


# -- the nightly job


@router.post(
    "/nightly",
    status_code=202,
    responses={**accepted("A nightly job runs already."), **_errors(400)},
)
def nightly(who: Auth, db: Db, where: DataDir, all_jobs: HostJobs, response: Response) -> JobOut:
    """Run the nightly job now, in the background, as `isidorus nightly` does; its run is
    in the jobs history (`/runs`) too. Refused while one runs, wherever it was started."""
    jobs_config.host_config()  # a broken configuration file is told now
    ops_nightly.check_idle(where)

    def work(say: Say) -> str:
        done = ops_nightly.nightly(db, where, say)
        failed = [f"{s.step} {s.target}".strip() for s in done.steps if s.status == "failed"]
        if failed:
            raise IsidorusError(f"run {done.id} failed: {', '.join(failed)}")
        return f"run {done.id} ok"

    return start_host_job(response, all_jobs, NIGHTLY, "nightly", who.actor, work)


def job_endpoints(on: APIRouter, name: str) -> None:
    """GET and DELETE, on the router of the module that starts it, at the URL of the host's
    job `name` (HOST_JOBS)."""
    job = HOST_JOBS[name]
    path = job.url.removeprefix(f"{PREFIX}/v1")
    what = job.what.split(" ", 1)[1]  # "a nightly job" -> "nightly job"
    missing = {"model": ErrorBody, "description": f"No {what} was started here."}
    running = {"model": ErrorBody, "description": "It runs: wait for its end."}

    def tell(who: Auth, all_jobs: HostJobs) -> JobOut:
        return host_job(all_jobs, name)

    def forget(who: Auth, all_jobs: HostJobs) -> None:
        clear_host_job(all_jobs, name)

    tell.__doc__ = f"The last {what} started here: running, or how it ended."
    forget.__doc__ = (
        f"Forget the last {what} (refused while it runs{'; ' if job.kept else ''}{job.kept})."
    )
    key = name.replace("-", "_")
    on.add_api_route(
        path, tell, methods=["GET"], tags=[job.tag], name=f"{key}_job", responses={404: missing}
    )
    on.add_api_route(
        path,
        forget,
        methods=["DELETE"],
        status_code=204,
        tags=[job.tag],
        name=f"clear_{key}_job",
        responses={404: missing, 409: running},
    )


job_endpoints(router, NIGHTLY)


# -- every job


@router.get("/jobs", tags=["services"])
def list_jobs(who: Auth, service_jobs: ServiceJobs, all_jobs: HostJobs) -> list[JobOut]:
    """The last job on each service, and the last of each of the host's jobs started here
    (the nightly job, the store's, updates…), latest first."""
    found = [JobOut.of(j, job_url(j.service)) for j in service_jobs.all()]
    found += [
        JobOut.of(j, HOST_JOBS[j.service].url) for j in all_jobs.all() if j.service in HOST_JOBS
    ]
    return sorted(found, key=lambda j: j.started_at, reverse=True)
