from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from isidorus.accounts import tokens, users
from isidorus.accounts.errors import AlreadyExists, InvalidInput, NoSuchAccount
from isidorus.state.schema import api_tokens
from isidorus.state.schema import users as users_table

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def admin(conn):
    return users.create_user(
        conn, "root", "root@example.org", "a keeper's passphrase", is_admin=True
    )


def test_a_token_is_random_and_only_its_hash_is_kept(conn, admin):
    t1, s1 = tokens.create_token(conn, "one", "root", now=NOW)
    _t2, s2 = tokens.create_token(conn, "two", "root", now=NOW)
    assert s1 != s2 and s1.startswith("isi_") and len(s1) == 4 + 43
    assert (t1.name, t1.user, t1.created_at, t1.last_used_at, t1.expires_at) == (
        "one",
        "root",
        NOW,
        None,
        None,
    )
    rows = [tuple(map(str, r)) for r in conn.execute(select(api_tokens))]
    assert not any(s1 in v or s1[4:] in v for r in rows for v in r)


def test_find_token_records_the_use(conn, admin):
    _t, secret = tokens.create_token(conn, "ci", "root", now=NOW)
    later = NOW + timedelta(hours=1)
    found = tokens.find_token(conn, secret, now=later)
    assert found is not None and found.user.name == "root" and found.token.last_used_at == later
    assert tokens.get_token(conn, "ci").last_used_at == later


@pytest.mark.parametrize(
    ("offset", "live"),
    [(timedelta(days=7) - timedelta(seconds=1), True), (timedelta(days=7), False)],
)
def test_a_token_expires(conn, admin, offset, live):
    token, secret = tokens.create_token(conn, "week", "root", expires_days=7, now=NOW)
    assert token.expires_at == NOW + timedelta(days=7)
    assert (tokens.find_token(conn, secret, now=NOW + offset) is not None) is live
    assert token.expired(NOW + offset) is not live


@pytest.mark.parametrize("secret", ["", "isi_", "isi_x", "isi_" + "a" * 200, "abc", "isi_é"])
def test_junk_finds_nothing(conn, admin, secret):
    tokens.create_token(conn, "ci", "root", now=NOW)
    assert tokens.find_token(conn, secret, now=NOW) is None


def test_a_disabled_users_tokens_are_refused_until_enabled(conn, admin):
    _t, secret = tokens.create_token(conn, "ci", "root", now=NOW)
    users.set_disabled(conn, "root", True)
    assert tokens.find_token(conn, secret, now=NOW) is None
    users.set_disabled(conn, "root", False)
    assert tokens.find_token(conn, secret, now=NOW) is not None


def test_a_demoted_user_is_found_and_told_apart(conn, admin):
    _t, secret = tokens.create_token(conn, "ci", "root", now=NOW)
    conn.execute(update(users_table).values(is_admin=False))
    found = tokens.find_token(conn, secret, now=NOW)
    assert found is not None and not found.user.is_admin  # ops answers 403, not 401


def test_rules(conn, admin):
    users.create_user(conn, "bob", "bob@example.org", "his own long passphrase")
    with pytest.raises(InvalidInput, match="not a valid token name"):
        tokens.create_token(conn, "No Way", "root")
    with pytest.raises(InvalidInput, match="1 to 3650 days"):
        tokens.create_token(conn, "ci", "root", expires_days=0)
    with pytest.raises(InvalidInput, match="not an admin"):
        tokens.create_token(conn, "ci", "bob")
    with pytest.raises(NoSuchAccount):
        tokens.create_token(conn, "ci", "zed")
    tokens.create_token(conn, "ci", "root")
    with pytest.raises(AlreadyExists):
        tokens.create_token(conn, "ci", "root")
    users.set_disabled(conn, "root", True)
    with pytest.raises(InvalidInput, match="disabled"):
        tokens.create_token(conn, "other", "root")


def test_list_and_delete(conn, admin):
    for name in ("b", "a"):
        tokens.create_token(conn, name, "root", now=NOW)
    assert [t.name for t in tokens.list_tokens(conn)] == ["a", "b"]
    tokens.delete_token(conn, "a")
    with pytest.raises(NoSuchAccount, match="no token 'a'"):
        tokens.delete_token(conn, "a")
    tokens.delete_user_tokens(conn, "root")
    assert tokens.list_tokens(conn) == []
