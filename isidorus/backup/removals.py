"""Removals queued at an append-only copy, carried out only after a delay.

A home that serves a copy `--append-only` never lets the server remove anything at once:
the removals that the server's sync asks for (after its own prune and gc) are written
here, in `removals.sqlite` beside the store's objects, and carried out once they are older
than the delay the home chose. Until then the home's owner can list them and cancel them
all, which also holds every later request: a server that was broken into can ask for as
many removals as it likes, the history at the home stays until its owner releases it.

Removals are carried out in the order that keeps the copy a working store at every step
(snapshots, then index objects, then packs, then key files), the same order sync uses.
An object written again while its removal waits (the server needs it after all) leaves the
queue. Nothing here needs the store's key.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from isidorus.backup.errors import BackendError
from isidorus.backup.remote.base import Backend

FILE = "removals.sqlite"
ORDER = ("snapshots", "index", "data", "keys")  # removal order: never a dangling reference

_SCHEMA = """
CREATE TABLE IF NOT EXISTS removals (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    asked_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS hold (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Removal:
    kind: str
    name: str
    asked_at: float

    def due_at(self, delay: float) -> float:
        return self.asked_at + delay

    def to_json(self, delay: float) -> dict[str, object]:
        return {
            "object": f"{self.kind}/{self.name}",
            "asked_at": _iso(self.asked_at),
            "due_at": _iso(self.due_at(delay)),
        }


@dataclass
class ApplyResult:
    removed: int = 0
    held: bool = False
    waiting: int = 0  # removals not yet due


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class RemovalQueue:
    """The queue of one store (a directory). Several processes may use it at once."""

    def __init__(self, store_dir: str) -> None:
        self.path = os.path.join(store_dir, FILE)
        self._db: sqlite3.Connection | None = None

    def _conn(self, *, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not os.path.exists(self.path):
                return None
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a queued removal survives a crash
                db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise BackendError(f"cannot use the removal queue {self.path}: {exc}") from exc
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._conn(create=True)
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise BackendError(f"cannot write the removal queue {self.path}: {exc}") from exc

    def ask(self, kind: str, name: str) -> None:
        """Queue a removal; a removal already waiting keeps its first date."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO removals (kind, name, asked_at) VALUES (?, ?, ?)",
                (kind, name, time.time()),
            )

    def forget(self, kind: str, name: str) -> None:
        """The object is wanted again: its removal, if any, is dropped."""
        db = self._conn(create=False)
        if db is None:
            return
        with self._write() as w:
            w.execute("DELETE FROM removals WHERE kind = ? AND name = ?", (kind, name))

    def pending(self) -> list[Removal]:
        db = self._conn(create=False)
        if db is None:
            return []
        rows = db.execute("SELECT kind, name, asked_at FROM removals ORDER BY asked_at").fetchall()
        return [Removal(k, n, t) for k, n, t in rows]

    def held_since(self) -> float | None:
        db = self._conn(create=False)
        if db is None:
            return None
        row = db.execute("SELECT since FROM hold").fetchone()
        return float(row[0]) if row else None

    def cancel(self) -> int:
        """Drop every waiting removal and hold later ones until `release`."""
        with self._write() as db:
            n = db.execute("DELETE FROM removals").rowcount
            db.execute("INSERT OR IGNORE INTO hold (id, since) VALUES (1, ?)", (time.time(),))
        return int(n)

    def release(self) -> bool:
        """Let removals be carried out again; False when none were held."""
        with self._write() as db:
            return bool(db.execute("DELETE FROM hold").rowcount)

    def apply(self, backend: Backend, delay: float, *, now: float | None = None) -> ApplyResult:
        """Carry out the removals older than `delay` seconds, in the safe order."""
        result = ApplyResult()
        pending = self.pending()
        if not pending:
            return result
        if self.held_since() is not None:
            result.held = True
            result.waiting = len(pending)
            return result
        limit = (time.time() if now is None else now) - delay
        due = [r for r in pending if r.asked_at <= limit]
        result.waiting = len(pending) - len(due)
        rank = {k: i for i, k in enumerate(ORDER)}
        for r in sorted(due, key=lambda r: (rank.get(r.kind, len(ORDER)), r.asked_at)):
            backend.remove(r.kind, r.name)
            # one at a time, so a crash never drops a removal not carried out
            with self._write() as db:
                db.execute("DELETE FROM removals WHERE kind = ? AND name = ?", (r.kind, r.name))
            result.removed += 1
        return result

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
