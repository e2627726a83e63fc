import threading

from sqlalchemy import inspect, select

from isidorus.state import schema
from isidorus.state.db import Database
from isidorus.state.migrations import MIGRATIONS, applied, migrate


def test_migrate_applies_each_migration_once(state_url):
    db = Database(state_url)
    try:
        assert applied(db) == []
        assert migrate(db) == [name for name, _ in MIGRATIONS]
        assert migrate(db) == []
        assert applied(db) == [name for name, _ in MIGRATIONS]
        with db.write() as conn:
            tables = set(inspect(conn).get_table_names())
    finally:
        db.close()
    assert {"users", "groups", "memberships", "audit_log", "migrations"} <= tables


def test_two_processes_migrating_at_once_do_it_once(state_url):
    done: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run():
        db = Database(state_url)  # its own connections, as another process has
        try:
            start.wait()
            done.append(migrate(db))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # each migration ran once, in one of them (they may share the work out)
    assert sorted(name for d in done for name in d) == sorted(name for name, _ in MIGRATIONS)
    db = Database(state_url)
    try:
        with db.write() as conn:
            rows = conn.execute(select(schema.migrations.c.name)).all()
    finally:
        db.close()
    assert len(rows) == len(MIGRATIONS)


def test_a_failed_write_rolls_back(state_url):
    db = Database(state_url)
    try:
        migrate(db)
        try:
            with db.write() as conn:
                conn.execute(schema.groups.insert().values(name="g", description=""))
                raise RuntimeError("stop")
        except RuntimeError:
            pass
        with db.write() as conn:
            assert conn.execute(select(schema.groups)).all() == []
    finally:
        db.close()
