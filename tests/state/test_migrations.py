import json
import subprocess
import sys

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
    assert {
        "users",
        "groups",
        "memberships",
        "audit_log",
        "sessions",
        "api_tokens",
        "migrations",
    } <= tables


# a process that opens the database, waits for the word on stdin, migrates, and prints
# the names of the migrations it applied
MIGRATOR = """
import json, sys
from isidorus.state.db import Database
from isidorus.state.migrations import migrate
db = Database(sys.argv[1])
sys.stdin.readline()
print(json.dumps(migrate(db)))
db.close()
"""


def test_two_processes_migrating_at_once_do_it_once(state_url):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, state_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for p in procs:  # all three have started and imported isidorus: let them go
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    done = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        done.append(json.loads(out))
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
