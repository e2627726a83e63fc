"""One service's backups in the host's own store (`backup_store`): a consistent snapshot of
its data paths and database dumps, and a restore of them while it is stopped.

A service's snapshot holds its `[data] paths` under their full names, plus the directory
of its database dumps (`<service_data_root>/.dumps/<id>`) when it has databases, tagged
`service:<id>` and `version:<version>`: it is enough to restore that service alone. The
live sqlite files are left out of it, since their dumps are the consistent copies.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from isidorus import settings
from isidorus.backup.archiver import BackupOptions, BackupResult
from isidorus.backup.errors import SnapshotNotFound
from isidorus.backup.progress import NullProgress
from isidorus.backup.repository import Repository
from isidorus.backup.restorer import RestoreOptions, restore_snapshot
from isidorus.backup.types import Snapshot
from isidorus.errors import UsageError
from isidorus.ops.accounts import audit
from isidorus.ops.backups import create_backup, init_store
from isidorus.ops.database import read_config
from isidorus.ops.store_refs import StoreRef, opened
from isidorus.services import databases, installed, lifecycle
from isidorus.services.errors import NothingToSave, ServiceError
from isidorus.services.installed import Installed
from isidorus.services.manifest import Manifest
from isidorus.services.render import Placement
from isidorus.state.db import Database
from isidorus.system.errors import HostError

Say = Callable[[str], None]
LOCK_DIR = "/run/lock"


def store_ref(conf: Mapping[str, Any], *, create: bool = False) -> StoreRef:
    """The host's own store, from the settings; with `create`, made when absent. A missing
    passphrase file is one UsageError that says how to make it."""
    location = str(conf["backup_store"])
    secret = str(conf["backup_passphrase_file"])
    try:
        with open(secret, "rb") as f:
            value = f.read().rstrip(b"\r\n")
    except FileNotFoundError:
        raise UsageError(
            f"the backup passphrase file {secret} is missing: make one with `umask 077; "
            f"head -c 32 /dev/urandom | base64 > {secret}` and keep a copy away from this host"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot read the backup passphrase file {secret}: {exc.strerror}"
        ) from None
    if not value:
        raise UsageError(f"the backup passphrase file {secret} is empty: write a long passphrase")
    if "://" in location:
        raise UsageError(
            f"backup_store = {location!r}: service backups go to a directory of this host; "
            "copy them elsewhere with `isidorus backup sync`"
        )
    if create and not (os.path.isdir(location) and os.listdir(location)):
        os.makedirs(os.path.dirname(os.path.abspath(location)), mode=0o700, exist_ok=True)
        init_store(location, lambda: value)
    return StoreRef(location, lambda: value, str(conf["cache_dir"]), conf)


@contextlib.contextmanager
def changing(service: str) -> Iterator[None]:
    """One backup, restore or upgrade of a service at a time."""
    fd = os.open(os.path.join(LOCK_DIR, f"isidorus-service-{service}.lock"), os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceError(
                f"another isidorus is backing up, restoring or upgrading {service}: let it finish"
            ) from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ServiceBackup:
    service: str
    version: str
    result: BackupResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "service": self.service,
            "version": self.version,
            "snapshot": r.snapshot.id,
            "short_id": r.snapshot.short_id,
            "time": r.snapshot.to_json()["time"],
            "files": r.files,
            "bytes": r.bytes_total,
            "bytes_new": r.bytes_new,
        }


@dataclass(frozen=True)
class ServiceRestore:
    service: str
    snapshot: Snapshot
    problem: str  # "" when healthy after the restore

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "snapshot": self.snapshot.id,
            "time": self.snapshot.to_json()["time"],
            "version": _tag(self.snapshot, "version"),
            "health": self.problem or "ok",
        }


def ready(conn: Connection, service: str) -> Installed:
    """The installed service, refused while an install of it runs (or was interrupted)."""
    found = installed.get(conn, service)
    if found.state != "installed":
        raise ServiceError(
            f"{service} is being installed, or its install was interrupted: wait for it, or "
            f"run `isidorus service remove {service} --purge` and install it again"
        )
    return found


def tools_for(conf: Mapping[str, Any], data_dir: str) -> lifecycle.Machinery:
    from isidorus.ops.services import machinery  # that module imports this one

    return machinery(conf, str(read_config(data_dir).get("domain", "localhost")))


def backup_service(
    db: Database, data_dir: str, service: str, actor: str, say: Say
) -> ServiceBackup:
    """Snapshot the service's data and databases into the host's store (made at first
    use), while it runs. ServiceError when there is nothing to save, or when the snapshot
    is partial (a file could not be read)."""
    conf = settings.load()
    with db.read() as conn:
        found = ready(conn, service)
    tools = tools_for(conf, data_dir)
    with changing(service):
        done = take_backup(store_ref(conf, create=True), tools, found, say)
    with db.write() as conn:
        audit(conn, actor, "service.backup", service, done.result.snapshot.id)
    return done


def restore_service(
    db: Database, data_dir: str, service: str, snapshot: str, actor: str, say: Say
) -> ServiceRestore:
    """Stop the service, put back its data and databases from `snapshot` (an id, a unique
    prefix, or `latest` of this service's), start it and wait for its health check. Other
    services are not touched. A snapshot of another service is refused."""
    conf = settings.load()
    with db.read() as conn:
        found = ready(conn, service)
    tools = tools_for(conf, data_dir)
    ref = store_ref(conf)
    name = lifecycle.process_name(service)
    where = lifecycle.placement(tools, found.manifest, found.domain, found.path)
    with changing(service):
        snap = find_snapshot(ref, service, snapshot)  # before stopping: a wrong one stops nothing
        if _tag(snap, "version") not in ("", found.version):
            say(f"note: this snapshot is of {service} {_tag(snap, 'version')}; "
                f"{found.version} runs now")  # fmt: skip
        say(f"stopping {service}")
        tools.processes.stop(name)
        try:
            restore_data(ref, found.manifest, where, snap.id, say)
        except BaseException:
            with contextlib.suppress(HostError):  # the restore's error is the one to tell
                tools.processes.start(name)
            raise
        say(f"starting {service}")
        try:
            tools.processes.start(name)
            problem = lifecycle.health_problem(tools.processes, found.manifest, found.port)
        except HostError as exc:
            problem = str(exc)
    with db.write() as conn:
        audit(conn, actor, "service.restore", service, snap.id)
    return ServiceRestore(service, snap, problem or "")


def take_backup(
    ref: StoreRef, tools: lifecycle.Machinery, found: Installed, say: Say
) -> ServiceBackup:
    """The snapshot itself, its databases dumped first; the caller holds
    `changing(service)`. ServiceError when it is partial."""
    manifest = found.manifest
    dumps = dump_dir(tools, manifest.id) if manifest.data.databases else None
    try:
        if dumps is not None:
            dump_databases(tools, found, dumps, say)
        done = snapshot_service(ref, tools, found, dumps, say)
    finally:
        if dumps is not None:
            shutil.rmtree(dumps, ignore_errors=True)
    result = done.result
    if result.partial:
        raise ServiceError(
            f"the snapshot {result.snapshot.short_id} of {manifest.id} is partial, "
            f"{len(result.errors)} file(s) left out: {result.errors[0]}"
        )
    return done


def dump_databases(tools: lifecycle.Machinery, found: Installed, dumps: str, say: Say) -> None:
    """Dump the service's databases into `dumps`, made anew (root's, 0700)."""
    shutil.rmtree(dumps, ignore_errors=True)
    os.makedirs(dumps, mode=0o700)
    where = lifecycle.placement(tools, found.manifest, found.domain, found.path)
    databases.dump_all(found.manifest.data.databases, where, dumps, say)


def snapshot_service(
    ref: StoreRef,
    tools: lifecycle.Machinery,
    found: Installed,
    dumps: str | None,
    say: Say,
    tags: tuple[str, ...] = (),
) -> ServiceBackup:
    """Snapshot the service's data paths and `dumps` (its databases' dumps, made by the
    caller), tagged service:ID, version:V and `tags`. A partial snapshot is returned as
    such: the caller decides."""
    manifest = found.manifest
    where = lifecycle.placement(tools, manifest, found.domain, found.path)
    paths, excludes = [], []
    for p in (where.fill(p) for p in manifest.data.paths):
        if os.path.lexists(p):
            paths.append(p)
        else:
            say(f"{p} does not exist (yet): nothing to save there")
    for d in manifest.data.databases:
        if d.path is not None:
            live = glob.escape(where.fill(d.path))
            excludes += [live, *(live + s for s in databases.SIDECARS)]
    if dumps is not None:
        paths.append(dumps)
    if not paths:
        raise NothingToSave(
            f"{manifest.id} has nothing to back up: no path of its manifest's [data] exists"
        )
    say(f"backing up {manifest.id} {found.version} into {ref.location}")
    options = BackupOptions(
        paths=tuple(paths),
        tags=(f"service:{manifest.id}", f"version:{found.version}", *tags),
        excludes=tuple(excludes),
    )
    return ServiceBackup(manifest.id, found.version, create_backup(ref, options, NullProgress()))


def dump_dir(tools: lifecycle.Machinery, service: str) -> str:
    return os.path.join(tools.data_root, ".dumps", service)


def find_snapshot(ref: StoreRef, service: str, wanted: str) -> Snapshot:
    with opened(ref, "list") as repo:
        return _find(repo, ref, service, wanted)


def _find(repo: Repository, ref: StoreRef, service: str, wanted: str) -> Snapshot:
    tag = f"service:{service}"
    if wanted == "latest":
        mine = [s for s in repo.list_snapshots() if tag in s.tags]
        if not mine:
            raise SnapshotNotFound(
                f"{ref.location} holds no snapshot of {service}: make one with "
                f"`isidorus service backup {service}`"
            )
        return mine[-1]
    snap = repo.find_snapshot(wanted)
    if tag not in snap.tags:
        other = _tag(snap, "service")
        of = f"of {other}, not of {service}" if other else "not a snapshot of a service"
        raise ServiceError(
            f"snapshot {snap.short_id} is {of}: see `isidorus backup list {ref.location} "
            f"--tag {tag}`"
        )
    return snap


def _tag(snap: Snapshot, key: str) -> str:
    return next((t.split(":", 1)[1] for t in snap.tags if t.startswith(key + ":")), "")


def restore_data(
    ref: StoreRef, manifest: Manifest, where: Placement, snapshot: str, say: Say
) -> str:
    """Put back the service's data paths and databases from `snapshot` (the service is
    stopped); returns the snapshot's time, in words. Everything is first restored beside
    the data, then each path is swapped in by renames: a failed read changes nothing.
    Afterwards everything in the data paths belongs to the service's user."""
    data_root = os.path.dirname(where.data_dir)
    staging = os.path.join(data_root, f".restore-{manifest.id}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, mode=0o700)
    try:
        with opened(ref, "restore") as repo:
            snap = _find(repo, ref, manifest.id, snapshot)
            say(f"reading snapshot {snap.short_id} of {_when(snap)}")
            options = RestoreOptions(target=staging, include=snap.paths)
            result = restore_snapshot(repo, snap, options, NullProgress())
        if result.errors:
            raise ServiceError(f"cannot restore {result.errors[0]}")
        mine = {os.path.abspath(where.fill(p)) for p in manifest.data.paths}
        dumps = os.path.join(data_root, ".dumps", manifest.id)
        for path in snap.paths:
            if path == dumps:
                continue
            if path not in mine:
                say(f"{path} is no longer among {manifest.id}'s data paths: left as it is")
                continue
            say(f"putting back {path}")
            _swap(staging + path, path)
            _give(path, where.user)
        if dumps in snap.paths:
            databases.load_all(manifest.data.databases, where, staging + dumps, say)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _when(snap)


def _when(snap: Snapshot) -> str:
    return snap.time.strftime("%Y-%m-%d %H:%M:%S UTC")


def _swap(staged: str, path: str) -> None:
    """Put `staged` in the place of `path`; what was there goes once it is done."""
    kept = path + ".isidorus-old"
    shutil.rmtree(kept, ignore_errors=True)
    had = os.path.lexists(path)
    if had:
        os.rename(path, kept)
    try:
        shutil.move(staged, path)  # a rename, unless the staging is on another file system
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        if had:
            os.rename(kept, path)
        raise
    if os.path.isdir(kept) and not os.path.islink(kept):
        shutil.rmtree(kept, ignore_errors=True)
    elif had:
        os.unlink(kept)


def _give(path: str, user: str) -> None:
    """Everything at `path` to the service's user (a restore on another host, or of files
    an administrator put there, may have other owners)."""
    entry = pwd.getpwnam(user)
    ids = (entry.pw_uid, entry.pw_gid)
    os.chown(path, *ids, follow_symlinks=False)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), *ids, follow_symlinks=False)
