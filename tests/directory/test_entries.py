"""The mapping of accounts to entries, and the plan that brings a directory in step: pure
functions, tested as tables."""

import pytest

from isidorus.directory.entries import (
    Change,
    DirectoryGroup,
    DirectoryUser,
    Entry,
    Layout,
    attribute_changes,
    container_entry,
    desired_entries,
    group_entry,
    normalize_dn,
    plan_sync,
    surname,
    user_entry,
)

BASE = "dc=example,dc=org"
LAYOUT = Layout(BASE)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"


def make_user(name="alice", **kw):
    values = {"email": f"{name}@example.org", "fullname": "", "password_hash": HASH}
    values.update(kw)
    return DirectoryUser(name=name, disabled=values.pop("disabled", False), **values)


@pytest.mark.parametrize(
    ("fullname", "name", "expected"),
    [
        ("Alice Liddell", "alice", "Liddell"),
        ("  Alice   P.  Hargreaves ", "alice", "Hargreaves"),
        ("Madonna", "m", "Madonna"),
        ("", "alice", "alice"),
        ("   ", "alice", "alice"),
    ],
)
def test_surname(fullname, name, expected):
    assert surname(fullname, name) == expected


def test_user_entry():
    e = user_entry(make_user(fullname="Alice Liddell"), LAYOUT)
    assert e.dn == f"uid=alice,ou=people,{BASE}"
    assert "inetOrgPerson" in e.object_classes and e.owned
    assert e.attributes == {
        "uid": ("alice",),
        "cn": ("Alice Liddell",),
        "sn": ("Liddell",),
        "displayName": ("Alice Liddell",),
        "mail": ("alice@example.org",),
        "userPassword": ("{ARGON2}" + HASH,),
    }


@pytest.mark.parametrize(
    ("user", "attribute", "expected"),
    [
        (make_user(), "cn", ("alice",)),  # no full name: the login name
        (make_user(), "displayName", ("alice",)),
        (make_user(disabled=True), "userPassword", ()),  # nobody binds as a disabled user
        (make_user(email="zoë@example.org"), "mail", ()),  # mail is ASCII only
        (make_user(fullname=" Alice "), "cn", ("Alice",)),
    ],
)
def test_user_entry_cases(user, attribute, expected):
    assert user_entry(user, LAYOUT).attributes[attribute] == expected


@pytest.mark.parametrize(
    ("members", "enabled", "expected"),
    [
        (("alice", "bob"), {"alice", "bob"}, ("alice", "bob")),
        (("alice", "bob"), {"alice"}, ("alice",)),  # disabled users are in no group
        ((), {"alice"}, ()),
        (("bob",), {"alice"}, ()),
    ],
)
def test_group_members(members, enabled, expected):
    e = group_entry(DirectoryGroup("family", "", members), enabled, LAYOUT)
    assert e.dn == f"cn=family,ou=groups,{BASE}"
    assert e.object_classes == ("top", "groupOfNames")
    # groupOfNames must have a member: the base DN, nobody's entry, stands in
    assert e.attributes["member"] == (tuple(LAYOUT.user_dn(m) for m in expected) or (BASE,))
    assert e.attributes["description"] == ()


def test_group_description():
    e = group_entry(DirectoryGroup("family", "the Liddells", ()), set(), LAYOUT)
    assert e.attributes["description"] == ("the Liddells",)


@pytest.mark.parametrize(
    ("dn", "classes", "attributes"),
    [
        (
            "dc=example,dc=org",
            ("top", "dcObject", "organization"),
            {"dc": ("example",), "o": ("example",)},
        ),
        ("o=Liddells", ("top", "organization"), {"o": ("Liddells",)}),
        ("ou=people,dc=x", ("top", "organizationalUnit"), {"ou": ("people",)}),
        ("cn=isidorus,dc=x", None, None),  # not a kind isidorus makes
    ],
)
def test_container_entry(dn, classes, attributes):
    e = container_entry(dn)
    if classes is None:
        assert e is None
    else:
        assert e == Entry(dn, classes, attributes, owned=False)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("uid=alice,ou=people,dc=example,dc=org", "UID=Alice, ou=People,DC=example, dc=org"),
        ("dc=example,dc=org", " dc = example , dc=org "),
    ],
)
def test_normalize_dn_ignores_case_and_spaces(a, b):
    assert normalize_dn(a) == normalize_dn(b)


def test_normalize_dn_tells_different_names_apart():
    assert normalize_dn("uid=alice,dc=org") != normalize_dn("uid=alice2,dc=org")
    assert normalize_dn("not a dn") == "not a dn"  # kept, to compare as text


def test_desired_entries_parents_first():
    users = [make_user("alice"), make_user("bob", disabled=True)]
    groups = [DirectoryGroup("family", "", ("alice", "bob"))]
    entries = desired_entries(users, groups, LAYOUT)
    assert [e.dn for e in entries] == [
        BASE,
        f"ou=people,{BASE}",
        f"ou=groups,{BASE}",
        f"uid=alice,ou=people,{BASE}",
        f"uid=bob,ou=people,{BASE}",
        f"cn=family,ou=groups,{BASE}",
    ]
    assert [e.owned for e in entries] == [False, False, False, True, True, True]
    assert entries[-1].attributes["member"] == (LAYOUT.user_dn("alice"),)


def test_desired_entries_under_a_base_isidorus_cannot_make():
    entries = desired_entries([], [], Layout("cn=isidorus,dc=org"))
    assert [e.dn for e in entries] == [
        "ou=people,cn=isidorus,dc=org",
        "ou=groups,cn=isidorus,dc=org",
    ]


# -- plans

ALICE = user_entry(make_user("alice", fullname="Alice Liddell"), LAYOUT)


def found(entry, **changed):
    """The entry as a server returns it: attribute names in its own case, absent
    attributes left out, some values changed."""
    attributes = {k.lower(): v for k, v in entry.attributes.items() if v}
    attributes.update({k.lower(): v for k, v in changed.items()})
    return Entry(entry.dn.upper(), tuple(c.lower() for c in entry.object_classes), attributes)


def test_attribute_changes():
    assert attribute_changes(ALICE, found(ALICE)) == {}
    assert attribute_changes(ALICE, found(ALICE, mail=("old@example.org",))) == {
        "mail": ("alice@example.org",)
    }
    # an attribute that must be absent is removed
    disabled = user_entry(make_user("alice", fullname="Alice Liddell", disabled=True), LAYOUT)
    assert attribute_changes(disabled, found(ALICE)) == {"userPassword": ()}
    # attributes isidorus does not write are left alone
    assert attribute_changes(ALICE, found(ALICE, telephoneNumber=("123",))) == {}


def test_member_dns_compare_as_dns():
    group = group_entry(DirectoryGroup("family", "", ("alice",)), {"alice"}, LAYOUT)
    same = found(group, member=(LAYOUT.user_dn("alice").upper().replace(",", ", "),))
    assert attribute_changes(group, same) == {}
    other = found(group, member=(LAYOUT.user_dn("bob"),))
    assert attribute_changes(group, other) == {"member": (LAYOUT.user_dn("alice"),)}


def test_plan_for_an_empty_directory_adds_everything():
    desired = desired_entries([make_user("alice")], [DirectoryGroup("g", "", ())], LAYOUT)
    plan = plan_sync(desired, [])
    assert [c.action for c in plan.changes] == ["add"] * 5
    assert [c.entry for c in plan.changes] == desired
    assert plan.stats() == {"added": 5, "updated": 0, "deleted": 0, "unchanged": 0}


def test_plan_for_a_directory_in_step_changes_nothing():
    desired = desired_entries([make_user("alice")], [DirectoryGroup("g", "", ("alice",))], LAYOUT)
    plan = plan_sync(desired, [found(e) for e in desired])
    assert plan.changes == ()
    # containers are not counted: they are not the accounts
    assert plan.stats() == {"added": 0, "updated": 0, "deleted": 0, "unchanged": 2}


def test_plan_leaves_existing_containers_alone():
    base = Entry(
        BASE, ("top", "dcObject", "organization"), {"dc": ("example",), "o": ("Liddell & Co",)}
    )
    desired = desired_entries([], [], LAYOUT)
    plan = plan_sync(desired, [base, *(found(e) for e in desired[1:])])
    assert plan.changes == ()


def test_plan_deletes_first_then_writes_in_order():
    bob = user_entry(make_user("bob"), LAYOUT)
    stray = Entry(f"uid=mallory,ou=people,{BASE}", ("inetOrgPerson",), {"uid": ("mallory",)})
    # an entry of the right name but another kind is replaced
    account = Entry(ALICE.dn, ("account",), {"uid": ("alice",)})
    plan = plan_sync([ALICE, bob], [account, found(bob, cn=("Robert",)), stray])
    assert plan.changes == (
        Change("delete", stray.dn),
        Change("replace", ALICE.dn, ALICE),
        Change("modify", bob.dn.upper(), attributes={"cn": ("bob",)}),
    )
    assert plan.stats() == {"added": 0, "updated": 2, "deleted": 1, "unchanged": 0}
    assert [c.describe() for c in plan.changes] == [
        f"delete {stray.dn}",
        f"replace {ALICE.dn}",
        f"modify {bob.dn.upper()} (cn)",
    ]
