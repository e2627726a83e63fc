"""`isidorus token …` through the real command line, and its tokens at the REST API."""

import json

import pytest
from starlette.testclient import TestClient

from isidorus.web.app import create_app

from .conftest import assert_one_line_error


@pytest.fixture
def home(run, tmp_path):
    d = tmp_path / "host"
    run("init", "--data-dir", d, "--password-stdin", input="the host keeper's phrase\n")
    run(
        "user",
        "add",
        "bob",
        "--email",
        "bob@example.org",
        "--password-stdin",
        "--data-dir",
        d,
        input="his own long passphrase\n",
    )
    return d


def me(home, secret, path="/api/v1/me"):
    with TestClient(create_app(str(home))) as client:
        return client.get(path, headers={"Authorization": f"Bearer {secret}"})


def test_tokens_made_listed_and_removed(run, home):
    r = run("token", "add", "deploy", "--user", "admin", "--data-dir", home)
    assert "added token deploy for admin" in r.out and "shown once" in r.out
    secret = next(w for w in r.out.split() if w.startswith("isi_"))
    made = json.loads(
        run(
            "token", "add", "backup", "--user", "admin", "--expires", "30", "--json",
            "--data-dir", home,
        ).out
    )  # fmt: skip
    assert made["token"].startswith("isi_") and made["expires_at"] and not made["expired"]

    r = me(home, secret)
    assert r.status_code == 200 and r.json()["token"]["name"] == "deploy"
    listed = json.loads(run("token", "list", "--json", "--data-dir", home).out)
    assert [(t["name"], t["user"]) for t in listed] == [("backup", "admin"), ("deploy", "admin")]
    assert listed[1]["last_used_at"] and listed[0]["last_used_at"] is None
    assert all("token" not in t for t in listed)
    text = run("token", "list", "--data-dir", home).out
    assert "never used" in text and "no expiry" in text and secret not in text

    assert "removed token deploy" in run("token", "remove", "deploy", "--data-dir", home).out
    assert me(home, secret).status_code == 401
    assert me(home, made["token"]).status_code == 200
    entries = me(home, made["token"], "/api/v1/audit?limit=3").json()["entries"]
    assert [(e["action"], e["target"], e["detail"]) for e in entries] == [
        ("token.remove", "deploy", "admin"),
        ("token.add", "backup", "admin"),
        ("token.add", "deploy", "admin"),
    ]
    assert all(e["actor"].startswith("cli:") for e in entries)


def test_bad_token_commands(run, home):
    r = run("token", "add", "x", "--user", "bob", "--data-dir", home, check=2)
    assert_one_line_error(r, "bob is not an admin")
    r = run("token", "add", "x", "--user", "zed", "--data-dir", home, check=1)
    assert_one_line_error(r, "no user 'zed'")
    r = run("token", "add", "X y", "--user", "admin", "--data-dir", home, check=2)
    assert_one_line_error(r, "not a valid token name")
    r = run("token", "add", "x", "--user", "admin", "--expires", "0", "--data-dir", home, check=2)
    assert_one_line_error(r, "--expires")
    r = run("token", "add", "x", "--data-dir", home, check=2)
    assert_one_line_error(r, "--user")
    run("token", "add", "x", "--user", "admin", "--data-dir", home)
    r = run("token", "add", "x", "--user", "admin", "--data-dir", home, check=1)
    assert_one_line_error(r, "exists already")
    r = run("token", "remove", "nope", "--data-dir", home, check=1)
    assert_one_line_error(r, "no token 'nope'", "isidorus token list")


def test_removing_a_user_removes_their_tokens(run, home):
    run(
        "user", "add", "carol", "--email", "carol@example.org", "--admin", "--data-dir", home
    )  # fmt: skip
    secret = json.loads(
        run("token", "add", "hers", "--user", "carol", "--json", "--data-dir", home).out
    )["token"]
    assert me(home, secret).status_code == 200
    run("user", "disable", "carol", "--data-dir", home)
    assert me(home, secret).status_code == 401
    run("user", "enable", "carol", "--data-dir", home)
    assert me(home, secret).status_code == 200
    run("user", "remove", "carol", "--data-dir", home)
    assert me(home, secret).status_code == 401
    assert json.loads(run("token", "list", "--json", "--data-dir", home).out) == []
