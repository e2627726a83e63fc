"""Backup use cases, shared by the command line and (later) the web and the nightly job.

Each function opens the store, registers a session for as long as it works, calls the
engine and returns a dataclass. None of them prints or reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, BinaryIO

from isidorus.backup import browse, crypto, locks, objects
from isidorus.backup.archiver import (
    BackupOptions,
    BackupResult,
    create_image_snapshot,
    create_snapshot,
    create_stream_snapshot,
)
from isidorus.backup.errors import IntegrityError, SnapshotNotFound
from isidorus.backup.gc import GcOptions, GcResult, collect_garbage
from isidorus.backup.progress import Progress
from isidorus.backup.prune import KeepPolicy, PrunePlan, plan_prune
from isidorus.backup.repair import RepairResult
from isidorus.backup.repair import repair_index as rebuild_index
from isidorus.backup.repository import Passphrase, Repository, add_key, key_params
from isidorus.backup.restorer import RestoreOptions, RestoreResult, restore_snapshot
from isidorus.backup.types import Snapshot
from isidorus.backup.verify import VerifyOptions, VerifyReport, verify_store
from isidorus.errors import UsageError
from isidorus.ops.store_refs import StoreRef, open_backend, opened
from isidorus.ops.stores import backend_for


def init_store(
    location: str,
    passphrase: Passphrase | None,
    *,
    encrypted: bool = True,
    kdf: crypto.KdfParams | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    backend = backend_for(location, settings)
    try:
        Repository.init(backend, passphrase, encrypted=encrypted, kdf=kdf)
    finally:
        backend.close()


def create_backup(ref: StoreRef, options: BackupOptions, progress: Progress) -> BackupResult:
    with opened(ref, "backup") as repo:
        return create_snapshot(repo, options, progress)


def create_image_backup(
    ref: StoreRef, image: str, options: BackupOptions, progress: Progress
) -> BackupResult:
    with opened(ref, "backup") as repo:
        return create_image_snapshot(repo, image, options, progress)


def create_stream_backup(
    ref: StoreRef, name: str, stream: BinaryIO, options: BackupOptions, progress: Progress
) -> BackupResult:
    with opened(ref, "backup") as repo:
        return create_stream_snapshot(repo, name, stream, options, progress)


def list_snapshots(ref: StoreRef, tags: tuple[str, ...] = ()) -> tuple[list[Snapshot], list[str]]:
    """The snapshots with all `tags`, oldest first, and the ids of damaged ones."""
    with opened(ref, "list") as repo:
        snaps = repo.list_snapshots()
        damaged = list(repo.damaged_snapshots)
    return [s for s in snaps if all(t in s.tags for t in tags)], damaged


def forget(ref: StoreRef, refs: tuple[str, ...]) -> list[str]:
    """Remove snapshots by id or unique prefix, even damaged ones (whose content cannot be
    read); their data is freed by the next gc. Returns the ids removed."""
    with opened(ref, "forget", exclusive=True) as repo:
        names = repo.snapshot_names()
        chosen = []
        for r in refs:
            matches = [n for n in names if n.startswith(r.lower())] if r else []
            if len(matches) != 1:
                raise SnapshotNotFound(
                    f"{r!r} matches {len(matches)} snapshots: give a unique id prefix"
                )
            chosen.append(matches[0])
        for name in chosen:
            repo.backend.remove("snapshots", name)
        return chosen


def list_files(
    ref: StoreRef, snapshot: str, path: str = "/", recursive: bool = True
) -> tuple[Snapshot, list[tuple[str, dict[str, Any]]]]:
    with opened(ref, "ls") as repo:
        snap = repo.find_snapshot(snapshot)
        return snap, list(browse.list_path(repo, snap, path, recursive))


def cat_file(ref: StoreRef, snapshot: str, path: str, out: BinaryIO) -> int:
    with opened(ref, "cat") as repo:
        return browse.cat(repo, repo.find_snapshot(snapshot), path, out)


def diff_snapshots(ref: StoreRef, a: str, b: str) -> list[tuple[str, str]]:
    with opened(ref, "diff") as repo:
        return list(browse.diff(repo, repo.find_snapshot(a), repo.find_snapshot(b)))


def restore(
    ref: StoreRef, snapshot: str, options: RestoreOptions, progress: Progress
) -> tuple[Snapshot, RestoreResult]:
    with opened(ref, "restore") as repo:
        snap = repo.find_snapshot(snapshot)
        return snap, restore_snapshot(repo, snap, options, progress)


def verify(ref: StoreRef, options: VerifyOptions, progress: Progress) -> VerifyReport:
    with opened(ref, "verify") as repo:
        return verify_store(repo, options, progress)


def prune(
    ref: StoreRef, policy: KeepPolicy, *, tags: tuple[str, ...] = (), dry_run: bool = False
) -> PrunePlan:
    """Plan which snapshots the policy keeps; unless dry_run, remove the others."""
    with opened(ref, "prune", exclusive=not dry_run) as repo:
        plan = plan_prune(repo.list_snapshots(), policy, tags=tags)
        if not dry_run:
            plan.execute(repo)
        return plan


def repair_index(ref: StoreRef, progress: Progress) -> RepairResult:
    with opened(ref, "repair", exclusive=True) as repo:
        return rebuild_index(repo, progress)


def gc(ref: StoreRef, options: GcOptions, progress: Progress) -> GcResult:
    with opened(ref, "gc", exclusive=True) as repo:
        return collect_garbage(repo, options, progress, {repo.session})


def change_passphrase(ref: StoreRef, new: Passphrase, kdf: crypto.KdfParams | None = None) -> None:
    """Wrap the master key with a new passphrase (at the same key-derivation cost unless
    `kdf` says otherwise), then remove the old key files. The new key file is durable
    before any old one goes, so a crash leaves one that opens."""
    with opened(ref, "key") as repo:
        if not repo.crypto.encrypted:
            raise UsageError("this store is not encrypted: it has no passphrase to change")
        backend = repo.backend
        old = [n for n, _ in backend.list("keys")]
        cost = kdf or key_params(backend)
        name = add_key(backend, repo.crypto.key, new(), cost)
        for n in old:
            if n != name:
                backend.remove("keys", n)


def export_key(ref: StoreRef, dest: str) -> None:
    """Copy the store's key file (still protected by the passphrase) to `dest`, so that a
    damaged `keys/` folder does not lose the store."""
    if os.path.lexists(dest):
        raise UsageError(f"{dest} exists: choose a new file name for the key")
    with opened(ref, "key") as repo:
        if not repo.crypto.encrypted:
            raise UsageError("this store is not encrypted: it has no key to export")
        for name in sorted(n for n, _ in repo.backend.list("keys")):
            data = repo.backend.read("keys", name)
            if objects.object_name(data) == name:  # an intact one
                break
        else:
            raise IntegrityError("every key file of this store is damaged")
    tmp = dest + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror}") from None


def unlock_store(ref: StoreRef, remove_all: bool = False) -> list[locks.Session]:
    """Remove sessions whose process is gone (or, with remove_all, every session)."""
    backend = open_backend(ref)
    try:
        if remove_all:
            gone = locks.list_sessions(backend)
            for s in gone:
                backend.remove("locks", s.name)
            return gone
        return locks.remove_stale(backend)
    finally:
        backend.close()
