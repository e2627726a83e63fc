"""Connecting to the state database, and the single write path.

SQLite is opened in WAL mode with foreign keys on; its transactions that write start with
BEGIN IMMEDIATE (pysqlite's own BEGIN is deferred, which lets two writers both read and
then one fail on upgrade). `atomic()` nests through savepoints, so a use case can call
others and still commit or roll back as one.

Observers learn, after a write has committed, which tables it changed: this is how systems
that mirror the state (the LDAP directory) keep in step with every change, whichever use
case made it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    Connection,
    Delete,
    Engine,
    Insert,
    TableClause,
    Update,
    create_engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError

from isidorus.errors import IsidorusError


class StateError(IsidorusError):
    """The state database failed (cannot be opened, or a query failed)."""


# the names of the tables changed by the transaction under way on a connection
_CHANGED = "isidorus.changed_tables"

Observer = Callable[[frozenset[str]], None]


def _note_changed_table(conn: Connection, statement: Any, *_args: Any) -> None:
    changed = conn.info.get(_CHANGED)
    table = statement.table if isinstance(statement, Insert | Update | Delete) else None
    if changed is not None and isinstance(table, TableClause):
        changed.add(table.name)


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
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The state database. Thread-safe: each transaction takes its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = create_engine(url, future=True)
        except (SQLAlchemyError, ValueError) as exc:
            raise StateError(f"cannot use the database {url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine)
        event.listen(self.engine, "after_execute", _note_changed_table)
        self.observers: list[Observer] = []

    @classmethod
    def open_file(cls, path: str) -> Database:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return cls(sqlite_url(path))

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits when the block ends, or rolls back on error. Once it
        has committed, each observer is called with the names of the tables it changed
        (if it changed any); observers must not raise, as the change stands."""
        changed: set[str] = set()
        try:
            with self.engine.begin() as conn:
                conn.info[_CHANGED] = changed
                try:
                    yield conn
                finally:
                    del conn.info[_CHANGED]
        except SQLAlchemyError as exc:
            raise StateError(
                f"the state database failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            ) from exc
        if changed:
            for observer in self.observers:
                observer(frozenset(changed))

    @contextlib.contextmanager
    def atomic(self, conn: Connection) -> Iterator[Connection]:
        """A savepoint inside the transaction of `conn`: nested atomic blocks roll back
        alone, the outer transaction decides the rest."""
        with conn.begin_nested():
            yield conn

    def close(self) -> None:
        self.engine.dispose()
