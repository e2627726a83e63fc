"""The REST API's backups: the host's own store (`backup_store`, the one the nightly job
and the services' backups fill), its snapshots, and the work on it that takes minutes
(verify, prune, gc, scrub, repair-index) run as one background job at a time, told at
`/api/v1/backups/job`. The remotes, and the copies to them, are in api_remotes.py.

Each endpoint calls what `isidorus backup …` calls, over the store the nightly job finds
(ops/host_backups.py): its passphrase is read from `backup_passphrase_file`, and a prune
keeps what the nightly job's retention keeps. What would stop a job before it touches the
store (a store not made yet, no passphrase file, a remote that does not exist) is told at
once instead of a 202.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from isidorus import settings
from isidorus.backup.gc import GcOptions
from isidorus.backup.verify import VerifyOptions, VerifyReport
from isidorus.ops import backups as ops_backups
from isidorus.ops import host_backups as ops
from isidorus.ops import jobs_config, monitoring, remotes
from isidorus.settings import Remote
from isidorus.state.db import Database
from isidorus.units import human_bytes
from isidorus.web.api import Auth, Db, ErrorBody, PathName, Strict
from isidorus.web.api_operations import (
    HostJobs,
    accepted,
    busy,
    job_endpoints,
    start_host_job,
)
from isidorus.web.api_services import JobOut, Say
from isidorus.web.backups import file_response, query_path
from isidorus.web.jobs import Busy, Done, Jobs, Work

BACKUPS = "backups"  # the name of the store's job among the host's jobs
REMOTE_NAME = f"^{remotes.NAME_PATTERN}$"
SNAPSHOT_REF = r"^[0-9a-f]{1,64}$|^latest$"

router = APIRouter(prefix="/v1", tags=["backups"])


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        400: "The configuration breaks a rule (no passphrase file, a broken file), or the "
        "input does (a path that is not one, a remote's name or URL).",
        404: "No such snapshot, path, remote or job.",
        409: "As things stand: the host's store does not exist yet, a job on it runs, "
        "another process holds it, or a remote of that name exists.",
    }
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


class SaidProgress:
    """The engine's progress as a job's lines: each piece of work it starts (with how much
    there is), and each warning."""

    live = False

    def __init__(self, say: Say) -> None:
        self.say = say

    def start(self, what: str, total_items: int | None, total_bytes: int | None) -> None:
        size = [] if total_items is None else [f"{total_items} objects"]
        size += [] if total_bytes is None else [human_bytes(total_bytes)]
        self.say(what + (f": {', '.join(size)}" if size else ""))

    def set_total(self, total_items: int | None, total_bytes: int | None) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        pass

    def warn(self, message: str) -> None:
        self.say(f"warning: {message}")

    def finish(self) -> None:
        pass


def idle(all_jobs: Jobs) -> None:
    """Busy while a job on the host's store runs here, naming it."""
    try:
        all_jobs.idle(BACKUPS)
    except Busy:
        raise busy(all_jobs, BACKUPS) from None


def start(response: Response, all_jobs: Jobs, action: str, actor: str, work: Work) -> JobOut:
    """Start `work` as the job on the host's store (one at a time): 202."""
    return start_host_job(response, all_jobs, BACKUPS, action, actor, work)


STARTED = accepted("The host's store does not exist yet, or a job on it runs already.")


# -- models


class SnapshotOut(BaseModel):
    id: str
    short_id: str
    time: datetime
    hostname: str
    username: str
    paths: list[str]
    tags: list[str] = Field(description="`nightly`, `system`, `service:<id>`, `version:<v>`…")
    kind: str = Field(description="files or image.")
    partial: bool = Field(description="Some files could not be read: listed in `errors`.")
    errors: list[str]
    summary: dict[str, Any] = Field(description="Its figures: files, bytes_total, bytes_new…")
    parent: str | None


class SnapshotsOut(BaseModel):
    snapshots: list[SnapshotOut] = Field(description="Oldest first.")
    damaged: list[str] = Field(
        description="The ids of snapshots that cannot be read: verify tells more, and "
        "DELETE /backups/snapshots/{id} removes one."
    )


class SnapshotsQuery(Strict):  # an unknown parameter (a typo) is refused, not ignored
    tag: list[str] = Field(
        [], max_length=20, description="Only snapshots with every one of these tags."
    )


class EntryOut(BaseModel):
    path: str
    name: str
    type: str = Field(description="file, dir, symlink, hardlink, fifo, socket, chardev…")
    size: int
    mtime: datetime


class FolderOut(BaseModel):
    snapshot: str
    path: str
    entries: list[EntryOut] = Field(description="Folders first, then by name.")


class ChangeOut(BaseModel):
    change: str = Field(
        description="+ added, - removed, M modified, T type changed, U metadata only."
    )
    path: str


class UnlockOut(BaseModel):
    removed: list[str] = Field(description="Each lock removed: what held it, its pid, host.")


class VerifyIn(Strict):
    snapshots: list[Annotated[str, Field(pattern=SNAPSHOT_REF)]] = Field(
        [],
        max_length=100,
        description="Check only these snapshots' files (ids, prefixes or `latest`); default: all.",
    )
    read_data: bool = Field(True, description="Read the packs (else check structure only).")
    sample_percent: float = Field(
        100.0, gt=0, le=100, description="Read only this share of the packs, at random."
    )
    repair_from: str | None = Field(
        None,
        pattern=REMOTE_NAME,
        description="A remote whose copy replaces what is damaged or missing; then verify again.",
    )


class PruneIn(Strict):
    dry_run: bool = Field(False, description="Say what would be removed; remove nothing.")


class GcIn(Strict):
    wait: bool = Field(
        True, description="Wait for running backups (else stop half done: run gc again)."
    )


class ScrubIn(Strict):
    repair_from: str | None = Field(
        None,
        pattern=REMOTE_NAME,
        description="A remote whose copy's intact objects replace what is damaged or missing.",
    )


class UnlockIn(Strict):
    remove_all: bool = Field(
        False,
        description="Also remove the locks of other hosts' processes (only once you know "
        "they are gone).",
    )


def shown(text: str) -> str:
    """A name as JSON can carry it: bytes that are not UTF-8 become �."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def remote(name: str) -> Remote:
    """The remote `name` of the configuration: NoSuchRemote (404) when there is none."""
    return remotes.get_remote(settings.config_path(), name)


# -- the snapshots


@router.get("/backups/snapshots", responses=errors(400, 409))
def list_snapshots(who: Auth, query: Annotated[SnapshotsQuery, Query()]) -> SnapshotsOut:
    """The snapshots of the host's store, oldest first (`isidorus backup list`)."""
    conf, _jobs, _remotes = jobs_config.host_config()
    snaps, damaged = ops_backups.list_snapshots(ops.host_store(conf), tuple(query.tag))
    return SnapshotsOut(
        snapshots=[SnapshotOut.model_validate(s.to_json()) for s in snaps], damaged=damaged
    )


@router.delete("/backups/snapshots/{snapshot}", status_code=204, responses=errors(400, 404, 409))
def forget(who: Auth, db: Db, all_jobs: HostJobs, snapshot: PathName) -> None:
    """Remove a snapshot (an id, or a prefix of one snapshot's id), even a damaged one
    (`isidorus backup forget`); gc then frees what only it used."""
    conf, _jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)
    idle(all_jobs)
    ops.forget(db, who.actor, ref, snapshot)


FOLDER = Annotated[
    str,
    Query(
        min_length=1,
        max_length=4096,
        description="A folder of the snapshot, from its root: `/etc/nginx`.",
    ),
]
FILE = Annotated[
    str,
    Query(
        min_length=1,
        max_length=4096,
        description="A file of the snapshot, from its root: `/etc/hostname`.",
    ),
]


@router.get("/backups/snapshots/{snapshot}/files", responses=errors(400, 404, 409))
def list_files(request: Request, who: Auth, snapshot: PathName, path: FOLDER = "/") -> FolderOut:
    """The entries of one folder of a snapshot (`isidorus backup ls`, one level at a
    time): `snapshot` is an id, a unique prefix, or `latest`."""
    conf, _jobs, _remotes = jobs_config.host_config()
    # the path's bytes as the file system names them (a name that is not UTF-8 too)
    found = monitoring.list_folder(ops.host_store(conf), snapshot, query_path(request))
    return FolderOut(
        snapshot=found.snapshot.id,
        path=shown(found.path),
        entries=[
            EntryOut(
                path=shown(e.path), name=shown(e.name), type=e.type, size=e.size, mtime=e.mtime
            )
            for e in found.entries
        ],
    )


@router.get(
    "/backups/snapshots/{snapshot}/file",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes, as a download under its own name.",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **errors(400, 404, 409),
    },
)
async def download(request: Request, who: Auth, snapshot: PathName, path: FILE) -> Response:
    """A file of a snapshot (`isidorus backup cat`), sent while it is read."""
    conf, _jobs, _remotes = await run_in_threadpool(jobs_config.host_config)
    ref = await run_in_threadpool(ops.host_store, conf)
    return await file_response(ref, snapshot, query_path(request))


@router.get("/backups/snapshots/{snapshot}/diff", responses=errors(400, 404, 409))
def diff(
    who: Auth,
    snapshot: PathName,
    to: Annotated[str, Query(min_length=1, max_length=64, description="The later snapshot.")],
) -> list[ChangeOut]:
    """What changed from `snapshot` to `to` (`isidorus backup diff`)."""
    conf, _jobs, _remotes = jobs_config.host_config()
    changes = ops_backups.diff_snapshots(ops.host_store(conf), snapshot, to)
    return [ChangeOut(change=c, path=shown(p)) for c, p in changes]


@router.post("/backups/unlock", responses=errors(400, 409))
def unlock(who: Auth, db: Db, all_jobs: HostJobs, body: UnlockIn | None = None) -> UnlockOut:
    """Remove the locks that processes now gone left on the host's store (`isidorus backup
    unlock`)."""
    conf, _jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)
    idle(all_jobs)
    return UnlockOut(removed=ops.unlock(db, who.actor, ref, bool(body and body.remove_all)))


# -- the work that takes minutes


def _verify_note(report: VerifyReport) -> str:
    checked = (
        f"{report.snapshots_checked} snapshots, {report.packs_checked} packs "
        f"({human_bytes(report.bytes_checked)}) checked"
    )
    if report.ok:
        return f"intact: {checked}"
    ids = ", ".join(str(d["snapshot"])[:8] for d in report.damaged)
    what = f"{len(report.damaged)} damaged snapshots ({ids})" if report.damaged else ""
    errors_ = f"{len(report.errors)} damaged objects" if report.errors else ""
    return f"damaged: {', '.join(x for x in (what, errors_) if x)}; {checked}"


@router.post("/backups/verify", status_code=202, responses={**STARTED, **errors(400, 404)})
def verify(
    who: Auth, db: Db, all_jobs: HostJobs, response: Response, body: VerifyIn | None = None
) -> JobOut:
    """Check the host's store (`isidorus backup verify`), in the background: the job
    fails when anything is damaged, and its `result` names every damaged snapshot and
    file. With `repair_from`, what is damaged is replaced from that remote's copy first."""
    options = body or VerifyIn.model_validate({})
    conf, _jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)
    repair = remote(options.repair_from) if options.repair_from else None
    verify_options = VerifyOptions(
        snapshots=tuple(options.snapshots),
        read_data=options.read_data,
        sample_percent=options.sample_percent,
    )

    def work(say: Say) -> Done:
        done = ops.verify(db, who.actor, ref, verify_options, repair, SaidProgress(say))
        report = done.after
        for obj in done.repaired:
            say(f"repaired {obj}")
        for d in report.damaged:
            say(f"damaged snapshot {str(d['snapshot'])[:8]}: {d['reason']}")
        for e in report.errors:
            say(f"error: {e}")
        result = done.to_json() if repair is not None else report.to_json()
        return Done(_verify_note(report), result, ok=report.ok)

    return start(response, all_jobs, "verify", who.actor, work)


@router.post("/backups/prune", status_code=202, responses={**STARTED, **errors(400)})
def prune(
    who: Auth, db: Db, all_jobs: HostJobs, response: Response, body: PruneIn | None = None
) -> JobOut:
    """Remove the nightly job's snapshots that its retention (`[nightly] keep`) does not
    keep, as the night does (`isidorus backup prune`), in the background; gc then frees
    their space. With `dry_run`, only say what would be removed."""
    dry_run = bool(body and body.dry_run)
    conf, jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)
    keep = jobs.nightly.keep

    def work(say: Say) -> Done:
        rules = ", ".join(f"{k} {v}" for k, v in keep.to_json().items())
        say(f"the nightly job's snapshots, kept by {rules}")
        plan = ops.prune(db, who.actor, ref, keep, dry_run=dry_run)
        for d in (d for _group, ds in plan.groups for d in ds):
            verb = "keep" if d.keep else ("would remove" if dry_run else "remove")
            say(f"{verb} {d.snapshot.short_id}" + (f": {d.reason}" if d.reason else ""))
        s = plan.stats()
        note = f"{s['keep']} kept, {s['remove']} {'to remove' if dry_run else 'removed'}"
        return Done(note, {"dry_run": dry_run, **plan.to_json()})

    return start(response, all_jobs, "prune", who.actor, work)


@router.post("/backups/gc", status_code=202, responses={**STARTED, **errors(400)})
def gc(
    who: Auth, db: Db, all_jobs: HostJobs, response: Response, body: GcIn | None = None
) -> JobOut:
    """Free the space of data no snapshot needs (`isidorus backup gc`), in the
    background. Safe while backups run."""
    wait = body.wait if body else True
    conf, _jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)

    def work(say: Say) -> Done:
        r = ops.gc(db, who.actor, ref, GcOptions(wait=wait), SaidProgress(say))
        if not r.done:
            note = f"half done: waiting for {', '.join(r.waiting_for)}; run gc again once they end"
        else:
            note = (
                f"{r.packs_deleted} packs deleted, {r.packs_repacked} repacked, "
                f"{human_bytes(r.bytes_freed)} freed"
            )
        return Done(note, r.to_json())

    return start(response, all_jobs, "gc", who.actor, work)


def scrub_work(
    db: Database, actor: str, location: str, repair_from: str | None, conf: dict[str, Any]
) -> Work:
    """A scrub of the store at `location` as a job's work (the host's, or a copy)."""

    def work(say: Say) -> Done:
        report = ops.scrub(db, actor, location, repair_from, SaidProgress(say), conf)
        for line in report.lines():
            say(line)
        return Done(report.summary(), report.to_json(), ok=report.ok)

    return work


@router.post("/backups/scrub", status_code=202, responses={**STARTED, **errors(400, 404)})
def scrub(
    who: Auth, db: Db, all_jobs: HostJobs, response: Response, body: ScrubIn | None = None
) -> JobOut:
    """Check every object of the host's store against its name, without the key
    (`isidorus backup scrub`), in the background: the job fails when one is damaged or
    missing (and, with `repair_from`, could not be replaced from that remote's copy)."""
    conf, _jobs, _remotes = jobs_config.host_config()
    location = ops.store_location(conf)
    other = remote(body.repair_from).url if body and body.repair_from else None
    return start(
        response, all_jobs, "scrub", who.actor, scrub_work(db, who.actor, location, other, conf)
    )


@router.post("/backups/repair-index", status_code=202, responses={**STARTED, **errors(400)})
def repair_index(who: Auth, db: Db, all_jobs: HostJobs, response: Response) -> JobOut:
    """Rebuild the index of the host's store from its packs' own headers, after damage to
    it (`isidorus backup repair-index`), in the background; the job fails when a pack
    cannot be read."""
    conf, _jobs, _remotes = jobs_config.host_config()
    ref = ops.host_store(conf)

    def work(say: Say) -> Done:
        r = ops.repair_index(db, who.actor, ref, SaidProgress(say))
        for p in r.unreadable_packs:
            say(f"unreadable pack {p}")
        note = (
            f"index rebuilt: {r.packs_indexed} packs, {r.blobs_indexed} blobs in "
            f"{r.index_written} index objects ({r.index_removed} old ones removed)"
        )
        return Done(note, r.to_json(), ok=not r.unreadable_packs)

    return start(response, all_jobs, "repair-index", who.actor, work)


job_endpoints(router, BACKUPS)
