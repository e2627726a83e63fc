import pytest
from sqlalchemy import select

from isidorus.accounts import groups, users
from isidorus.accounts.errors import AlreadyExists, InvalidInput, LoginFailed, NoSuchAccount
from isidorus.ops import accounts as ops
from isidorus.state.schema import audit_log

PW = "correct horse battery"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("alice", True),
        ("a", True),
        ("bob.smith", True),
        ("x_1-2", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("Alice", False),
        ("1alice", False),
        ("", False),
        ("al ice", False),
        ("al/ice", False),
        ("élise", False),
        ("-a", False),
    ],
)
def test_user_names(conn, name, ok):
    if ok:
        assert users.create_user(conn, name, "a@example.org", PW).name == name
    else:
        with pytest.raises(InvalidInput, match="not a valid user name"):
            users.create_user(conn, name, "a@example.org", PW)


@pytest.mark.parametrize("email", ["nobody", "a@", "a b@c.org", "@c.org", "a@@c.org", "a@.org"])
def test_bad_emails_are_refused(conn, email):
    with pytest.raises(InvalidInput, match="not an e-mail"):
        users.create_user(conn, "alice", email, PW)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short", "too short"),
        ("alice-is-my-name", "login name"),
        ("aaaaaaaaaaaa", "too few"),
        ("x" * 1025, "longer than"),
    ],
)
def test_password_rules(conn, password, why):
    with pytest.raises(InvalidInput, match=why):
        users.create_user(conn, "alice", "alice@example.org", password)


def test_create_read_list_delete(conn):
    u = users.create_user(conn, "alice", "alice@example.org", PW, fullname="Alice A.")
    assert (u.name, u.email, u.fullname, u.is_admin, u.disabled) == (
        "alice",
        "alice@example.org",
        "Alice A.",
        False,
        False,
    )
    users.create_user(conn, "bob", "bob@example.org", PW, is_admin=True)
    assert [x.name for x in users.list_users(conn)] == ["alice", "bob"]
    assert users.get_user(conn, "bob").is_admin
    with pytest.raises(AlreadyExists):
        users.create_user(conn, "alice", "other@example.org", PW)
    users.delete_user(conn, "alice")
    with pytest.raises(NoSuchAccount):
        users.get_user(conn, "alice")
    with pytest.raises(NoSuchAccount):
        users.delete_user(conn, "alice")


def test_the_password_is_stored_hashed(conn):
    users.create_user(conn, "alice", "alice@example.org", PW)
    row = users.find_row(conn, "alice")
    assert PW not in row.password_hash and row.password_hash.startswith("$argon2id$")


def test_login(conn):
    users.create_user(conn, "alice", "alice@example.org", PW)
    assert users.authenticate(conn, "alice", PW).name == "alice"
    messages = set()
    for name, pw in (("alice", "wrong password!"), ("nobody", PW), ("", "")):
        with pytest.raises(LoginFailed) as e:
            users.authenticate(conn, name, pw)
        messages.add(str(e.value))
    users.set_disabled(conn, "alice", True)
    with pytest.raises(LoginFailed) as e:
        users.authenticate(conn, "alice", PW)
    messages.add(str(e.value))
    assert len(messages) == 1  # nothing tells which part was wrong
    users.set_disabled(conn, "alice", False)
    users.set_password(conn, "alice", "a brand new passphrase")
    assert users.authenticate(conn, "alice", "a brand new passphrase")
    with pytest.raises(LoginFailed):
        users.authenticate(conn, "alice", PW)


def test_profile_changes(conn):
    users.create_user(conn, "alice", "alice@example.org", PW)
    u = users.update_profile(conn, "alice", email="a@example.net", fullname="Alice")
    assert (u.email, u.fullname) == ("a@example.net", "Alice")
    with pytest.raises(InvalidInput):
        users.update_profile(conn, "alice", email="not an address")


def test_groups_and_members(conn):
    users.create_user(conn, "alice", "alice@example.org", PW)
    users.create_user(conn, "bob", "bob@example.org", PW)
    groups.create_group(conn, "family", "the family")
    with pytest.raises(AlreadyExists):
        groups.create_group(conn, "family")
    with pytest.raises(InvalidInput):
        groups.create_group(conn, "Not Valid")
    groups.add_member(conn, "family", "alice")
    groups.add_member(conn, "family", "alice")  # twice is once
    assert groups.add_member(conn, "family", "bob").members == ("alice", "bob")
    assert users.get_user(conn, "alice").groups == ("family",)
    users.delete_user(conn, "bob")  # leaves the group with them
    assert groups.get_group(conn, "family").members == ("alice",)
    groups.remove_member(conn, "family", "alice")
    assert groups.get_group(conn, "family").members == ()
    with pytest.raises(NoSuchAccount):
        groups.add_member(conn, "family", "nobody")
    with pytest.raises(NoSuchAccount):
        groups.add_member(conn, "nogroup", "alice")
    groups.delete_group(conn, "family")
    assert groups.list_groups(conn) == []
    assert users.get_user(conn, "alice").groups == ()


def test_every_change_is_audited(db):
    ops.add_user(db, "cli:root", "alice", "alice@example.org", PW)
    ops.add_group(db, "cli:root", "family")
    ops.add_member(db, "admin", "family", "alice")
    ops.set_disabled(db, "admin", "alice", True)
    ops.remove_user(db, "admin", "alice")
    with db.write() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.target).order_by(
                audit_log.c.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("cli:root", "user.add", "alice"),
        ("cli:root", "group.add", "family"),
        ("admin", "group.add-member", "family"),
        ("admin", "user.disable", "alice"),
        ("admin", "user.remove", "alice"),
    ]


def test_a_failed_change_leaves_no_audit_line(db):
    with pytest.raises(InvalidInput):
        ops.add_user(db, "cli:root", "alice", "bad", PW)
    with db.write() as conn:
        assert conn.execute(select(audit_log)).all() == []


def test_generated_passwords_follow_the_rules():
    seen = {ops.new_password() for _ in range(50)}
    assert len(seen) == 50
    for pw in seen:
        from isidorus.accounts.passwords import check_rules

        check_rules(pw, name="admin", email="admin@example.org")
