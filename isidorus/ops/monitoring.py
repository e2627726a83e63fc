"""What the host's monitoring reads: the local store and its copies, the history of the
jobs, and a file taken back from a snapshot. `/metrics` and the admin area's Backups and
Jobs pages show the same figures, gathered here.

Glossary
--------
store view    One store as seen now: its snapshots (read with the key), how many bytes
              its objects take, and, when it cannot be read, why (one line).
stored bytes  What the store's objects take where they are kept (compressed, sealed,
              deduplicated): keys, snapshots, index and packs.
logical bytes The sum of what each snapshot holds (`bytes_total` of its summary): what
              the snapshots would take without deduplication or compression.
dedup ratio   logical bytes / stored bytes.
growth        The store's size after each recorded run, worked out from what the runs'
              backups stored and their gc freed, anchored on the size the store has now.

Nothing here writes to a store: snapshots are read without registering a session, since
they are never changed in place (a snapshot removed meanwhile is left out) and no pack is
read.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import func, select

from isidorus.backup import browse
from isidorus.backup.errors import PathNotFound
from isidorus.backup.remote.base import Backend
from isidorus.backup.repository import Repository
from isidorus.backup.restorer import lookup_path
from isidorus.backup.types import Snapshot
from isidorus.errors import IsidorusError, NotFoundError, UsageError, one_line
from isidorus.ops import runs
from isidorus.ops.runs import Run, Step
from isidorus.ops.service_backups import store_ref
from isidorus.ops.store_refs import StoreRef, open_backend, opened
from isidorus.settings import Remote
from isidorus.state.db import Database
from isidorus.state.schema import run_steps

OBJECT_KINDS = ("keys", "snapshots", "index", "data")
LIVE_TIMEOUT = 15.0  # seconds a copy may take to answer a listing


# -- stores


@dataclass(frozen=True)
class StoreView:
    location: str
    error: str = ""  # why the store could not be read at all ("" when it was)
    snapshot_count: int = 0  # counted without the key
    stored_bytes: int = 0
    snapshots: tuple[Snapshot, ...] = ()  # oldest first; empty when key_error is set
    damaged: tuple[str, ...] = ()  # snapshot objects that cannot be read
    key_error: str = ""  # why the snapshots could not be read (no passphrase, wrong one)

    @property
    def readable(self) -> bool:
        return not self.error

    @property
    def listed(self) -> bool:
        """Whether the snapshots themselves were read (so sizes and dates are known)."""
        return not self.error and not self.key_error

    @property
    def logical_bytes(self) -> int:
        return sum(int(s.summary.get("bytes_total", 0) or 0) for s in self.snapshots)

    @property
    def dedup_ratio(self) -> float | None:
        if not self.listed or self.stored_bytes <= 0:
            return None
        return self.logical_bytes / self.stored_bytes

    def find(self, snapshot_id: str) -> Snapshot | None:
        return next((s for s in self.snapshots if s.id == snapshot_id), None)


@dataclass
class _Known:
    names: frozenset[str]
    snapshots: tuple[Snapshot, ...]
    damaged: tuple[str, ...]


class StoreWatch:
    """The stores one process looks at. A store's objects are listed at each look (no key
    needed, nothing written); its snapshots are decrypted again only when that list has
    changed: a snapshot object never changes, it is named by its hash. Safe to share
    between threads."""

    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()

    def view(self, ref: StoreRef, key_problem: str = "") -> StoreView:
        """The store at `ref` as it is now; never raises for a store that cannot be read
        (the view says why). `key_problem` is why `ref` has no passphrase, if it has none."""
        try:
            backend = open_backend(ref)
        except IsidorusError as exc:
            return StoreView(ref.location, error=one_line(exc))
        try:
            names, stored = _listing(backend)
            with self._lock:
                known = self._known.get(ref.location)
            if known is None or known.names != names:
                if ref.passphrase is None and key_problem:
                    return StoreView(
                        ref.location,
                        snapshot_count=len(names),
                        stored_bytes=stored,
                        key_error=key_problem,
                    )
                try:
                    known = _read_snapshots(backend, ref, names)
                except IsidorusError as exc:
                    return StoreView(
                        ref.location,
                        snapshot_count=len(names),
                        stored_bytes=stored,
                        key_error=one_line(exc),
                    )
                with self._lock:
                    self._known[ref.location] = known
            return StoreView(
                ref.location,
                snapshot_count=len(names),
                stored_bytes=stored,
                snapshots=known.snapshots,
                damaged=known.damaged,
            )
        except (IsidorusError, OSError) as exc:
            return StoreView(ref.location, error=one_line(exc))
        finally:
            backend.close()


def _listing(backend: Backend) -> tuple[frozenset[str], int]:
    names: set[str] = set()
    stored = 0
    for kind in OBJECT_KINDS:
        for name, size in backend.list(kind):
            stored += size
            if kind == "snapshots":
                names.add(name)
    return frozenset(names), stored


def _read_snapshots(backend: Backend, ref: StoreRef, names: frozenset[str]) -> _Known:
    # the repository closes the backend when done; closing it again is harmless
    repo = Repository.open(backend, ref.passphrase, ":memory:", index=False)
    try:
        snaps = repo.list_snapshots()
        return _Known(names, tuple(snaps), tuple(repo.damaged_snapshots))
    finally:
        repo.close()


def host_store(conf: Mapping[str, Any]) -> tuple[StoreRef, str]:
    """The host's own store (`backup_store`) and, when its passphrase cannot be had, why
    (the ref then has none: the store's objects can still be counted)."""
    try:
        return store_ref(conf), ""
    except UsageError as exc:
        location = str(conf["backup_store"])
        return StoreRef(location, None, str(conf["cache_dir"]), conf), one_line(exc)


# -- remotes


@dataclass(frozen=True)
class RemoteView:
    """A place where copies of the store are kept, as the history and (when asked) the
    copy itself tell."""

    name: str
    url: str
    configured: bool  # still a [remotes.NAME] of the configuration
    last: Step | None  # the latest sync to it, whatever its end
    last_ok: Step | None  # the latest sync that succeeded
    live: StoreView | None = None  # the copy as listed now; None when not asked

    @property
    def last_ok_at(self) -> datetime | None:
        return self.last_ok.started_at if self.last_ok else None


def remote_views(
    db: Database,
    remotes: Mapping[str, Remote],
    *,
    live: Callable[[str], StoreView] | None = None,
    timeout: float = LIVE_TIMEOUT,
) -> list[RemoteView]:
    """Every configured remote, and every one the history has synced to, by name. With
    `live` (which lists the copy at a URL), each copy is listed now, all at once; one that
    does not answer within `timeout` seconds says so."""
    last = runs.latest_steps(db, "sync")
    good = latest_ok_steps(db, "sync")
    names = sorted(set(remotes) | set(last))
    views = []
    for name in names:
        remote = remotes.get(name)
        step = last.get(name)
        url = remote.url if remote else str((step.detail if step else {}).get("url", ""))
        views.append(RemoteView(name, url, remote is not None, step, good.get(name)))
    if live is None:
        return views
    wanted = [v for v in views if v.configured and v.url]
    found = _all_at_once(live, [v.url for v in wanted], timeout)
    return [
        RemoteView(v.name, v.url, v.configured, v.last, v.last_ok, found.get(v.url)) for v in views
    ]


def _all_at_once(
    live: Callable[[str], StoreView], urls: list[str], timeout: float
) -> dict[str, StoreView]:
    if not urls:
        return {}
    pool = concurrent.futures.ThreadPoolExecutor(len(urls), thread_name_prefix="isidorus-list")
    futures = {pool.submit(live, url): url for url in urls}
    done, _late = concurrent.futures.wait(futures, timeout=timeout)
    # a copy that hangs (a host that drops packets) is left to its ssh's own timeouts
    pool.shutdown(wait=False, cancel_futures=True)
    out = {}
    for future, url in futures.items():
        if future in done:
            exc = future.exception()
            out[url] = future.result() if exc is None else StoreView(url, error=one_line(exc))
        else:
            out[url] = StoreView(url, error=f"it did not answer within {timeout:g} seconds")
    return out


def latest_ok_steps(db: Database, step: str) -> dict[str, Step]:
    """The latest successful `step` per target."""
    with db.read() as conn:
        newest = (
            select(func.max(run_steps.c.id))
            .where(run_steps.c.step == step, run_steps.c.status == "ok")
            .group_by(run_steps.c.target)
            .scalar_subquery()
        )
        rows = conn.execute(select(run_steps).where(run_steps.c.id.in_(newest))).mappings()
        return {r["target"]: _step(r) for r in rows}


def _step(row: Any) -> Step:
    started = row["started_at"]
    return Step(
        step=row["step"],
        target=row["target"],
        status=row["status"],
        started_at=started.replace(tzinfo=UTC) if started.tzinfo is None else started,
        seconds=row["seconds"],
        bytes=row["bytes"],
        error=row["error"],
        detail=json.loads(row["detail"] or "{}"),
    )


def last_offsite_copy(db: Database) -> datetime | None:
    """When the latest copy to any remote that succeeded started."""
    return runs.last_ok(db, "sync")


# -- the history


@dataclass(frozen=True)
class LastRun:
    """The latest finished run of a kind, and whether another one is running now."""

    kind: str
    run: Run | None
    running: Run | None


def last_runs(db: Database) -> list[LastRun]:
    """For each kind of run that has any: its latest finished run (ok, failed or
    interrupted) and the one running, if any."""
    out = []
    for kind in runs.KINDS:
        recent = runs.list_runs(db, kind=kind, limit=20)
        if not recent:
            continue
        running = recent[0] if recent[0].status == "running" else None
        finished = next((r for r in recent if r.status != "running"), None)
        out.append(LastRun(kind, finished, running))
    return out


def last_backups(db: Database) -> tuple[dict[str, Step], dict[str, Step]]:
    """The latest backup step per target, and the latest successful one."""
    return runs.latest_steps(db, "backup"), latest_ok_steps(db, "backup")


@dataclass(frozen=True)
class GrowthPoint:
    when: datetime
    stored: int  # the store's size after this run
    logical: int  # what this run's backups held (0 when it made none)


def growth(db: Database, stored_now: int | None, *, limit: int = 365) -> list[GrowthPoint]:
    """The store's size after each of the latest `limit` runs that backed up or freed
    anything, oldest first. Each run adds what its backups stored and takes off what its
    gc freed; the sizes are anchored so that the last one is `stored_now` (when known:
    what was stored outside the runs shows there), else they start from the first run's
    additions."""
    history = sorted(runs.list_runs(db, limit=min(limit, 1000)), key=lambda r: r.id)
    deltas: list[tuple[datetime, int, int]] = []
    for run in history:
        added = freed = logical = 0
        counted = False
        for step in run.steps:
            if step.step == "backup" and (step.bytes or step.detail):
                added += int(step.detail.get("bytes_stored", step.bytes) or 0)
                logical += int(step.detail.get("bytes_total", 0) or 0)
                counted = True
            elif step.step == "gc" and step.status == "ok":
                freed += int(step.detail.get("bytes_freed", 0) or 0)
                counted = True
        if counted:
            when = run.finished_at or run.started_at
            deltas.append((when, added - freed, logical))
    total = 0
    sizes = []
    for _when, delta, _logical in deltas:
        total += delta
        sizes.append(total)
    offset = (stored_now - total) if stored_now is not None and deltas else 0
    return [
        GrowthPoint(when, max(0, size + offset), logical)
        for (when, _d, logical), size in zip(deltas, sizes, strict=True)
    ]


# -- a file taken back


@dataclass(frozen=True)
class Entry:
    """One entry of a snapshot's folder."""

    path: str
    name: str
    type: str  # file, dir, symlink, hardlink, …
    size: int
    mtime: datetime

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type in ("file", "hardlink")


@dataclass(frozen=True)
class Folder:
    snapshot: Snapshot
    path: str  # "/" or "/etc/nginx"
    entries: list[Entry] = field(default_factory=list)


class BadPath(UsageError):
    """A path that cannot name anything in a snapshot."""


class NotAFolder(NotFoundError):
    """Something other than a folder where a folder is asked for."""


class NotAFile(NotFoundError):
    """Something other than a file where a file is asked for."""


def check_path(path: str) -> str:
    """A snapshot path as given by a visitor, made plain ("/a/b"); BadPath for one with
    "." or ".." parts, control characters, or that is not absolute."""
    if not path.startswith("/") or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise BadPath(f"{path!r} is not a path in a snapshot: give one that starts with /")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadPath(f"{path!r} has . or .. in it: give the path itself")
    return "/" + "/".join(parts)


def list_folder(ref: StoreRef, snapshot: str, path: str) -> Folder:
    """The entries of a folder of a snapshot, folders first. SnapshotNotFound,
    PathNotFound, NotAFolder, or BadPath."""
    path = check_path(path)
    with opened(ref, "ls") as repo:
        snap = repo.find_snapshot(snapshot)
        node = lookup_path(repo, snap, path)
        if node is None:
            raise PathNotFound(f"{path} is not in snapshot {snap.short_id}")
        if node["type"] != "dir":
            raise NotAFolder(f"{path} is a {node['type']}, not a folder")
        entries = [
            Entry(
                p,
                p.rsplit("/", 1)[-1],
                n["type"],
                int(n.get("size") or 0),
                datetime.fromtimestamp(int(n["mtime"]) / 1e9, UTC),
            )
            for p, n in browse.list_path(repo, snap, path, recursive=False)
        ]
    entries.sort(key=lambda e: (not e.is_dir, e.name))
    return Folder(snap, path, entries)


@dataclass(frozen=True)
class FileInfo:
    snapshot: Snapshot
    path: str
    name: str
    size: int


def read_file(
    ref: StoreRef,
    snapshot: str,
    path: str,
    out: BinaryIO,
    ready: Callable[[FileInfo], None] = lambda _info: None,
) -> int:
    """Write a file of a snapshot to `out`, after calling `ready` with what it is (before
    any byte: a caller may still answer with an error until then). SnapshotNotFound,
    PathNotFound, NotAFile, or BadPath. Returns the bytes written."""
    path = check_path(path)
    with opened(ref, "cat") as repo:
        snap = repo.find_snapshot(snapshot)
        node = lookup_path(repo, snap, path)
        if node is None or path == "/":
            raise PathNotFound(f"{path} is not in snapshot {snap.short_id}")
        if node["type"] not in ("file", "hardlink"):
            raise NotAFile(f"{path} is a {node['type']}, not a file")
        size = sum(length for _cid, length in node.get("content", ()))
        ready(FileInfo(snap, path, path.rsplit("/", 1)[-1], size))
        return browse.cat(repo, snap, path, out)


def live_lister(
    watch: StoreWatch, ref: StoreRef | None, settings: Mapping[str, Any]
) -> Callable[[str], StoreView]:
    """What lists a copy at a URL: with the local store's key when there is one (a copy
    holds the same key files), else without it (the objects are still counted)."""

    def live(url: str) -> StoreView:
        if ref is not None:
            return watch.view(StoreRef(url, ref.passphrase, ref.cache_dir, ref.settings))
        return watch.view(StoreRef(url, None, "", dict(settings)))

    return live


# -- everything at once


@dataclass(frozen=True)
class Overview:
    """What /metrics tells: the store, the latest backups, the copies, the latest runs."""

    store: StoreView
    backups: dict[str, Step]  # the latest backup per target
    backups_ok: dict[str, Step]  # the latest successful one
    remotes: list[RemoteView]
    runs: list[LastRun]
    last_offsite: datetime | None


def overview(
    db: Database, conf: Mapping[str, Any], remotes: Mapping[str, Remote], watch: StoreWatch
) -> Overview:
    """Gathered from the state database and a listing of the local store (its snapshots
    decrypted only when they changed); the copies are not asked anything."""
    ref, key_problem = host_store(conf)
    last, good = last_backups(db)
    views = remote_views(db, remotes)
    return Overview(
        store=watch.view(ref, key_problem),
        backups=last,
        backups_ok=good,
        remotes=views,
        runs=last_runs(db),
        last_offsite=last_offsite_copy(db),
    )
