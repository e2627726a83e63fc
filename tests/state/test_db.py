"""The state database's transactions: readers beside a writer, and the change mark that
lets caches know when they are stale."""

import threading

from sqlalchemy import select

from isidorus.state.db import Database
from isidorus.state.migrations import migrate
from isidorus.state.schema import groups


def test_a_reader_does_not_wait_for_a_writer(tmp_path):
    db = Database.open_file(str(tmp_path / "state.sqlite"))
    migrate(db)
    writing, done = threading.Event(), threading.Event()

    def writer():
        with db.write() as conn:
            conn.execute(groups.insert().values(name="family", description=""))
            writing.set()
            done.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert writing.wait(10)
    with db.read() as conn:  # would wait 10 s for the write lock if it took one
        assert conn.execute(select(groups)).all() == []  # the writer has not committed
    done.set()
    t.join()
    with db.read() as conn:
        assert [r.name for r in conn.execute(select(groups))] == ["family"]
    db.close()


def test_data_version_moves_with_every_commit_of_anyone(tmp_path):
    path = str(tmp_path / "state.sqlite")
    db, other = Database.open_file(path), Database.open_file(path)
    migrate(db)
    v = db.data_version()
    with db.read() as conn:
        conn.execute(select(groups)).all()
    assert db.data_version() == v  # reading changes nothing
    with other.write() as conn:  # another process, as far as `db` knows
        conn.execute(groups.insert().values(name="family", description=""))
    v2 = db.data_version()
    assert v2 != v
    with db.write() as conn:  # this one's own commits too
        conn.execute(groups.insert().values(name="friends", description=""))
    assert db.data_version() != v2
    db.close()
    other.close()
