"""Off-site copies: sync a store to another place, scrub a copy without the key, and
repair one copy from another.

Like the other use cases, each function opens the stores, takes the sessions the engine
needs for as long as it works, and returns a dataclass; none prints or reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from isidorus.backup import locks
from isidorus.backup.errors import StoreError
from isidorus.backup.head_start import CopyMemo
from isidorus.backup.progress import Progress
from isidorus.backup.remote.base import Backend
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.remote.served import ServedBackend
from isidorus.backup.sync import SyncOptions, SyncResult, copy_store
from isidorus.errors import UsageError
from isidorus.ops.store_refs import StoreRef, open_backend, opened
from isidorus.ops.stores import backend_for

# the engine proper (crypto, index, packs) and the checks load only with the functions
# that use them: a sync needs no key, and a sync to a home is timed from its first moment
if TYPE_CHECKING:
    from isidorus.backup.repository import Repository
    from isidorus.backup.scrub import ScrubReport
    from isidorus.backup.verify import RepairReport, VerifyOptions


def _place(backend: Backend) -> Backend:
    """The backend, once a local one is known to be a directory that exists."""
    if isinstance(backend, LocalBackend):
        if not os.path.lexists(backend.root):
            raise StoreError(f"{backend.root} does not exist: check the path")
        if not os.path.isdir(backend.root):
            raise StoreError(f"{backend.root} is not a directory, so not a store")
    return backend


def _with_key(backend: Backend, ref: StoreRef) -> Repository:
    """The source opened with its key: only a sync of chosen snapshots needs it."""
    from isidorus.backup.repository import Repository

    return Repository.open(backend, ref.passphrase, ref.cache_dir)


def sync(
    source: StoreRef, dest: str | Backend, options: SyncOptions, progress: Progress
) -> SyncResult:
    """Copy to DEST the snapshots it lacks (all, or `options.snapshots`) with the objects
    they need, then (a full sync) remove from DEST what SOURCE no longer has. DEST may be
    absent or empty: it becomes a copy of the same store. Only a sync of chosen snapshots
    needs `source.passphrase`. Run it again after any interruption to carry on."""
    dst = backend_for(dest, source.settings) if isinstance(dest, str) else dest
    try:
        if isinstance(dst, ServedBackend):
            dst.connect_soon()  # while the source's session and listing are made
        src = open_backend(source)
        try:
            if src.location == dst.location:
                raise UsageError(
                    "SOURCE and DEST are the same store: give another place for the copy"
                )
            if isinstance(dst, LocalBackend) and os.path.lexists(dst.root):
                _place(dst)
            return copy_store(
                src,
                dst,
                options,
                progress,
                lambda: _with_key(src, source),
                # a home starts slowly: the packs it most likely lacks leave at once
                CopyMemo(source.cache_dir, dst.location)
                if isinstance(dst, ServedBackend)
                else None,
            )
        finally:
            src.close()
    finally:
        dst.close()


def scrub(
    location: str,
    repair_from: str | None,
    progress: Progress,
    settings: Mapping[str, Any] | None = None,
) -> ScrubReport:
    """Check every object of the store against its name, without the key; with
    `repair_from`, replace what is damaged or missing by the intact copies of another
    copy of the store. `settings` are isidorus's (for the kinds of store that need some)."""
    from isidorus.backup.scrub import check_same_store, repair_objects, scrub_store

    backend = _place(backend_for(location, settings))
    try:
        with locks.session(backend, "scrub", read_only=repair_from is None):
            report = scrub_store(backend, progress)
            if repair_from is not None and report.problems():
                other = open_backend(StoreRef(repair_from, None, "", settings or {}))
                try:
                    check_same_store(backend, other, report.store_id)
                    with locks.session(other, "scrub", read_only=True):
                        report.repaired, report.not_repaired = repair_objects(
                            backend, other, report.problems(), progress
                        )
                finally:
                    other.close()
            return report
    finally:
        backend.close()


def verify_and_repair(
    ref: StoreRef, other_location: str, options: VerifyOptions, progress: Progress
) -> RepairReport:
    """Verify the store, replace what is damaged or missing by the intact objects of
    another copy, and verify again (see `verify.repair_from_copy`)."""
    from isidorus.backup.repository import Repository
    from isidorus.backup.verify import RepairReport, repair_from_copy, verify_store

    with opened(ref, "verify-repair") as repo:
        before = verify_store(repo, options, progress)
        if before.ok:
            return RepairReport(before, before)
        other = open_backend(StoreRef(other_location, None, "", ref.settings))
        try:
            with locks.session(other, "verify", read_only=True):
                return repair_from_copy(
                    repo,
                    other,
                    before,
                    options,
                    progress,
                    lambda: Repository.open(other, ref.passphrase, ":memory:"),
                )
        finally:
            other.close()
