"""Named remotes: the forms of URL accepted, names, and the file they are kept in."""

import os

import pytest

from isidorus.errors import UsageError
from isidorus.ops import remotes
from isidorus.settings import load, load_remotes, remotes_path


@pytest.mark.parametrize(
    "url",
    [
        "/mnt/usb/isidorus",
        "/",
        "ssh://host/srv/store",
        "ssh://backup@host.example.org:2222/srv/store",
        "ssh://[2001:db8::1]:22/srv/store",
        "ssh+isidorus://backup@host/srv/store",
        "s3://my-bucket",
        "s3://my.bucket/some/prefix",
    ],
)
def test_accepted_urls(url):
    remotes.check_url(url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("store", "relative path"),
        ("./store", "relative path"),
        ("remote:usb", "names a remote"),
        ("ssh://host", "no path"),
        ("ssh://host/", "no path"),
        ("ssh:///srv/store", "no host"),
        ("ssh://host:0x16/srv", "bad port"),
        ("ssh://host:70000/srv", "bad port"),
        ("ssh://u:pw@host/srv", "password"),
        ("ssh://host/srv?x=1", "query"),
        ("s3://ab", "bucket"),
        ("s3://Bucket/x", "bucket"),
        ("s3://-bucket/x", "bucket"),
        ("sftp://host/srv", "sftp://"),
        ("http://host/srv", "http://"),
    ],
)
def test_refused_urls_name_the_fault(url, words):
    with pytest.raises(UsageError, match=words):
        remotes.check_url(url)


@pytest.mark.parametrize("name", ["usb", "friend-1", "a.b_c", "X" * 63])
def test_accepted_names(name):
    remotes.check_name(name)


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "remote:x", "x" * 64, "é"])
def test_refused_names(name):
    with pytest.raises(UsageError, match="not a remote name"):
        remotes.check_name(name)


def test_add_resolve_remove(tmp_path):
    config = str(tmp_path / "isidorus.toml")
    remotes.add_remote(config, "usb", "/mnt/usb")
    found = load_remotes(config)
    assert remotes.resolve("remote:usb", found) == "/mnt/usb"
    assert remotes.resolve("/srv/backups", found) == "/srv/backups"
    assert remotes.resolve("usb", found) == "usb"  # a bare name is a relative path
    with pytest.raises(UsageError, match="no remote 'nas'"):
        remotes.resolve("remote:nas", found)
    path = remotes_path(config)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert load(config)["backup_threads"] == 0  # the settings do not mind the table
    remotes.remove_remote(config, "usb")
    assert load_remotes(config) == {}
    with open(path) as f:
        assert f.read() == ""


def test_a_later_file_wins_and_bad_tables_are_named(tmp_path):
    config = tmp_path / "isidorus.toml"
    config.write_text("[remotes.usb]\nurl = '/mnt/a'\n")
    (tmp_path / "isidorus.toml.d").mkdir()
    (tmp_path / "isidorus.toml.d" / "z.toml").write_text("[remotes.usb]\nurl = '/mnt/b'\n")
    assert load_remotes(str(config))["usb"].url == "/mnt/b"
    config.write_text("remotes = 3\n")
    with pytest.raises(UsageError, match="must be a table"):
        load_remotes(str(config))
    config.write_text("[remotes.usb]\npath = '/mnt/a'\n")
    with pytest.raises(UsageError, match=r"\[remotes.usb\] in .* needs url"):
        load_remotes(str(config))
