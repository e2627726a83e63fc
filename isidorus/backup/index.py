"""The chunk index: where each blob lives, kept on disk so memory stays flat.

The store's `index/` objects are the truth; each lists packs and their blobs. This module
keeps a local cache of all of them in an SQLite file (a B-tree on disk, a small page
cache), keyed by blob id, so `create`, `gc` and `verify` look blobs up without holding the
whole index in memory. The cache records which index objects it holds and follows the
store on every open: objects that appeared are read in, objects that vanished (after gc)
are dropped. It can be deleted at any time; it is rebuilt from the store.

Each thread gets its own connection (SQLite connections are not shared between threads).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from isidorus.backup.errors import BackendError
from isidorus.backup.pack import BlobEntry

SCHEMA = """
CREATE TABLE IF NOT EXISTS index_files (num INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB NOT NULL, pack BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL, flags INTEGER NOT NULL, type INTEGER NOT NULL,
    file INTEGER NOT NULL,
    PRIMARY KEY (id, pack, offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_file ON blobs(file);
CREATE TABLE IF NOT EXISTS condemned (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Location:
    pack: str
    offset: int
    length: int
    raw_length: int
    flags: int
    type: int


PackEntries = list[tuple[str, list[BlobEntry]]]


class IndexCache:
    def __init__(self, path: str) -> None:
        self.path = path
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if path == ":memory:":
            # a throw-away file rather than SQLite's memory databases: those cannot be
            # shared between threads while one of them reads
            self._tmpdir = tempfile.TemporaryDirectory(prefix="isidorus-cache-")
            self.path = os.path.join(self._tmpdir.name, "index.sqlite")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.has_condemned = False
        self.generation = 0  # bumped by every write, so readers renew their snapshot
        self.db.executescript(SCHEMA)
        self.has_condemned = self._has_condemned()

    def _reader(self) -> sqlite3.Connection:
        """This thread's connection inside a read transaction, renewed when the cache
        changed: lookups then take no lock each (SQLite's WAL locks cost a syscall)."""
        conn = self.db
        if getattr(self._local, "generation", -1) != self.generation:
            if conn.in_transaction:
                conn.execute("COMMIT")
            conn.execute("BEGIN")
            self._local.generation = self.generation
        return conn

    def _end_read(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.in_transaction:
            conn.execute("COMMIT")
        self._local.generation = -1

    @property
    def db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=600, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-2048")  # 2 MiB of pages a connection at most
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The one write path: BEGIN IMMEDIATE, so concurrent writers queue, not fail."""
        self._end_read()
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BackendError(
                f"the index cache {self.path} failed ({exc}): free space, or "
                "delete that file (it is rebuilt from the store)"
            ) from None
        self.generation += 1

    def close(self) -> None:
        self._end_read()
        with self._lock:
            for c in self._all:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._all.clear()
        self._local = threading.local()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    # -- following the store
    def known_files(self) -> dict[str, int]:
        self._end_read()
        return {name: num for num, name in self.db.execute("SELECT num, name FROM index_files")}

    def sync(self, names: set[str], load: Callable[[str], PackEntries | None]) -> None:
        """Make the cache hold the index objects `names`; `load` reads one (None: it could
        not be read, and is tried again next time)."""
        known = self.known_files()
        gone = [known[n] for n in known.keys() - names]
        if gone:
            with self.write() as db:
                for num in gone:
                    db.execute("DELETE FROM blobs WHERE file = ?", (num,))
                    db.execute("DELETE FROM index_files WHERE num = ?", (num,))
        for name in sorted(names - known.keys()):
            packs = load(name)
            if packs is not None:
                self.add(name, packs)

    def add(self, name: str, packs: PackEntries) -> None:
        with self.write() as db:
            if db.execute("SELECT 1 FROM index_files WHERE name = ?", (name,)).fetchone():
                return  # another process got there first
            num = db.execute("INSERT INTO index_files (name) VALUES (?)", (name,)).lastrowid
            db.executemany(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        e.id,
                        bytes.fromhex(pack),
                        e.offset,
                        e.length,
                        e.raw_length,
                        e.flags,
                        e.type,
                        num,
                    )
                    for pack, entries in packs
                    for e in entries
                ),
            )

    # -- lookups
    def lookup(self, bid: bytes) -> Location | None:
        row = (
            self._reader()
            .execute(
                "SELECT pack, offset, length, raw_length, flags, type FROM blobs WHERE id = ? "
                "LIMIT 1",
                (bid,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Location(row[0].hex(), row[1], row[2], row[3], row[4], row[5])

    def lookup_all(self, bid: bytes) -> list[Location]:
        return [
            Location(r[0].hex(), r[1], r[2], r[3], r[4], r[5])
            for r in self.db.execute(
                "SELECT pack, offset, length, raw_length, flags, type FROM blobs WHERE id = ?",
                (bid,),
            )
        ]

    def usable(self, bid: bytes) -> bool:
        """Whether new snapshots may refer to this blob: known, and not condemned by gc."""
        db = self._reader()
        if db.execute("SELECT 1 FROM blobs WHERE id = ? LIMIT 1", (bid,)).fetchone() is None:
            return False
        return not (
            self.has_condemned
            and db.execute("SELECT 1 FROM condemned WHERE id = ?", (bid,)).fetchone()
        )

    def is_condemned(self, bid: bytes) -> bool:
        return (
            self._reader().execute("SELECT 1 FROM condemned WHERE id = ?", (bid,)).fetchone()
            is not None
        )

    def packs(self) -> dict[str, int]:
        """Every indexed pack with the count of its blobs."""
        return {
            p.hex(): n for p, n in self.db.execute("SELECT pack, count(*) FROM blobs GROUP BY pack")
        }

    def entries_of_file(self, name: str) -> Iterator[tuple[str, BlobEntry]]:
        for r in self.db.execute(
            "SELECT b.pack, b.type, b.id, b.offset, b.length, b.raw_length, b.flags "
            "FROM blobs b JOIN index_files f ON b.file = f.num WHERE f.name = ?",
            (name,),
        ):
            yield r[0].hex(), BlobEntry(r[1], r[2], r[3], r[4], r[5], r[6])

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM blobs").fetchone()[0])

    # -- what gc has condemned (new snapshots must not refer to it)
    def _has_condemned(self) -> bool:
        return self.db.execute("SELECT 1 FROM condemned LIMIT 1").fetchone() is not None

    def condemned_epoch(self) -> str:
        row = self.db.execute("SELECT v FROM meta WHERE k = 'condemned_epoch'").fetchone()
        return str(row[0]) if row else ""

    def set_condemned(self, epoch: str, ids: Iterable[bytes]) -> None:
        with self.write() as db:
            db.execute("DELETE FROM condemned")
            db.executemany("INSERT OR IGNORE INTO condemned VALUES (?)", ((i,) for i in ids))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('condemned_epoch', ?)", (epoch,))
        self.has_condemned = self._has_condemned()
