"""Syncs of one host take turns, so an older view of the accounts never lands last."""

import fcntl
import os
import threading

import pytest

from isidorus.directory.config import load_config
from isidorus.directory.errors import DirectoryUnreachable
from isidorus.ops import accounts as ops
from isidorus.ops import directory as directory_ops
from tests.integration.slapd import free_port


@pytest.fixture
def home(tmp_path):
    d = tmp_path / "host"
    ops.init_host(str(d), domain="example.org", admin="admin", email="admin@example.org",
                  password="the keeper's passphrase")  # fmt: skip
    (d / "ldap.secret").write_text("secret\n")
    with open(d / "isidorus.toml", "a") as f:
        # a port nobody listens on: the sync fails at once, once it may start
        f.write(
            f'[ldap]\nurl = "ldap://127.0.0.1:{free_port()}/"\nbase_dn = "dc=example,dc=org"\n'
            'bind_dn = "cn=admin,dc=example,dc=org"\nbind_password_file = "ldap.secret"\n'
        )
    return d


def test_a_sync_waits_for_the_one_under_way(home):
    config = load_config(str(home / "isidorus.toml"))
    assert config is not None and config.lock_file == str(home / "directory.lock")
    db = ops.open_state(str(home))
    outcome = []

    def sync():
        try:
            directory_ops.sync_directory(db, config)
        except DirectoryUnreachable as exc:
            outcome.append(exc)

    fd = os.open(config.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another sync under way
    t = threading.Thread(target=sync)
    try:
        t.start()
        t.join(0.5)
        assert t.is_alive() and outcome == []
    finally:
        os.close(fd)
    t.join(10)
    db.close()
    assert not t.is_alive() and len(outcome) == 1


def test_a_change_is_saved_when_the_directory_is_down(home):
    heard = []
    db = ops.open_state(str(home), warn=heard.append)
    ops.add_group(db, "test", "family")
    assert [g.name for g in ops.list_groups(db)] == ["family"]
    db.close()
    (line,) = heard
    assert line.startswith("the change is saved, but not in the LDAP directory: cannot reach")
    assert line.endswith("run `isidorus directory sync` once this is fixed")
