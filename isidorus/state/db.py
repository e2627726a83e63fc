"""Connecting to the state database, and the single write path.

SQLite is opened in WAL mode with foreign keys on; its transactions that write start with
BEGIN IMMEDIATE (pysqlite's own BEGIN is deferred, which lets two writers both read and
then one fail on upgrade). `atomic()` nests through savepoints, so a use case can call
others and still commit or roll back as one.

PostgreSQL (through psycopg 3) gets the same single writer another way: each `write()`
transaction first takes one transaction-level advisory lock, held until it commits or rolls
back, so writers queue as they do on SQLite and a transaction that reads then inserts
cannot race another (migrations from two processes at once included). READ COMMITTED then
lets every statement after the lock see what the previous writer committed. SERIALIZABLE
would instead fail one of two racing transactions at commit and leave every caller to retry.

Observers learn, after a write has committed, which tables it changed: this is how systems
that mirror the state (the LDAP directory) keep in step with every change, whichever use
case made it.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Delete,
    Engine,
    Insert,
    TableClause,
    Update,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from isidorus.errors import IsidorusError

# the key of the writers' advisory lock: any constant ("isidorus" in ASCII); PostgreSQL
# keeps advisory locks per database, so hosts sharing a server do not wait for each other
WRITE_LOCK = int.from_bytes(b"isidorus", "big")
# how long a writer waits for another before it gives up (SQLite's busy_timeout below)
LOCK_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 10
HELP = "see docs/state.md"


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
        cur.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # readers take no lock up front; writers take the write lock at once
        read = conn.get_execution_options().get("isidorus_read")
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def parse_url(url: str, password: str | None = None) -> URL:
    """The SQLAlchemy URL of a database URL (`sqlite:///PATH`, `postgresql://…`), with
    PostgreSQL's driver set to psycopg and `password` put in. Raises StateError, which never
    repeats the URL (it may hold a password)."""
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise StateError(
            "the database URL is not valid: write postgresql://USER@HOST/DBNAME "
            f"(or name no database, for SQLite; {HELP})"
        ) from None
    backend = u.get_backend_name()
    if backend in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
        if password is not None:
            u = u.set(password=password)
    elif backend != "sqlite":
        raise StateError(
            f"isidorus keeps its state in SQLite or PostgreSQL, not {backend!r}: "
            f"write postgresql://USER@HOST/DBNAME ({HELP})"
        )
    return u


def _one_line(exc: BaseException, secret: str | None) -> str:
    """The first line of a driver's message, without the password should it show."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines() or [type(orig).__name__]
    line = lines[0].removeprefix("connection failed: ").strip()
    return line.replace(secret, "***") if secret else line


# the two copies of the WAL-index header (WalIndexHdr, 48 bytes each) that open the -shm
# file; the checkpoint information after them changes without a commit
_WAL_HEADERS = 96


def _map_wal_index(database: str) -> mmap.mmap | None:
    """The `-shm` file of an SQLite database in WAL mode, mapped to be read; None when
    there is none (another journal mode) or it cannot be read."""
    try:
        with open(database + "-shm", "rb") as f:
            if os.fstat(f.fileno()).st_size < _WAL_HEADERS:
                return None
            return mmap.mmap(f.fileno(), _WAL_HEADERS, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def _is_busy(exc: SQLAlchemyError) -> bool:
    """Whether a writer gave up waiting for another (SQLite's busy timeout, PostgreSQL's
    lock_timeout: SQLSTATE 55P03)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == "55P03" or "database is locked" in str(orig)


class Database:
    """The state database. Thread-safe: each transaction takes its own connection.

    `generation` changes after every write committed through this object, so that caches
    of this process know when what they hold may be stale.
    """

    def __init__(self, url: str, *, password: str | None = None) -> None:
        u = parse_url(url, password)
        self._password = u.password if isinstance(u.password, str) else None
        # as the operator wrote it, safe to print: the password is masked
        self.url = u.set(drivername=u.get_backend_name()).render_as_string(hide_password=True)
        self.dialect = u.get_backend_name()
        self._writes = itertools.count(1)
        self.generation = 0
        self._probe: sqlite3.Connection | None = None
        self._header: mmap.mmap | None = None  # the probe's view of the -shm file
        self._header_tried = False
        self._probe_lock = threading.Lock()
        try:
            if self.dialect == "sqlite":
                self.engine = create_engine(u)
                _sqlite_setup(self.engine)
            else:
                args = (
                    {} if "connect_timeout" in u.query else {"connect_timeout": CONNECT_TIMEOUT_S}
                )
                # pre-ping: a server restarted under a running isidorus is reconnected to
                self.engine = create_engine(u, pool_pre_ping=True, connect_args=args)
        except (SQLAlchemyError, ValueError) as exc:
            raise StateError(
                f"cannot use the database {self.url}: {_one_line(exc, self._password)} ({HELP})"
            ) from None
        event.listen(self.engine, "after_execute", _note_changed_table)
        self.observers: list[Observer] = []

    @classmethod
    def open_file(cls, path: str) -> Database:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return cls(sqlite_url(path))

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot connect to the state database {self.url}: "
                f"{_one_line(exc, self._password)} (check that the server runs and that the "
                f"URL, user and password are right: {HELP})"
            ) from None

    def _failed(self, exc: SQLAlchemyError) -> StateError:
        if _is_busy(exc):
            return StateError(
                f"the state database is busy: another isidorus process kept it for "
                f"more than {LOCK_TIMEOUT_MS // 1000} seconds; try again"
            )
        return StateError(
            f"the state database failed: {exc.__class__.__name__}: {_one_line(exc, self._password)}"
        )

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits when the block ends, or rolls back on error. Only
        one runs at a time per database (writers queue, up to LOCK_TIMEOUT_MS). Once it
        has committed, each observer is called with the names of the tables it changed
        (if it changed any); observers must not raise, as the change stands."""
        changed: set[str] = set()
        with self._connect() as conn:
            try:
                with conn.begin():
                    if self.dialect == "postgresql":
                        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                        conn.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK}
                        )
                    conn.info[_CHANGED] = changed
                    try:
                        yield conn
                    finally:
                        del conn.info[_CHANGED]
            except SQLAlchemyError as exc:
                raise self._failed(exc) from exc
            finally:
                self.generation = next(self._writes)
        if changed:
            for observer in self.observers:
                observer(frozenset(changed))

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction that only reads: one consistent view, and no write lock."""
        with self._connect() as conn:
            conn = conn.execution_options(isidorus_read=True)
            try:
                with conn.begin():
                    yield conn
            except SQLAlchemyError as exc:
                raise self._failed(exc) from exc

    @contextlib.contextmanager
    def atomic(self, conn: Connection) -> Iterator[Connection]:
        """A savepoint inside the transaction of `conn`: nested atomic blocks roll back
        alone, the outer transaction decides the rest."""
        with conn.begin_nested():
            yield conn

    def data_version(self) -> int | None:
        """A number that changes whenever anyone (this process or another) commits to an
        SQLite database: caches compare it to know, exactly and cheaply, that what they
        hold is still current. None for other databases. Thread-safe.

        It is the wal-index header at the start of the database's `-shm` file, which
        SQLite rewrites at every commit before the commit returns (its `iChange` counter
        moves: https://sqlite.org/walformat.html), read from memory without a lock or a
        system call: `PRAGMA data_version`, which says the same, begins a read
        transaction and takes file locks each time, and processes asking it at once wait
        on each other in the kernel. The probe connection keeps the file open and in use,
        so SQLite never reinitialises it while it is mapped. Without a `-shm` file (not
        in WAL mode), PRAGMA data_version."""
        if self.dialect != "sqlite" or self.engine.url.database in (None, ""):
            return None
        header = self._header
        if header is not None:
            try:
                return int.from_bytes(header[:_WAL_HEADERS], "little")
            except ValueError:  # closed meanwhile
                pass
        with self._probe_lock:
            if self._probe is None:
                # a connection of its own that never writes: its data_version moves with
                # every commit made through any other connection
                self._probe = sqlite3.connect(self.engine.url.database, check_same_thread=False)
            try:
                version = int(self._probe.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StateError(f"the state database failed: {exc}") from exc
            if self._header is None and not self._header_tried:
                # the PRAGMA has made the probe open the -shm file, for as long as it lives
                self._header_tried = True
                self._header = _map_wal_index(self.engine.url.database)
                if self._header is not None:
                    return int.from_bytes(self._header[:_WAL_HEADERS], "little")
            return version

    def close(self) -> None:
        with self._probe_lock:
            header, self._header = self._header, None
            self._header_tried = False
            if header is not None:
                header.close()
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        self.engine.dispose()
