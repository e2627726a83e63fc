"""Copies of a store in other places (off-site copies), made without the key.

A copy is the same store: the same config (and id), the same key files, the same objects
under the same names, so the passphrase that opens one opens the other. `sync_stores`
makes DEST hold what SOURCE holds, copying objects as they are (sealed, and checked against
their names on the way), in an order that keeps DEST a working store at every moment, so a
sync can be stopped anywhere and run again:

1. the key files, packs, then index objects that DEST lacks, each written atomically;
2. then the snapshots DEST lacks: a snapshot appears only once all it can need is there;
3. then the removal of what SOURCE no longer has (pruned, freed by gc): snapshots first,
   then index objects, then packs, then key files replaced by a new passphrase.

Without the key nothing tells which packs a snapshot needs, so a full sync copies every
object DEST lacks. Given snapshots and the key, it copies those snapshots, the index
objects that list their blobs and every pack these index objects name (an index object
cannot be split without rewriting it, and sync rewrites nothing); such a partial sync
removes nothing.

Concurrency: the caller holds a session on SOURCE and the exclusive lock on DEST (a sync
is DEST's gc). On SOURCE, gc writes new index objects before it removes old ones, and
waits for the sessions that might still read them, so a listing of SOURCE's snapshots,
then index objects, then packs holds everything those snapshots need. When an index object
or pack of the listing disappears before it is copied (a gc or repair-index took it
meanwhile), the round starts again from a new listing: no snapshot is copied and nothing
is removed from DEST on the strength of a listing that changed under it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from isidorus.backup import locks
from isidorus.backup.errors import BackendError, BackupError, IntegrityError, StoreError
from isidorus.backup.head_start import CopyMemo, HeadStart
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.remote.base import GC_STATE, Backend, QueuingRemovals
from isidorus.backup.store_config import read_config
from isidorus.backup.transfer import copy_object, run_parallel

if TYPE_CHECKING:
    from isidorus.backup.repository import Repository

ROUNDS = 3  # listings tried before giving up on a SOURCE that keeps changing


@dataclass(frozen=True)
class SyncOptions:
    snapshots: tuple[str, ...] = ()  # ids, prefixes or `latest`; empty: everything
    threads: int = 4  # objects in flight: remote stores are slow per request


@dataclass
class SyncResult:
    """What a sync did. Packs are the unit of data: without the key a pack cannot be
    looked into, so one crosses whole or not at all."""

    created: bool = False  # DEST was made by this sync
    snapshots_copied: int = 0
    packs_sent: int = 0
    objects_sent: int = 0  # every object written to DEST: packs, index, snapshots, keys
    bytes_sent: int = 0  # their bytes, as stored (compressed and sealed)
    snapshots_removed: int = 0
    objects_removed: int = 0  # every object removed from DEST, snapshots included
    removals_queued: int = 0  # of those, the ones an append-only DEST only queued
    damaged: list[str] = field(default_factory=list)  # "kind/name" of SOURCE, not copied
    held_back: str = ""  # why new snapshots were not copied
    postponed: str = ""  # why removals were left for a later sync

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.held_back

    def to_json(self) -> dict[str, Any]:
        # chunks cross inside sealed packs: without the key the pack is the unit counted
        return {"ok": self.ok, **self.__dict__, "chunks_sent": self.packs_sent}


@dataclass
class Listing:
    keys: dict[str, int]
    snapshots: dict[str, int]
    index: dict[str, int]
    data: dict[str, int]

    def of(self, kind: str) -> dict[str, int]:
        objects: dict[str, int] = getattr(self, kind)
        return objects


def list_store(backend: Backend, *, at_once: bool = False) -> Listing:
    """Every object of a store with its size. Snapshots are listed first, then index
    objects, then packs: the order in which a gc removes them is the reverse, so the
    listing holds what its snapshots need (see the module's docstring). With `at_once`
    (a copy under the sync's lock, where no gc runs), the four listings are asked
    together: one round trip to a far home instead of four."""
    kinds = ("snapshots", "index", "data", "keys")
    if at_once:
        with ThreadPoolExecutor(len(kinds), thread_name_prefix="list") as pool:
            found = dict(zip(kinds, pool.map(lambda k: dict(backend.list(k)), kinds), strict=True))
    else:
        found = {k: dict(backend.list(k)) for k in kinds}
    return Listing(found["keys"], found["snapshots"], found["index"], found["data"])


def list_needed(repo: Repository, refs: tuple[str, ...]) -> Listing:
    """What a copy needs to hold the snapshots `refs` (ids, prefixes or `latest`): them,
    the index objects that list their blobs, and every pack those index objects name."""
    from isidorus.backup.gc import Marker  # with the key only: a whole sync does without

    repo.refresh_index()
    names = {repo.find_snapshot(r).id for r in refs}
    marker = Marker(repo, "needed", stop="sync stopped before copying anything")
    for name in sorted(names):
        marker.mark_snapshot(name)
    db = repo.cache.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS needed_packs (pack BLOB PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM needed_packs")
    db.execute(
        "INSERT OR IGNORE INTO needed_packs "
        "SELECT DISTINCT pack FROM blobs WHERE id IN (SELECT id FROM needed)"
    )
    files = dict(
        db.execute(
            "SELECT DISTINCT f.name, f.num FROM blobs b JOIN index_files f ON b.file = f.num "
            "WHERE b.pack IN (SELECT pack FROM needed_packs)"
        ).fetchall()
    )
    nums = ",".join(str(n) for n in files.values()) or "NULL"
    packs = {
        p.hex() for (p,) in db.execute(f"SELECT DISTINCT pack FROM blobs WHERE file IN ({nums})")
    }
    backend = repo.backend
    return Listing(
        dict(backend.list("keys")),
        {n: s for n, s in backend.list("snapshots") if n in names},
        {n: s for n, s in backend.list("index") if n in files},
        {n: s for n, s in backend.list("data") if n in packs},
    )


def prepare_destination(source: Backend, dest: Backend, result: SyncResult) -> None:
    """Make DEST a copy of SOURCE's store, with no snapshot yet, unless it is one already:
    the layout, SOURCE's key files, then its config (a store exists once its config
    does). Raises StoreError when DEST holds another store or something else."""
    raw = source.read("config", "config")
    source_id = json.loads(raw)["id"]
    for _attempt in range(2):
        try:
            dest_id = read_config(dest)["id"]  # one request where a copy is there already
        except (StoreError, BackendError):  # no config, or no bucket even
            if dest.exists("config", "config"):
                raise  # a config, but not a store's of this isidorus: read_config says why
            dest_id = None
        if dest_id is not None:
            if dest_id != source_id:
                raise StoreError(
                    f"{dest.location} holds another store (id {dest_id[:12]}…, not "
                    f"{source_id[:12]}…): give an empty or new place, or a copy of this store"
                )
            return
        try:
            dest.create()
        except FileExistsError:
            continue  # another sync made it meanwhile: check that it is this store
        for name, size in sorted(source.list("keys")):
            try:
                result.bytes_sent += copy_object(source, dest, "keys", name, size)
                result.objects_sent += 1
            except IntegrityError:
                result.damaged.append(f"keys/{name}")
            except FileNotFoundError:
                continue  # the passphrase changed meanwhile: the new key file is listed
        dest.write("config", "config", raw)
        result.objects_sent += 1
        result.bytes_sent += len(raw)
        result.created = True
        return
    raise StoreError(f"{dest.location} keeps changing: is another program writing there?")


class _Copier:
    """Copies objects of one kind in parallel and counts what crossed."""

    def __init__(
        self,
        source: Backend,
        dest: Backend,
        opts: SyncOptions,
        progress: Progress,
        head: HeadStart | None = None,
    ) -> None:
        self.source = source
        self.dest = dest
        self.opts = opts
        self.progress = progress
        self.head = head
        # what DEST holds: listed at the start of the round, with what this sync wrote
        self.dest_has: Listing | None = None

    def copy(
        self, kind: str, todo: list[tuple[str, int]], result: SyncResult
    ) -> tuple[list[str], list[str]]:
        """Copy `todo`; returns (damaged, vanished) names. A failure to write stops it."""
        damaged: list[str] = []
        vanished: list[str] = []

        def work(item: tuple[str, int]) -> int:
            started = self.head.take(item[0]) if self.head and kind == "data" else None
            if started is not None:
                try:
                    return copy_object(self.source, self.dest, kind, item[0], item[1], started)
                except BackendError:
                    # DEST refused what went ahead (the copy was not there yet): once more,
                    # afresh; a link that is down fails that at once, and says so
                    pass
            return copy_object(self.source, self.dest, kind, item[0], item[1])

        def done(item: tuple[str, int], f: Future[int]) -> None:
            name, size = item
            try:
                sent = f.result()
            except FileNotFoundError:
                vanished.append(name)
                return
            except IntegrityError:
                damaged.append(name)
                return
            result.objects_sent += 1
            result.bytes_sent += sent
            if kind == "data":
                result.packs_sent += 1
            elif kind == "snapshots":
                result.snapshots_copied += 1
            if self.dest_has is not None:
                self.dest_has.of(kind)[name] = size
            self.progress.advance(items=1, nbytes=size)

        run_parallel(todo, work, done, self.opts.threads)
        return damaged, vanished


def _round(
    copier: _Copier, listing: Listing, dest: Backend, result: SyncResult, damaged: set[str]
) -> bool:
    """Copy what DEST lacks of `listing`; False when some of it vanished from SOURCE
    before it was copied (the listing is stale: the caller lists again)."""
    have = copier.dest_has = list_store(dest, at_once=True)  # kept up to date by the copier
    if copier.head is not None:
        copier.head.stop()  # what DEST lacks is known: no more guessing
    todo = {
        kind: sorted((n, s) for n, s in listing.of(kind).items() if n not in have.of(kind))
        for kind in ("keys", "data", "index", "snapshots")
    }
    copier.progress.start(
        "sync",
        sum(len(t) for t in todo.values()),
        sum(s for t in todo.values() for _n, s in t),
    )
    try:
        bad_index = False
        for kind in ("keys", "data", "index"):
            bad, gone = copier.copy(kind, todo[kind], result)
            damaged.update(f"{kind}/{n}" for n in bad)
            bad_index = bad_index or (kind == "index" and bool(bad))
            if gone and kind != "keys":
                return False
        if bad_index:
            # DEST's index would miss entries (and its gc would take their packs for
            # garbage); repair-index on SOURCE rebuilds them from the packs
            result.held_back = (
                "an index object of the source is damaged, so no new snapshot was copied: "
                "run `isidorus backup repair-index` on the source, then sync again"
            )
            return True
        bad, _gone = copier.copy("snapshots", todo["snapshots"], result)
        damaged.update(f"snapshots/{n}" for n in bad)
        return True
    finally:
        copier.progress.finish()


def _remove_what_source_lacks(
    listing: Listing, have: Listing, dest: Backend, own_sessions: set[str], result: SyncResult
) -> None:
    """Remove from DEST what it has (`have`: listed at the start of the round, with what
    the round wrote; nobody else writes there while the lock is held and no other session
    is open) and SOURCE no longer has."""
    gone = {
        k: sorted(have.of(k).keys() - listing.of(k).keys()) for k in ("snapshots", "index", "data")
    }
    old_keys = sorted(have.keys.keys() - listing.keys.keys())
    if not any(gone.values()) and not old_keys:
        return  # nothing to remove: no need to ask who else uses the copy
    others = locks.list_sessions(dest, besides=own_sessions | {locks.EXCLUSIVE})
    if others:
        # a backup or restore there may need what SOURCE no longer has
        result.postponed = (
            "the copy is in use by "
            + ", ".join(s.describe() for s in others)
            + "; run sync again once it is not"
        )
        return
    if have.snapshots and not listing.snapshots:
        # more likely a mistake (or a listing gone wrong) than a wish to lose every copy
        result.postponed = (
            "the source has no snapshot left, so the copy keeps its own: remove them there "
            "with `isidorus backup forget` if that is really meant"
        )
        return
    queued_before = dest.removals_queued if isinstance(dest, QueuingRemovals) else 0
    for kind, names in gone.items():
        for name in names:
            dest.remove(kind, name)
            result.objects_removed += 1
            result.snapshots_removed += kind == "snapshots"
    # old key files (a changed passphrase) go only when one SOURCE has stays
    if have.keys.keys() & listing.keys.keys():
        for name in old_keys:
            dest.remove("keys", name)
            result.objects_removed += 1
    if isinstance(dest, QueuingRemovals):
        result.removals_queued = dest.removals_queued - queued_before


def sync_stores(
    source: Backend,
    dest: Backend,
    result: SyncResult,
    options: SyncOptions | None = None,
    progress: Progress | None = None,
    *,
    repo: Repository | None = None,
    own_sessions: set[str] | None = None,
    head: HeadStart | None = None,
    memo: CopyMemo | None = None,
) -> SyncResult:
    """Make DEST (prepared by `prepare_destination`) hold SOURCE's snapshots, or those of
    `options.snapshots` (which needs `repo`: SOURCE opened with its key), and, after a
    full sync, no more than SOURCE holds. The caller holds a session on SOURCE and the
    exclusive lock on DEST (`own_sessions` names them). Idempotent: an interrupted sync
    run again sends only what DEST still lacks. Damaged objects of SOURCE are not copied
    and are named in `result.damaged`; failures to read or write raise BackendError.
    `head` carries on the uploads begun ahead (head_start.py), and is stopped once DEST is
    listed; `memo` learns what DEST holds at the end, complete or not."""
    opts = options or SyncOptions()
    progress = progress or NullProgress()
    if opts.snapshots and repo is None:
        raise ValueError("a sync of chosen snapshots needs the source opened with its key")
    if dest.exists("gc", GC_STATE):
        # its sweep may have condemned packs that new snapshots would now rely on
        raise StoreError(
            f"a gc of {dest.location} was interrupted: finish it with "
            "`isidorus backup gc` on that store, then sync again"
        )
    ours = (own_sessions or set()) | {locks.EXCLUSIVE}  # need not be read: they are ours
    others = locks.list_sessions(dest, besides=ours)
    stale = {s.name for s in locks.remove_stale(dest, others)}
    dest.clean_tmp(({s.name for s in others} - stale) | ours)  # a killed sync's uploads
    copier = _Copier(source, dest, opts, progress, head)
    damaged = set(result.damaged)
    try:
        for _attempt in range(ROUNDS):
            listing = (
                list_needed(repo, opts.snapshots) if repo and opts.snapshots else list_store(source)
            )
            if _round(copier, listing, dest, result, damaged):
                break
        else:
            raise BackendError(
                f"{source.location} kept changing while it was copied (a gc or repair-index "
                "ran there): run sync again",
                permanent=False,
            )
    except BaseException:
        if memo is not None and copier.dest_has is not None:
            # what arrived is not guessed again: the next sync's head start skips it
            _remember(memo, source, set(copier.dest_has.data))
        raise
    result.damaged = sorted(damaged)
    if opts.snapshots:
        return result
    if result.held_back:
        result.postponed = "removals wait until the source's index is repaired"
    else:
        assert copier.dest_has is not None
        _remove_what_source_lacks(listing, copier.dest_has, dest, own_sessions or set(), result)
    if memo is not None and result.ok:
        assert copier.dest_has is not None
        _remember(memo, source, copier.dest_has.data.keys() & listing.data.keys())
    return result


def copy_store(
    source: Backend,
    dest: Backend,
    options: SyncOptions | None = None,
    progress: Progress | None = None,
    open_source: Callable[[], Repository] | None = None,
    memo: CopyMemo | None = None,
) -> SyncResult:
    """A whole sync: a session on SOURCE, DEST made a copy if it is none yet, the
    exclusive lock on DEST, then `sync_stores`. `open_source` opens SOURCE with its key;
    it is called only for a sync of chosen snapshots. With `memo` (for a place that is
    slow to start, a home), the packs DEST most likely lacks get a head start, and the
    memo learns what DEST holds at the end."""
    opts = options or SyncOptions()
    if opts.snapshots and open_source is None:
        raise ValueError("a sync of chosen snapshots needs the key of the source")
    result = SyncResult()
    # uploads begun ahead are tagged with the session DEST will know this sync by
    name = locks.new_name()
    dest.tmp_tag = name
    # the head start leaves before SOURCE's session is registered (a write made durable):
    # it only reads packs, and one that a gc takes meanwhile just ends it
    head = _head_start(source, dest, memo) if memo and not opts.snapshots else None
    try:
        with locks.session(source, "sync", read_only=True):
            repo = open_source() if opts.snapshots and open_source is not None else None
            try:
                if repo is not None:
                    for ref in opts.snapshots:
                        repo.find_snapshot(ref)  # a wrong one stops the sync before it starts
                prepare_destination(source, dest, result)
                with locks.session(dest, "sync", exclusive=True, name=name):
                    return sync_stores(
                        source,
                        dest,
                        result,
                        opts,
                        progress,
                        repo=repo,
                        own_sessions={name},
                        head=head,
                        memo=memo if not opts.snapshots else None,
                    )
            finally:
                if repo is not None:
                    repo.cache.close()
    finally:
        if head is not None:
            head.close()


def _store_id(source: Backend) -> str | None:
    try:
        return str(json.loads(source.read("config", "config"))["id"])
    except (OSError, BackupError, ValueError, KeyError, TypeError):
        return None  # the sync says what is wrong with SOURCE


def _remember(memo: CopyMemo, source: Backend, packs: set[str]) -> None:
    store_id = _store_id(source)
    if store_id is not None:
        memo.save(store_id, packs)


def _head_start(source: Backend, dest: Backend, memo: CopyMemo) -> HeadStart | None:
    """The head start of a sync to DEST, from what DEST held after the last one."""
    store_id = _store_id(source)
    held = memo.load(store_id) if store_id else None
    if held is None:
        return None
    guess = sorted((n, s) for n, s in source.list("data") if n not in held)
    return HeadStart(source, dest, guess).start()
