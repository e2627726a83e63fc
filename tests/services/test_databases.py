"""A service's databases dumped while it runs and put back while it is stopped: a sqlite
file with writes still in its WAL, and a database of a real PostgreSQL."""

from __future__ import annotations

import os
import pwd
import sqlite3

import psycopg
import pytest

from isidorus.services.databases import dump_all, load_all
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
