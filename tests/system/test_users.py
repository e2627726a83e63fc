"""System users and service directories, made with the host's own useradd and userdel."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess

import pytest

from isidorus.system.errors import HostError
from isidorus.system.users import ensure_system_user, make_directory, remove_system_user

pytestmark = pytest.mark.root


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _gone(name: str) -> None:
    if _exists(name):
        subprocess.run(["userdel", "-r", name], capture_output=True)
    if _group_exists(name):
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture
def service_user():
    """A user name of this test's own, absent before and removed after."""
    name = f"isidorus-t{os.getpid()}"
    _gone(name)
    yield name
    _gone(name)


@pytest.fixture
def person():
    """A person's account, with its home."""
    name = f"isidorus-p{os.getpid()}"
    _gone(name)
    subprocess.run(["useradd", "-m", "--shell", "/bin/bash", name], check=True)
    yield name
    _gone(name)


def test_a_system_user_is_made_once_and_removed(service_user, tmp_path):
    home = str(tmp_path / "data")
    assert ensure_system_user(service_user, home) is True
    entry = pwd.getpwnam(service_user)
    assert entry.pw_uid < 1000
    assert (entry.pw_dir, entry.pw_shell) == (home, "/usr/sbin/nologin")
    assert grp.getgrgid(entry.pw_gid).gr_name == service_user  # its own group
    assert not os.path.exists(home)  # the install makes the data directory, not useradd
    assert ensure_system_user(service_user, home) is False

    remove_system_user(service_user)
    assert not _exists(service_user) and not _group_exists(service_user)
    remove_system_user(service_user)  # absent: nothing to do


def test_a_persons_account_is_never_taken_over(person, tmp_path):
    before = pwd.getpwnam(person)
    with pytest.raises(HostError) as exc:
        ensure_system_user(person, str(tmp_path))
    message = str(exc.value)
    assert message.startswith(f"{person} has uid {before.pw_uid}, not a system user's")
    assert "\n" not in message
    with pytest.raises(HostError, match="never takes over a person's account"):
        remove_system_user(person)
    assert pwd.getpwnam(person) == before


def test_root_and_bad_names_are_refused(tmp_path):
    with pytest.raises(HostError, match="a service never runs as root"):
        ensure_system_user("root", str(tmp_path))
    with pytest.raises(HostError, match="is not a user name"):
        ensure_system_user("--badname", str(tmp_path))


def test_a_lone_group_of_that_name_is_named(service_user, tmp_path):
    subprocess.run(["groupadd", "--system", service_user], check=True)
    with pytest.raises(HostError, match=f"a group {service_user} .* exists without a user"):
        ensure_system_user(service_user, str(tmp_path))
    assert not _exists(service_user)


def test_a_directory_gets_its_owner_and_mode(service_user, tmp_path):
    ensure_system_user(service_user, str(tmp_path / "data"))
    entry = pwd.getpwnam(service_user)
    path = tmp_path / "srv" / "service" / "data"
    assert make_directory(str(path), service_user) is True
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (entry.pw_uid, entry.pw_gid, 0o750)
    assert make_directory(str(path), service_user) is False

    config = tmp_path / "config"
    assert make_directory(str(config), "root", 0o755) is True
    assert (config.stat().st_uid, stat.S_IMODE(config.stat().st_mode)) == (0, 0o755)

    (tmp_path / "file").write_text("")
    with pytest.raises(HostError, match="exists and is not a directory"):
        make_directory(str(tmp_path / "file"), service_user)
    with pytest.raises(HostError, match="no such user"):
        make_directory(str(tmp_path / "other"), "isidorus-nobody-here")
    assert not (tmp_path / "other").exists()
