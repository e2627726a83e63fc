"""The REST API's changes of the host as a whole: every service's upgrade (`service upgrade
--all`) and the certificates' renewal (`service certificates --renew`), the updates
(`update apply`), each a background job of the host told at its own URL; the schedule of
the nightly job (`schedule install`, `schedule remove`), a test notification (`notify
test`) and the directory's sync (`directory sync`), which answer at once.

Its router comes before the services' one: `/services/upgrade/job` and
`/services/certificates/job` are the host's jobs, not those of services with such ids.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from isidorus.ops import certificates as ops_certs
from isidorus.ops import directory as ops_directory
from isidorus.ops import jobs_config
from isidorus.ops import notify as ops_notify
from isidorus.ops import schedule as ops_schedule
from isidorus.ops import services as ops_services
from isidorus.ops import updates as ops_updates
from isidorus.web.api import Auth, Db, ErrorBody, Strict
from isidorus.web.api_operations import (
    HostJobs,
    ScheduleOut,
    accepted,
    job_endpoints,
    start_host_job,
)
from isidorus.web.api_services import DataDir, JobOut, Say
from isidorus.web.jobs import Done

router = APIRouter(prefix="/v1")


def answers(**why: str) -> dict[int | str, dict[str, Any]]:
    """Error answers, by status (`e400="…"`), each with its reason."""
    return {int(k[1:]): {"model": ErrorBody, "description": v} for k, v in why.items()}


# -- every service's upgrade


@router.post(
    "/services/upgrade",
    status_code=202,
    tags=["services"],
    responses={
        **accepted("An upgrade of every service runs already."),
        **answers(e400="The configuration breaks a rule."),
    },
)
def upgrade_all(
    who: Auth, db: Db, where: DataDir, all_jobs: HostJobs, response: Response
) -> JobOut:
    """Upgrade every service whose catalog has another version, one after the other, each
    backed up first (`isidorus service upgrade --all`), in the background. A service
    whose upgrade fails is back at its old version and the others go on; the job then
    fails, naming it. Its `result` lists what each service now runs."""
    ops_services.upgradable(db)  # a broken manifest of the operator's is told now

    def work(say: Say) -> Done:
        found = ops_services.upgrade_all(db, where, who.actor, say)
        for r in found.done:
            say(
                f"{r.service} is at {r.version}" + (f" (was {r.old_version})" if r.upgraded else "")
            )
        for _service, error in found.failed:
            say(f"warning: {error}")
        if found.failed:
            names = ", ".join(s for s, _e in found.failed)
            return Done(
                f"the upgrade of {names} failed: {found.failed[0][1]}", found.to_json(), ok=False
            )
        upgraded = [f"{r.service} {r.version}" for r in found.done if r.upgraded]
        note = (
            f"upgraded: {', '.join(upgraded)}"
            if upgraded
            else "every installed service is at its catalog's version"
        )
        return Done(note, found.to_json())

    return start_host_job(response, all_jobs, "upgrades", "upgrade-all", who.actor, work)


job_endpoints(router, "upgrades")


# -- the certificates' renewal


class RenewIn(Strict):
    days: int = Field(
        30,
        ge=1,
        le=365,
        description="Renew a certificate from the ACME CA that ends within N days.",
    )


@router.post(
    "/services/certificates/renew",
    status_code=202,
    tags=["services"],
    responses=accepted(
        "A renewal runs already, or the sites have no certificates (services_tls = none)."
    ),
)
def renew_certificates(
    who: Auth,
    db: Db,
    where: DataDir,
    all_jobs: HostJobs,
    response: Response,
    body: RenewIn | None = None,
) -> JobOut:
    """Renew the certificates that are due and have nginx serve them (`isidorus service
    certificates --renew`), in the background; the job fails when one could not be
    renewed (it keeps what it had), and its `result` lists every certificate."""
    days = body.days if body else 30
    ops_certs.check_renewable()

    def work(say: Say) -> Done:
        found = ops_certs.renew(db, where, who.actor, say, days)
        renewed = [c.domain for c in found if c.renewed]
        problems = [c.problem for c in found if c.problem]
        for p in problems:
            say(f"warning: {p}")
        result = {"certificates": [c.to_json() for c in found]}
        if problems:
            return Done("; ".join(problems), result, ok=False)
        note = f"renewed: {', '.join(renewed)}" if renewed else "no certificate was due"
        return Done(note, result)

    return start_host_job(response, all_jobs, "certificates", "renew", who.actor, work)


job_endpoints(router, "certificates")


# -- updates


class ApplyIn(Strict):
    security_only: bool = Field(
        False,
        description="Only the Debian security upgrades; no other package, and no service.",
    )


@router.post(
    "/updates/apply",
    status_code=202,
    tags=["operations"],
    responses={
        **accepted("An update runs already, wherever it was started."),
        **answers(e400="The server does not run as root, or the configuration breaks a rule."),
    },
)
def apply_updates(
    who: Auth,
    db: Db,
    where: DataDir,
    all_jobs: HostJobs,
    response: Response,
    body: ApplyIn | None = None,
) -> JobOut:
    """Apply the pending updates with a snapshot first and a way back (`isidorus update
    apply`), in the background; its run is in the jobs history (`/runs`) too. The job
    fails when a step failed (a service rolled back among them); its `result` is the
    run."""
    security_only = bool(body and body.security_only)
    jobs_config.host_config()  # a broken configuration file is told now
    ops_updates.require_root()
    ops_updates.check_idle()

    def work(say: Say) -> Done:
        run = ops_updates.apply_updates(
            db, where, security_only=security_only, actor=who.actor, say=say
        )
        return Done(ops_updates.summary(run), run.to_json(with_log=False), ok=run.status == "ok")

    return start_host_job(response, all_jobs, "updates", "apply", who.actor, work)


job_endpoints(router, "updates")


# -- the schedule, notifications, the directory


class ScheduleSetOut(ScheduleOut):
    set_up: str = Field(description="What was set up: the timer, or the scheduler.")
    unkept: list[str] = Field(
        description="The server's ISIDORUS_ variables that the scheduled nights will not "
        "see: put those settings in the configuration file."
    )


@router.put(
    "/schedule",
    tags=["operations"],
    responses=answers(
        e400="The configuration breaks a rule.", e500="systemctl or supervisorctl failed."
    ),
)
def install_schedule(who: Auth, db: Db, where: DataDir) -> ScheduleSetOut:
    """Set up the nightly job at `[nightly] time`, again after a change of it (`isidorus
    schedule install`): a systemd timer, or isidorus's scheduler under supervisord."""
    conf, jobs, _remotes = jobs_config.host_config()
    what = ops_schedule.install(db, who.actor, where, conf, jobs.nightly)
    now = ops_schedule.status(db, where, conf, jobs.nightly).to_json()
    return ScheduleSetOut.model_validate({**now, "set_up": what, "unkept": ops_schedule.unkept()})


@router.delete(
    "/schedule",
    status_code=204,
    tags=["operations"],
    responses=answers(
        e400="The configuration breaks a rule.", e500="systemctl or supervisorctl failed."
    ),
)
def remove_schedule(who: Auth, db: Db) -> None:
    """Stop running the nightly job on its own (`isidorus schedule remove`)."""
    conf, _jobs, _remotes = jobs_config.host_config()
    ops_schedule.remove(db, who.actor, conf)


class NotifyTestOut(BaseModel):
    targets: int = Field(description="How many targets were sent the message.")
    failed: list[str] = Field(description="Those that did not take it (secrets masked).")


@router.post(
    "/notify/test",
    tags=["operations"],
    responses=answers(
        e400="The configuration breaks a rule, or apprise knows no such URL.",
        e409="No notification target is configured.",
    ),
)
def notify_test(who: Auth, where: DataDir) -> NotifyTestOut:
    """Send a test message to every target of `[notify] urls` (`isidorus notify test`):
    those that did not take it are in `failed`."""
    return NotifyTestOut.model_validate(ops_notify.send_test(where).to_json())


class DirectorySyncIn(Strict):
    dry_run: bool = Field(False, description="Say what would change, and change nothing.")


class DirectorySyncOut(BaseModel):
    url: str
    base_dn: str
    dry_run: bool
    added: int
    updated: int
    deleted: int
    unchanged: int
    changes: list[str] = Field(description='One line each: "add uid=alice,ou=people,…".')
    problems: list[str] = Field(description="Each entry the directory refused, in one line.")


@router.post(
    "/directory/sync",
    tags=["operations"],
    responses=answers(
        e409="The host keeps no directory (no [ldap] table).",
        e500="The [ldap] table is wrong.",
        e502="The directory refused isidorus's bind.",
        e503="The directory cannot be reached.",
    ),
)
def directory_sync(
    who: Auth, db: Db, where: DataDir, body: DirectorySyncIn | None = None
) -> DirectorySyncOut:
    """Make the LDAP directory match the accounts (`isidorus directory sync`): what it
    added, updated and deleted; an entry the directory refused is in `problems`."""
    report = ops_directory.sync_host_directory(db, where, dry_run=bool(body and body.dry_run))
    return DirectorySyncOut.model_validate(report.to_json())
