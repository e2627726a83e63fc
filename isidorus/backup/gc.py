"""Freeing what no snapshot needs, while backups keep running.

A backup may decide to reuse a blob at any moment, so deleting "unreferenced" blobs is
only safe if no running backup can still pick them. Other tools settle this with clocks or
lock timeouts; isidorus uses sessions (locks.py) and three resumable phases, recorded in
`gc/state` so a killed gc carries on where it stopped:

1. **mark** — list the index objects (I) and snapshots (M), mark every blob that M reaches,
   and *condemn* the rest of I's blobs: their ids go to `gc/condemned-<epoch>`, then
   `gc/state` is written, then the running sessions are listed (S). Every session
   registers itself *before* it reads `gc/state`, so a session missing from S has seen the
   condemned list and will not reuse those blobs (it stores fresh copies instead).
2. **sweep** — once every session of S has ended, the snapshots made since the mark are
   walked too and whatever they reach is pardoned. Packs of I whose blobs are all condemned
   are deleted, packs with enough condemned bytes are repacked (live blobs are copied
   sealed, without decryption), the index objects that named them are rewritten, and the
   sessions now running are listed (S2).
3. **delete** — once S2 has ended (they may still read old locations), the old index objects
   and then the old packs are deleted, and the gc state is removed.

Packs no index names (left by a killed backup) are deleted too, if they are still unnamed
once S has ended. A store where a snapshot or tree cannot be read stops gc before anything
is deleted: run verify first.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from isidorus.backup import locks, objects
from isidorus.backup.errors import IntegrityError
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.remote.base import GC_STATE as STATE
from isidorus.backup.repository import Repository
from isidorus.backup.saver import BlobSaver
from isidorus.backup.tree import decode_tree


@dataclass(frozen=True)
class GcOptions:
    repack_unused: float = 0.10  # repack a pack once this share of its bytes is unused
    wait: bool = True  # wait for sessions that may still reuse condemned blobs
    poll_seconds: float = 1.0


@dataclass
class GcResult:
    done: bool = False
    condemned: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    bytes_freed: int = 0
    waiting_for: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_state(repo: Repository) -> dict[str, Any] | None:
    try:
        data = repo.backend.read("gc", STATE)
    except FileNotFoundError:
        return None
    state: dict[str, Any] = objects.decode(repo.crypto, "gc", data, "gc/state")
    return state


def _save_state(repo: Repository, state: dict[str, Any]) -> None:
    repo.backend.write("gc", STATE, objects.encode(repo.crypto, "gc", state))


def load_condemned(repo: Repository) -> None:
    """Make this session avoid the blobs a running gc has condemned. Call it after the
    session is registered (locks.session) and before choosing blobs to reuse."""
    state = load_state(repo)
    if state is None or state["phase"] not in ("sweep", "delete"):
        if repo.cache.has_condemned:
            repo.cache.set_condemned("", [])
        return
    if repo.cache.condemned_epoch() == state["epoch"]:
        return
    data = repo.backend.read("gc", f"condemned-{state['epoch']}")
    raw: bytes = objects.decode(repo.crypto, "gc", data, "gc condemned list")["ids"]
    repo.cache.set_condemned(state["epoch"], (raw[i : i + 32] for i in range(0, len(raw), 32)))


class Marker:
    """The set of blobs reached from snapshots, in a temporary on-disk table. A snapshot
    or tree that cannot be read stops the marking: `stop` says what stopped."""

    def __init__(
        self, repo: Repository, table: str, stop: str = "gc stopped before deleting anything"
    ) -> None:
        self.repo = repo
        self.table = table
        self.stop = stop
        db = repo.cache.db
        db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (id BLOB PRIMARY KEY) WITHOUT ROWID")
        db.execute(f"DELETE FROM {table}")

    def add(self, bid: bytes) -> bool:
        cur = self.repo.cache.db.execute(f"INSERT OR IGNORE INTO {self.table} VALUES (?)", (bid,))
        return cur.rowcount > 0

    def mark_snapshot(self, name: str) -> None:
        try:
            snap = self.repo.load_snapshot(name)
        except FileNotFoundError:
            return  # pruned meanwhile: it needs nothing
        except IntegrityError as exc:
            raise IntegrityError(
                f"{self.stop}: {exc}; run `isidorus backup verify` and repair the store first"
            ) from None
        stack = [snap.tree]
        db = self.repo.cache.db
        while stack:
            tid = stack.pop()
            if not self.add(tid):
                continue
            try:
                nodes = decode_tree(self.repo.load_blob(tid))
            except IntegrityError as exc:
                raise IntegrityError(
                    f"{self.stop}: snapshot {name[:8]} has an unreadable tree ({exc}); run "
                    "`isidorus backup verify` first"
                ) from None
            ids = []
            for n in nodes:
                if n["type"] == "dir":
                    stack.append(n["subtree"])
                for cid, _len in n.get("content", ()):
                    if cid is not None:
                        ids.append((cid,))
            db.executemany(f"INSERT OR IGNORE INTO {self.table} VALUES (?)", ids)


def _other_sessions(repo: Repository, me: set[str]) -> list[str]:
    return [
        s.name
        for s in locks.list_sessions(repo.backend)
        if s.name not in me and s.name != locks.EXCLUSIVE
    ]


def _wait(
    repo: Repository, names: list[str], opts: GcOptions, progress: Progress, result: GcResult
) -> bool:
    """Wait until none of the sessions `names` runs; False when told not to wait."""
    warned = False
    while True:
        locks.remove_stale(repo.backend)
        alive = {s.name: s for s in locks.list_sessions(repo.backend)}
        left = [n for n in names if n in alive]
        if not left:
            return True
        if not opts.wait:
            result.waiting_for = [alive[n].describe() for n in left]
            return False
        if not warned:
            progress.warn(
                "gc waits for " + ", ".join(alive[n].describe() for n in left) + " to finish"
            )
            warned = True
        time.sleep(opts.poll_seconds)


def mark(repo: Repository, own_sessions: set[str]) -> dict[str, Any]:
    repo.refresh_index()
    if repo.damaged_index:
        # its packs would look unindexed, and unindexed packs are deleted
        raise IntegrityError(
            f"gc stopped before deleting anything: index object {repo.damaged_index[0][:16]} "
            "is damaged; run `isidorus backup repair-index` first"
        )
    files = repo.cache.known_files()
    snapshots = repo.snapshot_names()
    repo.list_snapshots()
    if repo.damaged_snapshots:
        raise IntegrityError(
            f"gc stopped before deleting anything: snapshot {repo.damaged_snapshots[0][:8]} is "
            "damaged, and what it needs cannot be known; repair it from another copy, or drop "
            "it with `isidorus backup forget`"
        )
    m = Marker(repo, "referenced")
    for name in snapshots:
        m.mark_snapshot(name)
    nums = ",".join(str(n) for n in files.values()) or "NULL"
    ids = bytearray()
    for (bid,) in repo.cache.db.execute(
        f"SELECT DISTINCT id FROM blobs WHERE file IN ({nums}) "
        "AND id NOT IN (SELECT id FROM referenced)"
    ):
        ids += bid
    indexed = set(repo.cache.packs())
    orphans = [n for n, _ in repo.backend.list("data") if n not in indexed]
    epoch = secrets.token_hex(8)
    repo.backend.write(
        "gc", f"condemned-{epoch}", objects.encode(repo.crypto, "gc", {"ids": bytes(ids)})
    )
    state: dict[str, Any] = {
        "v": 1,
        "phase": "sweep",
        "epoch": epoch,
        "index_files": sorted(files),
        "snapshots": snapshots,
        "orphans": orphans,
        "condemned": len(ids) // 32,
        "wait_for": None,
    }
    _save_state(repo, state)
    # listed only now: a session missing from this list has seen the condemned blobs
    state["wait_for"] = _other_sessions(repo, own_sessions)
    _save_state(repo, state)
    return state


def sweep(
    repo: Repository,
    state: dict[str, Any],
    opts: GcOptions,
    own_sessions: set[str],
    result: GcResult,
) -> dict[str, Any]:
    repo.refresh_index()
    db = repo.cache.db
    # pardon what snapshots made since the mark reach
    m = Marker(repo, "pardoned")
    old = set(state["snapshots"])
    for name in repo.snapshot_names():
        if name not in old:
            m.mark_snapshot(name)
    raw = objects.decode(
        repo.crypto,
        "gc",
        repo.backend.read("gc", f"condemned-{state['epoch']}"),
        "gc condemned list",
    )["ids"]
    db.execute("CREATE TEMP TABLE IF NOT EXISTS dead (id BLOB PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM dead")
    db.executemany(
        "INSERT OR IGNORE INTO dead VALUES (?)",
        ((raw[i : i + 32],) for i in range(0, len(raw), 32)),
    )
    db.execute("DELETE FROM dead WHERE id IN (SELECT id FROM pardoned)")
    known = repo.cache.known_files()
    old_files = [n for n in state["index_files"] if n in known]
    nums = ",".join(str(known[n]) for n in old_files) or "NULL"
    # per pack of the marked index objects: bytes dead and alive
    usage: dict[bytes, list[int]] = {}
    for pack, length, is_dead in db.execute(
        f"SELECT pack, length, id IN (SELECT id FROM dead) FROM blobs WHERE file IN ({nums})"
    ):
        u = usage.setdefault(pack, [0, 0])
        u[1 if is_dead else 0] += length
    delete = {p for p, (live, dead) in usage.items() if live == 0 and dead > 0}
    repack = {
        p
        for p, (live, dead) in usage.items()
        if live and dead and dead >= opts.repack_unused * (live + dead)
    }
    result.condemned = state.get("condemned", 0)
    if repack:
        saver = BlobSaver(repo)
        try:
            for pack in sorted(repack):
                name = pack.hex()
                for bid, offset, length, raw_length, flags, btype in db.execute(
                    f"SELECT id, offset, length, raw_length, flags, type FROM blobs "
                    f"WHERE pack = ? AND file IN ({nums}) "
                    "AND id NOT IN (SELECT id FROM dead) ORDER BY offset",
                    (pack,),
                ).fetchall():
                    # sealed bytes move as they are: nothing is decrypted to repack
                    sealed = repo.backend.read_range("data", name, offset, length)
                    saver.add(btype, bid, [sealed], raw_length, flags)
            saver.flush()
        finally:
            saver.close()
    gone = delete | repack
    # rewrite the index objects that name packs about to go
    rewritten = []
    for fname in old_files:
        entries = list(repo.cache.entries_of_file(fname))
        if not any(bytes.fromhex(p) in gone for p, _e in entries):
            continue
        keep: dict[str, list[Any]] = {}
        for p, e in entries:
            if bytes.fromhex(p) not in gone:
                keep.setdefault(p, []).append(e)
        if keep:
            doc = {
                "v": 1,
                "packs": [[bytes.fromhex(p), [e.row() for e in es]] for p, es in keep.items()],
            }
            data = objects.encode(repo.crypto, "index", doc)
            new_name = objects.object_name(data)
            repo.backend.write("index", new_name, data)
            repo.cache.add(new_name, list(keep.items()))
        rewritten.append(fname)
    indexed_now = set(repo.cache.packs()) - {p.hex() for p in gone}
    orphans = [p for p in state["orphans"] if p not in indexed_now]
    sizes = dict(repo.backend.list("data"))
    result.packs_deleted = len(delete) + len(orphans)
    result.packs_repacked = len(repack)
    result.bytes_freed = sum(sizes.get(p.hex(), 0) for p in gone) + sum(
        sizes.get(p, 0) for p in orphans
    )
    new_state = {
        "v": 1,
        "phase": "delete",
        "epoch": state["epoch"],
        "index_files": rewritten,
        "packs": sorted([p.hex() for p in gone] + orphans),
        "condemned": state.get("condemned", 0),
        "wait_for": None,
    }
    _save_state(repo, new_state)
    new_state["wait_for"] = _other_sessions(repo, own_sessions)
    _save_state(repo, new_state)
    return new_state


def finish(repo: Repository, state: dict[str, Any]) -> None:
    for name in state["index_files"]:
        repo.backend.remove("index", name)
    for name in state["packs"]:
        repo.backend.remove("data", name)
    repo.backend.remove("gc", f"condemned-{state['epoch']}")
    repo.backend.remove("gc", STATE)
    # temporary files of writes whose process died (named after their session)
    repo.backend.clean_tmp({s.name for s in locks.list_sessions(repo.backend)})
    repo.refresh_index()
    repo.cache.set_condemned("", [])


def collect_garbage(
    repo: Repository,
    options: GcOptions | None = None,
    progress: Progress | None = None,
    own_sessions: set[str] | None = None,
) -> GcResult:
    """Run (or resume) gc. The caller holds the exclusive lock and a session, whose names
    go in `own_sessions`. Returns early with `waiting_for` set when options.wait is off and
    sessions that may need condemned blobs still run; calling again resumes."""
    opts = options or GcOptions()
    progress = progress or NullProgress()
    mine = own_sessions if own_sessions is not None else set()
    result = GcResult()
    locks.remove_stale(repo.backend)
    state = load_state(repo)
    if state is None:
        state = mark(repo, mine)
    if state["phase"] == "sweep":
        if state["wait_for"] is None:
            state["wait_for"] = _other_sessions(repo, mine)
        if not _wait(repo, state["wait_for"], opts, progress, result):
            return result
        state = sweep(repo, state, opts, mine, result)
    if state["phase"] == "delete":
        if state["wait_for"] is None:
            state["wait_for"] = _other_sessions(repo, mine)
        if not _wait(repo, state["wait_for"], opts, progress, result):
            return result
        finish(repo, state)
    result.condemned = result.condemned or state.get("condemned", 0)
    result.done = True
    return result
