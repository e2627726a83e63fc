"""The REST API's remotes: the named places where copies of the host's store are kept
(`isidorus backup remote …`), a copy of the store to one of them (`backup sync`), and a
check of the copy kept there (`backup scrub`), both as the job on the host's store (see
api_backups.py).

Remotes are `[remotes.NAME]` of the configuration: those added here are written to
`remotes.toml` in its `.d` folder, as the command writes them; one written by hand in
another file is the operator's, and is not removed here.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from isidorus import settings
from isidorus.ops import host_backups as ops
from isidorus.ops import jobs_config, remotes
from isidorus.settings import Remote
from isidorus.units import human_bytes
from isidorus.web.api import Auth, Db, PathName, Strict
from isidorus.web.api_backups import (
    REMOTE_NAME,
    STARTED,
    SaidProgress,
    errors,
    remote,
    scrub_work,
    start,
)
from isidorus.web.api_operations import HostJobs
from isidorus.web.api_services import JobOut, Say
from isidorus.web.jobs import Done

router = APIRouter(prefix="/v1", tags=["backups"])


class RemoteOut(BaseModel):
    name: str
    url: str = Field(description="A path, ssh://…, ssh+isidorus://… or s3://….")
    file: str = Field(description="The configuration file that defines it.")

    @classmethod
    def of(cls, r: Remote) -> RemoteOut:
        return cls(name=r.name, url=r.url, file=r.file)


class RemoteIn(Strict):
    name: str = Field(
        pattern=REMOTE_NAME,
        description="Letters, digits, '.', '_' and '-' (64 at most), starting with a letter "
        "or digit.",
        examples=["anna"],
    )
    url: str = Field(
        min_length=1,
        max_length=2000,
        description=f"Where the copy is: {remotes.FORMS}.",
        examples=["ssh+isidorus://isidorus@anna.example.org/isidorus"],
    )


class CopyScrubIn(Strict):
    repair: bool = Field(
        False,
        description="Replace what is damaged or missing in the copy by the intact objects "
        "of the host's store.",
    )


@router.get("/backups/remotes", responses=errors(400))
def list_remotes(who: Auth) -> list[RemoteOut]:
    """The remotes, by name (`isidorus backup remote list`)."""
    return [RemoteOut.of(r) for r in remotes.list_remotes(settings.config_path())]


@router.post("/backups/remotes", status_code=201, responses=errors(400, 409))
def add_remote(who: Auth, db: Db, body: RemoteIn) -> RemoteOut:
    """Name a place for copies of the host's store (`isidorus backup remote add`); the
    nightly job copies the store there from then on, unless `[nightly] remotes` names
    others."""
    found = ops.add_remote(db, who.actor, settings.config_path(), body.name, body.url)
    return RemoteOut.of(found)


@router.get("/backups/remotes/{name}", responses=errors(400, 404))
def get_remote(who: Auth, name: PathName) -> RemoteOut:
    """One remote."""
    return RemoteOut.of(remote(name))


@router.delete("/backups/remotes/{name}", status_code=204, responses=errors(400, 404, 409))
def remove_remote(who: Auth, db: Db, name: PathName) -> None:
    """Forget a remote (`isidorus backup remote remove`); the copy there is left as it
    is. One defined by hand in another configuration file is refused (409)."""
    ops.remove_remote(db, who.actor, settings.config_path(), name)


@router.post(
    "/backups/remotes/{name}/sync", status_code=202, responses={**STARTED, **errors(400, 404)}
)
def sync(who: Auth, db: Db, all_jobs: HostJobs, name: PathName, response: Response) -> JobOut:
    """Copy the host's store to the remote as the nightly job does (`isidorus backup sync`
    to it), in the background: the snapshots it lacks, then what the store no longer has
    removed there. The job fails when damaged objects were not copied, or new snapshots
    were held back."""
    conf, _jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)
    place = remote(name)

    def work(say: Say) -> Done:
        say(f"copying to {place.name} ({place.url})")
        r = ops.sync(db, who.actor, ref, place, SaidProgress(say))
        for damaged in r.damaged:
            say(f"warning: {damaged} of the store does not match its name (damaged): not copied")
        for why in (r.held_back, r.postponed):
            if why:
                say(f"warning: {why}")
        note = (
            f"{r.snapshots_copied} snapshots copied ({human_bytes(r.bytes_sent)} sent); "
            f"{r.snapshots_removed} snapshots removed"
        )
        if not r.ok:
            note = r.held_back or f"{len(r.damaged)} damaged objects were not copied: {note}"
        return Done(note, r.to_json(), ok=r.ok)

    return start(response, all_jobs, "sync", who.actor, work)


@router.post(
    "/backups/remotes/{name}/scrub", status_code=202, responses={**STARTED, **errors(400, 404)}
)
def scrub_copy(
    who: Auth,
    db: Db,
    all_jobs: HostJobs,
    name: PathName,
    response: Response,
    body: CopyScrubIn | None = None,
) -> JobOut:
    """Check every object of the copy kept at the remote against its name, without the
    key (`isidorus backup scrub remote:NAME`), in the background; with `repair`, replace
    what is damaged or missing there by the host's store's objects."""
    conf, _jobs, _remotes = jobs_config.host_config()
    place = remote(name)
    other = ops.store_location(conf) if body and body.repair else None
    work = scrub_work(db, who.actor, place.url, other, conf)
    return start(response, all_jobs, "scrub", who.actor, work)
