"""The LDAP directory through a real slapd that the tests start: members bind with their
own isidorus password, every change to the accounts follows at once, and
`isidorus directory sync` repairs whatever happened behind isidorus's back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update
from starlette.testclient import TestClient

from isidorus.ops import accounts as ops
from isidorus.state.schema import users
from isidorus.web.app import create_app
from tests.integration.conftest import assert_one_line_error
from tests.integration.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    READER_DN,
    READER_PASSWORD,
    Slapd,
    group_dn,
    person_dn,
    running_slapd,
)

pytestmark = pytest.mark.slow  # a slapd, and Argon2 at every bind

ALICE = "winter apples keep well"
BOB = "summer pears ripen fast"


class Host:
    """An isidorus host whose config has an [ldap] table for the test's slapd."""

    def __init__(self, run: Any, home: Path) -> None:
        self.run, self.home = run, home

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.run(*args, "--data-dir", self.home, **kw)

    def add_user(self, name: str, password: str, *extra: str) -> None:
        self("user", "add", name, "--email", f"{name}@example.org", *extra,
             "--password-stdin", input=password + "\n")  # fmt: skip


def configure_ldap(home: Path, slapd: Slapd, **override: str) -> None:
    (home / "ldap.secret").write_text(ADMIN_PASSWORD + "\n")
    table = {
        "url": slapd.url,
        "base_dn": BASE_DN,
        "bind_dn": ADMIN_DN,
        "bind_password_file": "ldap.secret",
        **override,
    }
    with open(home / "isidorus.toml", "a") as f:
        f.write("\n[ldap]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items()))


@pytest.fixture
def slapd(tmp_path):
    with running_slapd(tmp_path / "slapd") as server:
        yield server


def init_host(home: Path) -> None:
    ops.init_host(str(home), domain="example.org", admin="admin", email="admin@example.org",
                  password="the keeper's passphrase")  # fmt: skip


@pytest.fixture
def host(run, slapd, tmp_path) -> Host:
    """A host with the admin and alice, in the directory (set up in this process: the
    tests run the commands)."""
    home = tmp_path / "host"
    init_host(home)
    configure_ldap(home, slapd)
    db = ops.open_state(str(home))
    try:
        ops.add_user(db, "test", "alice", "alice@example.org", ALICE, fullname="Alice Liddell")
    finally:
        db.close()
    return Host(run, home)


def test_a_member_binds_with_their_own_password(host, slapd):
    assert slapd.can_bind("alice", ALICE)
    assert not slapd.can_bind("alice", "not her passphrase")
    who = slapd.whoami("alice", ALICE)
    assert who.returncode == 0 and who.stdout.strip() == f"dn:{person_dn('alice')}", who
    refused = slapd.whoami("alice", "not her passphrase")
    assert refused.returncode == 49 and "Invalid credentials" in refused.stderr
    entry = slapd.entry(person_dn("alice"))
    assert entry is not None
    assert entry["cn"] == entry["displayname"] == ["Alice Liddell"]
    assert entry["sn"] == ["Liddell"] and entry["mail"] == ["alice@example.org"]
    assert "inetOrgPerson" in entry["objectclass"]
    # the hash isidorus keeps, which slapd's argon2 module checks: never the password
    (stored,) = entry["userpassword"]
    assert stored.startswith("{ARGON2}$argon2id$v=19$") and ALICE not in stored


def test_a_new_password_binds_and_the_old_one_no_longer(host, slapd):
    host("user", "passwd", "alice", "--password-stdin", input="a brand new passphrase\n")
    assert slapd.can_bind("alice", "a brand new passphrase")
    assert not slapd.can_bind("alice", ALICE)


def test_disabled_users_cannot_bind_until_enabled(host, slapd):
    host("group", "add", "family")
    host("group", "add-member", "family", "alice")
    host("user", "disable", "alice")
    assert not slapd.can_bind("alice", ALICE)
    entry = slapd.entry(person_dn("alice"))
    assert entry is not None and "userpassword" not in entry  # the entry (and data) stays
    assert slapd.entry(group_dn("family"))["member"] == [BASE_DN]  # out of every group
    host("user", "enable", "alice")
    assert slapd.can_bind("alice", ALICE)
    assert slapd.entry(group_dn("family"))["member"] == [person_dn("alice")]


def test_groups_and_memberships_follow(host, slapd):
    host.add_user("bob", BOB)
    host("group", "add", "family", "--description", "the Liddells")
    family = slapd.entry(group_dn("family"))
    assert family is not None and "groupOfNames" in family["objectclass"]
    assert family["description"] == ["the Liddells"]
    assert family["member"] == [BASE_DN]  # groupOfNames needs one: nobody's entry stands in
    host("group", "add-member", "family", "alice")
    host("group", "add-member", "family", "bob")
    assert slapd.entry(group_dn("family"))["member"] == sorted(
        [person_dn("alice"), person_dn("bob")]
    )
    host("group", "remove-member", "family", "alice")
    assert slapd.entry(group_dn("family"))["member"] == [person_dn("bob")]
    host("user", "remove", "bob")
    assert slapd.entry(group_dn("family"))["member"] == [BASE_DN]
    host("group", "remove", "family")
    assert slapd.entry(group_dn("family")) is None


def test_a_removed_user_has_no_entry_and_cannot_bind(host, slapd):
    host("user", "remove", "alice")
    assert not slapd.can_bind("alice", ALICE)
    assert slapd.entry(person_dn("alice")) is None
    assert person_dn("alice") not in slapd.children(f"ou=people,{BASE_DN}")


def test_services_see_people_and_groups_but_no_password(host, slapd):
    """A service binds as its own DN, finds members and their groups, and checks a
    password only by binding as the member."""
    with slapd.connection() as admin:
        admin.add(READER_DN, ["organizationalRole", "simpleSecurityObject"],
                  {"cn": "services", "userPassword": READER_PASSWORD})  # fmt: skip
    host("group", "add", "family")
    host("group", "add-member", "family", "alice")
    with slapd.connection(READER_DN, READER_PASSWORD) as service:
        service.search(BASE_DN, "(&(objectClass=inetOrgPerson)(uid=alice))",
                       attributes=["uid", "mail", "userPassword"])  # fmt: skip
        (found,) = service.entries
        assert found.mail.value == "alice@example.org"
        assert found.entry_attributes_as_dict["userPassword"] == []  # asked, not given
        service.search(BASE_DN, f"(&(objectClass=groupOfNames)(member={person_dn('alice')}))",
                       attributes=["cn"])  # fmt: skip
        assert [e.cn.value for e in service.entries] == ["family"]


def test_sync_repairs_a_directory_changed_behind_isidoruss_back(host, slapd):
    host.add_user("bob", BOB)
    with slapd.connection() as admin:
        admin.delete(person_dn("alice"))
        admin.add(person_dn("mallory"), ["inetOrgPerson"],
                  {"cn": "m", "sn": "m", "userPassword": "mallory's way in"})  # fmt: skip
        admin.modify(person_dn("bob"), {"mail": [("MODIFY_REPLACE", ["bob@elsewhere.example"])]})
        admin.add(group_dn("intruders"), ["groupOfNames"], {"member": person_dn("mallory")})
    assert slapd.can_bind("mallory", "mallory's way in")
    planned = json.loads(host("directory", "sync", "--dry-run", "--json").out)
    assert (planned["added"], planned["updated"], planned["deleted"]) == (1, 1, 2)
    assert slapd.entry(person_dn("alice")) is None  # a dry run changes nothing
    report = json.loads(host("directory", "sync", "--json").out)
    assert (report["added"], report["updated"], report["deleted"]) == (1, 1, 2), report
    assert report["unchanged"] == 1 and report["problems"] == []  # the admin
    assert f"add {person_dn('alice')}" in report["changes"]
    assert slapd.can_bind("alice", ALICE)
    assert not slapd.can_bind("mallory", "mallory's way in")
    assert slapd.entry(group_dn("intruders")) is None
    assert slapd.entry(person_dn("bob"))["mail"] == ["bob@example.org"]
    again = host("directory", "sync")
    assert again.out.strip().endswith("0 added, 0 updated, 0 deleted, 3 unchanged")


def test_an_outage_is_told_and_sync_catches_up(host, slapd):
    slapd.stop()
    r = host("user", "passwd", "alice", "--password-stdin", input="changed while it was down\n")
    assert "password of alice changed" in r.out  # the change stands
    (warning,) = r.err.splitlines()
    assert warning.startswith(
        "warning: the change is saved, but not in the LDAP directory: cannot reach"
    )
    assert "isidorus directory sync" in warning
    down = host("directory", "sync", check=False)
    assert_one_line_error(down, "cannot reach the LDAP directory", slapd.url)
    slapd.start()
    assert slapd.can_bind("alice", ALICE)  # still the old one, until the sync
    report = json.loads(host("directory", "sync", "--json").out)
    assert report["updated"] == 1 and report["changes"] == [
        f"modify {person_dn('alice')} (userPassword)"
    ]
    assert slapd.can_bind("alice", "changed while it was down")
    assert not slapd.can_bind("alice", ALICE)


def test_an_entry_the_directory_refuses_is_named_and_the_rest_written(host, slapd):
    # something isidorus does not own, with a child, right below ou=people
    extra = f"ou=extra,ou=people,{BASE_DN}"
    with slapd.connection() as admin:
        admin.add(extra, ["organizationalUnit"], {"ou": "extra"})
        admin.add(f"cn=child,{extra}", ["organizationalRole"], {"cn": "child"})
    r = host("user", "passwd", "alice", "--password-stdin", input="a brand new passphrase\n")
    (warning,) = r.err.splitlines()
    assert warning.startswith(
        f"warning: the LDAP directory refused an entry: cannot delete {extra}"
    )
    assert slapd.can_bind("alice", "a brand new passphrase")  # the rest was written
    r = host("directory", "sync", "--json", check=1)
    assert json.loads(r.out)["problems"] == [
        f"cannot delete {extra}: notAllowedOnNonLeaf: subordinate objects must be deleted first"
    ]
    assert_one_line_error(r, "the directory refused a change", f"cannot delete {extra}")


@pytest.mark.parametrize(
    ("base_dn", "words"),
    [
        ("cn=isidorus,dc=example,dc=org", ["the base DN cn=isidorus", "not in the directory"]),
        ("dc=example,dc=com", ["cannot add dc=example,dc=com", "inside the suffix"]),
    ],
)
def test_a_base_dn_isidorus_cannot_use(run, slapd, tmp_path, base_dn, words):
    home = tmp_path / "host"
    init_host(home)
    configure_ldap(home, slapd, base_dn=base_dn)
    assert_one_line_error(run("directory", "sync", "--data-dir", home, check=1), *words)


def test_a_wrong_bind_password_is_one_clear_line(host, slapd):
    (host.home / "ldap.secret").write_text("not the directory's secret\n")
    r = host("directory", "sync", check=False)
    assert_one_line_error(r, "refused isidorus's bind", "bind_password_file")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"url": "http://127.0.0.1/"}, ["url", "ldap://HOST"]),
        ({"base_dn": "example.org"}, ["base_dn", "not a DN"]),
        ({"bind_password_file": "nowhere.secret"}, ["bind_password_file", "nowhere.secret"]),
    ],
)
def test_a_wrong_ldap_table_is_one_clear_line(run, slapd, tmp_path, override, words):
    home = tmp_path / "host"
    init_host(home)
    configure_ldap(home, slapd, **override)
    r = run("user", "list", "--data-dir", home, check=2)
    assert_one_line_error(r, "[ldap] in", *words)


def test_sync_without_an_ldap_table(run, tmp_path):
    home = tmp_path / "host"
    init_host(home)
    r = run("directory", "sync", "--data-dir", home, check=2)
    assert_one_line_error(r, "no [ldap] table", "docs/directory.md")


# -- the portal, and logins


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def test_a_members_changes_in_the_portal_follow(host, slapd):
    new = "through the looking glass"
    with TestClient(create_app(str(host.home)), base_url="http://example.org") as client:
        form = {"name": "alice", "password": ALICE, "next": "/portal"}
        r = client.post("/login", data={**form, "csrf": csrf_of(client.get("/login").text)})
        assert r.status_code == 200 and r.url.path == "/portal"
        csrf = csrf_of(r.text)
        profile = {"fullname": "Alice P. Hargreaves", "email": "a@example.net", "csrf": csrf}
        assert client.post("/portal/profile", data=profile).status_code == 200
        password = {"current": ALICE, "new": new, "repeat": new, "csrf": csrf}
        assert client.post("/portal/password", data=password).status_code == 200
    entry = slapd.entry(person_dn("alice"))
    assert entry is not None
    assert entry["cn"] == entry["displayname"] == ["Alice P. Hargreaves"]
    assert entry["sn"] == ["Hargreaves"] and entry["mail"] == ["a@example.net"]
    assert slapd.can_bind("alice", new)
    assert not slapd.can_bind("alice", ALICE)


@pytest.fixture
def state(host):
    db = ops.open_state(str(host.home))
    yield db
    db.close()


def test_a_hash_renewed_at_login_is_carried_to_the_directory(state, slapd):
    cheap = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(ALICE)
    with state.write() as conn:
        conn.execute(update(users).where(users.c.name == "alice").values(password_hash=cheap))
    assert slapd.entry(person_dn("alice"))["userpassword"] == ["{ARGON2}" + cheap]
    ops.login(state, "alice", ALICE)  # renews the hash with today's costs
    with state.write() as conn:
        renewed = conn.execute(select(users.c.password_hash).where(users.c.name == "alice"))
        renewed = renewed.scalar_one()
    assert renewed != cheap and renewed.startswith("$argon2id$v=19$m=65536,t=3")
    assert slapd.entry(person_dn("alice"))["userpassword"] == ["{ARGON2}" + renewed]
    assert slapd.can_bind("alice", ALICE)
