"""Checking a store without its key (scrub), and repairing it from another copy.

Every object under `keys/`, `snapshots/`, `index/` and `data/` is named by the SHA-256 of
its bytes, and the config carries a checksum of itself, so whoever keeps a copy (a friend
lending a disk) can check all of it without the passphrase and find bit rot or tampering.
What cannot be seen without the key is which objects *should* be there, since snapshots
and index objects are sealed: scrub knows that an encrypted store needs a key file, and in
a store made without encryption it reads the index objects, so missing packs are found
too. `verify`, with the key, finds the rest.

A repair fetches each damaged or missing object from another copy of the same store,
checks it against its name, puts it in place (atomically where the backend can, see
`transfer.replace_object`) and reads it back. Nothing needs the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from isidorus.backup import objects
from isidorus.backup.crypto import Crypto, MasterKey
from isidorus.backup.errors import IntegrityError, StoreError
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.remote.base import Backend
from isidorus.backup.repository import Repository
from isidorus.backup.store_config import checksum, read_config
from isidorus.backup.transfer import (
    OBJECT_KINDS,
    check_object,
    is_hash_name,
    read_checked,
    replace_object,
    run_parallel,
)
from isidorus.units import human_bytes

_ID = re.compile(rb'"id":\s*"([0-9a-f]{64})"')


@dataclass
class ScrubReport:
    objects_checked: int = 0
    bytes_checked: int = 0
    damaged: list[dict[str, str]] = field(default_factory=list)  # {"object", "problem"}
    missing: list[dict[str, str]] = field(default_factory=list)  # {"object", "problem"}
    repaired: list[str] = field(default_factory=list)  # "kind/name"
    not_repaired: list[dict[str, str]] = field(default_factory=list)  # {"object", "problem"}
    store_id: str = ""  # from the config, or what can be read of a damaged one

    def problems(self) -> list[str]:
        return [p["object"] for p in self.damaged + self.missing]

    @property
    def ok(self) -> bool:
        """Nothing is wrong now: no damage was found, or all of it was repaired."""
        return not self.not_repaired and set(self.problems()) <= set(self.repaired)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **{k: v for k, v in self.__dict__.items() if k != "store_id"}}

    def lines(self) -> list[str]:
        """One line for each object found wrong, repaired or not repaired."""
        return [
            *(f"damaged {p['object']}: {p['problem']}" for p in self.damaged),
            *(f"missing {p['object']}: {p['problem']}" for p in self.missing),
            *(f"repaired {obj}" for obj in self.repaired),
            *(f"not repaired {p['object']}: {p['problem']}" for p in self.not_repaired),
        ]

    def summary(self, damaged: str = "damaged") -> str:
        """The scrub in one line: intact, repaired or `damaged` (a terminal shouts it), and
        how much was checked."""
        found = len(self.damaged) + len(self.missing)
        state = "intact" if not found else ("repaired" if self.ok else damaged)
        return (
            f"{state}: {self.objects_checked} objects ({human_bytes(self.bytes_checked)}) "
            f"checked, {found} damaged or missing, {len(self.repaired)} repaired"
        )


def _check_config(backend: Backend, report: ScrubReport) -> dict[str, Any] | None:
    try:
        raw = backend.read("config", "config")
    except FileNotFoundError:
        report.missing.append({"object": "config", "problem": "the store's config is missing"})
        return None
    found = _ID.search(raw)
    report.store_id = found.group(1).decode() if found else ""
    try:
        doc: dict[str, Any] = json.loads(raw)
        intact = (
            isinstance(doc, dict)
            and doc.get("format") == "isidorus-store"
            and doc.get("checksum") == checksum(doc)
        )
    except ValueError:
        intact = False
    if not intact:
        report.damaged.append(
            {"object": "config", "problem": "the config does not match its checksum"}
        )
        return None
    report.store_id = str(doc["id"])
    return doc


def _missing_packs(backend: Backend, config: dict[str, Any], intact_index: list[str]) -> set[str]:
    """Packs that the index objects of an unencrypted store name (readable without a key)."""
    crypto = Crypto(MasterKey(b"", bytes.fromhex(config["mac_key"]), 0), encrypted=False)
    named: set[str] = set()
    for name in intact_index:
        try:
            doc = objects.decode(crypto, "index", backend.read("index", name), f"index/{name}")
        except (FileNotFoundError, IntegrityError):
            continue
        named.update(bytes(p).hex() for p, _rows in doc["packs"])
    return named


def scrub_store(
    backend: Backend, progress: Progress | None = None, threads: int = 4
) -> ScrubReport:
    """Read every object of the store and check it against its name. Never needs the
    key and never raises for damage: it is reported. Raises StoreError when the place
    holds no store at all."""
    progress = progress or NullProgress()
    report = ScrubReport()
    config = _check_config(backend, report)
    stored = {kind: dict(backend.list(kind)) for kind in OBJECT_KINDS}
    if config is None and not report.damaged and not any(stored.values()):
        raise StoreError(
            f"{backend.location} is not an isidorus store (no config, no objects): check the path"
        )
    items = [(kind, name, size) for kind in OBJECT_KINDS for name, size in stored[kind].items()]
    progress.start("scrub", len(items), sum(size for _k, _n, size in items))
    bad: set[tuple[str, str]] = set()

    def work(item: tuple[str, str, int]) -> bool:
        kind, name, size = item
        return is_hash_name(name) and check_object(backend, kind, name, size)

    def done(item: tuple[str, str, int], f: Future[bool]) -> None:
        kind, name, size = item
        try:
            intact = f.result()
        except FileNotFoundError:
            return  # removed meanwhile (gc, prune): nothing to check
        report.objects_checked += 1
        report.bytes_checked += size
        progress.advance(items=1, nbytes=size)
        if not intact:
            bad.add((kind, name))
            problem = (
                "does not match its name (damaged or tampered with)"
                if is_hash_name(name)
                else "is not named by a hash: not an object of the store"
            )
            report.damaged.append({"object": f"{kind}/{name}", "problem": problem})

    try:
        run_parallel(items, work, done, threads)
    finally:
        progress.finish()
    report.damaged.sort(key=lambda p: p["object"])
    if config is not None and config.get("encryption") != "none" and not stored["keys"]:
        report.missing.append(
            {"object": "keys", "problem": "an encrypted store has no key file: nothing opens it"}
        )
    if config is not None and config.get("encryption") == "none":
        intact_index = [n for n in stored["index"] if ("index", n) not in bad]
        for pack in sorted(_missing_packs(backend, config, intact_index) - stored["data"].keys()):
            report.missing.append(
                {"object": f"data/{pack}", "problem": "named by the index, but missing"}
            )
    return report


def check_same_store(store: Backend, other: Backend, store_id: str) -> None:
    """Raise StoreError unless OTHER is a copy of the store (same id; or, when the
    store's config is unreadable, a key file in common)."""
    other_id = read_config(other)["id"]
    if store_id:
        if store_id != other_id:
            raise StoreError(
                f"{other.location} holds another store (id {other_id[:12]}…, not "
                f"{store_id[:12]}…): repair from a copy of this store"
            )
        return
    mine = {n for n, _ in store.list("keys")}
    if not mine & {n for n, _ in other.list("keys")}:
        raise StoreError(
            f"cannot tell whether {other.location} is a copy of {store.location} (its "
            "config is unreadable and they share no key file): repair it by hand"
        )


def _fetch(other: Backend, obj: str) -> tuple[str, str, bytes]:
    if obj == "config":
        read_config(other)  # its checksum holds
        return "config", "config", other.read("config", "config")
    kind, name = obj.split("/", 1)
    return kind, name, read_checked(other, kind, name)


def repair_objects(
    store: Backend, other: Backend, wanted: list[str], progress: Progress | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """Put the intact copies from OTHER of the objects `wanted` ("kind/name", "config",
    or "keys" for all key files) in place in the store: (repaired, not repaired with the
    reason). An object the store holds intact is left as it is. One at a time, so memory
    holds one object."""
    progress = progress or NullProgress()
    repaired: list[str] = []
    failed: list[dict[str, str]] = []
    progress.start("repair", len(wanted), None)
    try:
        for obj in wanted:
            progress.advance(items=1)
            if obj == "keys":
                names = [f"keys/{n}" for n, _ in other.list("keys")]
                problems = [_repair_one(store, other, n) for n in names]
                problem = (
                    None
                    if any(p is None for p in problems)
                    else f"{other.location} has no intact key file either"
                )
            else:
                problem = _repair_one(store, other, obj)
            if problem is None:
                repaired.append(obj)
            else:
                failed.append({"object": obj, "problem": problem})
    finally:
        progress.finish()
    return repaired, failed


def _repair_one(store: Backend, other: Backend, obj: str) -> str | None:
    """Repair one object; the reason it could not be, or None."""
    try:
        kind, name, data = _fetch(other, obj)
    except FileNotFoundError:
        return f"{other.location} does not have it"
    except (IntegrityError, StoreError):
        return f"it is damaged in {other.location} too"
    if kind != "config" and _intact(store, kind, name):
        # the bytes match the name: the fault was in the object when it was written, and
        # every copy holds the same
        return "it matches its name here: every copy holds the same bytes"
    replace_object(store, kind, name, data)
    try:
        took = store.read(kind, name) == data
    except FileNotFoundError:
        took = False
    return None if took else "the store did not take the good copy (is it append-only?)"


def _intact(backend: Backend, kind: str, name: str) -> bool:
    try:
        return hashlib.sha256(backend.read(kind, name)).hexdigest() == name
    except FileNotFoundError:
        return False


def locate_blobs(repo: Repository, ids: set[bytes]) -> tuple[list[str], set[bytes]]:
    """Where the copy `repo` keeps these blobs: the index objects that list them and
    every pack those index objects name ("kind/name"), and the ids it does not have."""
    db = repo.cache.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (id BLOB PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM wanted")
    db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", ((i,) for i in ids))
    found = {
        bid
        for (bid,) in db.execute(
            "SELECT DISTINCT id FROM blobs WHERE id IN (SELECT id FROM wanted)"
        )
    }
    nums = [
        n
        for (n,) in db.execute(
            "SELECT DISTINCT file FROM blobs WHERE id IN (SELECT id FROM wanted)"
        )
    ]
    where = ",".join(str(n) for n in nums) or "NULL"
    files = [n for (n,) in db.execute(f"SELECT name FROM index_files WHERE num IN ({where})")]
    packs = {
        p.hex() for (p,) in db.execute(f"SELECT DISTINCT pack FROM blobs WHERE file IN ({where})")
    }
    return [f"index/{n}" for n in sorted(files)] + [f"data/{p}" for p in sorted(packs)], ids - found
