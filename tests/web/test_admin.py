"""The admin area through the test client: every page and form, refused to members."""

import re

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from isidorus.accounts.errors import Refused
from isidorus.ops import accounts as ops
from isidorus.state.schema import audit_log
from tests.web.test_app import PW, client, csrf_of, host, login  # noqa: F401  (fixtures)

ADMIN_PW = "the host keeper's passphrase"

PAGES = [
    "/admin",
    "/admin/users",
    "/admin/users/bob",
    "/admin/groups",
    "/admin/groups/family",
    "/admin/audit",
]
FORMS = [
    "/admin/users",
    "/admin/users/bob/profile",
    "/admin/users/bob/password",
    "/admin/users/bob/state",
    "/admin/users/bob/role",
    "/admin/users/bob/groups",
    "/admin/users/bob/remove",
    "/admin/users/bob/totp-off",
    "/admin/groups",
    "/admin/groups/family/members",
    "/admin/groups/family/members/alice/remove",
    "/admin/groups/family/remove",
]


@pytest.fixture
def admin(client):  # noqa: F811
    login(client, "admin", ADMIN_PW)
    client.csrf = csrf_of(client.get("/admin").text)
    return client


def post(c, url, **data):
    return c.post(url, data={"csrf": c.csrf, **data}, follow_redirects=False)


def test_every_admin_page_and_form_is_refused_to_members(host, client):  # noqa: F811
    for url in PAGES:
        assert client.get(url, follow_redirects=False).status_code == 303  # to the login
    login(client)  # alice is a member
    csrf = csrf_of(client.get("/portal").text)
    for url in PAGES:
        assert client.get(url).status_code == 403, url
    for url in FORMS:
        r = client.post(url, data={"csrf": csrf, "confirm": "bob", "name": "x"})
        assert r.status_code == 403, url
    db = ops.open_state(host)
    assert [g.name for g in ops.list_groups(db)] == ["family"]  # nothing changed
    assert [u.name for u in ops.list_users(db)] == ["admin", "alice", "bob"]


def test_forms_need_the_csrf_token(admin):
    for url in FORMS:
        assert admin.post(url, data={"name": "x", "confirm": "bob"}).status_code == 403, url
    assert "bob" in admin.get("/admin/users").text


def test_add_a_user_with_a_password(admin):
    r = post(
        admin,
        "/admin/users",
        name="carol",
        email="carol@example.org",
        fullname="Carol",
        password="a song in the garden",
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/users/carol?done=added"
    page = admin.get("/admin/users/carol")
    assert "carol@example.org" in page.text and "Member, active" in page.text
    with TestClient(admin.app, base_url="http://localhost") as carol:
        assert login(carol, "carol", "a song in the garden").status_code == 303


def test_add_a_user_with_a_generated_password_shown_once(admin):
    r = post(admin, "/admin/users", name="dan", email="dan@example.org", admin="on")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    password = re.search(r"<code>([a-z0-9-]{23})</code>", r.text).group(1)
    assert "dan" not in r.headers.get("location", "")
    with TestClient(admin.app, base_url="http://localhost") as dan:
        assert login(dan, "dan", password).status_code == 303
        assert dan.get("/admin").status_code == 200  # made an admin


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"name": "Bad Name!", "email": "x@example.org"}, 400, "user name"),
        ({"name": "erin", "email": "not an address"}, 400, "e-mail"),
        ({"name": "erin", "email": "e@example.org", "password": "short"}, 400, "password"),
        ({"name": "bob", "email": "b@example.org"}, 409, "bob"),
    ],
)
def test_a_refused_user_shows_the_reason(admin, form, status, message):
    r = post(admin, "/admin/users", **form)
    assert r.status_code == status
    error = re.search(r'<p class="error" role="alert">([^<]+)</p>', r.text).group(1)
    assert message in error
    assert "Add a user" in r.text  # the same page again, to correct the input


def test_edit_a_profile(admin):
    r = post(admin, "/admin/users/bob/profile", fullname="Bob <script>", email="bob@example.net")
    assert r.status_code == 303
    page = admin.get("/admin/users/bob").text
    assert "bob@example.net" in page and "Bob &lt;script&gt;" in page and "<script>" not in page
    assert post(admin, "/admin/users/bob/profile", email="nope").status_code == 400
    assert post(admin, "/admin/users/nobody/profile", email="a@b.org").status_code == 404


def test_reset_a_password_ends_the_sessions(admin):
    with TestClient(admin.app, base_url="http://localhost") as bob:
        login(bob, "bob", "his own long passphrase")
        assert bob.get("/auth/check").status_code == 200
        r = post(admin, "/admin/users/bob/password")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        password = re.search(r"<code>([a-z0-9-]{23})</code>", r.text).group(1)
        assert bob.get("/auth/check").status_code == 401
        assert login(bob, "bob", "his own long passphrase").status_code == 401
        assert login(bob, "bob", password).status_code == 303


def test_disable_and_enable_a_user(admin):
    with TestClient(admin.app, base_url="http://localhost") as bob:
        login(bob, "bob", "his own long passphrase")
        assert post(admin, "/admin/users/bob/state", state="disabled").status_code == 303
        assert bob.get("/auth/check").status_code == 401  # the session ended at once
        assert "Enable bob" in admin.get("/admin/users/bob").text
        assert login(bob, "bob", "his own long passphrase").status_code == 401
        post(admin, "/admin/users/bob/state", state="enabled")
        assert login(bob, "bob", "his own long passphrase").status_code == 303


def test_an_admin_does_not_lock_themself_out(admin):
    for url, data in [
        ("/admin/users/admin/state", {"state": "disabled"}),
        ("/admin/users/admin/role", {"role": "member"}),
        ("/admin/users/admin/remove", {"confirm": "admin"}),
    ]:
        r = post(admin, url, **data)
        assert r.status_code == 400 and "your own account" in r.text
    assert admin.get("/admin").status_code == 200


def test_the_host_keeps_an_enabled_admin(host):  # noqa: F811
    db = ops.open_state(host)
    with pytest.raises(Refused, match="only enabled admin"):
        ops.remove_user(db, "test", "admin")
    with pytest.raises(Refused):
        ops.set_disabled(db, "test", "admin", True)
    with pytest.raises(Refused):
        ops.set_admin(db, "test", "admin", False)
    ops.set_admin(db, "test", "bob", True)
    ops.set_disabled(db, "test", "admin", True)  # bob is left
    with pytest.raises(Refused):
        ops.set_disabled(db, "test", "bob", True)


def test_make_an_admin_and_a_member_again(admin):
    with TestClient(admin.app, base_url="http://localhost") as alice:
        login(alice)
        assert alice.get("/admin").status_code == 403
        assert post(admin, "/admin/users/alice/role", role="admin").status_code == 303
        assert alice.get("/admin").status_code == 200  # at once, same session
        post(admin, "/admin/users/alice/role", role="member")
        assert alice.get("/admin").status_code == 403


def test_choose_the_groups_of_a_user(admin):
    post(admin, "/admin/groups", name="friends")
    r = post(admin, "/admin/users/bob/groups", **{"group:family": "on", "group:friends": "on"})
    assert r.status_code == 303
    page = admin.get("/admin/users/bob").text
    assert 'name="group:family" checked' in page and 'name="group:friends" checked' in page
    post(admin, "/admin/users/bob/groups", **{"group:friends": "on"})
    assert ops.get_user(admin.app.state.db, "bob").groups == ("friends",)
    r = post(admin, "/admin/users/bob/groups", **{"group:nosuch": "on"})
    assert r.status_code == 404


def test_remove_a_user_needs_the_name_typed(admin):
    with TestClient(admin.app, base_url="http://localhost") as bob:
        login(bob, "bob", "his own long passphrase")
        r = post(admin, "/admin/users/bob/remove", confirm="bo")
        assert r.status_code == 400 and "type bob" in r.text
        assert bob.get("/auth/check").status_code == 200
        r = post(admin, "/admin/users/bob/remove", confirm="bob")
        assert r.status_code == 303 and r.headers["location"] == "/admin/users?done=removed"
        assert bob.get("/auth/check").status_code == 401
        assert admin.get("/admin/users/bob").status_code == 404
        assert login(bob, "bob", "his own long passphrase").status_code == 401


def test_groups_and_their_members(admin):
    r = post(admin, "/admin/groups", name="choir", description="Sings <loud>")
    assert r.status_code == 303 and r.headers["location"] == "/admin/groups/choir?done=added"
    page = admin.get("/admin/groups/choir").text
    assert "Sings &lt;loud&gt;" in page and "No members yet" in page
    assert "<option>bob</option>" in page
    assert post(admin, "/admin/groups/choir/members", user="bob").status_code == 303
    assert "choir" in ops.get_user(admin.app.state.db, "bob").groups
    assert post(admin, "/admin/groups", name="choir").status_code == 409
    assert post(admin, "/admin/groups", name="Bad!").status_code == 400
    assert post(admin, "/admin/groups/choir/members", user="nobody").status_code == 404
    post(admin, "/admin/groups/choir/members/bob/remove")
    assert "choir" not in ops.get_user(admin.app.state.db, "bob").groups
    assert post(admin, "/admin/groups/choir/remove", confirm="x").status_code == 400
    r = post(admin, "/admin/groups/choir/remove", confirm="choir")
    assert r.status_code == 303
    assert admin.get("/admin/groups/choir").status_code == 404


def test_admin_changes_are_in_the_audit_log(admin):
    post(admin, "/admin/groups", name="choir")
    post(admin, "/admin/users/bob/state", state="disabled")
    with admin.app.state.db.write() as conn:
        rows = conn.execute(select(audit_log).where(audit_log.c.actor == "admin")).all()
    assert {("group.add", "choir"), ("user.disable", "bob")} <= {(r.action, r.target) for r in rows}


def test_the_audit_log_page_pages_back(admin):
    for i in range(55):
        post(admin, "/admin/groups", name=f"g{i:02}")
    page = admin.get("/admin/audit").text
    assert page.count("<code>group.add</code>") == 50  # the newest 50
    assert "g54" in page and "g04" not in page
    older = re.search(r'href="(/admin/audit\?before=\d+)"', page).group(1)
    page = admin.get(older).text
    assert "g04" in page and "g54" not in page
    assert "<code>init</code>" in page  # the oldest entry, on the last page
    assert "before=" not in page


def test_the_overview_lists_the_services_signing_in_and_their_groups(host, admin):  # noqa: F811
    from isidorus.ops import oidc

    db = ops.open_state(host)
    oidc.add_client(db, "test", "wiki", ["https://wiki.example.org/cb"], allowed_groups=["family"])
    page = admin.get("/admin").text
    assert "wiki" in page and "https://wiki.example.org/cb" in page and ">family<" in page
