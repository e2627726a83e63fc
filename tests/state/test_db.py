"""The write path behaves the same on SQLite and PostgreSQL: one writer at a time, readers
beside it, savepoints, moments in UTC, cascades; and a database that cannot be used gives one
line that names the cause and never the password. On SQLite, the change mark that lets
caches know when they are stale."""

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from isidorus.state import db as state_db
from isidorus.state import schema
from isidorus.state.db import Database, StateError
from isidorus.state.migrations import migrate
from tests.pg import PASSWORD, USER, free_port


@pytest.fixture
def db(state_url):
    d = Database(state_url)
    migrate(d)
    yield d
    d.close()


def test_writers_queue_so_a_read_then_write_is_never_lost(db):
    def count(conn):
        return conn.execute(select(func.count()).select_from(schema.audit_log)).scalar_one()

    def bump():
        for _ in range(5):
            with db.write() as conn:
                n = count(conn)
                time.sleep(0.002)  # room for another writer to slip in, were it allowed
                conn.execute(
                    schema.audit_log.insert().values(
                        at=datetime.now(UTC), actor="t", action="bump", target=str(n)
                    )
                )

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.write() as conn:
        targets = conn.execute(select(schema.audit_log.c.target)).scalars().all()
    # each writer saw every row before it: the counts run 0..19 with no repeat
    assert sorted(int(t) for t in targets) == list(range(20))


def test_a_writer_that_waits_too_long_gives_up_with_a_clear_error(state_url, monkeypatch):
    monkeypatch.setattr(state_db, "LOCK_TIMEOUT_MS", 300)
    d = Database(state_url)
    held, release = threading.Event(), threading.Event()

    def hold():
        with d.write():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        started = time.monotonic()
        with pytest.raises(StateError, match="busy: another isidorus process"), d.write():
            pass
        assert 0.2 < time.monotonic() - started < 10
    finally:
        release.set()
        holder.join()
        d.close()


def test_a_savepoint_rolls_back_alone(db):
    with db.write() as conn:
        conn.execute(schema.groups.insert().values(name="kept", description=""))
        with pytest.raises(RuntimeError), db.atomic(conn):
            conn.execute(schema.groups.insert().values(name="undone", description=""))
            raise RuntimeError("stop")
        with db.atomic(conn):
            conn.execute(schema.groups.insert().values(name="nested", description=""))
    with db.write() as conn:
        names = conn.execute(select(schema.groups.c.name).order_by("name")).scalars().all()
    assert names == ["kept", "nested"]


def test_a_failed_statement_in_a_savepoint_leaves_the_transaction_usable(db):
    # PostgreSQL aborts a whole transaction on an error, unless a savepoint takes it
    with db.write() as conn:
        conn.execute(schema.groups.insert().values(name="g", description=""))
        with pytest.raises(Exception, match="(?i)unique"), db.atomic(conn):
            conn.execute(schema.groups.insert().values(name="g", description=""))
        conn.execute(schema.groups.insert().values(name="h", description=""))
    with db.write() as conn:
        assert conn.execute(select(func.count()).select_from(schema.groups)).scalar_one() == 2


def test_moments_read_back_as_the_same_instant_in_utc(db):
    paris = timezone(timedelta(hours=2))
    moment = datetime(2024, 6, 1, 14, 30, 5, 123456, tzinfo=paris)
    with db.write() as conn:
        conn.execute(schema.audit_log.insert().values(at=moment, actor="t", action="a"))
        conn.execute(
            schema.audit_log.insert().values(at=datetime(2024, 6, 1, 12), actor="t", action="b")
        )
        rows = conn.execute(select(schema.audit_log.c.at).order_by(schema.audit_log.c.id)).scalars()
        at, naive = list(rows)
    assert at == moment and at.tzinfo == UTC and at.hour == 12
    assert naive == datetime(2024, 6, 1, 12, tzinfo=UTC)  # a naive one is taken as UTC


def test_deleting_a_user_cascades_to_memberships_and_sessions(db):
    now = datetime.now(UTC)
    with db.write() as conn:
        uid = conn.execute(
            schema.users.insert().values(
                name="u", email="u@example.org", fullname="", password_hash="x", created_at=now
            )
        ).inserted_primary_key[0]
        gid = conn.execute(schema.groups.insert().values(name="g")).inserted_primary_key[0]
        conn.execute(schema.memberships.insert().values(user_id=uid, group_id=gid))
        conn.execute(
            schema.sessions.insert().values(
                id="s" * 64, user_id=uid, csrf="c", created_at=now, expires_at=now
            )
        )
        conn.execute(schema.users.delete())
        left = [
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (schema.memberships, schema.sessions)
        ]
        user = conn.execute(select(schema.users)).first()
    assert left == [0, 0] and user is None


def test_booleans_and_defaults_read_back_as_python_values(db):
    with db.write() as conn:
        conn.execute(
            schema.users.insert().values(
                name="u",
                email="u@example.org",
                password_hash="x",
                is_admin=True,
                created_at=datetime.now(UTC),
            )
        )
        row = conn.execute(select(schema.users)).one()
    assert row.is_admin is True and row.disabled is False and row.fullname == ""


# -- PostgreSQL that cannot be used


def one_line_error(url, password=None, *, secret=PASSWORD):
    """The StateError of opening and using `url`; checks it is one line without the secret."""
    with pytest.raises(StateError) as e:
        d = Database(url, password=password)
        try:
            with d.write():
                pass
        finally:
            d.close()
    message = str(e.value)
    assert "\n" not in message and secret not in message, message
    return message


def test_a_server_that_is_down(postgresql):
    message = one_line_error(postgresql.url("test", port=free_port()))
    assert "cannot connect to the state database" in message
    assert "Connection refused" in message and "server runs" in message
    assert f"postgresql://{USER}:***@127.0.0.1" in message


def test_a_wrong_password_is_named_and_not_shown(postgresql):
    with postgresql.database() as url:
        wrong = "not-the-Password-9x"
        message = one_line_error(url.replace(PASSWORD, wrong), secret=wrong)
        assert "password authentication failed" in message
        message = one_line_error(url, password=wrong, secret=wrong)
        assert "password authentication failed" in message


def test_a_database_that_does_not_exist(postgresql):
    message = one_line_error(postgresql.url("no_such_db"))
    assert 'database "no_such_db" does not exist' in message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"postgresql://{USER}:{PASSWORD}@localhost:notaport/db", "not valid"),
        (f"{USER}:{PASSWORD}@localhost/db", "not valid"),
        (f"mysql://{USER}:{PASSWORD}@localhost/db", "not 'mysql'"),
    ],
)
def test_a_bad_url(url, words):
    with pytest.raises(StateError) as e:
        Database(url)
    message = str(e.value)
    assert words in message and "postgresql://USER@HOST/DBNAME" in message
    assert PASSWORD not in message and "\n" not in message


def test_the_password_can_be_given_apart_from_the_url(postgresql):
    with postgresql.database() as url:
        d = Database(url.replace(f":{PASSWORD}@", "@"), password=PASSWORD)
        try:
            assert migrate(d)
            assert PASSWORD not in d.url
        finally:
            d.close()


def test_the_password_can_come_from_libpqs_passfile(postgresql, tmp_path, monkeypatch):
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgresql.port}:*:{USER}:{PASSWORD}\n")
    passfile.chmod(0o600)  # libpq ignores one that others can read
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with postgresql.database() as url:
        d = Database(url.replace(f":{PASSWORD}@", "@"))
        try:
            assert migrate(d)
        finally:
            d.close()


def test_a_reader_does_not_wait_for_a_writer(db):
    writing, done = threading.Event(), threading.Event()

    def writer():
        with db.write() as conn:
            conn.execute(schema.groups.insert().values(name="family", description=""))
            writing.set()
            done.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert writing.wait(10)
    with db.read() as conn:  # would wait 10 s for the write lock if it took one
        assert conn.execute(select(schema.groups)).all() == []  # the writer has not committed
    done.set()
    t.join()
    with db.read() as conn:
        assert [r.name for r in conn.execute(select(schema.groups))] == ["family"]


def test_data_version_moves_with_every_commit_of_anyone(tmp_path):
    path = str(tmp_path / "state.sqlite")
    db, other = Database.open_file(path), Database.open_file(path)
    migrate(db)
    v = db.data_version()
    with db.read() as conn:
        conn.execute(select(schema.groups)).all()
    assert db.data_version() == v  # reading changes nothing
    with other.write() as conn:  # another process, as far as `db` knows
        conn.execute(schema.groups.insert().values(name="family", description=""))
    v2 = db.data_version()
    assert v2 != v
    with db.write() as conn:  # this one's own commits too
        conn.execute(schema.groups.insert().values(name="friends", description=""))
    assert db.data_version() != v2
    db.close()
    other.close()


def test_data_version_sees_a_commit_of_another_process_at_once(tmp_path):
    path = str(tmp_path / "state.sqlite")
    db = Database.open_file(path)
    migrate(db)
    v = db.data_version()
    assert db.data_version() == v
    for i in range(5):
        with db.read() as conn:
            conn.execute(select(schema.groups)).all()
        assert db.data_version() == v  # reading changes nothing
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute(\"INSERT INTO groups (name, description) VALUES (?, '')\", (sys.argv[2],)); "
            "c.commit()"
        )
        if i == 2:  # then a checkpoint empties the WAL: the next commit starts it again
            code = code.replace(
                "c.commit()", "c.commit(); c.execute('PRAGMA wal_checkpoint(TRUNCATE)')"
            )
        subprocess.run([sys.executable, "-c", code, path, f"g{i}"], check=True)
        assert db.data_version() != v  # the other process's commit has returned
        v = db.data_version()
    db.close()
    assert db.data_version() is not None  # a closed database probes again
    db.close()
