"""The [ldap] table: read when present, and every mistake named in one line with its fix."""

import pytest

from isidorus.directory.config import DirectoryConfig, load_config
from isidorus.directory.errors import DirectoryConfigError

GOOD = {
    "url": '"ldap://127.0.0.1/"',
    "base_dn": '"dc=example,dc=org"',
    "bind_dn": '"cn=admin,dc=example,dc=org"',
    "bind_password_file": '"ldap.secret"',
}


def write_config(tmp_path, table=None, *, raw=None, secret="s3cret\n"):
    (tmp_path / "ldap.secret").write_text(secret)
    text = 'domain = "example.org"\n'
    if raw is not None:
        text += raw
    elif table is not None:
        text += "[ldap]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
    path = tmp_path / "isidorus.toml"
    path.write_text(text)
    return str(path)


def test_no_table_no_directory(tmp_path):
    assert load_config(write_config(tmp_path)) is None


def test_a_good_table(tmp_path):
    config = load_config(write_config(tmp_path, GOOD))
    assert config == DirectoryConfig(
        url="ldap://127.0.0.1/",
        base_dn="dc=example,dc=org",
        bind_dn="cn=admin,dc=example,dc=org",
        bind_password="s3cret",
        timeout=5,
        lock_file=str(tmp_path / "directory.lock"),
    )
    assert (config.host, config.port) == ("127.0.0.1", 389)
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("ldap://ldap.example.org:3890", "ldap.example.org", 3890),
        ("ldap://localhost/", "localhost", 389),
        ("ldap://[::1]:3389/", "::1", 3389),
    ],
)
def test_urls(tmp_path, url, host, port):
    config = load_config(write_config(tmp_path, {**GOOD, "url": f'"{url}"'}))
    assert config is not None and (config.host, config.port) == (host, port)


def test_an_absolute_password_file_and_a_timeout(tmp_path):
    secret = tmp_path / "elsewhere.secret"
    secret.write_text("another\r\nsecond line ignored\n")
    config = load_config(
        write_config(tmp_path, {**GOOD, "bind_password_file": f'"{secret}"', "timeout": "30"})
    )
    assert config is not None and config.bind_password == "another" and config.timeout == 30


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"url": None}, ["url is missing", 'url = "ldap://']),
        ({"base_dn": None}, ["base_dn is missing"]),
        ({"bind_password_file": None}, ["bind_password_file is missing"]),
        ({"url": "3"}, ["url must be a non-empty string"]),
        ({"bind_dn": '""'}, ["bind_dn must be a non-empty string"]),
        ({"url": '"http://127.0.0.1/"'}, ["url 'http://127.0.0.1/' is not ldap://HOST"]),
        ({"url": '"ldap://127.0.0.1:port/"'}, ["is not ldap://HOST"]),
        ({"url": '"ldaps://127.0.0.1/"'}, ["is not ldap://HOST"]),
        ({"url": '"ldap://127.0.0.1/dc=example"'}, ["is not ldap://HOST"]),
        ({"url": '"ldap:///"'}, ["is not ldap://HOST"]),
        ({"base_dn": '"example.org"'}, ["base_dn 'example.org' is not a DN", "dc=example"]),
        ({"bind_dn": '"cn=admin,,dc=org"'}, ["bind_dn 'cn=admin,,dc=org' is not a DN"]),
        ({"timeout": "0"}, ["timeout must be a whole number of seconds"]),
        ({"timeout": "2.5"}, ["timeout must be a whole number of seconds"]),
        ({"timeout": "true"}, ["timeout must be a whole number of seconds"]),
        ({"bind_pasword_file": '"x"'}, ["unknown key 'bind_pasword_file'", "bind_password_file"]),
        ({"bind_password_file": '"nowhere"'}, ["cannot read bind_password_file", "nowhere"]),
    ],
)
def test_mistakes(tmp_path, change, words):
    table = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(DirectoryConfigError) as e:
        load_config(write_config(tmp_path, table))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"[ldap] in {tmp_path}")
    for w in words:
        assert w in message
    assert e.value.exit_code == 2


def test_an_empty_password_file(tmp_path):
    with pytest.raises(DirectoryConfigError, match="ldap.secret is empty"):
        load_config(write_config(tmp_path, GOOD, secret="\n"))


def test_ldap_must_be_a_table(tmp_path):
    with pytest.raises(DirectoryConfigError, match="`ldap` must be a table"):
        load_config(write_config(tmp_path, raw='ldap = "ldap://127.0.0.1/"\n'))


def test_a_config_that_is_not_toml(tmp_path):
    with pytest.raises(DirectoryConfigError, match="cannot read"):
        load_config(write_config(tmp_path, raw="[ldap\n"))
