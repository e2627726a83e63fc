"""A sync to a home reaches it before the command line loads (cli/early.py), and the sync
command then takes over that very connection; any other command line is left alone."""

import pytest

from isidorus import settings
from isidorus.cli.early import reach_home, sync_destination
from isidorus.ops import stores

HOME = "ssh+isidorus://backup@home.example/store"


@pytest.mark.parametrize(
    ("args", "found"),
    [
        (["backup", "sync", "/srv/store", HOME], (HOME, None)),
        (["backup", "sync", "/srv/store", HOME, "--json"], (HOME, None)),
        (["backup", "sync", "--limit-rate", "2M", "/srv/store", HOME], (HOME, "2M")),
        (["backup", "sync", "--limit-rate=1M", "/s", HOME, "--snapshot", "latest"], (HOME, "1M")),
        (["backup", "sync", "--", "/s", HOME], (HOME, None)),
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
    monkeypatch.setenv("ISIDORUS_SSH_COMMAND", "false")  # an ssh that fails at once
    monkeypatch.setattr(stores, "_AHEAD", {})
    reach_home(["backup", "sync", str(tmp_path), HOME, "--limit-rate", "3M"])
    [(key, ahead)] = stores._AHEAD.items()
    assert key == (HOME, "3M")
    conf = settings.load()
    try:
        other = stores.connect_early(HOME, conf)
        assert other is not None and other is not ahead  # another rate: its own connection
        other.close()
        conf["limit_rate"] = "3M"
        assert stores.connect_early(HOME, conf) is ahead
        assert stores._AHEAD == {}
    finally:
        ahead.close()


@pytest.mark.parametrize("dest", ["/srv/copy", "ssh://backup@home.example/copy", "remote:nowhere"])
def test_other_places_are_left_to_the_command(monkeypatch, tmp_path, dest):
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setattr(stores, "_AHEAD", {})
    reach_home(["backup", "sync", str(tmp_path), dest])
    assert stores._AHEAD == {}
