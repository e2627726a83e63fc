"""`isidorus oidc client …` through the real command line."""

import json

import pytest

from isidorus.ops import accounts as accounts_ops
from isidorus.ops import oidc as ops
from tests.integration.conftest import assert_one_line_error

CB = "https://git.example.org/user/oauth2/isidorus/callback"


@pytest.fixture
def home(run, tmp_path):
    d = tmp_path / "host"
    run("init", "--data-dir", d, "--domain", "example.org")
    run("group", "add", "family", "--data-dir", d)
    return d


def test_add_list_remove(run, home):
    r = run(
        "oidc",
        "client",
        "add",
        "gitea",
        "--redirect-uri",
        CB,
        "--allow",
        "family",
        "--data-dir",
        home,
    )
    client_id = r.out.split("client id: ")[1].split()[0]
    secret = r.out.split("client secret: ")[1].split()[0]
    assert "shown once" in r.out and len(secret) >= 43
    r = run(
        "oidc",
        "client",
        "add",
        "notes",
        "--public",
        "--json",
        "--data-dir",
        home,
        "--redirect-uri",
        "http://localhost:8000/cb",
        "--redirect-uri",
        "https://n.example.org/cb",
    )
    notes = json.loads(r.out)
    assert notes["public"] and notes["client_secret"] is None
    assert notes["redirect_uris"] == ["http://localhost:8000/cb", "https://n.example.org/cb"]

    listed = json.loads(run("oidc", "client", "list", "--json", "--data-dir", home).out)
    assert [(c["name"], c["client_id"], c["public"], c["allowed_groups"]) for c in listed] == [
        ("gitea", client_id, False, ["family"]),
        ("notes", notes["client_id"], True, []),
    ]
    assert secret not in json.dumps(listed)  # the secret is not kept, only its hash
    text = run("oidc", "client", "list", "--data-dir", home).out
    assert "gitea" in text and "family" in text and "every member" in text

    # the secret shown is the one the provider accepts
    db = accounts_ops.open_state(str(home))
    try:
        gitea = ops.get_client(db, "gitea")
        assert gitea.check_secret(secret) and not gitea.check_secret(secret + "x")
    finally:
        db.close()

    run("oidc", "client", "remove", "gitea", "--data-dir", home)
    listed = json.loads(run("oidc", "client", "list", "--json", "--data-dir", home).out)
    assert [c["name"] for c in listed] == ["notes"]


BAD_INPUT = [
    (("add", "x", "--redirect-uri", "http://x.example.org/cb"), 2, "must use https"),
    (("add", "x", "--redirect-uri", "https://x.example.org/cb#top"), 2, "fragment"),
    (("add", "x", "--redirect-uri", "/cb"), 2, "not a redirect URI"),
    (("add", "x", "--redirect-uri", CB, "--allow", "nobody"), 2, "no group 'nobody'"),
    (("add", "X!", "--redirect-uri", CB), 2, "not a valid client name"),
    (("add", "x"), 2, "--redirect-uri"),
    (("add", "taken", "--redirect-uri", CB), 1, "exists already"),
    (("remove", "nothing"), 1, "no client 'nothing'"),
    (("add", "x", "--redirect-uri", CB, "--public", "--no-pkce"), 2, "must use PKCE"),
]


def test_bad_input(run, home):
    # one host for every case: each command is a process of its own anyway
    run("oidc", "client", "add", "taken", "--redirect-uri", CB, "--data-dir", home)
    for args, code, words in BAD_INPUT:
        r = run("oidc", "client", *args, "--data-dir", home, check=code)
        assert_one_line_error(r, words)
    listed = json.loads(run("oidc", "client", "list", "--json", "--data-dir", home).out)
    assert [c["name"] for c in listed] == ["taken"]  # nothing else was added
