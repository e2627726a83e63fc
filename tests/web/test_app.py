"""The web server through Starlette's test client: login, CSRF, throttling, the portal,
and the single sign-on answer for nginx."""

import base64
import re

import pytest
from starlette.testclient import TestClient

from isidorus.accounts.audit import list_entries
from isidorus.errors import IsidorusError
from isidorus.ops import accounts as ops
from isidorus.web.app import COOKIE, create_app

PW = "a long passphrase of hers"


@pytest.fixture
def host(tmp_path):
    d = str(tmp_path / "host")
    ops.init_host(
        d,
        domain="localhost",
        admin="admin",
        email="admin@localhost",
        password="the host keeper's passphrase",
    )
    db = ops.open_state(d)
    ops.add_user(db, "test", "alice", "alice@example.org", PW, fullname="<b>Alice</b>")
    ops.add_user(db, "test", "bob", "bob@example.org", "his own long passphrase")
    ops.add_group(db, "test", "family")
    ops.add_member(db, "test", "family", "alice")
    db.close()
    return d


@pytest.fixture
def client(host):
    with TestClient(create_app(host), base_url="http://localhost") as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def login(client, name="alice", password=PW, nxt="/portal"):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"csrf": csrf_of(page.text), "name": name, "password": password, "next": nxt},
        follow_redirects=False,
    )


def test_public_page(client):
    r = client.get("/")
    assert r.status_code == 200
    assert "best-effort" in r.text and "Backups" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    # nothing is loaded from another host
    assert not re.search(r'(src|href)="(https?:)?//', r.text)
    assert client.get("/static/style.css").status_code == 200


def test_portal_needs_a_login(client):
    r = client.get("/portal", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_login_and_portal(client):
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/portal"
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = client.get("/portal")
    assert page.status_code == 200
    assert "&lt;b&gt;Alice&lt;/b&gt;" in page.text and "<b>Alice</b>" not in page.text


def test_a_failed_login_says_nothing_of_who_exists(client):
    wrong_pw = login(client, "alice", "not the password")
    no_user = login(client, "nobody", "not the password")
    assert wrong_pw.status_code == no_user.status_code == 401
    msg = re.compile(r'class="error"[^>]*>([^<]+)<')
    assert msg.search(wrong_pw.text).group(1) == msg.search(no_user.text).group(1)


def test_forms_need_their_csrf_token(client):
    client.get("/login")
    r = client.post("/login", data={"csrf": "forged", "name": "alice", "password": PW})
    assert r.status_code == 403 and "expired" in r.text
    login(client)
    r = client.post("/portal/password", data={"current": PW, "new": "x" * 12, "repeat": "x" * 12})
    assert r.status_code == 403


def test_login_is_throttled(client):
    for _ in range(5):
        assert login(client, "alice", "wrong password!").status_code == 401
    r = login(client, "alice", PW)
    assert r.status_code == 429 and "too many" in r.text
    assert login(client, "bob", "his own long passphrase").status_code == 303  # others still can
    # another server process counts the same failures
    with TestClient(create_app(client.app.state.host.data_dir), base_url="http://localhost") as c:
        assert login(c, "alice", PW).status_code == 429


def test_no_redirect_to_another_site(client):
    for target in ("//evil.example/", "https://evil.example/", "javascript:alert(1)"):
        r = login(client, nxt=target)
        assert r.headers["location"] == "/portal"
        client.cookies.clear()


def test_auth_check_for_nginx(client):
    assert client.get("/auth/check").status_code == 401
    login(client)
    r = client.get("/auth/check")
    assert r.status_code == 200 and r.headers["x-isidorus-user"] == "alice"
    assert client.get("/auth/check", headers={"X-Isidorus-Allow": "family"}).status_code == 200
    assert client.get("/auth/check", headers={"X-Isidorus-Allow": "friends"}).status_code == 403
    client.cookies.clear()
    login(client, "bob", "his own long passphrase")
    assert client.get("/auth/check", headers={"X-Isidorus-Allow": "family"}).status_code == 403
    client.cookies.clear()
    login(client, "admin", "the host keeper's passphrase")
    assert client.get("/auth/check", headers={"X-Isidorus-Allow": "family"}).status_code == 200


def test_auth_check_for_apps_that_send_a_name_and_password(host, client):
    """Calendar apps sign in with HTTP Basic: the password is checked once (Argon2id), then
    the session it opened answers; a disabled account or a new password ends it."""

    def check(name: str, password: str, allow: str = "") -> int:
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "X-Isidorus-Allow": allow}
        r = client.get("/auth/check", headers=headers)
        assert r.status_code != 200 or r.headers["x-isidorus-user"] == name
        return r.status_code

    assert check("alice", PW) == 200
    assert check("alice", PW, "family") == 200 and check("alice", PW, "friends") == 403
    for _ in range(3):
        assert check("alice", PW) == 200
    db = ops.open_state(host)
    try:
        with db.read() as conn:
            entries = list_entries(conn, limit=50).entries
        basic = [e for e in entries if e.action == "login" and e.detail == "basic"]
        assert len(basic) == 1  # one login, one session, for every request since
        assert check("alice", "wrong password!") == 401
        assert check("nobody", PW) == 401
        for bad in ("Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"alice").decode()):
            assert client.get("/auth/check", headers={"Authorization": bad}).status_code == 401
        ops.set_disabled(db, "test", "alice", True)
        assert check("alice", PW) == 401  # at once, though its session was remembered
        ops.set_disabled(db, "test", "alice", False)
        assert check("alice", PW) == 200
        # throttled as logins are: after failures, not even the right password gets in
        for _ in range(5):
            assert check("bob", "not his passphrase") == 401
        assert check("bob", "his own long passphrase") == 401
    finally:
        db.close()


def test_password_change_ends_other_sessions(host, client):
    login(client)
    old = client.cookies.get(COOKIE)
    with TestClient(create_app(host), base_url="http://localhost") as other:
        login(other)
        assert other.get("/auth/check").status_code == 200
        page = client.get("/portal")
        bad = client.post(
            "/portal/password",
            data={
                "csrf": csrf_of(page.text),
                "current": "wrong one!",
                "new": "n" * 3,
                "repeat": "n" * 3,
            },
        )
        assert bad.status_code == 400 and "current password is wrong" in bad.text
        new = "a fresh long passphrase"
        r = client.post(
            "/portal/password",
            data={"csrf": csrf_of(page.text), "current": PW, "new": new, "repeat": new},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert client.cookies.get(COOKIE) != old
        assert client.get("/auth/check").status_code == 200  # this browser stays in
        assert other.get("/auth/check").status_code == 401  # the other one is out
    client.cookies.clear()
    assert login(client, "alice", PW).status_code == 401
    assert login(client, "alice", new).status_code == 303


def test_logout_and_disable_end_the_session(host, client):
    login(client)
    page = client.get("/portal")
    r = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.clear()
    login(client)
    assert client.get("/auth/check").status_code == 200
    db = ops.open_state(host)
    ops.set_disabled(db, "test", "alice", True)
    db.close()
    assert client.get("/auth/check").status_code == 401
    assert login(client).status_code == 401


def test_members_change_their_name_and_email(client):
    login(client)
    page = client.get("/portal")
    csrf = csrf_of(page.text)
    bad = client.post(
        "/portal/profile", data={"csrf": csrf, "fullname": "Alice B.", "email": "not an address"}
    )
    assert bad.status_code == 400 and "not an e-mail address" in bad.text
    assert (
        client.post("/portal/profile", data={"fullname": "x", "email": "a@b.org"}).status_code
        == 403
    )  # no CSRF token
    r = client.post(
        "/portal/profile",
        data={"csrf": csrf, "fullname": "Alice B.", "email": "alice@example.net"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/portal?saved=1"
    page = client.get("/portal?saved=1")
    assert 'value="Alice B."' in page.text and 'value="alice@example.net"' in page.text
    assert client.get("/auth/check").headers["x-isidorus-email"] == "alice@example.net"


def test_admin_area_is_for_admins(client):
    assert client.get("/admin", follow_redirects=False).status_code == 303
    login(client)  # alice is a member, not an admin
    assert client.get("/admin").status_code == 403
    page = client.get("/portal")
    r = client.post(
        "/admin/users/bob/state", data={"csrf": csrf_of(page.text), "state": "disabled"}
    )
    assert r.status_code == 403


def test_the_public_page_shows_the_hosts_own_words(host):
    with open(f"{host}/isidorus.toml", "a") as f:
        f.write('hosted_at = "A rented server in Lyon"\ncontact = "<b>ada</b>@example.org"\n')
        f.write('terms = "Members are asked to be kind."\n')
    with TestClient(create_app(host), base_url="http://localhost") as c:
        page = c.get("/").text
    assert "A rented server in Lyon" in page and "Members are asked to be kind." in page
    assert "&lt;b&gt;ada&lt;/b&gt;@example.org" in page  # escaped


def test_a_config_value_of_the_wrong_type_is_one_line(host):
    with open(f"{host}/isidorus.toml", "a") as f:
        f.write("terms = 5\n")
    with pytest.raises(IsidorusError, match="terms must be a string"):
        create_app(host)
