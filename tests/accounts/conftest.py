import pytest

from isidorus.state.db import Database
from isidorus.state.migrations import migrate


@pytest.fixture
def db(state_url):
    d = Database(state_url)
    migrate(d)
    yield d
    d.close()


@pytest.fixture
def conn(db):
    with db.write() as c:
        yield c
