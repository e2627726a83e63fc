import pytest

from isidorus.state.db import Database
from isidorus.state.migrations import migrate


@pytest.fixture
def db(tmp_path):
    d = Database.open_file(str(tmp_path / "state.sqlite"))
    migrate(d)
    yield d
    d.close()


@pytest.fixture
def conn(db):
    with db.write() as c:
        yield c
