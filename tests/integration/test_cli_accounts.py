"""`isidorus init`, `user` and `group` through the real command line."""

import json

import pytest


@pytest.fixture
def home(run, tmp_path):
    d = tmp_path / "host"
    r = run("init", "--data-dir", d, "--domain", "example.org", "--json")
    doc = json.loads(r.out)
    assert doc["created"] and doc["admin"] == "admin" and len(doc["password"]) == 23
    return d


def test_init_once(run, home):
    again = run("init", "--data-dir", home)
    assert "already initialised" in again.out
    users = json.loads(run("user", "list", "--data-dir", home, "--json").out)
    assert [(u["name"], u["is_admin"], u["email"]) for u in users] == [
        ("admin", True, "admin@example.org")
    ]


def test_init_with_a_given_password(run, tmp_path):
    r = run(
        "init", "--data-dir", tmp_path / "h", "--password-stdin", input="a good long passphrase\n"
    )
    assert "password:" not in r.out


def test_users_and_groups(run, home):
    r = run(
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.org",
        "--fullname",
        "Alice",
        "--password-stdin",
        "--data-dir",
        home,
        input="a long passphrase of hers\n",
    )
    assert "added user alice" in r.out and "password:" not in r.out
    r = run("user", "add", "bob", "--email", "bob@example.org", "--data-dir", home, "--json")
    assert len(json.loads(r.out)["password"]) == 23
    run("group", "add", "family", "--data-dir", home)
    run("group", "add-member", "family", "alice", "--data-dir", home)
    run("group", "add-member", "family", "bob", "--data-dir", home)
    run("group", "remove-member", "family", "bob", "--data-dir", home)
    groups = json.loads(run("group", "list", "--data-dir", home, "--json").out)
    assert groups == [{"name": "family", "description": "", "members": ["alice"]}]
    run("user", "disable", "alice", "--data-dir", home)
    users = {
        u["name"]: u for u in json.loads(run("user", "list", "--data-dir", home, "--json").out)
    }
    assert users["alice"]["disabled"] and users["alice"]["groups"] == ["family"]
    run("user", "enable", "alice", "--data-dir", home)
    run(
        "user",
        "passwd",
        "alice",
        "--password-stdin",
        "--data-dir",
        home,
        input="another long passphrase\n",
    )
    run("user", "edit", "alice", "--email", "alice@example.net", "--data-dir", home)
    run("user", "promote", "alice", "--data-dir", home)
    users = {
        u["name"]: u for u in json.loads(run("user", "list", "--data-dir", home, "--json").out)
    }
    assert users["alice"]["email"] == "alice@example.net" and users["alice"]["fullname"] == "Alice"
    assert users["alice"]["is_admin"]
    run("user", "demote", "alice", "--data-dir", home)
    run("user", "remove", "bob", "--data-dir", home)
    names = [u["name"] for u in json.loads(run("user", "list", "--data-dir", home, "--json").out)]
    assert names == ["admin", "alice"]


def test_the_audit_log(run, home):
    run("group", "add", "family", "--data-dir", home)
    run("group", "add", "friends", "--data-dir", home)
    page = json.loads(run("audit", "--limit", "2", "--json", "--data-dir", home).out)
    assert [(e["action"], e["target"]) for e in page["entries"]] == [
        ("group.add", "friends"),
        ("group.add", "family"),
    ]
    assert page["entries"][0]["actor"].startswith("cli:")
    older = run("audit", "--before", page["next_before"], "--data-dir", home).out
    assert "init" in older and "friends" not in older


def test_data_dir_from_isidorus_home(run, home):
    r = run("user", "list", "--json", env={"ISIDORUS_HOME": str(home)})
    assert [u["name"] for u in json.loads(r.out)] == ["admin"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("user", "add", "alice", "--email", "a@example.org", "--password-stdin"), 2, "too short"),
        (("user", "add", "Alice!", "--email", "a@example.org"), 2, "not a valid user name"),
        (("user", "add", "admin", "--email", "a@example.org"), 1, "exists already"),
        (("user", "remove", "nobody"), 1, "no user 'nobody'"),
        (("group", "add-member", "nogroup", "admin"), 1, "no group 'nogroup'"),
        (("user", "passwd", "admin", "--password-stdin"), 2, "no password"),
        (("user", "demote", "admin"), 1, "only enabled admin"),
        (("user", "edit", "admin", "--email", "nope"), 2, "e-mail"),
    ],
)
def test_bad_input(run, home, args, code, words):
    r = run(*args, "--data-dir", home, input="short\n" if "alice" in args else "", check=False)
    assert r.code == code
    assert r.err.startswith("isidorus: error:") and r.err.count("\n") == 1
    assert words in r.err


def test_a_data_dir_without_a_host(run, tmp_path):
    r = run("user", "list", "--data-dir", tmp_path / "nothing", check=False)
    assert r.code == 2 and "isidorus init" in r.err
