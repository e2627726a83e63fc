"""A service's databases made at install, dumped while it runs and put back while it is
stopped: a sqlite file with writes still in its WAL, a database of a real PostgreSQL and
one of a real MariaDB (a server of the test's own)."""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from isidorus.services.databases import drop, dump_all, load_all, provision
from isidorus.services.errors import ServiceError
from isidorus.services.manifest import Database
from isidorus.services.render import Placement


def make_placement(tmp_path) -> Placement:
    me = pwd.getpwuid(os.getuid()).pw_name
    return Placement("app", "app.example.org", "/", 5000, me, str(tmp_path), str(tmp_path))


def rows(db) -> list[str]:
    with sqlite3.connect(db) as c:
        return [w for (w,) in c.execute("select what from t order by rowid")]


def test_a_sqlite_database_copied_while_written_then_put_back(tmp_path):
    where = make_placement(tmp_path)
    databases = [Database(kind="sqlite", name="app", path="{data_dir}/app.db")]
    db = tmp_path / "app.db"
    live = sqlite3.connect(db)
    live.execute("pragma journal_mode=wal")
    live.execute("pragma wal_autocheckpoint=0")  # the rows stay in the WAL
    live.execute("create table t (what text)")
    live.execute("insert into t values ('a'), ('b')")
    live.commit()
    live.execute("begin")
    live.execute("insert into t values ('not committed')")
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    said: list[str] = []

    dump_all(databases, where, str(dumps), said.append)
    live.rollback()
    live.execute("insert into t values ('after')")
    live.commit()
    live.close()
    assert rows(dumps / "app.sqlite") == ["a", "b"]
    assert said == ["dumping the sqlite database app"]

    (tmp_path / "app.db-wal").write_bytes(b"a journal of another file")
    load_all(databases, where, str(dumps), said.append)
    assert rows(db) == ["a", "b"]
    assert not (tmp_path / "app.db-wal").exists() or (tmp_path / "app.db-wal").stat().st_size == 0
    assert not list(tmp_path.glob("*.isidorus-new"))


def test_a_sqlite_database_absent_at_the_backup_is_absent_after_the_restore(tmp_path):
    where = make_placement(tmp_path)
    databases = [Database(kind="sqlite", name="app", path="{data_dir}/app.db")]
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    dump_all(databases, where, str(dumps), lambda _m: None)
    assert list(dumps.iterdir()) == []
    (tmp_path / "app.db").write_bytes(b"made later")
    load_all(databases, where, str(dumps), lambda _m: None)
    assert not (tmp_path / "app.db").exists()


@pytest.mark.root
def test_a_postgresql_database_dumped_then_restored(postgresql, monkeypatch, tmp_path):
    name = postgresql.new_database()
    try:
        conninfo = dict(host=str(postgresql.socket_dir), port=postgresql.port, user="postgres")
        with psycopg.connect(dbname=name, autocommit=True, **conninfo) as c:
            c.execute("create table t (what text)")
            c.execute("insert into t values ('a'), ('b')")
        # pg_dump and pg_restore run as postgres on the host's cluster: here, the tests' own
        monkeypatch.setenv("PGHOST", str(postgresql.socket_dir))
        monkeypatch.setenv("PGPORT", str(postgresql.port))
        where = make_placement(tmp_path)
        databases = [Database(kind="postgresql", name=name)]
        dumps = tmp_path / "dumps"
        dumps.mkdir()
        dump_all(databases, where, str(dumps), lambda _m: None)
        assert (dumps / f"{name}.pgdump").read_bytes().startswith(b"PGDMP")
        with psycopg.connect(dbname=name, autocommit=True, **conninfo) as c:
            c.execute("insert into t values ('after')")
            c.execute("create table later (x int)")
        load_all(databases, where, str(dumps), lambda _m: None)
        with psycopg.connect(dbname=name, autocommit=True, **conninfo) as c:
            assert [w for (w,) in c.execute("select what from t order by what")] == ["a", "b"]
            assert c.execute("select to_regclass('later')").fetchone() == (None,)

        with pytest.raises(ServiceError, match="pg_dump of the postgresql database nosuch"):
            dump_all([Database(kind="postgresql", name="nosuch")], where, str(dumps), print)
        assert not list(dumps.glob("*.tmp"))
    finally:
        postgresql.drop_database(name)


@pytest.mark.root
def test_a_postgresql_database_made_for_its_service_user(postgresql, monkeypatch, tmp_path):
    monkeypatch.setenv("PGHOST", str(postgresql.socket_dir))
    monkeypatch.setenv("PGPORT", str(postgresql.port))
    db = Database(kind="postgresql", name="isidorus_made_db")
    try:
        assert provision(db, "isidorus_svc") is True
        assert provision(db, "isidorus_svc") is False  # there already: let be
        conninfo = dict(host=str(postgresql.socket_dir), port=postgresql.port, user="postgres")
        with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as c:
            owner = c.execute(
                "select pg_get_userbyid(datdba) from pg_database where datname = %s", (db.name,)
            ).fetchone()
            assert owner == ("isidorus_svc",)
    finally:
        drop(db)
        with psycopg.connect(dbname="postgres", autocommit=True, host=str(postgresql.socket_dir),
                             port=postgresql.port, user="postgres") as c:  # fmt: skip
            assert (
                c.execute("select 1 from pg_database where datname = 'isidorus_made_db'").fetchone()
                is None
            )
            c.execute("drop role if exists isidorus_svc")


@pytest.fixture
def mariadb(monkeypatch) -> Iterator[Path]:
    """A MariaDB of the test's own (Debian's binaries, a data directory and a socket in
    tmp_path, no network); root signs in by its Unix identity, as on Debian. Its socket,
    also in MYSQL_UNIX_PORT, where isidorus looks for the host's."""
    assert shutil.which("mariadbd"), "mariadb-server is not installed: run scripts/test"
    # not in tmp_path: the services' users, who sign in over the socket, could not reach it
    home = Path(tempfile.mkdtemp(prefix="isidorus-mariadb-", dir="/tmp"))
    home.chmod(0o755)
    data, socket = home / "mysql", home / "mysqld.sock"
    subprocess.run(
        ["mariadb-install-db", f"--datadir={data}", "--user=root", "--skip-test-db",
         "--auth-root-authentication-method=socket"],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    server = subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={socket}", "--user=root",
         "--skip-networking", f"--pid-file={home / 'mysqld.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            assert server.poll() is None, "mariadbd exited"
            assert time.monotonic() < deadline, "mariadbd did not start in 60 s"
            time.sleep(0.1)
        monkeypatch.setenv("MYSQL_UNIX_PORT", str(socket))
        yield socket
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def sql(socket: Path, statement: str, user: str | None = None) -> str:
    argv = ["mysql", f"--socket={socket}", "--batch", "--skip-column-names", "-e", statement]
    if user is not None:  # as that Unix user, signing in by its identity
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.mark.root
def test_a_mysql_database_made_dumped_and_restored(mariadb, tmp_path):
    me = "nobody"  # a Unix user who is not root: it signs in to its database by its identity
    db = Database(kind="mysql", name="blog")
    assert provision(db, me) is True
    assert provision(db, me) is False
    sql(mariadb, "create table blog.t (what text); insert into blog.t values ('a'), ('b')", me)
    where = make_placement(tmp_path)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    dump_all([db], where, str(dumps), lambda _m: None)
    assert b"CREATE DATABASE" in (dumps / "blog.sql").read_bytes()
    sql(mariadb, "insert into blog.t values ('after'); create table blog.later (x int)", me)
    load_all([db], where, str(dumps), lambda _m: None)
    assert sql(mariadb, "select what from blog.t order by what", me).split() == ["a", "b"]
    assert "later" not in sql(mariadb, "show tables from blog")
    # another Unix user is not let in
    with pytest.raises(subprocess.CalledProcessError):
        sql(mariadb, "select * from blog.t", "daemon")
    drop(db)
    assert sql(mariadb, "show databases like 'blog'") == ""
    with pytest.raises(ServiceError, match="mysqldump of the mysql database nosuch failed"):
        dump_all([Database(kind="mysql", name="nosuch")], where, str(dumps), print)
