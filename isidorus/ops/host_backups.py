"""The host's own store (`backup_store`) and its named remotes, worked on by the REST API:
the use cases of `isidorus backup …` (ops/backups.py, ops/offsite.py, ops/remotes.py),
over the store the nightly job finds (`service_backups.store_ref`, the same passphrase
file), each change written to the audit log with its actor.

Glossary
--------
host's store  The directory `backup_store` names, made by the first nightly job or
              service backup: until then there is none (NoStore).
retention     The nightly job's `[nightly] keep`: a prune here keeps what the nightly
              job's would, among the snapshots it made (tagged `nightly`).
remote        A `[remotes.NAME]` of the configuration (ops/remotes.py): a place where a
              copy of the host's store is kept.

Reads (listing, verifying, scrubbing without repairing) are not audited; a change to the
store or to the remotes is, in the transaction that follows it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from isidorus.backup.gc import GcOptions, GcResult
from isidorus.backup.progress import Progress
from isidorus.backup.prune import KeepPolicy, PrunePlan
from isidorus.backup.repair import RepairResult
from isidorus.backup.scrub import ScrubReport
from isidorus.backup.sync import SyncOptions, SyncResult
from isidorus.backup.verify import RepairReport, VerifyOptions
from isidorus.errors import IsidorusError, UsageError
from isidorus.ops import backups, offsite, remotes, runs
from isidorus.ops.accounts import audit
from isidorus.ops.nightly import TAG, sync_detail, sync_failure
from isidorus.ops.service_backups import store_ref
from isidorus.ops.store_refs import StoreRef
from isidorus.settings import Remote
from isidorus.state.db import Database


class NoStore(IsidorusError):
    """The host's store does not exist yet: nothing to work on, as things stand."""

    http_status = 409


def store_location(conf: Mapping[str, Any]) -> str:
    """Where the host's store is: NoStore while it does not exist, UsageError when
    `backup_store` is not a directory of this host."""
    location = str(conf["backup_store"])
    if "://" in location:
        raise UsageError(
            f"backup_store = {location!r}: the host's store is a directory of this host; "
            "copies elsewhere are remotes"
        )
    if not (os.path.isdir(location) and os.listdir(location)):
        raise NoStore(
            f"the host's store {location} does not exist yet: the first nightly job "
            "(`isidorus nightly`) or service backup makes it"
        )
    return location


def host_store(conf: Mapping[str, Any]) -> StoreRef:
    """The host's store with its passphrase: NoStore while it does not exist, UsageError
    when the passphrase file is missing or empty (saying how to make one)."""
    store_location(conf)
    return store_ref(conf)


# -- changes of the store


def prune(
    db: Database, actor: str, ref: StoreRef, keep: KeepPolicy, *, dry_run: bool = False
) -> PrunePlan:
    """Remove the nightly job's snapshots that `keep` does not keep (unless `dry_run`),
    as the nightly job does; gc frees their space."""
    plan = backups.prune(ref, keep, tags=(TAG,), dry_run=dry_run)
    if not dry_run:
        with db.write() as conn:
            audit(conn, actor, "backup.prune", ref.location, f"{plan.removed} removed")
    return plan


def gc(db: Database, actor: str, ref: StoreRef, options: GcOptions, progress: Progress) -> GcResult:
    """Free the space of data no snapshot needs (see `backups.gc`)."""
    result = backups.gc(ref, options, progress)
    with db.write() as conn:
        audit(conn, actor, "backup.gc", ref.location, f"{result.bytes_freed} bytes freed")
    return result


def forget(db: Database, actor: str, ref: StoreRef, snapshot: str) -> str:
    """Remove one snapshot (an id or a unique prefix), even a damaged one; the id removed.
    SnapshotNotFound when the prefix matches no snapshot, or several."""
    (removed,) = backups.forget(ref, (snapshot,))
    with db.write() as conn:
        audit(conn, actor, "backup.forget", ref.location, removed)
    return removed


def repair_index(db: Database, actor: str, ref: StoreRef, progress: Progress) -> RepairResult:
    """Rebuild the store's index from its packs' own headers."""
    result = backups.repair_index(ref, progress)
    with db.write() as conn:
        audit(conn, actor, "backup.repair-index", ref.location, f"{result.packs_indexed} packs")
    return result


def unlock(db: Database, actor: str, ref: StoreRef, remove_all: bool = False) -> list[str]:
    """Remove the locks of processes that are gone (with `remove_all`, every lock); what
    each removed lock was."""
    gone = [s.describe() for s in backups.unlock_store(ref, remove_all)]
    if gone:
        with db.write() as conn:
            audit(conn, actor, "backup.unlock", ref.location, f"{len(gone)} locks")
    return gone


def verify(
    db: Database,
    actor: str,
    ref: StoreRef,
    options: VerifyOptions,
    repair_from: Remote | None,
    progress: Progress,
) -> RepairReport:
    """Verify the store; with `repair_from`, replace what is damaged or missing by the
    intact objects of that remote's copy, and verify again (written to the audit log when
    anything was replaced). Without a repair, `before` and `after` are the one report."""
    if repair_from is None:
        report = backups.verify(ref, options, progress)
        return RepairReport(report, report)
    done = offsite.verify_and_repair(ref, repair_from.url, options, progress)
    _repaired(db, actor, ref.location, repair_from.name, done.repaired)
    return done


def scrub(
    db: Database,
    actor: str,
    location: str,
    repair_from: str | None,
    progress: Progress,
    conf: Mapping[str, Any],
) -> ScrubReport:
    """Check every object of the store at `location` (the host's, or a remote's copy)
    without the key; with `repair_from` (another copy's place), replace what is damaged
    or missing, written to the audit log when anything was."""
    report = offsite.scrub(location, repair_from, progress, conf)
    if repair_from is not None:
        _repaired(db, actor, location, repair_from, report.repaired)
    return report


def _repaired(db: Database, actor: str, store: str, source: str, repaired: list[str]) -> None:
    if repaired:
        with db.write() as conn:
            audit(conn, actor, "backup.repair", store, f"{len(repaired)} objects from {source}")


# -- remotes


def add_remote(db: Database, actor: str, config_file: str, name: str, url: str) -> Remote:
    """Name a place for copies (see `remotes.add_remote`)."""
    remote = remotes.add_remote(config_file, name, url)
    with db.write() as conn:
        audit(conn, actor, "backup.remote.add", name, url)
    return remote


def remove_remote(db: Database, actor: str, config_file: str, name: str) -> Remote:
    """Forget a remote (see `remotes.remove_remote`); the copy there is left as it is."""
    remote = remotes.remove_remote(config_file, name)
    with db.write() as conn:
        audit(conn, actor, "backup.remote.remove", name, remote.url)
    return remote


def sync(db: Database, actor: str, ref: StoreRef, remote: Remote, progress: Progress) -> SyncResult:
    """Copy the host's store to the remote as the nightly job does: the snapshots it
    lacks, then what the store no longer has removed there. Run it again after an
    interruption to carry on. The copy is kept in the jobs' history, a run of its own
    (kind "copy") with its one step, as the nightly job keeps its copies: `doctor` and
    the status page count it among the copies made."""
    record = runs.Recorder(db, lambda line: None)
    record.run_id = runs.begin(db, "copy")
    result: SyncResult | None = None
    try:
        with record.step("sync", remote.name, reraise=True) as step:
            record.note(f"copying to {remote.name} ({remote.url})")
            result = offsite.sync(ref, remote.url, SyncOptions(), progress)
            step.bytes, step.detail = result.bytes_sent, sync_detail(remote.url, result)
            if not result.ok:
                step.status, step.error = "failed", sync_failure(result)
    finally:
        ok = result is not None and result.ok
        runs.finish(db, record.run_id, "ok" if ok else "failed", record.log)
    with db.write() as conn:
        what = f"{result.snapshots_copied} snapshots copied, {result.bytes_sent} bytes sent"
        audit(conn, actor, "backup.sync", remote.name, what)
    return result
