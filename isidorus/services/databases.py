"""A service's databases as files a backup can hold: dumped consistently while the service
runs, and loaded back while it is stopped.

- sqlite: a copy made with SQLite's online backup API (a consistent copy of a database
  that is being written), `NAME.sqlite` in the dump directory. Loading it back replaces
  the database file atomically (a rename), owned by the service's user, after removing
  its -wal and -shm files: a journal left from another file would be replayed into it.
- postgresql: `pg_dump --format=custom` of the database NAME on the host's cluster, run as
  the `postgres` user, `NAME.pgdump`; loaded back with `pg_restore --clean --create`: the
  database is dropped and made again as it was (refused while anything is connected to it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Callable

from isidorus.services.errors import ServiceError
from isidorus.services.manifest import Database
from isidorus.services.render import Placement

Say = Callable[[str], None]
SIDECARS = ("-wal", "-shm", "-journal")
PG_TIMEOUT = 3600.0  # seconds: a large database takes a while to dump


def dump_file(db: Database) -> str:
    """The name of a database's dump in the dump directory."""
    return f"{db.name}.sqlite" if db.kind == "sqlite" else f"{db.name}.pgdump"


def dump_all(databases: list[Database], where: Placement, dump_dir: str, say: Say) -> None:
    """Dump each database into `dump_dir` (which exists, root's). A sqlite database that
    does not exist yet gets no dump (a restore then removes it). ServiceError names the
    database and the reason."""
    for db in databases:
        out = os.path.join(dump_dir, dump_file(db))
        say(f"dumping the {db.kind} database {db.name}")
        if db.kind == "sqlite":
            assert db.path is not None
            _dump_sqlite(where.fill(db.path), out)
        else:
            _pg(["pg_dump", "--format=custom", "--", db.name], db.name, out=out)


def load_all(databases: list[Database], where: Placement, dump_dir: str, say: Say) -> None:
    """Put each database back from its dump in `dump_dir`; the service must be stopped."""
    for db in databases:
        dump = os.path.join(dump_dir, dump_file(db))
        say(f"restoring the {db.kind} database {db.name}")
        if db.kind == "sqlite":
            assert db.path is not None
            _load_sqlite(dump, where.fill(db.path), where.user)
        elif os.path.exists(dump):
            # the database made anew from the dump: tables a newer version added are gone
            # too (they would stop that version's migrations at the next upgrade)
            _pg(
                ["pg_restore", "--clean", "--create", "--if-exists", "--dbname", "postgres"],
                db.name,
                source=dump,
            )
        else:
            raise ServiceError(f"the snapshot holds no dump of the postgresql database {db.name}")


def _dump_sqlite(path: str, out: str) -> None:
    if not os.path.exists(path):
        return
    sidecars = {s: os.path.exists(path + s) for s in SIDECARS}
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    tmp = out + ".tmp"
    try:
        src = sqlite3.connect(uri, uri=True)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(tmp, out)
    except sqlite3.Error as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise ServiceError(f"cannot copy the sqlite database {path}: {exc}") from None
    finally:
        # reading a WAL database as root may have made its -shm or -wal: give them back to
        # the file's owner, or the service could no longer open its own database
        st = os.stat(path)
        for suffix, existed in sidecars.items():
            if not existed and os.path.exists(path + suffix):
                os.chown(path + suffix, st.st_uid, st.st_gid)


def _load_sqlite(dump: str, path: str, user: str) -> None:
    owner = pwd.getpwnam(user)
    if not os.path.exists(dump):  # there was none when the snapshot was taken
        for p in (path, *(path + s for s in SIDECARS)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o640
    tmp = f"{path}.isidorus-new"
    try:
        with open(dump, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.chmod(tmp, mode)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise ServiceError(f"cannot put back the sqlite database {path}: {exc.strerror}") from None


def _pg(argv: list[str], name: str, *, out: str | None = None, source: str | None = None) -> None:
    """A PostgreSQL client program as the `postgres` user, its output to `out` or its input
    from `source` (binary: run() only handles text)."""
    full = ["runuser", "-u", "postgres", "--", *argv]
    try:
        with contextlib.ExitStack() as files:
            stdout = files.enter_context(open(out + ".tmp", "wb")) if out else subprocess.DEVNULL
            stdin = files.enter_context(open(source, "rb")) if source else subprocess.DEVNULL
            result = subprocess.run(
                full, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=PG_TIMEOUT
            )
    except FileNotFoundError:
        raise ServiceError(
            f"{argv[0]} is not installed: install the Debian package postgresql-client"
        ) from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{argv[0]} of {name} took more than {PG_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        if out:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out + ".tmp")
        lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit {result.returncode}"
        raise ServiceError(f"{argv[0]} of the postgresql database {name} failed: {why}")
    if out:
        os.replace(out + ".tmp", out)
