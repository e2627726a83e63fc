"""The second factor in the browser: turned on from the portal, asked at login, turned off
by the member or by an admin."""

import base64
import re
import time

import pyotp
from starlette.testclient import TestClient

from isidorus.ops import accounts as ops
from tests.web.test_app import PW, client, csrf_of, host, login  # noqa: F401  (fixtures)


def turn_on(c):
    page = c.get("/portal/totp")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert 'src="data:image/svg+xml' in page.text  # the QR code, drawn by isidorus
    secret = re.search(r'name="secret" value="([A-Z2-7]+)"', page.text).group(1)
    r = c.post(
        "/portal/totp",
        data={"csrf": csrf_of(page.text), "secret": secret, "code": "000000"},
    )
    assert r.status_code == 400 and "does not match" in r.text
    r = c.post(
        "/portal/totp",
        data={"csrf": csrf_of(page.text), "secret": secret, "code": pyotp.TOTP(secret).now()},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/portal?totp=on"
    return secret


def login_with_code(c, code, name="alice"):
    r = login(c, name)
    assert r.status_code == 200 and 'action="/login/code"' in r.text
    assert "isidorus_session" not in r.cookies  # not logged in yet
    assert c.get("/auth/check").status_code == 401
    return c.post(
        "/login/code",
        data={"csrf": csrf_of(r.text), "name": name, "code": code, "next": "/portal"},
        follow_redirects=False,
    )


def logout(c):
    c.post("/logout", data={"csrf": csrf_of(c.get("/portal").text)})
    assert c.get("/auth/check").status_code == 401


def test_turn_on_then_log_in_with_a_code(client):  # noqa: F811
    login(client)
    secret = turn_on(client)
    assert "each login asks for a code" in client.get("/portal").text
    logout(client)
    r = login_with_code(client, "123456" if pyotp.TOTP(secret).now() != "123456" else "654321")
    assert r.status_code == 401 and "wrong code" in r.text
    code = pyotp.TOTP(secret).at(time.time() + 30)  # a step not used yet
    r = client.post(
        "/login/code",
        data={"csrf": csrf_of(r.text), "name": "alice", "code": code, "next": "/portal"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/portal"
    assert client.get("/auth/check").status_code == 200
    logout(client)
    r = login_with_code(client, code)  # the same code again
    assert r.status_code == 401 and client.get("/auth/check").status_code == 401


def test_the_code_step_needs_the_pending_cookie(client):  # noqa: F811
    login(client)
    secret = turn_on(client)
    logout(client)
    r = login(client)
    csrf = csrf_of(r.text)
    client.cookies.delete("isidorus_pending", path="/login")
    r = client.post(
        "/login/code",
        data={"csrf": csrf, "name": "alice", "code": pyotp.TOTP(secret).at(time.time() + 30)},
        follow_redirects=False,
    )
    assert r.status_code == 401 and "expired" in r.text
    assert client.get("/auth/check").status_code == 401


def test_turn_off_needs_the_password(client):  # noqa: F811
    login(client)
    turn_on(client)
    csrf = csrf_of(client.get("/portal").text)
    r = client.post("/portal/totp/off", data={"csrf": csrf, "password": "wrong one!"})
    assert r.status_code == 400 and "stays on" in r.text
    r = client.post("/portal/totp/off", data={"csrf": csrf, "password": PW})
    assert "Your second factor is off" in r.text
    logout(client)
    assert login(client).status_code == 303  # the password alone again


def test_an_admin_turns_it_off_for_a_lost_phone(host, client):  # noqa: F811
    login(client)
    turn_on(client)
    with TestClient(client.app, base_url="http://localhost") as admin:
        login(admin, "admin", "the host keeper's passphrase")
        page = admin.get("/admin/users/alice")
        assert "Turn off the second factor" in page.text
        r = admin.post("/admin/users/alice/totp-off", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 200 and "Saved" in r.text
    assert not ops.get_user(ops.open_state(host), "alice").has_totp


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_app_passwords_for_a_member_with_a_second_factor(host, client):  # noqa: F811
    login(client)
    turn_on(client)
    with TestClient(client.app, base_url="http://localhost") as app:
        # a calendar app: the member's own password is refused (it cannot send a code)
        assert app.get("/auth/check", headers=basic("alice", PW)).status_code == 401
        page = client.get("/portal")
        r = client.post(
            "/portal/app-passwords", data={"csrf": csrf_of(page.text), "label": "phone  agenda"}
        )
        assert r.status_code == 200 and "phone agenda" in r.text
        secret = re.search(r'<code class="secret">([a-z2-9-]+)</code>', r.text).group(1)
        assert re.fullmatch(r"([a-z2-9]{4}-){4}[a-z2-9]{4}", secret)
        assert app.get("/auth/check", headers=basic("alice", secret)).status_code == 200
        # typed on a phone: capitals and spaces for the dashes do not matter
        typed = secret.upper().replace("-", " ")
        assert app.get("/auth/check", headers=basic("alice", typed)).status_code == 200
        assert app.get("/auth/check", headers=basic("bob", secret)).status_code == 401
        page = client.get("/portal")
        assert "phone agenda" in page.text and secret not in page.text  # shown once
        listed = ops.list_app_passwords(ops.open_state(host), "alice")
        assert [a.label for a in listed] == ["phone agenda"] and listed[0].last_used_at
        # revoked: the app is out at once, though its session was remembered
        r = client.post(
            f"/portal/app-passwords/{listed[0].id}/revoke",
            data={"csrf": csrf_of(page.text)},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert app.get("/auth/check", headers=basic("alice", secret)).status_code == 401
        assert client.get("/auth/check").status_code == 200  # the browser stays in
        # nobody revokes another's, nor one that is not there; forms need their token
        r = client.post("/portal/app-passwords/999/revoke", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 404
        r = client.post("/portal/app-passwords", data={"csrf": csrf_of(page.text), "label": " "})
        assert r.status_code == 400 and "name the app" in r.text
        assert client.post("/portal/app-passwords", data={"label": "x"}).status_code == 403
