"""A sync to a home reaches it before the command line loads (cli/early.py), and the sync
command then takes over that very connection; any other command line is left alone."""

import time

import pytest

from isidorus import settings
from isidorus.backup.remote import ssh
from isidorus.backup.remote.served import ServedBackend
from isidorus.cli.early import reach_home, sync_destination
from isidorus.ops import stores

HOME = "ssh+isidorus://backup@home.example/store"
# an ssh that reads what it is sent and says nothing
SILENT = "sh -c 'exec cat >/dev/null' ssh"


@pytest.mark.parametrize(
    ("args", "found"),
    [
        (["backup", "sync", "/srv/store", HOME], HOME),
        (["backup", "sync", "/srv/store", HOME, "--json"], HOME),
        (["backup", "sync", "--limit-rate", "2M", "/srv/store", HOME], HOME),
        (["backup", "sync", "--limit-rate=1M", "/s", HOME, "--snapshot", "latest"], HOME),
        (["backup", "sync", "--", "/s", HOME], HOME),
        (["backup", "sync", "/srv/store", HOME, "--help"], None),  # the command line answers
        (["backup", "sync", "/srv/store", HOME, "--bogus"], None),  # and names the mistake
        (["backup", "sync", "/srv/store"], None),
        (["backup", "sync", "/srv/store", HOME, "--limit-rate"], None),
        (["backup", "list", "/srv/store", HOME], None),
        (["--version"], None),
    ],
)
def test_only_a_plain_sync_is_recognised(args, found):
    assert sync_destination(args) == found


def test_the_sync_command_takes_over_the_connection_begun_ahead(monkeypatch, tmp_path):
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ISIDORUS_SSH_COMMAND", SILENT)
    monkeypatch.setattr(ssh, "_AHEAD", {})
    reach_home(["backup", "sync", str(tmp_path), HOME, "--limit-rate", "3M"])
    [(argv, ahead)] = ssh._AHEAD.items()
    assert argv[:2] == ("sh", "-c") and argv[-1] == "isidorus backup serve --stdio /"
    conf = settings.load()
    conf["limit_rate"] = "3M"
    backend = stores.connect_early(HOME, conf)
    assert isinstance(backend, ServedBackend)
    try:
        deadline = time.monotonic() + 10
        while ssh._AHEAD and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ssh._AHEAD == {}  # taken over, not started a second time
        assert backend._connect() is ahead
        assert ahead.rate_limit is not None and ahead.rate_limit.rate == 3 * 1024 * 1024
    finally:
        backend.close()
    assert ahead.proc.poll() is not None  # closing the backend ends the ssh begun ahead


def test_another_ssh_command_is_not_taken_over(monkeypatch, tmp_path):
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ISIDORUS_SSH_COMMAND", SILENT)
    monkeypatch.setattr(ssh, "_AHEAD", {})
    reach_home(["backup", "sync", str(tmp_path), HOME])
    [ahead] = ssh._AHEAD.values()
    try:
        conf = settings.load()
        conf["ssh_command"] = SILENT + " -v"
        backend = stores.backend_for(HOME, conf)
        assert isinstance(backend, ServedBackend)
        assert ssh.take_ahead(backend._argv) is None  # its own ssh, not the other one's
        assert list(ssh._AHEAD.values()) == [ahead]
    finally:
        ahead.close()


@pytest.mark.parametrize("dest", ["/srv/copy", "ssh://backup@home.example/copy", "remote:nowhere"])
def test_other_places_are_left_to_the_command(monkeypatch, tmp_path, dest):
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setattr(ssh, "_AHEAD", {})
    reach_home(["backup", "sync", str(tmp_path), dest])
    assert ssh._AHEAD == {}
