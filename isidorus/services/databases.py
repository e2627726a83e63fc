"""A service's databases as files a backup can hold: dumped consistently while the service
runs, and loaded back while it is stopped.

- sqlite: a copy made with SQLite's online backup API (a consistent copy of a database
  that is being written), `NAME.sqlite` in the dump directory. Loading it back replaces
  the database file atomically (a rename), owned by the service's user, after removing
  its -wal and -shm files: a journal left from another file would be replayed into it.
- postgresql: `pg_dump --format=custom` of the database NAME on the host's cluster, run as
  the `postgres` user, `NAME.pgdump`; loaded back with `pg_restore --clean --create`: the
  database is dropped and made again as it was (refused while anything is connected to it).
- mysql: `mysqldump --single-transaction` of the database NAME on the host's MariaDB (at
  MYSQL_UNIX_PORT, as for its own clients; root signs in by its Unix identity), `NAME.sql`;
  loaded back with `mysql`, which drops the database and makes it again from the dump.

The server databases (postgresql, mysql) are made at install, owned by the service's user,
who signs in by its Unix identity over the local socket (PostgreSQL's peer, MariaDB's
unix_socket): no password to keep anywhere.
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
CLIENT_TIMEOUT = 3600.0  # seconds: a large database takes a while to dump


MYSQL_SOCKET = "/run/mysqld/mysqld.sock"  # Debian's MariaDB


def mysql_socket() -> str:
    """Where the host's MariaDB listens: MYSQL_UNIX_PORT, as for its own clients."""
    return os.environ.get("MYSQL_UNIX_PORT") or MYSQL_SOCKET


def dump_file(db: Database) -> str:
    """The name of a database's dump in the dump directory."""
    return {"sqlite": f"{db.name}.sqlite", "mysql": f"{db.name}.sql"}.get(
        db.kind, f"{db.name}.pgdump"
    )


def provision(db: Database, user: str) -> bool:
    """Make a server database (postgresql, mysql) and its owner, the service's Unix user,
    unless they exist; whether it made the database. sqlite: nothing (the service makes
    its file)."""
    if db.kind == "postgresql":
        role = _pg(["psql", "-tAc", f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"], db.name)
        if role.strip() != "1":
            _pg(["createuser", "--", user], db.name)
        found = _pg(["psql", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{db.name}'"],
                    db.name)  # fmt: skip
        if found.strip() == "1":
            return False
        _pg(["createdb", "--owner", user, "--", db.name], db.name)
        return True
    if db.kind == "mysql":
        found = _mysql(["--execute", f"SHOW DATABASES LIKE '{db.name}'"], db.name)
        _mysql(
            [
                "--execute",
                f"CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED VIA unix_socket; "
                f"CREATE DATABASE IF NOT EXISTS `{db.name}` CHARACTER SET utf8mb4; "
                f"GRANT ALL PRIVILEGES ON `{db.name}`.* TO '{user}'@'localhost';",
            ],
            db.name,
        )
        return found.strip() != db.name
    return False


def drop(db: Database) -> None:
    """Take away a server database that an install made (a failed install, a purge)."""
    if db.kind == "postgresql":
        _pg(["dropdb", "--if-exists", "--", db.name], db.name)
    elif db.kind == "mysql":
        _mysql(["--execute", f"DROP DATABASE IF EXISTS `{db.name}`"], db.name)


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
        elif db.kind == "mysql":
            dump = ["mysqldump", "--single-transaction", "--routines", "--events"]
            _mysql_program([*dump, "--add-drop-database", "--databases", db.name], db.name, out=out)
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
        elif not os.path.exists(dump):
            raise ServiceError(f"the snapshot holds no dump of the {db.kind} database {db.name}")
        elif db.kind == "mysql":
            _mysql_program(["mysql"], db.name, source=dump)
        else:
            # the database made anew from the dump: tables a newer version added are gone
            # too (they would stop that version's migrations at the next upgrade)
            _pg(
                ["pg_restore", "--clean", "--create", "--if-exists", "--dbname", "postgres"],
                db.name,
                source=dump,
            )


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


def _pg(argv: list[str], name: str, *, out: str | None = None, source: str | None = None) -> str:
    """A PostgreSQL client program as the `postgres` user (see _client)."""
    return _client(argv, "postgresql", name, out, source, as_user="postgres")


def _mysql(args: list[str], name: str) -> str:
    """An SQL statement through MariaDB's `mysql`, as root; what it printed."""
    return _mysql_program(["mysql", "--batch", "--skip-column-names", *args], name)


def _mysql_program(
    argv: list[str], name: str, *, out: str | None = None, source: str | None = None
) -> str:
    return _client([argv[0], f"--socket={mysql_socket()}", *argv[1:]], "mysql", name, out, source)


def _client(
    argv: list[str],
    kind: str,
    name: str,
    out: str | None,
    source: str | None,
    as_user: str | None = None,
) -> str:
    """A database's client program (as `as_user`, else root), its output to `out` (else
    returned) or its input from `source` (binary: run() only handles text). ServiceError
    with its last line."""
    program = argv[0]
    full = ["runuser", "-u", as_user, "--", *argv] if as_user else argv
    try:
        with contextlib.ExitStack() as files:
            stdout = files.enter_context(open(out + ".tmp", "wb")) if out else subprocess.PIPE
            stdin = files.enter_context(open(source, "rb")) if source else subprocess.DEVNULL
            result = subprocess.run(
                full, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=CLIENT_TIMEOUT
            )
    except FileNotFoundError:
        package = "postgresql-client" if kind == "postgresql" else "mariadb-client"
        raise ServiceError(
            f"{program} is not installed: install the Debian package {package}"
        ) from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{program} of {name} took more than {CLIENT_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        if out:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out + ".tmp")
        lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit {result.returncode}"
        raise ServiceError(f"{program} of the {kind} database {name} failed: {why}")
    if out:
        os.replace(out + ".tmp", out)
        return ""
    return result.stdout.decode(errors="replace")
