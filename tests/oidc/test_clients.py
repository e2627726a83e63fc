"""Registering clients: the rules for redirect URIs, names and groups."""

import pytest

from isidorus.accounts import groups, users
from isidorus.oidc import clients
from isidorus.oidc.errors import ClientExists, InvalidInput, NoSuchClient
from isidorus.state.db import Database
from isidorus.state.migrations import migrate


@pytest.fixture
def conn(tmp_path):
    db = Database.open_file(str(tmp_path / "state.sqlite"))
    migrate(db)
    with db.write() as c:
        yield c
    db.close()


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("https://git.example.org/user/oauth2/isidorus/callback", True),
        ("https://example.org:8443/cb?x=1", True),
        ("http://localhost:8080/cb", True),
        ("http://127.0.0.1/cb", True),
        ("http://[::1]:9/cb", True),
        ("http://example.org/cb", False),  # clear text over a network
        ("https://example.org/cb#frag", False),
        ("https://example.org/cb#", False),
        ("/cb", False),
        ("https:///cb", False),
        ("javascript:alert(1)", False),
        ("https://user:pw@example.org/cb", False),
        ("https://exa mple.org/cb", False),
        ("https://a;b.example/cb", False),  # the origin goes into a CSP header
        ("https://example.org/" + "x" * 2000, False),
    ],
)
def test_redirect_uris(uri, ok):
    if ok:
        clients.check_redirect_uri(uri)
    else:
        with pytest.raises(InvalidInput):
            clients.check_redirect_uri(uri)


def test_clients_and_who_they_permit(conn):
    users.create_user(conn, "alice", "alice@example.org", "a long passphrase of hers")
    users.create_user(conn, "bob", "bob@example.org", "his long passphrase")
    users.create_user(conn, "root", "root@example.org", "the keeper's passphrase", is_admin=True)
    groups.create_group(conn, "family")
    groups.add_member(conn, "family", "alice")
    cb = "https://s.example.org/cb"
    open_, secret = clients.create_client(conn, "open", [cb, cb])
    family, _ = clients.create_client(conn, "fam", [cb], ["family", "family"])
    app, none = clients.create_client(conn, "app", [cb], public=True)
    assert open_.redirect_uris == (cb,) and family.allowed_groups == ("family",)
    assert secret and open_.check_secret(secret) and not open_.check_secret("")
    assert none is None and app.public and not app.check_secret("")
    alice, bob, root = (users.get_user(conn, n) for n in ("alice", "bob", "root"))
    assert open_.permits(bob) and family.permits(alice) and family.permits(root)
    assert not family.permits(bob)
    users.set_disabled(conn, "alice", True)
    assert not family.permits(users.get_user(conn, "alice"))
    assert clients.find_client(conn, open_.client_id) == open_
    assert clients.find_client(conn, "nope") is None
    with pytest.raises(ClientExists):
        clients.create_client(conn, "open", [cb])
    with pytest.raises(InvalidInput, match="no group 'friends'"):
        clients.create_client(conn, "x", [cb], ["friends"])
    with pytest.raises(InvalidInput, match="at least one redirect URI"):
        clients.create_client(conn, "x", [])
    with pytest.raises(InvalidInput, match="must use PKCE"):
        clients.create_client(conn, "x", [cb], public=True, pkce_required=False)
    # a removed group opens the client to nobody but admins, never to everyone
    groups.delete_group(conn, "family")
    fam = clients.get_client(conn, "fam")
    assert fam.allowed_groups == ("family",) and not fam.permits(users.get_user(conn, "bob"))
    clients.delete_client(conn, "fam")
    with pytest.raises(NoSuchClient):
        clients.get_client(conn, "fam")
