import os
import time

import pytest

from isidorus.backup.testing import make_repository


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
