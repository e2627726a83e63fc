"""The OpenID provider driven as a real relying party drives it: discovery, the browser's
trip through authorization and login, the code exchanged with PKCE, the ID token checked
against the published keys, userinfo; and every refusal."""

import base64
import hashlib
import html
import os
import re
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet
from sqlalchemy import select, update
from starlette.testclient import TestClient

from isidorus.oidc.keys import KEY_NAME
from isidorus.ops import accounts as accounts_ops
from isidorus.ops import oidc as ops
from isidorus.state.schema import audit_log, oidc_codes, sessions
from isidorus.web.app import create_app

BASE = "https://localhost"
PW = "a long passphrase of hers"
BOB_PW = "his own long passphrase"
GITEA_CB = "https://git.example.org/user/oauth2/isidorus/callback"
APP_CB = "http://127.0.0.1:8765/callback"


@pytest.fixture
def host(tmp_path):
    d = str(tmp_path / "host")
    accounts_ops.init_host(
        d, domain="localhost", admin="admin", email="admin@localhost", password="the keeper's pass"
    )
    db = accounts_ops.open_state(d)
    accounts_ops.add_user(db, "test", "alice", "alice@example.org", PW, fullname="Alice Liddell")
    accounts_ops.add_user(db, "test", "bob", "bob@example.org", BOB_PW)
    accounts_ops.add_group(db, "test", "family")
    accounts_ops.add_member(db, "test", "family", "alice")
    gitea = ops.add_client(
        db, "test", "gitea", [GITEA_CB, "https://git.example.org/other"], ["family"]
    )
    app = ops.add_client(db, "test", "app", [APP_CB], public=True)
    db.close()
    return {"dir": d, "gitea": gitea, "app": app}


@pytest.fixture
def app(host):
    return create_app(host["dir"])


@pytest.fixture
def browser(app):
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.fixture
def service(app):
    """The service's own server, which calls the token and userinfo endpoints: no cookies."""
    with TestClient(app, base_url=BASE) as c:
        yield c


def s256(verifier):
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


class SignIn:
    """One sign-in as a relying party starts it: its state, nonce and PKCE verifier."""

    def __init__(self, client_id, redirect_uri=GITEA_CB, scope="openid profile email groups"):
        self.client_id, self.redirect_uri, self.scope = client_id, redirect_uri, scope
        self.state, self.nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.verifier = secrets.token_urlsafe(48)

    def url(self, endpoint="/oidc/authorize", **override):
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": s256(self.verifier),
            "code_challenge_method": "S256",
            **override,
        }
        return f"{endpoint}?{urlencode({k: v for k, v in params.items() if v is not None})}"


def login_through(browser, location, name="alice", password=PW):
    """The login page the authorization endpoint sent the browser to, filled in; returns
    the answer to the form."""
    page = browser.get(location)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    nxt = html.unescape(re.search(r'name="next" value="([^"]*)"', page.text).group(1))
    r = browser.post(
        "/login",
        data={"csrf": csrf, "name": name, "password": password, "next": nxt},
        follow_redirects=False,
    )
    return page, r


def code_from(response, sign_in):
    assert response.status_code == 302, response.text
    target = urlsplit(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == sign_in.redirect_uri
    q = parse_qs(target.query)
    assert q["state"] == [sign_in.state]
    assert "error" not in q, q
    return q["code"][0]


def sign_in_code(browser, sign_in, name="alice", password=PW):
    r = browser.get(sign_in.url(), follow_redirects=False)
    if r.status_code == 303:  # not logged in yet
        _page, r = login_through(browser, r.headers["location"], name, password)
        assert r.status_code == 303, r.text
        r = browser.get(r.headers["location"], follow_redirects=False)
    return code_from(r, sign_in)


def exchange(service, sign_in, code, secret=None, how="basic", verifier=None, **extra):
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": sign_in.redirect_uri,
        "code_verifier": sign_in.verifier if verifier is None else verifier,
        **extra,
    }
    if not form["code_verifier"]:
        del form["code_verifier"]
    auth = None
    if secret is not None and how == "basic":
        auth = (sign_in.client_id, secret)
    else:
        form["client_id"] = sign_in.client_id
        if secret is not None:
            form["client_secret"] = secret
    return service.post("/oidc/token", data=form, auth=auth)


def test_discovery_document(browser):
    r = browser.get("/.well-known/openid-configuration")
    assert r.status_code == 200
    doc = r.json()
    OpenIDProviderMetadata(doc).validate()
    assert doc["issuer"] == BASE  # https://DOMAIN without `url` in isidorus.toml
    assert doc["authorization_endpoint"] == f"{BASE}/oidc/authorize"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "groups" in doc["scopes_supported"] and "groups" in doc["claims_supported"]


def test_a_full_sign_in(host, browser, service):
    gitea = host["gitea"]
    doc = service.get("/.well-known/openid-configuration").json()
    path = lambda url: urlsplit(url).path  # noqa: E731 - the test client speaks to one host
    sign_in = SignIn(gitea.client.client_id)

    # the browser arrives without a session: to the login page, and back
    r = browser.get(sign_in.url(path(doc["authorization_endpoint"])), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    page, r = login_through(browser, r.headers["location"])
    # the login form may be redirected to the service in the end (CSP form-action)
    assert "form-action 'self' https://git.example.org;" in page.headers["content-security-policy"]
    assert r.status_code == 303 and r.headers["location"] == sign_in.url()  # query intact
    code = code_from(browser.get(r.headers["location"], follow_redirects=False), sign_in)

    # the service's server exchanges the code
    r = exchange(service, sign_in, code, gitea.secret)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    tokens = r.json()
    assert tokens["token_type"] == "Bearer" and "refresh_token" not in tokens

    # the ID token is signed by a key of the published set, and says the right things
    keys = KeySet.import_key_set(service.get(path(doc["jwks_uri"])).json())
    assert all("d" not in k.as_dict() for k in keys.keys)  # no private part published
    token = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"])
    assert token.header["kid"] == keys.keys[0].kid
    now = datetime.now(UTC).timestamp()
    jwt.JWTClaimsRegistry(
        now=int(now),
        iss={"essential": True, "value": doc["issuer"]},
        aud={"essential": True, "value": gitea.client.client_id},
        exp={"essential": True},
        nonce={"essential": True, "value": sign_in.nonce},
    ).validate(token.claims)
    assert now < token.claims["exp"] <= now + 3700
    claims = token.claims
    assert claims["preferred_username"] == "alice" and claims["name"] == "Alice Liddell"
    assert claims["email"] == "alice@example.org" and claims["groups"] == ["family"]
    assert re.fullmatch(r"[0-9a-f-]{36}", claims["sub"])
    at_hash = hashlib.sha256(tokens["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(at_hash).rstrip(b"=").decode()

    # a forged signature is refused by the same check
    head, body, sig = tokens["id_token"].split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    with pytest.raises(BadSignatureError):
        jwt.decode(forged, keys, algorithms=["RS256"])

    # userinfo, with the access token
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    info = service.get(path(doc["userinfo_endpoint"]), headers=bearer)
    assert info.status_code == 200
    assert info.json() == {k: claims[k] for k in info.json()}
    assert info.json()["sub"] == claims["sub"] and info.json()["groups"] == ["family"]
    assert service.get("/oidc/userinfo").status_code == 401
    assert (
        service.get("/oidc/userinfo", headers={"Authorization": "Bearer nope"}).status_code == 401
    )

    # the second sign-in needs no login: the session is enough; the subject stays, and
    # auth_time is when the session's login was
    assert now - 60 < claims["auth_time"] <= claims["iat"]
    logged_in = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    db = accounts_ops.open_state(host["dir"])
    with db.write() as conn:
        conn.execute(update(sessions).values(created_at=logged_in))
    db.close()
    again = SignIn(gitea.client.client_id)
    code = sign_in_code(browser, again)
    tokens2 = exchange(service, again, code, gitea.secret).json()
    claims2 = jwt.decode(tokens2["id_token"], keys).claims
    assert claims2["sub"] == claims["sub"] and claims2["nonce"] == again.nonce
    assert claims2["auth_time"] == int(logged_in.timestamp())

    db = accounts_ops.open_state(host["dir"])
    with db.write() as conn:
        signed = conn.execute(
            select(audit_log.c.actor, audit_log.c.target).where(
                audit_log.c.action == "oidc.sign-in"
            )
        ).all()
    db.close()
    assert [tuple(r) for r in signed] == [("alice", "gitea"), ("alice", "gitea")]


def test_claims_follow_the_scopes(host, browser, service):
    gitea = host["gitea"]
    sign_in = SignIn(gitea.client.client_id, scope="openid offline_access")
    code = sign_in_code(browser, sign_in)
    tokens = exchange(service, sign_in, code, gitea.secret).json()
    assert tokens["scope"] == "openid"  # an unknown scope is dropped, not refused
    claims = jwt.decode(tokens["id_token"], KeySet.import_key_set(browser.get("/oidc/jwks").json()))
    assert {"sub", "iss", "aud", "exp", "iat", "nonce"} <= set(claims.claims)
    assert not {"preferred_username", "email", "groups"} & set(claims.claims)


def test_a_public_client_with_pkce_and_client_secret_post(host, browser, service):
    app = host["app"]
    assert app.secret is None
    sign_in = SignIn(app.client.client_id, redirect_uri=APP_CB)
    code = sign_in_code(browser, sign_in, "bob", BOB_PW)  # open to every member
    r = exchange(service, sign_in, code)
    assert r.status_code == 200, r.text
    claims = jwt.decode(
        r.json()["id_token"], KeySet.import_key_set(service.get("/oidc/jwks").json())
    )
    assert claims.claims["aud"] == app.client.client_id and claims.claims["groups"] == []

    gitea = host["gitea"]
    sign_in = SignIn(gitea.client.client_id)
    browser.cookies.clear()
    code = sign_in_code(browser, sign_in)
    r = exchange(service, sign_in, code, gitea.secret, how="post")
    assert r.status_code == 200 and "id_token" in r.json()


def test_a_confidential_client_must_authenticate(host, browser, service):
    gitea = host["gitea"]
    sign_in = SignIn(gitea.client.client_id)
    code = sign_in_code(browser, sign_in)
    wrong = exchange(service, sign_in, code, "not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    no_secret = exchange(service, sign_in, code)  # as if it were public
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"
    # the code was not spent by the failed attempts
    assert exchange(service, sign_in, code, gitea.secret).status_code == 200


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "PKCE is required"),
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge_method": None}, "S256"),
    ],
    ids=["missing", "plain", "method-missing"],
)
def test_pkce_s256_is_required(host, browser, override, words):
    sign_in = SignIn(host["gitea"].client.client_id)
    if override.get("code_challenge_method") == "plain":
        override["code_challenge"] = sign_in.verifier
    login_through(browser, "/login")
    r = browser.get(sign_in.url(**override), follow_redirects=False)
    assert r.status_code == 302
    target = urlsplit(r.headers["location"])
    assert target.netloc == "git.example.org"  # the client is told, through the browser
    q = parse_qs(target.query)
    assert q["error"] == ["invalid_request"] and q["state"] == [sign_in.state]
    assert words in q["error_description"][0] and "code" not in q


def test_a_client_let_off_pkce(host, browser, service):
    db = accounts_ops.open_state(host["dir"])
    legacy = ops.add_client(db, "test", "legacy", [GITEA_CB], pkce_required=False)
    db.close()
    sign_in = SignIn(legacy.client.client_id)
    without = {"code_challenge": None, "code_challenge_method": None}
    login_through(browser, "/login")
    code = code_from(browser.get(sign_in.url(**without), follow_redirects=False), sign_in)
    r = exchange(service, sign_in, code, legacy.secret, verifier="")
    assert r.status_code == 200 and "id_token" in r.json()
    # it still may not use `plain`, and a challenge it sends is checked
    r = browser.get(
        sign_in.url(code_challenge=sign_in.verifier, code_challenge_method="plain"),
        follow_redirects=False,
    )
    assert "error=invalid_request" in r.headers["location"]
    sign_in = SignIn(legacy.client.client_id)  # a new nonce: a nonce seen twice is a replay
    code = code_from(browser.get(sign_in.url(), follow_redirects=False), sign_in)
    r = exchange(service, sign_in, code, legacy.secret, verifier="")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_requests_the_client_cannot_be_told_of_stay_here(host, browser):
    login_through(browser, "/login")
    gitea = host["gitea"].client
    for sign_in in (
        SignIn(gitea.client_id, redirect_uri="https://evil.example/callback"),
        SignIn(gitea.client_id, redirect_uri=GITEA_CB + "/more"),  # exact match only
        SignIn("no-such-client"),
    ):
        r = browser.get(sign_in.url(), follow_redirects=False)
        assert r.status_code == 400 and "location" not in r.headers
        assert "sign-in request was refused" in r.text
    # with two registered redirect URIs, the request must name one
    r = browser.get(SignIn(gitea.client_id).url(redirect_uri=None), follow_redirects=False)
    assert r.status_code == 400 and "location" not in r.headers


def test_wrong_verifier_reused_and_expired_codes(host, browser, service):
    gitea = host["gitea"]
    sign_in = SignIn(gitea.client.client_id)
    code = sign_in_code(browser, sign_in)
    r = exchange(service, sign_in, code, gitea.secret, verifier=secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = exchange(service, sign_in, code, gitea.secret, redirect_uri="https://git.example.org/other")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    first = exchange(service, sign_in, code, gitea.secret)
    assert first.status_code == 200
    bearer = {"Authorization": f"Bearer {first.json()['access_token']}"}
    assert service.get("/oidc/userinfo", headers=bearer).status_code == 200
    again = exchange(service, sign_in, code, gitea.secret)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # a code seen twice has leaked: the token issued for it is revoked
    assert service.get("/oidc/userinfo", headers=bearer).status_code == 401

    late = SignIn(gitea.client.client_id)
    code = sign_in_code(browser, late)
    db = accounts_ops.open_state(host["dir"])
    with db.write() as conn:
        conn.execute(update(oidc_codes).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    db.close()
    r = exchange(service, late, code, gitea.secret)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    # a code is good for the client it was issued to only
    app = host["app"]
    other = SignIn(gitea.client.client_id)
    code = sign_in_code(browser, other)
    stolen = SignIn(app.client.client_id, redirect_uri=GITEA_CB)
    stolen.verifier = other.verifier
    r = exchange(service, stolen, code)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_a_member_outside_the_allowed_groups_is_refused(host, browser):
    sign_in = SignIn(host["gitea"].client.client_id)
    login_through(browser, "/login", "bob", BOB_PW)
    r = browser.get(sign_in.url(), follow_redirects=False)
    assert r.status_code == 403
    assert "bob may not use gitea" in r.text and "family" in r.text
    browser.cookies.clear()
    login_through(browser, "/login", "admin", "the keeper's pass")
    code_from(browser.get(sign_in.url(), follow_redirects=False), sign_in)  # admins pass


def test_disabled_users_codes_and_tokens_stop_working(host, browser, service):
    gitea = host["gitea"]
    sign_in = SignIn(gitea.client.client_id)
    code = sign_in_code(browser, sign_in)
    tokens = exchange(service, sign_in, code, gitea.secret).json()
    pending = SignIn(gitea.client.client_id)
    pending_code = sign_in_code(browser, pending)

    db = accounts_ops.open_state(host["dir"])
    accounts_ops.set_disabled(db, "test", "alice", True)
    db.close()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert service.get("/oidc/userinfo", headers=bearer).status_code == 401
    r = exchange(service, pending, pending_code, gitea.secret)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # and the browser's session is gone: a new sign-in asks for a login, which fails
    r = browser.get(SignIn(gitea.client.client_id).url(), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert login_through(browser, r.headers["location"])[1].status_code == 401


def test_leaving_the_group_or_removing_the_client_ends_access(host, browser, service):
    gitea = host["gitea"]
    sign_in = SignIn(gitea.client.client_id)
    tokens = exchange(service, sign_in, sign_in_code(browser, sign_in), gitea.secret).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    db = accounts_ops.open_state(host["dir"])
    accounts_ops.remove_member(db, "test", "family", "alice")
    assert service.get("/oidc/userinfo", headers=bearer).status_code == 401
    accounts_ops.add_member(db, "test", "family", "alice")
    assert service.get("/oidc/userinfo", headers=bearer).status_code == 200
    ops.remove_client(db, "test", "gitea")
    db.close()
    assert service.get("/oidc/userinfo", headers=bearer).status_code == 401
    r = browser.get(SignIn(gitea.client.client_id).url(), follow_redirects=False)
    assert r.status_code == 400


def test_prompt_none_without_a_session(host, browser):
    sign_in = SignIn(host["gitea"].client.client_id)
    r = browser.get(sign_in.url(prompt="none"), follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith(GITEA_CB + "?")
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["login_required"]


def test_a_posted_authorization_request_becomes_its_get(host, browser):
    sign_in = SignIn(host["gitea"].client.client_id)
    params = parse_qs(urlsplit(sign_in.url()).query)
    r = browser.post(
        "/oidc/authorize", data={k: v[0] for k, v in params.items()}, follow_redirects=False
    )
    assert r.status_code == 303
    assert parse_qs(urlsplit(r.headers["location"]).query) == params


def test_the_signing_key_is_made_once_and_kept_private(host, app, browser):
    kid = browser.get("/oidc/jwks").json()["keys"][0]["kid"]
    path = os.path.join(host["dir"], KEY_NAME)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with TestClient(create_app(host["dir"]), base_url=BASE) as restarted:
        assert restarted.get("/oidc/jwks").json()["keys"][0]["kid"] == kid


def test_the_issuer_comes_from_url(host):
    with open(os.path.join(host["dir"], "isidorus.toml"), "a") as f:
        f.write('url = "https://id.example.org/"\n')
    with TestClient(create_app(host["dir"]), base_url=BASE) as c:
        doc = c.get("/.well-known/openid-configuration").json()
    assert doc["issuer"] == "https://id.example.org"
    assert doc["token_endpoint"] == "https://id.example.org/oidc/token"


def test_an_issuer_without_https_is_refused(host):
    with open(os.path.join(host["dir"], "isidorus.toml"), "a") as f:
        f.write('url = "http://id.example.org"\n')
    with TestClient(create_app(host["dir"]), base_url=BASE) as c:
        r = c.get("/.well-known/openid-configuration")
        assert r.status_code == 500 and "needs HTTPS" in r.text
        r = c.get(SignIn(host["gitea"].client.client_id).url())
        assert r.status_code == 500 and "needs HTTPS" in r.text
