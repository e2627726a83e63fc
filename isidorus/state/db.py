"""Connecting to the state database, and the single write path.

SQLite is opened in WAL mode with foreign keys on; its transactions that write start with
BEGIN IMMEDIATE (pysqlite's own BEGIN is deferred, which lets two writers both read and
then one fail on upgrade). `atomic()` nests through savepoints, so a use case can call
others and still commit or roll back as one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from isidorus.errors import IsidorusError


class StateError(IsidorusError):
    """The state database failed (cannot be opened, or a query failed)."""


def sqlite_url(path: str) -> str:
    return f"sqlite:///{os.path.abspath(path)}"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # readers take no lock up front; writers take the write lock at once
        read = conn.get_execution_options().get("isidorus_read")
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def _failed(exc: SQLAlchemyError) -> StateError:
    return StateError(
        f"the state database failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
    )


class Database:
    """The state database. Thread-safe: each transaction takes its own connection.

    `generation` changes after every write committed through this object, so that caches
    of this process know when what they hold may be stale.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._writes = itertools.count(1)
        self.generation = 0
        self._probe: sqlite3.Connection | None = None
        self._probe_lock = threading.Lock()
        try:
            self.engine = create_engine(url, future=True)
        except (SQLAlchemyError, ValueError) as exc:
            raise StateError(f"cannot use the database {url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine)

    @classmethod
    def open_file(cls, path: str) -> Database:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return cls(sqlite_url(path))

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits when the block ends, or rolls back on error."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise _failed(exc) from exc
        finally:
            self.generation = next(self._writes)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction that only reads: one consistent view, and no write lock."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isidorus_read=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise _failed(exc) from exc

    @contextlib.contextmanager
    def atomic(self, conn: Connection) -> Iterator[Connection]:
        """A savepoint inside the transaction of `conn`: nested atomic blocks roll back
        alone, the outer transaction decides the rest."""
        with conn.begin_nested():
            yield conn

    def data_version(self) -> int | None:
        """A number that changes whenever anyone (this process or another) commits to an
        SQLite database: caches compare it to know, exactly and cheaply, that what they
        hold is still current. None for other databases."""
        if self.engine.dialect.name != "sqlite" or self.engine.url.database in (None, ""):
            return None
        with self._probe_lock:
            if self._probe is None:
                # a connection of its own that never writes: its data_version moves with
                # every commit made through any other connection
                self._probe = sqlite3.connect(self.engine.url.database, check_same_thread=False)
            try:
                return int(self._probe.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StateError(f"the state database failed: {exc}") from exc

    def close(self) -> None:
        with self._probe_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        self.engine.dispose()
