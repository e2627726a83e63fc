"""The REST API's accounts beyond adding and removing: a user's profile, admin rights and
second factor, a member's app passwords (made, listed and revoked by an admin, and
checked where apps sign in: /auth/check), and the OpenID Connect clients."""

import base64

import pyotp
from starlette.testclient import TestClient

from isidorus.accounts import totp
from isidorus.ops import accounts as ops
from isidorus.ops import oidc as ops_oidc
from isidorus.ops import tokens as ops_tokens
from tests.web.test_api import PW, api, assert_error, client, db, host, secret  # noqa: F401
from tests.web.test_api_services import audit_rows

V1 = "/api/v1"


def basic(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


ENDPOINTS = [
    ("PATCH", "/users/alice"),
    ("POST", "/users/alice/promote"),
    ("POST", "/users/alice/demote"),
    ("DELETE", "/users/alice/totp"),
    ("GET", "/users/alice/app-passwords"),
    ("POST", "/users/alice/app-passwords"),
    ("DELETE", "/users/alice/app-passwords/1"),
    ("GET", "/oidc/clients"),
    ("POST", "/oidc/clients"),
    ("GET", "/oidc/clients/forge"),
    ("DELETE", "/oidc/clients/forge"),
]


def test_every_endpoint_is_documented_and_needs_an_admins_token(client, db):  # noqa: F811
    doc = client.get("/api/openapi.json").json()
    documented = {(m.upper(), p) for p, ms in doc["paths"].items() for m in ms}
    for method, path in ENDPOINTS:
        templ = path.replace("alice", "{name}").replace("forge", "{name}").replace("/1", "/{id}")
        assert (method, "/v1" + templ) in documented, (method, path)
        assert_error(client.request(method, V1 + path, json={}), 401, "Authorization: Bearer")
    ops.add_user(db, "test", "root2", "root2@example.org", "another admin's phrase", is_admin=True)
    made = ops_tokens.add_token(db, "test", "script", "root2").secret
    ops.set_admin(db, "test", "root2", False)
    for method, path in ENDPOINTS:
        r = client.request(method, V1 + path, json={}, headers={"Authorization": f"Bearer {made}"})
        assert_error(r, 403, "not an admin")
    assert not ops.get_user(db, "alice").is_admin
    assert ops_oidc.list_clients(db) == []


def test_a_users_profile_and_rights(api, db):  # noqa: F811
    r = api.patch(f"{V1}/users/alice", json={"fullname": "Alice Liddell"})
    assert r.status_code == 200
    assert (r.json()["fullname"], r.json()["email"]) == ("Alice Liddell", "alice@example.org")
    r = api.patch(f"{V1}/users/alice", json={"email": "alice@example.net"})
    assert (r.json()["fullname"], r.json()["email"]) == ("Alice Liddell", "alice@example.net")
    assert ops.get_user(db, "alice").email == "alice@example.net"
    assert_error(api.patch(f"{V1}/users/alice", json={"email": "nope"}), 422, "email")
    assert_error(api.patch(f"{V1}/users/alice", json={"colour": "blue"}), 422, "colour")
    assert_error(api.patch(f"{V1}/users/zed", json={}), 404, "no user 'zed'")

    r = api.post(f"{V1}/users/alice/promote")
    assert r.status_code == 200 and r.json()["is_admin"] is True
    assert api.post(f"{V1}/users/alice/promote").json()["is_admin"] is True  # again: the same
    r = api.post(f"{V1}/users/alice/demote")
    assert r.status_code == 200 and r.json()["is_admin"] is False
    assert_error(api.post(f"{V1}/users/admin/demote"), 403, "your own account")
    assert_error(api.post(f"{V1}/users/zed/promote"), 404)
    assert ops.get_user(db, "admin").is_admin
    rows = audit_rows(db)
    for action in ("user.profile", "user.admin", "user.member"):
        assert ("api:ci", action, "alice") in rows


def test_an_admin_turns_a_second_factor_off(api, db):  # noqa: F811
    key = totp.new_secret()
    ops.turn_on_totp(db, "alice", key, pyotp.TOTP(key).now())
    assert ops.get_user(db, "alice").has_totp
    assert api.get(f"{V1}/users/alice").json()["totp"] is True
    assert api.delete(f"{V1}/users/alice/totp").status_code == 204
    assert not ops.get_user(db, "alice").has_totp
    assert ops.login(db, "alice", PW).token  # the password alone lets her in again
    assert_error(api.delete(f"{V1}/users/zed/totp"), 404)
    assert ("api:ci", "user.totp-off", "alice") in audit_rows(db)


def test_a_members_app_passwords(api, db, client):  # noqa: F811
    assert api.get(f"{V1}/users/alice/app-passwords").json() == []
    r = api.post(f"{V1}/users/alice/app-passwords", json={"label": "phone  calendar"})
    assert r.status_code == 201
    made = r.json()
    assert made["label"] == "phone calendar" and made["last_used_at"] is None
    made_secret = made["password"]
    with TestClient(client.app, base_url="http://localhost") as app:
        assert app.get("/auth/check", headers=basic("alice", made_secret)).status_code == 200
        listed = api.get(f"{V1}/users/alice/app-passwords").json()
        assert [a["id"] for a in listed] == [made["id"]] and "password" not in listed[0]
        assert listed[0]["last_used_at"] is not None
        assert_error(api.delete(f"{V1}/users/bob/app-passwords/{made['id']}"), 404)
        assert_error(api.delete(f"{V1}/users/alice/app-passwords/999"), 404, "no app password")
        assert api.delete(f"{V1}/users/alice/app-passwords/{made['id']}").status_code == 204
        assert app.get("/auth/check", headers=basic("alice", made_secret)).status_code == 401
    assert api.get(f"{V1}/users/alice/app-passwords").json() == []
    rows = audit_rows(db)
    assert ("api:ci", "user.app-password.add", "alice") in rows
    assert ("api:ci", "user.app-password.remove", "alice") in rows

    assert_error(api.post(f"{V1}/users/alice/app-passwords", json={"label": "   "}), 400, "name")
    assert_error(api.post(f"{V1}/users/alice/app-passwords", json={"label": ""}), 422, "label")
    assert_error(api.post(f"{V1}/users/zed/app-passwords", json={"label": "x"}), 404)
    assert_error(api.get(f"{V1}/users/zed/app-passwords"), 404, "no user 'zed'")
    assert_error(api.delete(f"{V1}/users/alice/app-passwords/x"), 422, "id")
    for i in range(20):
        ops.add_app_password(db, "alice", f"app {i}")
    r = api.post(f"{V1}/users/alice/app-passwords", json={"label": "one too many"})
    assert_error(r, 400, "20 app passwords")


def test_openid_connect_clients(api, db):  # noqa: F811
    assert api.get(f"{V1}/oidc/clients").json() == []
    body = {
        "name": "forge",
        "redirect_uris": ["https://git.example.org/callback"],
        "allow": ["family"],
    }
    r = api.post(f"{V1}/oidc/clients", json=body)
    assert r.status_code == 201
    made = r.json()
    assert made["name"] == "forge" and made["allowed_groups"] == ["family"]
    assert made["public"] is False and made["pkce_required"] is True
    found = ops_oidc.get_client(db, "forge")
    assert found.client_id == made["client_id"] and found.check_secret(made["client_secret"])
    r = api.post(
        f"{V1}/oidc/clients",
        json={"name": "phone", "redirect_uris": ["http://127.0.0.1:8080/cb"], "public": True},
    )
    assert r.status_code == 201 and r.json()["client_secret"] is None and r.json()["public"]
    assert [c["name"] for c in api.get(f"{V1}/oidc/clients").json()] == ["forge", "phone"]
    one = api.get(f"{V1}/oidc/clients/forge").json()
    assert one["client_id"] == made["client_id"] and "client_secret" not in one

    assert_error(api.post(f"{V1}/oidc/clients", json=body), 409, "exists already")
    bad = {**body, "name": "wiki", "redirect_uris": ["http://wiki.example.org/cb"]}
    assert_error(api.post(f"{V1}/oidc/clients", json=bad), 400, "https://")
    bad = {**body, "name": "wiki", "allow": ["nobody"]}
    assert_error(api.post(f"{V1}/oidc/clients", json=bad), 400, "no group 'nobody'")
    bad = {**body, "name": "wiki", "public": True, "pkce_required": False}
    assert_error(api.post(f"{V1}/oidc/clients", json=bad), 400, "PKCE")
    assert_error(api.post(f"{V1}/oidc/clients", json={**body, "redirect_uris": []}), 422)
    assert_error(api.post(f"{V1}/oidc/clients", json={**body, "name": "Wiki"}), 422, "name")
    assert_error(api.get(f"{V1}/oidc/clients/wiki"), 404, "no client 'wiki'")

    assert api.delete(f"{V1}/oidc/clients/forge").status_code == 204
    assert_error(api.delete(f"{V1}/oidc/clients/forge"), 404)
    assert [c.name for c in ops_oidc.list_clients(db)] == ["phone"]
    rows = audit_rows(db)
    assert ("api:ci", "oidc.client.add", "forge") in rows
    assert ("api:ci", "oidc.client.remove", "forge") in rows
