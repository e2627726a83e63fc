import os
import time

import pytest

from isidorus.backup.testing import make_repository
from isidorus.state.db import sqlite_url
from tests.pg import running_cluster
from tests.s3 import running_moto


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # --dist loadgroup keeps each xdist_group on one worker by suffixing its tests' ids
    # (the apt tests share one host's dpkg and ports): when it could not, stop, rather
    # than let those tests run side by side and fail at random
    if getattr(config.option, "loadgroup", False):
        for item in items:
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
                raise pytest.UsageError(
                    "pytest-xdist did not group the xdist_group tests: install the pytest "
                    "that pyproject.toml pins (pip install -e '.[test]')"
                )
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """This process's own S3 server (moto, over HTTP), started at its first use."""
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server_refusing(tmp_path_factory):
    """A second S3 server that checks credentials, and knows none: it refuses every key."""
    with running_moto(tmp_path_factory.mktemp("moto-auth"), auth=True) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """The AWS_* variables point at the tests' S3 server, and no AWS files of this machine
    get in the way. Returns the server."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask the network for keys
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
