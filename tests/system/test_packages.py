"""Packages on the real host: apt (Debian's mirror), pip (PyPI) and npm (its registry).

The Debian packages installed here are tiny ones this host lacks; whatever a test installs
is removed at teardown even when it fails, and the host's own policy-rc.d is put back.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from isidorus.system import packages
from isidorus.system.errors import HostError, HostTimeout
from isidorus.system.packages import (
    POLICY_RC_D,
    POLICY_SAVED,
    POLICY_SCRIPT,
    apt_install,
    apt_remove,
    debian_installed,
    npm_install,
    venv_install,
)

# apt is one per host: every test that runs it goes to the same xdist worker
pytestmark = [pytest.mark.root, pytest.mark.xdist_group("apt")]

# tiny, harmless, no daemon; cowsay-off depends on cowsay, and cowsay on this perl module
TEST_PACKAGES = ("hello", "cowsay", "cowsay-off", "libtext-charwidth-perl")


def _dpkg_says_installed(name: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", name], capture_output=True, text=True
    )
    return result.stdout == "installed"


@pytest.fixture
def test_packages() -> Iterator[None]:
    """The test packages are absent before (they are harmless toys: one left by an earlier
    run is removed) and after: apt keeps the dependencies it pulled in."""
    _remove_test_packages()
    yield
    _remove_test_packages()


def _remove_test_packages() -> None:
    there = [p for p in TEST_PACKAGES if _dpkg_says_installed(p)]
    if there:
        subprocess.run(
            ["apt-get", "remove", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *there],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            check=True,
        )
    assert not any(_dpkg_says_installed(p) for p in TEST_PACKAGES)


@pytest.fixture
def host_policy() -> Iterator[None]:
    """The host's policy-rc.d is set aside for the test and put back after it."""
    path = Path(POLICY_RC_D)
    # under isidorus's apt lock, and with what a killed install may have left put back
    # first: the host's own file is what is saved, never a copy of isidorus's
    with packages._apt_lock():
        packages._recover_policy()
        saved = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) if path.exists() else None
    yield
    with packages._apt_lock():
        Path(POLICY_SAVED).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        if saved is not None:
            path.write_bytes(saved[0])
            path.chmod(saved[1])


@contextmanager
def _watching(path: str) -> Iterator[list[bytes]]:
    """The contents `path` has while the block runs, each time it changes."""
    seen: list[bytes] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            try:
                content = Path(path).read_bytes()
            except OSError:
                continue
            if not seen or content != seen[-1]:
                seen.append(content)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


@pytest.mark.slow
def test_install_holds_daemons_back_and_remove_takes_the_package_away(test_packages, host_policy):
    Path(POLICY_RC_D).unlink(missing_ok=True)
    with _watching(POLICY_RC_D) as seen:
        added = apt_install(["hello", "bash"])
    assert added == ["hello"]  # bash was there before: a rollback leaves it
    assert _dpkg_says_installed("hello")
    assert debian_installed(["hello", "bash", "no-such-thing"]) == {"hello", "bash"}
    assert seen == [POLICY_SCRIPT.encode()]  # ours, during the install only
    assert not os.path.lexists(POLICY_RC_D)
    assert not os.path.lexists(POLICY_SAVED)
    assert apt_install(["hello"]) == []

    apt_remove(["hello"])
    assert not _dpkg_says_installed("hello")
    apt_remove(["hello"])  # absent: nothing to do


def test_a_policy_rc_d_left_by_a_killed_install_is_undone(host_policy):
    own = b"#!/bin/sh\nexit 0\n"
    Path(POLICY_SAVED).write_bytes(own)
    Path(POLICY_RC_D).write_text(POLICY_SCRIPT)
    assert apt_install(["bash"]) == []  # installed already: apt does not even run
    assert Path(POLICY_RC_D).read_bytes() == own
    assert not os.path.lexists(POLICY_SAVED)

    Path(POLICY_RC_D).write_text(POLICY_SCRIPT)  # the host had none
    apt_remove(["no-such-thing-here"])
    assert not os.path.lexists(POLICY_RC_D)


@pytest.mark.slow
def test_the_hosts_policy_rc_d_comes_back_and_remove_takes_nothing_else(test_packages, host_policy):
    own = b"#!/bin/sh\n# the host's own policy\nexit 0\n"
    Path(POLICY_RC_D).write_bytes(own)
    os.chmod(POLICY_RC_D, 0o750)
    inode = os.stat(POLICY_RC_D).st_ino
    with _watching(POLICY_RC_D) as seen:
        assert apt_install(["cowsay", "cowsay-off"]) == ["cowsay", "cowsay-off"]
    assert seen == [own, POLICY_SCRIPT.encode(), own]
    st = os.stat(POLICY_RC_D)
    assert (stat.S_IMODE(st.st_mode), st.st_ino) == (0o750, inode)  # the very same file
    assert not os.path.lexists(POLICY_SAVED)

    with pytest.raises(HostError) as exc:
        apt_remove(["cowsay"])
    message = str(exc.value)
    assert "would also remove cowsay-off" in message and "\n" not in message
    assert _dpkg_says_installed("cowsay-off")
    apt_remove(["cowsay-off", "cowsay"])
    assert debian_installed(["cowsay", "cowsay-off"]) == set()


@pytest.mark.slow
def test_an_unknown_package_is_named_in_one_line():
    with pytest.raises(HostError) as exc:
        apt_install(["bash", "isidorus-no-such-package"])
    message = str(exc.value)
    assert "isidorus-no-such-package" in message and "\n" not in message
    assert "bash" not in message


def test_names_that_are_not_packages_are_refused_before_apt_runs():
    with pytest.raises(HostError, match="not a Debian package name"):
        apt_install(["-y"])
    with pytest.raises(HostError, match="is not a package"):
        venv_install("/nonexistent", ["--index-url=https://example.org/"])


def _take(lock: Callable[[], object], what: str, seconds: float = 300) -> None:
    """Take a lock that another apt or isidorus on this host may hold for a while (an
    install elsewhere): wait for it, boundedly, rather than skip the test."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} stayed held for {seconds:.0f} s"
            time.sleep(0.5)


def test_a_busy_apt_is_waited_for_then_named(test_packages, monkeypatch):
    fd = os.open("/var/lib/dpkg/lock-frontend", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        _take(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), "apt's lock")
        monkeypatch.setattr(packages, "APT_LOCK_WAIT", 2.0)
        with pytest.raises(HostTimeout) as exc:
            apt_install(["hello"])
    finally:
        os.close(fd)
    message = str(exc.value)
    assert message.startswith("apt is busy: process ") and f"{os.getpid()} (" in message
    assert "\n" not in message
    assert not _dpkg_says_installed("hello")


def test_a_second_isidorus_waits_for_the_first(monkeypatch):
    fd = os.open(packages.LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _take(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), "isidorus's apt lock")
        monkeypatch.setattr(packages, "APT_LOCK_WAIT", 1.0)
        with pytest.raises(HostTimeout, match="another isidorus has been installing packages"):
            apt_install(["bash"])
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_venv_gets_the_pinned_package(tmp_path):
    venv = str(tmp_path / "env")
    with pytest.raises(HostError) as exc:
        venv_install(venv, ["six==0.0.999"])
    message = str(exc.value)
    assert message.startswith("pip could not install six==0.0.999: ") and "\n" not in message
    assert not os.path.exists(venv)  # made by the failed call, so taken back

    venv_install(venv, ["six==1.16.0"])
    python = os.path.join(venv, "bin", "python")
    version = subprocess.run(
        [python, "-c", "import six; print(six.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == "1.16.0"
    venv_install(venv, ["six==1.16.0"])  # again: nothing to do

    with pytest.raises(HostError, match="six==0.0.999"):
        venv_install(venv, ["six==1.16.0", "six==0.0.999"])
    assert os.path.exists(python)  # there before the failed call: kept


def test_a_python_that_cannot_make_venvs_is_explained(tmp_path):
    # what Debian's python3 does without python3-venv: a half-made venv and a long notice
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = venv ]; then mkdir -p "$3/bin"; : > "$3/bin/python"\n'
        "  echo 'The virtual environment was not created successfully because ensurepip is'\n"
        "  echo 'Failing command: python3'; exit 1; fi\n"
        "echo 'No module named ensurepip.__main__' >&2; exit 1\n"
    )
    fake.chmod(0o755)
    venv = tmp_path / "env"
    with pytest.raises(HostError) as exc:
        venv_install(str(venv), ["six==1.16.0"], python=str(fake))
    assert str(exc.value) == (
        f"{fake} cannot make a venv (no ensurepip): install the Debian package python3-venv"
    )
    assert not venv.exists()
    assert packages.VENV_DEBIAN == ("python3-venv",)


@pytest.mark.slow
def test_npm_packages_go_under_the_prefix(tmp_path):
    assert shutil.which("npm"), "npm is missing: scripts/test installs it"
    prefix = str(tmp_path / "node")
    npm_install(prefix, ["is-number@7.0.0"])
    manifest = Path(prefix, "node_modules", "is-number", "package.json").read_text()
    assert '"version": "7.0.0"' in manifest

    with pytest.raises(HostError) as exc:
        npm_install(prefix, ["is-number@99.0.0"])
    message = str(exc.value)
    assert message.startswith("npm could not install is-number@99.0.0: ")
    assert "No matching version found for is-number@99.0.0" in message and "\n" not in message
