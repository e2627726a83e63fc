"""The REST API through Starlette's test client, over a real host directory: every endpoint,
its errors, and the life of API tokens."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from starlette.testclient import TestClient

from isidorus.accounts import tokens
from isidorus.accounts.errors import LoginFailed
from isidorus.ops import accounts as ops
from isidorus.ops import tokens as ops_tokens
from isidorus.state.schema import api_tokens, audit_log, users
from isidorus.web.app import create_app

ADMIN_PW = "the host keeper's passphrase"
PW = "a long passphrase of hers"


@pytest.fixture
def host(tmp_path):
    d = str(tmp_path / "host")
    ops.init_host(d, domain="localhost", admin="admin", email="admin@localhost", password=ADMIN_PW)
    db = ops.open_state(d)
    ops.add_user(db, "test", "alice", "alice@example.org", PW)
    ops.add_group(db, "test", "family")
    db.close()
    return d


@pytest.fixture
def db(host):
    d = ops.open_state(host)
    yield d
    d.close()


@pytest.fixture
def secret(db):
    return ops_tokens.add_token(db, "test", "ci", "admin").secret


@pytest.fixture
def client(host):
    with TestClient(create_app(host), base_url="http://localhost") as c:
        yield c


@pytest.fixture
def api(client, secret):
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def assert_error(r, status, *words):
    """An error of the API: the status, JSON with one line naming the cause."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert list(r.json()) == ["error"] and "\n" not in message and message
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    return message


def test_the_openapi_document(client):
    r = client.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": "/api"}]
    assert {"/v1/me", "/v1/users", "/v1/users/{name}", "/v1/groups", "/v1/tokens"} <= set(
        doc["paths"]
    )
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # every error answer is documented with the one error body
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for status in ("401", "403", "422"):
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
    # no interactive pages: they would load scripts from another host
    assert client.get("/api/docs").status_code == 404
    assert client.get("/api/redoc").status_code == 404


def test_no_token_no_entry(client, secret):
    for headers in ({}, {"Authorization": f"Basic {secret}"}, {"Authorization": "Bearer"}):
        r = client.get("/api/v1/users", headers=headers)
        assert_error(r, 401, "Authorization: Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
    for bad in ("isi_not-a-token", secret + "x", secret[:-1], "x" * 5000, "isi_é"):
        r = client.get("/api/v1/users", headers={"Authorization": f"Bearer {bad}".encode()})
        assert_error(r, 401, "unknown, expired")
        assert r.headers["www-authenticate"] == "Bearer"


def test_me(api):
    r = api.get("/api/v1/me")
    assert r.status_code == 200
    doc = r.json()
    assert doc["user"]["name"] == "admin" and doc["user"]["is_admin"]
    assert doc["token"]["name"] == "ci" and doc["token"]["user"] == "admin"
    assert doc["token"]["last_used_at"] is not None and doc["token"]["expires_at"] is None


def test_users(api, db):
    r = api.get("/api/v1/users")
    assert [u["name"] for u in r.json()] == ["admin", "alice"]
    r = api.post("/api/v1/users", json={"name": "bob", "email": "bob@example.org"})
    assert r.status_code == 201
    made = r.json()["password"]
    assert r.json()["name"] == "bob" and len(made) == 23
    assert ops.login(db, "bob", made).user.name == "bob"
    r = api.post(
        "/api/v1/users",
        json={
            "name": "carol",
            "email": "carol@example.org",
            "fullname": "Carol",
            "password": "her very own passphrase",
            "is_admin": True,
        },
    )
    assert r.status_code == 201 and r.json()["password"] is None and r.json()["is_admin"]
    r = api.get("/api/v1/users/carol")
    assert r.status_code == 200 and r.json()["fullname"] == "Carol"
    assert r.json()["created_at"].endswith("Z") or "+00:00" in r.json()["created_at"]
    assert_error(api.get("/api/v1/users/zed"), 404, "no user 'zed'")

    new = "a new long passphrase"
    assert api.put("/api/v1/users/bob/password", json={"password": new}).status_code == 204
    assert ops.login(db, "bob", new).user.name == "bob"
    assert_error(api.put("/api/v1/users/bob/password", json={"password": "b" * 12}), 400, "few")
    assert_error(api.put("/api/v1/users/zed/password", json={"password": new}), 404)

    r = api.post("/api/v1/users/bob/disable")
    assert r.status_code == 200 and r.json()["disabled"] is True
    with pytest.raises(LoginFailed):
        ops.login(db, "bob", new)
    r = api.post("/api/v1/users/bob/enable")
    assert r.status_code == 200 and r.json()["disabled"] is False
    assert_error(api.post("/api/v1/users/zed/enable"), 404)

    assert api.delete("/api/v1/users/bob").status_code == 204
    assert_error(api.get("/api/v1/users/bob"), 404)
    assert_error(api.delete("/api/v1/users/bob"), 404)
    assert [u["name"] for u in api.get("/api/v1/users").json()] == ["admin", "alice", "carol"]


def test_user_input_errors(api):
    bob = {"name": "bob", "email": "bob@example.org"}
    assert_error(api.post("/api/v1/users", json={**bob, "name": "alice"}), 409, "exists")
    assert_error(api.post("/api/v1/users", json={**bob, "name": "Bob"}), 422, "name")
    assert_error(api.post("/api/v1/users", json={**bob, "email": "bob"}), 422, "email")
    assert_error(api.post("/api/v1/users", json={**bob, "password": "short"}), 422, "password")
    weak = {**bob, "password": "bob@example.org!"}
    assert_error(api.post("/api/v1/users", json=weak), 400, "login name or e-mail")
    assert_error(api.post("/api/v1/users", json={**bob, "colour": "blue"}), 422, "colour")
    assert_error(api.post("/api/v1/users", json={"name": "bob"}), 422, "email")
    r = api.post(
        "/api/v1/users", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(r, 422, "body")
    assert_error(api.post("/api/v1/users", json=[1, 2]), 422)
    assert api.get("/api/v1/users/bob").status_code == 404  # nothing was made


def test_admins_do_not_remove_or_disable_themselves(api):
    assert_error(api.delete("/api/v1/users/admin"), 403, "your own account")
    assert_error(api.post("/api/v1/users/admin/disable"), 403, "your own account")
    assert api.get("/api/v1/me").status_code == 200


def test_groups(api):
    assert api.get("/api/v1/groups").json() == [
        {"name": "family", "description": "", "members": []}
    ]
    r = api.post("/api/v1/groups", json={"name": "friends", "description": "Our friends"})
    assert r.status_code == 201 and r.json()["description"] == "Our friends"
    assert_error(api.post("/api/v1/groups", json={"name": "friends"}), 409, "exists")
    assert_error(api.post("/api/v1/groups", json={"name": "no way"}), 422, "name")
    assert_error(api.post("/api/v1/groups", json={"name": "g", "description": "x" * 201}), 422)

    r = api.put("/api/v1/groups/friends/members/alice")
    assert r.status_code == 200 and r.json()["members"] == ["alice"]
    assert api.put("/api/v1/groups/friends/members/alice").json()["members"] == ["alice"]
    assert api.get("/api/v1/users/alice").json()["groups"] == ["friends"]
    assert_error(api.put("/api/v1/groups/friends/members/zed"), 404, "no user")
    assert_error(api.put("/api/v1/groups/enemies/members/alice"), 404, "no group")
    r = api.delete("/api/v1/groups/friends/members/alice")
    assert r.status_code == 200 and r.json()["members"] == []
    assert api.get("/api/v1/groups/friends").json()["members"] == []
    assert_error(api.get("/api/v1/groups/enemies"), 404, "no group 'enemies'")

    assert api.delete("/api/v1/groups/friends").status_code == 204
    assert_error(api.delete("/api/v1/groups/friends"), 404)
    assert [g["name"] for g in api.get("/api/v1/groups").json()] == ["family"]


def test_tokens(api, client, db):
    listed = api.get("/api/v1/tokens").json()
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
    r = api.post("/api/v1/tokens", json={"name": "backup", "expires_days": 30})
    assert r.status_code == 201
    made = r.json()
    assert made["user"] == "admin" and made["token"].startswith("isi_")
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {made['token']}"})
    assert r.json()["token"]["name"] == "backup"

    assert_error(api.post("/api/v1/tokens", json={"name": "backup"}), 409, "exists")
    assert_error(api.post("/api/v1/tokens", json={"name": "m", "user": "alice"}), 400, "admin")
    assert_error(api.post("/api/v1/tokens", json={"name": "m", "user": "zed"}), 404, "no user")
    assert_error(api.post("/api/v1/tokens", json={"name": "m", "expires_days": 0}), 422)

    assert api.delete("/api/v1/tokens/backup").status_code == 204
    r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {made['token']}"})
    assert_error(r, 401)
    assert_error(api.delete("/api/v1/tokens/backup"), 404, "no token")
    # only the hash is kept
    with db.write() as conn:
        stored = conn.execute(select(api_tokens)).all()
    assert len(stored) == 1 and all(made["token"] not in str(tuple(row)) for row in stored)


def test_an_expired_token_is_refused(client, db):
    with db.write() as conn:
        _token, old = tokens.create_token(
            conn, "old", "admin", expires_days=1, now=datetime.now(UTC) - timedelta(days=2)
        )
    r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {old}"})
    assert_error(r, 401, "expired")
    listed = {t.name: t for t in ops_tokens.list_tokens(db)}
    assert listed["old"].expired() and listed["old"].last_used_at is None


def test_tokens_follow_their_user(host, client, db):
    ops.add_user(db, "test", "root2", "root2@example.org", "another admin's phrase", is_admin=True)
    secret = ops_tokens.add_token(db, "test", "script", "root2").secret
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/me", headers=auth).status_code == 200

    ops.set_disabled(db, "test", "root2", True)
    assert_error(client.get("/api/v1/me", headers=auth), 401)
    ops.set_disabled(db, "test", "root2", False)
    assert client.get("/api/v1/me", headers=auth).status_code == 200

    with db.write() as conn:  # no command demotes an admin yet: the database does it
        conn.execute(update(users).where(users.c.name == "root2").values(is_admin=False))
    assert_error(client.get("/api/v1/users", headers=auth), 403, "not an admin")
    with db.write() as conn:
        conn.execute(update(users).where(users.c.name == "root2").values(is_admin=True))
    assert client.get("/api/v1/users", headers=auth).status_code == 200

    ops.remove_user(db, "test", "root2")
    assert_error(client.get("/api/v1/me", headers=auth), 401)
    assert [t.name for t in ops_tokens.list_tokens(db)] == []


def test_api_changes_name_the_token_in_the_audit_log(api, db):
    api.post("/api/v1/groups", json={"name": "friends"})
    api.put("/api/v1/groups/friends/members/alice")
    api.post("/api/v1/tokens", json={"name": "other"})
    with db.write() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.target).where(
                audit_log.c.actor.like("api:%")
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("api:ci", "group.add", "friends"),
        ("api:ci", "group.add-member", "friends"),
        ("api:ci", "token.add", "other"),
    ]


def test_the_audit_log_page_by_page(api, db):
    for i in range(5):
        api.post("/api/v1/groups", json={"name": f"g{i}"})
    with db.write() as conn:
        total = conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
    first = api.get("/api/v1/audit", params={"limit": 1}).json()["entries"][0]
    assert first["actor"] == "api:ci" and first["target"] == "g4"
    url, seen = "/api/v1/audit?limit=2", []
    while url:
        page = api.get(url).json()
        assert 1 <= len(page["entries"]) <= 2
        seen += [e["id"] for e in page["entries"]]
        url = page["next"]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen) == total
    assert_error(api.get("/api/v1/audit", params={"limit": 0}), 422, "limit")
    assert_error(api.get("/api/v1/audit", params={"limit": 501}), 422, "limit")
    assert_error(api.get("/api/v1/audit", params={"before": "x"}), 422, "before")
    assert api.get("/api/v1/audit", params={"before": 1}).json() == {"entries": [], "next": None}


def test_errors_are_json(api):
    assert_error(api.get("/api/v1/nothing"), 404, "/api/v1/nothing")
    assert_error(api.get("/api/nothing"), 404)
    assert_error(api.get("/api/v1/users/"), 404)  # no redirection to another path
    r = api.patch("/api/v1/users")
    assert_error(r, 405, "PATCH")
    assert "GET" in r.headers["allow"]
    # a newline in the path: no route of the server matches it, and it still answers JSON
    assert_error(api.post("/api/v1/users/%0A/disable"), 404)


def test_outside_the_api_errors_are_pages(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "no such page" in r.text


def test_a_broken_database_gives_json_not_a_traceback(api, db):
    with db.write() as conn:
        conn.execute(text("DROP TABLE api_tokens"))
    assert_error(api.get("/api/v1/me"), 500, "state database")
