"""Checking a store: every object against its name, every blob against its id, and every
snapshot for what it can still restore.

Damage is data here, not an exception: the report names each damaged snapshot and each file
in it that cannot be restored whole, so the operator knows what was lost and where to
repair from. Packs are read by a thread pool (hashing, decryption and decompression run
outside the GIL); blob lists come from the on-disk index sorted by pack, so memory stays
flat.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zstandard

from isidorus.backup import objects
from isidorus.backup.errors import IntegrityError, StoreError
from isidorus.backup.pack import COMPRESSED, BlobEntry, read_header
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.remote.base import Backend
from isidorus.backup.repository import Repository
from isidorus.backup.scrub import locate_blobs, repair_objects
from isidorus.backup.store_config import read_config
from isidorus.backup.tree import decode_tree
from isidorus.backup.types import Snapshot, iso_time


@dataclass(frozen=True)
class VerifyOptions:
    snapshots: tuple[str, ...] = ()  # ids, prefixes or `latest`; empty: all
    read_data: bool = True
    sample_percent: float = 100.0
    threads: int = 0


@dataclass
class VerifyReport:
    damaged: list[dict[str, Any]] = field(default_factory=list)  # per snapshot
    errors: list[str] = field(default_factory=list)  # per store object
    # the objects whose bytes are bad or gone ("kind/name"): another copy can replace them
    objects: list[str] = field(default_factory=list)
    # blobs that snapshots need and no index object lists: another copy may hold them
    missing_blobs: set[bytes] = field(default_factory=set)
    snapshots_checked: int = 0
    packs_checked: int = 0
    blobs_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "damaged": self.damaged,
            "errors": self.errors,
            "objects": sorted(self.objects),
            "snapshots_checked": self.snapshots_checked,
            "packs_checked": self.packs_checked,
            "blobs_checked": self.blobs_checked,
            "bytes_checked": self.bytes_checked,
        }


def _blobs_by_pack(repo: Repository) -> Iterator[tuple[str, list[BlobEntry]]]:
    cur: str | None = None
    group: list[BlobEntry] = []
    for r in repo.cache.db.execute(
        "SELECT pack, type, id, offset, length, raw_length, flags FROM blobs ORDER BY pack, offset"
    ):
        pack = r[0].hex()
        if pack != cur:
            if cur is not None:
                yield cur, group
            cur, group = pack, []
        group.append(BlobEntry(r[1], r[2], r[3], r[4], r[5], r[6]))
    if cur is not None:
        yield cur, group


def check_blob(repo: Repository, data: bytes | memoryview, e: BlobEntry) -> str | None:
    """Why a blob is bad, or None when it decrypts to its id."""
    try:
        payload = repo.crypto.open(memoryview(data)[e.offset : e.offset + e.length], e.id, "blob")
        plain = (
            objects.decompressor().decompress(payload, max_output_size=e.raw_length)
            if e.flags & COMPRESSED
            else payload
        )
    except (IntegrityError, zstandard.ZstdError) as exc:
        return str(exc)
    if len(plain) != e.raw_length or repo.crypto.chunk_id(plain) != e.id:
        return "content does not match its id"
    return None


PackCheck = tuple[list[str], set[bytes], int, int, bool]


def check_pack(repo: Repository, name: str, entries: list[BlobEntry]) -> PackCheck:
    """Read one pack: (problems, ids of bad blobs, bytes read, blobs checked, whether its
    bytes are bad or gone)."""
    try:
        data = repo.backend.read("data", name)
    except FileNotFoundError:
        return [f"pack {name} is missing"], {e.id for e in entries}, 0, 0, True
    problems = []
    bad_bytes = hashlib.sha256(data).hexdigest() != name
    if bad_bytes:
        problems.append(f"pack {name} does not match its name (damaged or tampered with)")
    else:
        try:
            listed = {(e.id, e.offset) for e in read_header(repo.crypto, data, f"pack {name}")}
            if any((e.id, e.offset) not in listed for e in entries):
                problems.append(f"pack {name} lacks blobs that the index names")
        except IntegrityError as exc:
            problems.append(str(exc))
    bad = set()
    for e in entries:
        if e.offset + e.length > len(data) or check_blob(repo, data, e):
            bad.add(e.id)
    if bad and not problems:
        problems.append(f"pack {name}: {len(bad)} blobs are damaged")
    return problems, bad, len(data), len(entries), bad_bytes


class Verifier:
    def __init__(self, repo: Repository, options: VerifyOptions, progress: Progress) -> None:
        self.repo = repo
        self.opts = options
        self.progress = progress
        self.report = VerifyReport()
        self.bad: set[bytes] = set()
        self.lock = threading.Lock()
        self.tree_memo: dict[bytes, list[str]] = {}

    def check_metadata_objects(self) -> None:
        for kind in ("index", "keys"):
            for name, _size in self.repo.backend.list(kind):
                try:
                    objects.check_name(name, self.repo.backend.read(kind, name), f"{kind}/{name}")
                except IntegrityError as exc:
                    self.report.errors.append(str(exc))
                    self.report.objects.append(f"{kind}/{name}")

    def check_packs(self, stored: dict[str, int]) -> None:
        indexed: set[str] = set()
        threads = self.opts.threads or 2
        rng = random.Random()
        fraction = self.opts.sample_percent / 100.0
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:
            futures: list[tuple[str, Future[PackCheck]]] = []
            for name, entries in _blobs_by_pack(self.repo):
                indexed.add(name)
                if name not in stored:
                    self.report.errors.append(f"pack {name} is missing")
                    self.report.objects.append(f"data/{name}")
                    self.bad.update(e.id for e in entries)
                    continue
                if not self.opts.read_data or (fraction < 1 and rng.random() >= fraction):
                    continue
                futures.append((name, pool.submit(check_pack, self.repo, name, entries)))
                if len(futures) > 2 * threads:
                    self._collect(*futures.pop(0))
            for name, f in futures:
                self._collect(name, f)

    def _collect(self, name: str, f: Future[PackCheck]) -> None:
        problems, bad, n, blobs, bad_bytes = f.result()
        if bad_bytes:
            self.report.objects.append(f"data/{name}")
        self.report.blobs_checked += blobs
        self.report.errors.extend(problems)
        self.bad.update(bad)
        self.report.packs_checked += 1
        self.report.bytes_checked += n
        self.progress.advance(items=1, nbytes=n)

    def indexed(self, bid: bytes) -> bool:
        if self.repo.cache.lookup(bid) is not None:
            return True
        self.report.missing_blobs.add(bid)
        return False

    def damaged_in_tree(self, tid: bytes, prefix: str) -> list[str]:
        """Paths (relative to the tree) that cannot be restored whole."""
        memo = self.tree_memo.get(tid)
        if memo is None:
            memo = []
            if tid in self.bad or not self.indexed(tid):
                memo.append("")  # the directory listing itself is lost
            else:
                try:
                    nodes = decode_tree(self.repo.load_blob(tid))
                except IntegrityError:
                    nodes = None
                    memo.append("")
                for node in nodes or ():
                    name = "/" + node["name"].decode("utf-8", "surrogateescape")
                    if node["type"] == "dir":
                        memo.extend(name + p for p in self.damaged_in_tree(node["subtree"], ""))
                    elif any(
                        cid is not None and (cid in self.bad or not self.indexed(cid))
                        for cid, _n in node.get("content", ())
                    ):
                        memo.append(name)
            self.tree_memo[tid] = memo
        return [prefix + p for p in memo]

    def check_snapshots(self, names: list[str]) -> None:
        for name in names:
            try:
                snap: Snapshot = self.repo.load_snapshot(name)
            except FileNotFoundError:
                continue
            except IntegrityError as exc:
                self.report.damaged.append(
                    {"snapshot": name, "time": None, "files": [], "reason": str(exc)}
                )
                self.report.objects.append(f"snapshots/{name}")
                continue
            self.report.snapshots_checked += 1
            files = [p or "/" for p in self.damaged_in_tree(snap.tree, "")]
            if files:
                self.report.damaged.append(
                    {
                        "snapshot": snap.id,
                        "time": iso_time(snap.time),
                        "files": files,
                        "reason": f"{len(files)} files cannot be restored whole",
                    }
                )


def verify_store(
    repo: Repository, options: VerifyOptions, progress: Progress | None = None
) -> VerifyReport:
    """Check the store; never raises for damage it finds, reports it instead."""
    v = Verifier(repo, options, progress or NullProgress())
    names = [repo.find_snapshot(s).id for s in options.snapshots] or repo.snapshot_names()
    stored = dict(repo.backend.list("data"))
    v.progress.start("verify", len(stored), sum(stored.values()) if options.read_data else None)
    try:
        v.check_metadata_objects()
        v.check_packs(stored)
        v.check_snapshots(sorted(names))
    finally:
        v.progress.finish()
    return v.report


@dataclass
class RepairReport:
    """A verify, the repairs from another copy, and the verify after them."""

    before: VerifyReport
    after: VerifyReport
    repaired: list[str] = field(default_factory=list)  # "kind/name"
    not_repaired: list[dict[str, str]] = field(default_factory=list)  # {"object", "problem"}

    @property
    def ok(self) -> bool:
        return self.after.ok

    def to_json(self) -> dict[str, Any]:
        return {
            **self.after.to_json(),
            "before": self.before.to_json(),
            "repaired": self.repaired,
            "not_repaired": self.not_repaired,
        }


def repair_from_copy(
    repo: Repository,
    other: Backend,
    before: VerifyReport,
    options: VerifyOptions,
    progress: Progress | None = None,
    open_other: Callable[[], Repository] | None = None,
) -> RepairReport:
    """Replace the objects `before` found damaged or missing by the intact ones of
    `other`, a copy of the same store, then verify again. Blobs that no index object
    lists are looked up in the other copy's index (`open_other` opens it with the key),
    and its index objects and packs that hold them are copied in. The caller holds a
    session on both stores."""
    progress = progress or NullProgress()
    if read_config(other)["id"] != repo.id:
        raise StoreError(f"{other.location} holds another store: repair from a copy of this one")
    out = RepairReport(before, before)
    wanted = sorted(set(before.objects))
    absent: set[bytes] = set()
    if before.missing_blobs and open_other is not None:
        copy = open_other()
        try:
            located, absent = locate_blobs(copy, before.missing_blobs)
        finally:
            copy.cache.close()
        for obj in located:
            kind, name = obj.split("/", 1)
            if obj not in wanted and not repo.backend.exists(kind, name):
                wanted.append(obj)
    out.repaired, out.not_repaired = repair_objects(repo.backend, other, wanted, progress)
    if absent:
        out.not_repaired.append(
            {
                "object": f"{len(absent)} blobs",
                "problem": f"neither the store nor {other.location} has them",
            }
        )
    repo.refresh_index()
    out.after = verify_store(repo, options, progress)
    return out
