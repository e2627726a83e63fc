"""Where a login goes next: a page of this host, or a service on the host's domain (nginx
sends visitors there with the address they asked for), never another site."""

import pytest
from starlette.testclient import TestClient

from isidorus.ops import accounts as ops
from isidorus.web.app import create_app
from isidorus.web.base import safe_next_url
from tests.web.test_app import PW, csrf_of

DOMAIN = "example.org"

ACCEPTED = [
    "/portal",
    "/oidc/authorize?client_id=x&state=y",
    "https://example.org/",
    "https://example.org/portal?x=1#top",
    "https://radicale.example.org/.web/",
    "https://radicale.example.org:8443/.web/?a=b",
    "https://a.b.example.org/x",
    "HTTPS://Radicale.Example.ORG/.web/",
    "https://radicale.example.org/%2F%2Fevil.example/",
    "https://example.org/user@home",  # an @ in the path names no user
]
REFUSED = [
    "",
    "portal",
    "//evil.example/",
    "///evil.example/",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",  # browsers drop the tab: //evil.example
    "/portal\r\nSet-Cookie: x=y",
    "https://evil.example/",
    "https://example.org.evil.example/",
    "https://evilexample.org/",
    "https://example.org@evil.example/",
    "https://user:pw@radicale.example.org/",
    "https://@example.org/",
    "https://evil.example\\@example.org/",
    "https://evil.example\\.example.org/",
    "https://evil.example#.example.org",
    "https://evil.example?.example.org",
    "https://example.org\t.evil.example/",
    "https://radicale.example.org/\n",
    "https://radicale.example.org/\x00",
    "https://radicale.example.org/a b",
    "https://exämple.org/",
    "https://xn--exmple-cua.org/",
    "https://example.org./",
    "https://example.org:99999/",
    "https://example.org:port/",
    "https://[::1]/",
    "https:/example.org/",
    "https:example.org",
    "https:///example.org/",
    "http://example.org/",  # plain http once the host is served over https
    "javascript://example.org/%0aalert(1)",
    "ftp://example.org/",
    "data:text/html,hi",
    " https://example.org/",
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepted(value):
    assert safe_next_url(value, DOMAIN, allow_http=False) == value


@pytest.mark.parametrize("value", REFUSED)
def test_refused(value):
    assert safe_next_url(value, DOMAIN, allow_http=False) == "/portal"


def test_plain_http_only_when_the_host_is_not_served_over_https():
    assert safe_next_url("http://cal.example.org/", DOMAIN, allow_http=True) == (
        "http://cal.example.org/"
    )
    assert safe_next_url("http://evil.example/", DOMAIN, allow_http=True) == "/portal"
    assert safe_next_url("http://cal.example.org/", DOMAIN, allow_http=False) == "/portal"


def test_no_domain_accepts_no_address():
    assert safe_next_url("https://x./", "", allow_http=True) == "/portal"


@pytest.fixture
def client(tmp_path):
    d = str(tmp_path / "host")
    ops.init_host(d, domain=DOMAIN, admin="admin", email="admin@example.org", password=PW)
    with TestClient(create_app(d), base_url=f"http://{DOMAIN}") as c:
        yield c


def login(client, nxt):
    page = client.get("/login", params={"next": nxt})
    return page, client.post(
        "/login",
        data={"csrf": csrf_of(page.text), "name": "admin", "password": PW, "next": nxt},
        follow_redirects=False,
    )


def test_a_login_returns_to_the_service_that_sent_the_visitor(client):
    nxt = "http://radicale.example.org/.web/?x=1"  # this host is not served over https
    page, r = login(client, nxt)
    assert 'name="next" value="http://radicale.example.org/.web/?x=1"' in page.text
    # the form's answer redirects there: its CSP must let the browser follow
    assert (
        "form-action 'self' http://radicale.example.org;" in page.headers["content-security-policy"]
    )
    assert r.status_code == 303 and r.headers["location"] == nxt
    cookie = r.headers["set-cookie"]
    assert "Domain=example.org" in cookie or "domain=example.org" in cookie  # the service's too


@pytest.mark.parametrize("nxt", ["https://evil.example/", "//evil.example/", "https://a@b/"])
def test_a_login_never_goes_to_another_site(client, nxt):
    page, r = login(client, nxt)
    assert "evil" not in page.headers["content-security-policy"]
    assert 'name="next" value="/portal"' in page.text
    assert r.status_code == 303 and r.headers["location"] == "/portal"
