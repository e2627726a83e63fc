import threading

from sqlalchemy import inspect, select

from isidorus.state import schema
from isidorus.state.db import Database
from isidorus.state.migrations import MIGRATIONS, applied, migrate


def test_migrate_applies_each_migration_once(tmp_path):
    db = Database.open_file(str(tmp_path / "state.sqlite"))
    assert applied(db) == []
    assert migrate(db) == [name for name, _ in MIGRATIONS]
    assert migrate(db) == []
    assert applied(db) == [name for name, _ in MIGRATIONS]
    with db.write() as conn:
        tables = set(inspect(conn).get_table_names())
    assert {"users", "groups", "memberships", "audit_log", "sessions", "api_tokens"} <= tables
    assert "migrations" in tables


def test_two_processes_migrating_at_once_do_it_once(tmp_path):
    path = str(tmp_path / "state.sqlite")
    done: list[list[str]] = []
    errors: list[BaseException] = []

    def run():
        try:
            done.append(migrate(Database.open_file(path)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(d) for d in done) == [0, 0, len(MIGRATIONS)]
    with Database.open_file(path).write() as conn:
        rows = conn.execute(select(schema.migrations.c.name)).all()
    assert len(rows) == len(MIGRATIONS)


def test_a_failed_write_rolls_back(tmp_path):
    db = Database.open_file(str(tmp_path / "state.sqlite"))
    migrate(db)
    try:
        with db.write() as conn:
            conn.execute(schema.groups.insert().values(name="g", description=""))
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    with db.write() as conn:
        assert conn.execute(select(schema.groups)).all() == []
