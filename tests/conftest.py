import os
import time

import pytest

from isidorus.backup.testing import make_repository
from isidorus.state.db import sqlite_url
from tests.pg import running_cluster


def pytest_collection_modifyitems(config, items):
    # tests marked `root` run whenever we are root (as in CI), and are skipped otherwise
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo():
    """An opened, encrypted store in memory, closed after the test."""
    r = make_repository()
    yield r
    r.close()


@pytest.fixture
def utc():
    """Local time is UTC for the test, so calendar periods do not depend on the machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "UTC")
        time.tzset()
        yield mp
    time.tzset()


@pytest.fixture(scope="session")
def postgresql():
    """This process's own PostgreSQL server, started at its first use (each xdist worker
    starts its own), stopped and removed at the end."""
    with running_cluster(os.environ.get("PYTEST_XDIST_WORKER", "")) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path):
    """The URL of a fresh, empty state database: a SQLite file, then a PostgreSQL database
    owned by the isidorus user (dropped after the test)."""
    if request.param == "sqlite":
        yield sqlite_url(str(tmp_path / "state.sqlite"))
        return
    with request.getfixturevalue("postgresql").database() as url:
        yield url
