"""Observers of the state database hear, after each commit, which tables it changed."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, update

from isidorus.state.db import Database
from isidorus.state.migrations import migrate
from isidorus.state.schema import audit_log, groups, users


@pytest.fixture
def db(tmp_path):
    d = Database.open_file(str(tmp_path / "state.sqlite"))
    migrate(d)
    heard: list[frozenset[str]] = []
    d.observers.append(heard.append)
    d.heard = heard  # type: ignore[attr-defined]
    yield d
    d.close()


def add_user(conn, name="alice"):
    conn.execute(
        users.insert().values(
            name=name, email=f"{name}@example.org", password_hash="x", created_at=datetime.now(UTC)
        )
    )


def test_observers_hear_the_tables_a_commit_changed(db):
    with db.write() as conn:
        add_user(conn)
        conn.execute(groups.insert().values(name="family"))
        conn.execute(update(users).where(users.c.name == "alice").values(fullname="Alice"))
    with db.write() as conn:
        conn.execute(delete(groups))
    assert db.heard == [frozenset({"users", "groups"}), frozenset({"groups"})]


def test_reads_are_not_heard(db):
    with db.write() as conn:
        conn.execute(select(users)).all()
    assert db.heard == []


def test_a_rolled_back_write_is_not_heard(db):
    with pytest.raises(RuntimeError), db.write() as conn:
        add_user(conn)
        raise RuntimeError("changed my mind")
    assert db.heard == []
    with db.write() as conn:
        assert conn.execute(select(users)).all() == []


def test_observers_are_called_once_the_change_is_visible(db):
    """An observer reads what was committed, from another connection."""
    other = Database(db.url)
    seen = []

    def read(_tables):
        with other.write() as conn:
            seen.append(conn.execute(select(users.c.name)).scalars().all())

    db.observers.append(read)
    with db.write() as conn:
        add_user(conn)
        conn.execute(audit_log.insert().values(at=datetime.now(UTC), actor="t", action="a"))
    other.close()
    assert db.heard == [frozenset({"users", "audit_log"})]
    assert seen == [["alice"]]
