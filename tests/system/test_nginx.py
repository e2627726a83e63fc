"""Sites behind nginx: what render() writes for each kind of site, what publish refuses,
and a real nginx in front of real upstreams and a real `isidorus serve` (single sign-on,
TLS, removal, a configuration nginx refuses)."""

from __future__ import annotations

import datetime
import http.server
import json
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import jinja2
import pytest

from isidorus.errors import UsageError
from isidorus.services.render import SHARED_TEMPLATES
from isidorus.system.errors import HostError
from isidorus.system.nginx import SHARED, Nginx, Site, complaint
from isidorus.system.tls import Certificate, self_signed
from tests.integration.conftest import Isidorus
from tests.integration.servers import free_port, wait_for_port
from tests.system.nginx_server import running_nginx

AUTH = "http://127.0.0.1:8080/auth/check"
LOGIN = "https://portal.example.org/login"
CERT = Certificate(
    "/etc/isidorus/tls/cal.example.org.crt",
    "/etc/isidorus/tls/cal.example.org.key",
    "cal.example.org",
    datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
    self_signed=True,
)


def make_site(**kw) -> Site:
    fields = {
        "service": "radicale",
        "domain": "cal.example.org",
        "path": "/",
        "port": 5232,
        "sso": "header",
        "sso_header": "X-Remote-User",
        "allow": ("family", "friends"),
        "tls": None,
    }
    return Site(**{**fields, **kw})


NGINX = Nginx("/etc/nginx/isidorus", AUTH, LOGIN)


def block(text: str, opening: str) -> str:
    """The lines of one `location …{` block (blocks here hold no nested block)."""
    start = text.index(opening + " {")
    return text[start : text.index("\n}", start)]


# -- render


def test_a_header_site_asks_isidorus_and_names_the_user():
    text = NGINX.render(make_site())
    main = block(text, "location /")
    assert "auth_request /_isidorus_auth/radicale;" in main
    assert "proxy_set_header X-Remote-User $isidorus_user;" in main
    assert "error_page 401 = @isidorus_login_radicale;" in main
    assert "proxy_pass http://127.0.0.1:5232;" in main
    auth = block(text, "location = /_isidorus_auth/radicale")
    assert "internal;" in auth and 'proxy_pass "http://isidorus_auth/auth/check";' in auth
    assert 'proxy_set_header X-Isidorus-Allow "family,friends";' in auth
    assert "proxy_pass_request_body off;" in auth
    login = block(text, "location @isidorus_login_radicale")
    assert f'return 302 "{LOGIN}?next=$isidorus_next";' in login


def test_nginx_keeps_its_connections_to_an_http_isidorus():
    auth = block(NGINX.render(make_site()), "location = /_isidorus_auth/radicale")
    assert "proxy_http_version 1.1;" in auth and 'proxy_set_header Connection "";' in auth
    assert 'proxy_set_header Host "127.0.0.1:8080";' in auth
    shared = NGINX.render_shared()
    assert "upstream isidorus_auth {\n    server 127.0.0.1:8080;\n    keepalive 32;" in shared
    # over https, nginx asks the address as it is written (its name, its certificate)
    remote = Nginx("/etc/nginx/isidorus", "https://sso.example.org/auth/check", LOGIN)
    auth = block(remote.render(make_site()), "location = /_isidorus_auth/radicale")
    assert 'proxy_pass "https://sso.example.org/auth/check";' in auth
    assert "upstream" not in remote.render_shared()


def test_a_header_site_open_to_every_member_still_sets_the_allowed_groups():
    auth = block(NGINX.render(make_site(allow=())), "location = /_isidorus_auth/radicale")
    assert 'proxy_set_header X-Isidorus-Allow "";' in auth  # a client's own is never passed


def test_a_login_url_with_a_query_gets_next_after_it():
    nginx = Nginx("/etc/nginx/isidorus", AUTH, "https://example.org/login?lang=fr")
    assert '"https://example.org/login?lang=fr&next=$isidorus_next"' in nginx.render(make_site())


@pytest.mark.parametrize("kind", ["ldap", "oidc", "none"])
def test_other_kinds_are_plain_proxies_that_drop_identity_headers(kind):
    text = NGINX.render(make_site(sso=kind, sso_header=None))
    assert "auth_request" not in text and "X-Isidorus-Allow" not in text
    assert "@isidorus_login" not in text
    for header in ("X-Remote-User", "Remote-User", "X-Forwarded-User", "X-Isidorus-User"):
        assert f'proxy_set_header {header} "";' in text


def test_a_header_no_longer_trusted_is_dropped_too():
    text = NGINX.render(make_site(sso="none", sso_header="X-Webauth-User"))
    assert 'proxy_set_header X-Webauth-User "";' in text


def test_every_site_sets_the_forwarding_headers_websockets_and_a_body_limit():
    for site in (make_site(), make_site(path="/radicale", sso="none", sso_header=None)):
        text = NGINX.render(site)
        for line in (
            "proxy_set_header Host $http_host;",
            "proxy_set_header X-Real-IP $remote_addr;",
            "proxy_set_header X-Forwarded-For $remote_addr;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $isidorus_connection;",
            "proxy_http_version 1.1;",
            "client_max_body_size 1g;",
        ):
            assert line in text, (site.path, line)


def test_a_php_site_hands_its_pages_to_fastcgi_and_serves_its_files():
    site = make_site(fastcgi_root="/usr/share/wiki", index="doku.php", deny=("/data/",))
    text = NGINX.render(site)
    assert 'root "/usr/share/wiki";' in text and "index doku.php;" in text
    assert "location ^~ /data/ { return 404; }" in text
    php = text[text.index("location ~ \\.php$") :]
    assert "fastcgi_pass 127.0.0.1:5232;" in php
    assert "fastcgi_param SCRIPT_FILENAME $request_filename;" in php
    assert "if (!-f $request_filename) { return 404; }" in php  # no script of a client's
    # the member's name in the header's CGI name and REMOTE_USER; a client's own dropped
    assert "fastcgi_param HTTP_X_REMOTE_USER $isidorus_user;" in php
    assert "fastcgi_param REMOTE_USER $isidorus_user;" in php
    for header in ("HTTP_REMOTE_USER", "HTTP_X_FORWARDED_USER", "HTTP_PROXY"):
        assert f'fastcgi_param {header} "";' in php
    assert "auth_request /_isidorus_auth/radicale;" in text
    assert "proxy_pass http://127.0.0.1" not in text


def test_a_php_site_under_a_path_aliases_its_root_and_routes_to_its_index():
    site = make_site(
        path="/links", fastcgi_root="/usr/share/links/", front_controller=True, sso="none",
        sso_header=None,
    )  # fmt: skip
    text = NGINX.render(site)
    assert 'alias "/usr/share/links/";' in text
    assert "try_files $uri $uri/ @isidorus_front_radicale;" in text
    assert "location @isidorus_front_radicale { rewrite ^ /links/index.php last; }" in text
    assert 'fastcgi_param REMOTE_USER "";' in text and "auth_request" not in text


def test_a_service_that_answers_only_to_its_own_address_gets_it_as_host():
    text = NGINX.render(make_site(upstream_host="localhost"))
    assert "proxy_set_header Host localhost;" in text and "$http_host;" in text  # forwarded
    assert "proxy_set_header Host $http_host;" in NGINX.render(make_site())


def test_apps_that_sign_in_by_http_basic_are_asked_for_a_password():
    text = NGINX.render(make_site(basic=True))
    login = text[text.index("location @isidorus_login_radicale") :]
    assert "if ($isidorus_challenge) {" in login
    assert (
        """add_header WWW-Authenticate 'Basic realm="cal.example.org", charset="UTF-8"'""" in login
    )
    assert "return 401;" in login and "return 302" in login
    assert "$isidorus_challenge" not in NGINX.render(make_site())  # browsers only: the login
    assert '"~^(GET|HEAD):$" 0;' in NGINX.render_shared()
    auth = block(text, "location = /_isidorus_auth/radicale")
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in auth  # throttled by it


def test_a_whole_domain_passes_the_uri_as_it_came():
    text = NGINX.render(make_site(path="/"))
    assert "location / {" in text and "location = / " not in text
    assert "proxy_pass http://127.0.0.1:5232;" in text
    assert 'proxy_set_header X-Script-Name "";' in text  # a client's own is not believed


def test_a_path_strips_its_prefix_and_tells_the_service():
    text = NGINX.render(make_site(path="/radicale"))
    assert "return 301 /radicale/$is_args$args;" in block(text, "location = /radicale")
    main = block(text, "location /radicale/")
    assert "proxy_pass http://127.0.0.1:5232/;" in main
    assert "proxy_set_header X-Script-Name /radicale;" in main
    assert "proxy_set_header X-Forwarded-Prefix /radicale;" in main
    assert "auth_request /_isidorus_auth/radicale;" in main


def test_a_site_without_tls_is_one_server_on_http():
    text = NGINX.render_server(make_site())
    assert text.count("server {") == 1
    assert "listen *:80;" in text and "listen [::]:80;" in text
    assert "server_name cal.example.org;" in text and "ssl" not in text
    assert 'include "/etc/nginx/isidorus/isidorus-cal.example.org.d/*.conf";' in text
    assert 'alias "/var/lib/isidorus-acme-challenge/";' in text


def test_a_site_with_tls_redirects_http_but_not_acme_challenges():
    text = NGINX.render_server(make_site(tls=CERT))
    plain, secure = text.split("server {")[1:]
    assert "location ^~ /.well-known/acme-challenge/" in plain
    assert "return 301 https://$host$request_uri;" in plain and "include" not in plain
    assert "listen *:443 ssl;" in secure and "listen [::]:443 ssl;" in secure
    assert f'ssl_certificate "{CERT.cert_file}";' in secure
    assert f'ssl_certificate_key "{CERT.key_file}";' in secure
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in secure
    assert "Strict-Transport-Security" not in text
    assert "include" in secure


def test_other_ports_show_in_the_redirect():
    text = NGINX.render_server(make_site(tls=CERT, listen_http=8080, listen_https=8443))
    assert "listen *:8080;" in text and "listen *:8443 ssl;" in text
    assert "return 301 https://$host:8443$request_uri;" in text


def test_hsts_only_when_asked_and_never_for_a_self_signed_certificate():
    nginx = Nginx("/etc/nginx/isidorus", AUTH, LOGIN, hsts=True)
    assert "Strict-Transport-Security" not in nginx.render_server(make_site(tls=CERT))
    real = Certificate(CERT.cert_file, CERT.key_file, CERT.domain, CERT.not_after, False)
    assert "Strict-Transport-Security" in nginx.render_server(make_site(tls=real))


BAD = [
    ({"domain": "cal.example.org; include /etc/passwd"}, "is not a domain name"),
    ({"domain": 'cal"example.org'}, "is not a domain name"),
    ({"domain": "cal example.org"}, "is not a domain name"),
    ({"domain": "Cal.Example.org"}, "in lowercase"),
    ({"domain": "-cal.example.org"}, "is not a domain name"),
    ({"domain": ""}, "is not a domain name"),
    ({"path": "/rad icale"}, "is not a path"),
    ({"path": "/radicale;"}, "is not a path"),
    ({"path": "/radicale/"}, "is not a path"),
    ({"path": "radicale"}, "is not a path"),
    ({"path": "/.."}, "is not a path"),
    ({"path": '/a"b'}, "is not a path"),
    ({"path": "/{x}"}, "is not a path"),
    ({"service": "Radicale"}, "is not a service id"),
    ({"port": 0}, "is not a port"),
    ({"port": 70000}, "is not a port"),
    ({"listen_https": True}, "is not a port"),
    ({"sso": "basic"}, "is not one of header, ldap, oidc, none"),
    ({"sso_header": None}, "needs the header"),
    ({"sso_header": "X-Remote-User; add_header X 1"}, "cannot carry the user's name"),
    ({"sso_header": "Host"}, "cannot carry the user's name"),
    ({"allow": ('family"',)}, "is not a group name"),
    ({"allow": ("a,b",)}, "is not a group name"),
    ({"tls": Certificate('/x/"a.crt', "/x/a.key", "a", CERT.not_after, True)}, "cannot be named"),
    ({"tls": Certificate("/x/$host.crt", "/x/a.key", "a", CERT.not_after, True)}, "cannot be"),
    ({"tls": Certificate("x.crt", "/x/a.key", "a", CERT.not_after, True)}, "cannot be named"),
    ({"tls": CERT, "listen_https": 80}, "are both 80"),
    ({"upstream_host": "localhost; deny all"}, "is not a Host to send"),
    ({"fastcgi_root": '/srv/"x'}, "cannot be a site's root"),
    ({"fastcgi_root": "srv/x"}, "cannot be a site's root"),
    ({"fastcgi_root": "/srv/x", "index": "index.html"}, "is not an index page"),
    ({"fastcgi_root": "/srv/x", "deny": ("data",)}, "is not a folder to deny"),
    ({"fastcgi_root": "/srv/x", "deny": ("/a b/",)}, "is not a folder to deny"),
]


@pytest.mark.parametrize(("fields", "message"), BAD, ids=[str(f) for f, _ in BAD])
def test_a_site_that_cannot_be_written_safely_is_refused_before_anything(tmp_path, fields, message):
    site = make_site(**fields)
    nginx = Nginx(str(tmp_path), AUTH, LOGIN, test_cmd=("false",), reload_cmd=("false",))
    with pytest.raises(UsageError, match=re.escape(message)) as exc:
        nginx.publish(site)
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError):
        nginx.render(site)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("what", "value"),
    [
        ("auth_url", "http://127.0.0.1:8080/auth/check; deny all"),
        ("auth_url", "ftp://127.0.0.1/auth"),
        ("login_url", 'https://example.org/login"'),
        ("login_url", "https://example.org/$request_uri"),
    ],
)
def test_urls_that_cannot_be_written_safely_are_refused(what, value):
    urls = {"auth_url": AUTH, "login_url": LOGIN, what: value}
    with pytest.raises(UsageError, match=f"^{what} .* is not a URL nginx can use"):
        Nginx("/etc/nginx/isidorus", **urls)


def test_nginx_s_complaint_is_its_emerg_line():
    output = (
        'nginx: [emerg] cannot load certificate "/x.crt": BIO_new_file() failed\n'
        "nginx: configuration file /etc/nginx/nginx.conf test failed\n"
    )
    assert complaint(output) == '[emerg] cannot load certificate "/x.crt": BIO_new_file() failed'
    assert complaint("something odd\n") == "something odd"
    logged = "2026/12/04 23:38:26 [emerg] 24446#24446: cannot load certificate\n"
    assert complaint(logged + output) == "[emerg] cannot load certificate"


# -- the files, with stand-ins for nginx


def make_nginx(tmp_path: Path, test: str = "true") -> Nginx:
    return Nginx(str(tmp_path / "sites"), AUTH, LOGIN, test_cmd=(test,), reload_cmd=("true",))


def files(tmp_path: Path) -> dict[str, str]:
    sites = tmp_path / "sites"
    return {
        str(p.relative_to(sites)): p.read_text()
        for p in sorted(sites.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_services_on_one_domain_share_its_server_file(tmp_path):
    nginx = make_nginx(tmp_path)
    nginx.publish(make_site(service="radicale", path="/radicale"))
    nginx.publish(make_site(service="whoogle", path="/", sso="none", sso_header=None))
    nginx.publish(make_site(service="bepasty", domain="paste.example.org"))
    assert set(files(tmp_path)) == {
        SHARED,
        "isidorus-cal.example.org.conf",
        "isidorus-cal.example.org.d/radicale.conf",
        "isidorus-cal.example.org.d/whoogle.conf",
        "isidorus-paste.example.org.conf",
        "isidorus-paste.example.org.d/bepasty.conf",
    }
    assert nginx.published() == ["bepasty", "radicale", "whoogle"]
    nginx.unpublish("radicale")
    assert "isidorus-cal.example.org.conf" in files(tmp_path)  # whoogle is still there
    nginx.unpublish("whoogle")
    nginx.unpublish("whoogle")  # absent: nothing to do
    assert set(files(tmp_path)) == {
        SHARED,
        "isidorus-paste.example.org.conf",
        "isidorus-paste.example.org.d/bepasty.conf",
    }
    assert not (tmp_path / "sites" / "isidorus-cal.example.org.d").exists()
    nginx.unpublish("bepasty")
    assert files(tmp_path) == {} and nginx.published() == []


def test_a_place_taken_by_another_service_is_refused(tmp_path):
    nginx = make_nginx(tmp_path)
    nginx.publish(make_site(service="radicale", path="/dav"))
    before = files(tmp_path)
    with pytest.raises(UsageError, match=r"^cal.example.org/dav is already radicale's: "):
        nginx.publish(make_site(service="baikal", path="/dav"))
    assert files(tmp_path) == before
    nginx.publish(make_site(service="radicale", path="/dav", allow=("family",)))  # itself: fine


def test_a_site_moved_to_another_domain_leaves_the_old_one(tmp_path):
    nginx = make_nginx(tmp_path)
    nginx.publish(make_site())
    nginx.publish(make_site(domain="dav.example.org"))
    assert set(files(tmp_path)) == {
        SHARED,
        "isidorus-dav.example.org.conf",
        "isidorus-dav.example.org.d/radicale.conf",
    }
    assert nginx.published() == ["radicale"]


def test_a_configuration_refused_puts_every_file_back(tmp_path):
    make_nginx(tmp_path).publish(make_site(service="radicale", path="/radicale"))
    before = files(tmp_path)
    refuse = tmp_path / "refuse"
    refuse.write_text(
        "#!/bin/sh\necho 'nginx: [emerg] unknown directive \"x\" in /a.conf:3' >&2\n"
        "echo 'nginx: configuration file /etc/nginx/nginx.conf test failed' >&2\nexit 1\n"
    )
    refuse.chmod(0o755)
    nginx = make_nginx(tmp_path, str(refuse))
    for change in (
        lambda: nginx.publish(make_site(service="radicale", path="/radicale", port=5233)),
        lambda: nginx.publish(make_site(service="radicale", domain="dav.example.org")),
        lambda: nginx.publish(make_site(service="bepasty", domain="paste.example.org")),
        lambda: nginx.unpublish("radicale"),
    ):
        with pytest.raises(HostError) as exc:
            change()
        assert str(exc.value).startswith("nginx refused the ") and str(exc.value).endswith(
            '([emerg] unknown directive "x" in /a.conf:3); the previous configuration is back'
        )
        assert files(tmp_path) == before
        assert {p.name for p in (tmp_path / "sites").iterdir()} == {
            ".isidorus.lock",
            SHARED,
            "isidorus-cal.example.org.conf",
            "isidorus-cal.example.org.d",
        }


def test_a_missing_nginx_is_one_line(tmp_path):
    nginx = make_nginx(tmp_path, "/nonexistent/nginx")
    with pytest.raises(HostError, match=r"/nonexistent/nginx is not installed"):
        nginx.publish(make_site())
    assert files(tmp_path) == {}


# -- a real nginx -t for combinations


COMBINATIONS = [
    [make_site(), make_site(service="bepasty", path="/paste", sso="none", sso_header=None)],
    [
        make_site(path="/a", sso="ldap", sso_header=None),
        make_site(service="wiki", path="/a/b", allow=()),
        make_site(service="chat", path="/c", sso="oidc", sso_header=None),
        make_site(service="files", path="/", sso_header="Remote-User"),
    ],
    [make_site(tls=None), make_site(service="pad", domain="pad.example.org", path="/pad")],
    [make_site(path="/x", sso="none", sso_header=None), make_site(service="why", path="/y")],
    [
        make_site(fastcgi_root="/usr/share/nginx", deny=("/a/", "/b/")),
        make_site(service="links", path="/links", fastcgi_root="/srv", front_controller=True),
    ],
]


@pytest.mark.parametrize(
    "sites", COMBINATIONS, ids=["root+path", "nested", "domains", "two", "fastcgi"]
)
def test_nginx_accepts_every_combination(tmp_path, sites):
    cert = self_signed("cal.example.org", str(tmp_path / "tls"))
    with running_nginx(tmp_path) as server:
        nginx = server.nginx(AUTH, LOGIN)
        for site in sites:
            tls = cert if site.domain == "cal.example.org" else None
            nginx.publish(
                Site(
                    **{
                        **site.__dict__,
                        "tls": tls,
                        "listen_http": server.http_port,
                        "listen_https": server.https_port,
                    }
                )
            )
        for site in sites:
            nginx.unpublish(site.service)
        assert nginx.published() == []


# -- a real nginx in front of real services


class Upstream(http.server.BaseHTTPRequestHandler):
    """Answers what it was asked (path and headers) as JSON; echoes a websocket's bytes."""

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.write(self.rfile.read(5))
            self.wfile.flush()
            self.close_connection = True
            return
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def upstreams():
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [s.server_address[1] for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


PASSWORDS = {"alice": "winter apples keep well", "bob": "summer pears ripen fast"}


@pytest.fixture
def isidorus(tmp_path):
    """`isidorus serve` on a host with alice (in the family group) and bob; its port."""
    run = Isidorus(tmp_path / "cache", tmp_path / "no-such-config.toml")
    home = tmp_path / "host"
    try:
        run("init", "--data-dir", home, "--password-stdin", input="the keeper's passphrase\n")
        for name, password in PASSWORDS.items():
            run("user", "add", name, "--email", f"{name}@example.org", "--password-stdin",
                "--data-dir", home, input=password + "\n")  # fmt: skip
        run("group", "add", "family", "--data-dir", home)
        run("group", "add-member", "family", "alice", "--data-dir", home)
        port = free_port()
        web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}")
        wait_for_port(port, web, "isidorus serve")
        yield port
    finally:
        run.reap()


def login(client: httpx2.Client, port: int, name: str) -> None:
    page = client.get(f"http://127.0.0.1:{port}/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        f"http://127.0.0.1:{port}/login",
        data={"csrf": csrf, "name": name, "password": PASSWORDS[name], "next": "/portal"},
    )
    assert r.status_code == 303, r.text


def seen(response: httpx2.Response) -> dict:
    """What the upstream was asked, with header names in lowercase."""
    assert response.status_code == 200, (response.status_code, response.text)
    doc = response.json()
    return {"path": doc["path"], "headers": {k.lower(): v for k, v in doc["headers"].items()}}


def test_single_sign_on_and_a_public_service_through_nginx(tmp_path, upstreams, isidorus):
    calendar, wiki = upstreams
    login_url = f"http://127.0.0.1:{isidorus}/login"
    with running_nginx(tmp_path) as server:
        nginx = server.nginx(f"http://127.0.0.1:{isidorus}/auth/check", login_url)
        port = server.http_port
        nginx.publish(
            make_site(
                service="calendar", domain="cal.example.test", port=calendar,
                allow=("family",), listen_http=port,
            )
        )  # fmt: skip
        nginx.publish(
            make_site(
                service="wiki", domain="pub.example.test", path="/wiki", port=wiki,
                sso="none", sso_header=None, listen_http=port,
            )
        )  # fmt: skip
        assert server.get("pub.example.test", "/wiki/").status_code == 200
        spoof = {"X-Remote-User": "admin", "X-Forwarded-For": "10.9.9.9", "Remote-User": "admin"}

        # not logged in: to the login page, with the address asked for, escaped
        asked = "/a%20b/c?q=x&lang=fr+en&p=%26"
        r = server.get("cal.example.test", asked)
        assert r.status_code == 302
        where = urlsplit(r.headers["location"])
        assert f"{where.scheme}://{where.netloc}{where.path}" == login_url
        assert parse_qs(where.query) == {"next": [f"http://cal.example.test:{port}{asked}"]}

        with httpx2.Client(timeout=10) as alice:
            login(alice, isidorus, "alice")
            url = f"http://127.0.0.1:{port}/events/today?x=1"
            got = seen(alice.get(url, headers={"Host": f"cal.example.test:{port}", **spoof}))
            assert got["path"] == "/events/today?x=1"
            h = got["headers"]
            assert h["x-remote-user"] == "alice"  # nginx's, not the client's "admin"
            assert "remote-user" not in h
            assert h["x-forwarded-for"] == "127.0.0.1" and h["x-real-ip"] == "127.0.0.1"
            assert h["x-forwarded-proto"] == "http"
            assert h["host"] == f"cal.example.test:{port}"

        with httpx2.Client(timeout=10) as bob:  # logged in, not in the family
            login(bob, isidorus, "bob")
            r = bob.get(f"http://127.0.0.1:{port}/", headers={"Host": f"cal.example.test:{port}"})
            assert r.status_code == 403

        # the public service: no login, no identity a client makes up, its prefix told
        got = seen(server.get("pub.example.test", "/wiki/page?a=1", headers=spoof))
        assert got["path"] == "/page?a=1"
        assert "x-remote-user" not in got["headers"] and "remote-user" not in got["headers"]
        assert got["headers"]["x-script-name"] == "/wiki"
        assert got["headers"]["x-forwarded-prefix"] == "/wiki"
        r = server.get("pub.example.test", "/wiki?a=1")
        assert r.status_code == 301
        assert r.headers["location"] == f"http://pub.example.test:{port}/wiki/?a=1"
        assert server.get("pub.example.test", "/elsewhere").status_code == 404

        # a websocket reaches the service and speaks through nginx
        with socket.create_connection(("127.0.0.1", port), timeout=10) as ws:
            ws.sendall(
                b"GET /wiki/socket HTTP/1.1\r\nHost: pub.example.test\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += ws.recv(4096)
            assert answer.startswith(b"HTTP/1.1 101 ")
            ws.sendall(b"hello")
            echoed = answer.split(b"\r\n\r\n", 1)[1]
            while len(echoed) < 5:
                echoed += ws.recv(4096)
            assert echoed == b"hello"

        # taken away: nginx's default answers
        nginx.unpublish("calendar")
        assert server.get("cal.example.test", "/").status_code == 404
        assert nginx.published() == ["wiki"]
        assert server.get("pub.example.test", "/wiki/").status_code == 200


def test_nginx_asks_isidorus_over_connections_it_keeps(tmp_path, upstreams, isidorus):
    with running_nginx(tmp_path) as server:
        nginx = server.nginx(f"http://127.0.0.1:{isidorus}/auth/check", "http://x/login")
        nginx.publish(
            make_site(service="calendar", domain="cal.example.test", port=upstreams[0],
                      allow=("family",), listen_http=server.http_port)
        )  # fmt: skip
        with httpx2.Client(timeout=10) as alice:
            login(alice, isidorus, "alice")
            cookie = f"isidorus_session={alice.cookies['isidorus_session']}"
        for _ in range(20):
            r = server.get("cal.example.test", "/", headers={"Cookie": cookie})
            assert seen(r)["headers"]["x-remote-user"] == "alice"
        # every check went over the connections nginx keeps: some are still open
        out = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( dport = :{isidorus} )"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert 1 <= len(out.splitlines()) <= 2, out


def test_tls_with_the_self_signed_certificate(tmp_path, upstreams):
    cert = self_signed("secure.example.test", str(tmp_path / "tls"))
    with running_nginx(tmp_path) as server:
        nginx = server.nginx(AUTH, LOGIN)
        site = make_site(
            service="files", domain="secure.example.test", port=upstreams[0], sso="none",
            sso_header=None, tls=cert, listen_http=server.http_port,
            listen_https=server.https_port,
        )  # fmt: skip
        nginx.publish(site)
        assert server.get("secure.example.test", "/").status_code == 301
        r = server.get("secure.example.test", "/x?y=1")
        assert r.headers["location"] == f"https://secure.example.test:{server.https_port}/x?y=1"
        (server.prefix / "acme").mkdir()
        (server.prefix / "acme" / "token").write_text("proof")
        r = server.get("secure.example.test", "/.well-known/acme-challenge/token")
        assert r.status_code == 200 and r.text == "proof"

        trust = ssl.create_default_context(cafile=cert.cert_file)
        with httpx2.Client(timeout=10, verify=trust) as client:
            r = client.get(
                f"https://127.0.0.1:{server.https_port}/x",
                headers={"Host": "secure.example.test"},
                extensions={"sni_hostname": "secure.example.test"},
            )
            got = seen(r)
            assert got["path"] == "/x" and got["headers"]["x-forwarded-proto"] == "https"
        with (
            httpx2.Client(timeout=10, verify=ssl.create_default_context()) as client,
            pytest.raises(httpx2.ConnectError),
        ):  # not trusted by anyone else: self-signed
            client.get(
                f"https://127.0.0.1:{server.https_port}/x",
                extensions={"sni_hostname": "secure.example.test"},
            )


def test_what_nginx_refuses_leaves_it_serving_the_previous_site(tmp_path, upstreams):
    with running_nginx(tmp_path) as server:
        nginx = server.nginx(AUTH, LOGIN)
        site = make_site(
            service="wiki", domain="pub.example.test", port=upstreams[0], sso="none",
            sso_header=None, listen_http=server.http_port, listen_https=server.https_port,
        )  # fmt: skip
        nginx.publish(site)
        assert server.get("pub.example.test", "/").status_code == 200
        before = {p: p.read_bytes() for p in server.sites_dir.rglob("*.conf")}

        gone = Certificate(
            str(tmp_path / "gone.crt"), str(tmp_path / "gone.key"), site.domain,
            CERT.not_after, True,
        )  # fmt: skip
        with pytest.raises(HostError) as exc:
            nginx.publish(Site(**{**site.__dict__, "tls": gone, "port": upstreams[1]}))
        message = str(exc.value)
        assert message.startswith("nginx refused the site of wiki ([emerg] cannot load cert")
        assert "gone.crt" in message and "\n" not in message
        assert {p: p.read_bytes() for p in server.sites_dir.rglob("*.conf")} == before

        # another server block already answers for the domain: refused, not ignored
        (server.sites_dir / "operator.conf").write_text(
            f"server {{ listen 127.0.0.1:{server.http_port}; server_name own.example.test;"
            " return 200 'the operator'; }\n"
        )
        with pytest.raises(HostError, match="another server block of nginx already answers"):
            nginx.publish(Site(**{**site.__dict__, "service": "pad", "domain": "own.example.test"}))
        after = {p: p.read_bytes() for p in server.sites_dir.rglob("*.conf")}
        assert after.pop(server.sites_dir / "operator.conf") and after == before
        assert server.get("pub.example.test", "/").status_code == 200
        assert nginx.published() == ["wiki"]


PHP_PAGE = """<?php
header("Content-Type: application/json");
echo json_encode([
    "user" => $_SERVER["HTTP_X_REMOTE_USER"] ?? null,
    "remote_user" => $_SERVER["REMOTE_USER"] ?? null,
    "spoofed" => $_SERVER["HTTP_REMOTE_USER"] ?? null,
    "script" => $_SERVER["SCRIPT_FILENAME"],
    "uri" => $_SERVER["REQUEST_URI"],
]);
"""


@pytest.fixture
def php_fpm(tmp_path):
    """PHP-FPM with the pool isidorus writes for PHP services (run as root here: -R); the
    application's folder and the port."""
    app = tmp_path / "app"
    (app / "private").mkdir(parents=True)
    (app / "index.php").write_text(PHP_PAGE)
    (app / "style.css").write_text("body { color: black }\n")
    (app / "private" / "secret.php").write_text("<?php echo 'secret';")
    port = free_port()
    (tmp_path / "sessions").mkdir()
    conf = jinja2.Template((SHARED_TEMPLATES / "php-fpm.conf").read_text()).render(
        service="app", port=port, data_dir=tmp_path
    )
    (tmp_path / "php-fpm.conf").write_text(conf)
    proc = subprocess.Popen(
        ["/usr/sbin/php-fpm8.2", "--nodaemonize", "--force-stderr", "-R", "--fpm-config",
         str(tmp_path / "php-fpm.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc, "php-fpm")
        yield app, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_php_pages_behind_single_sign_on_through_fastcgi(tmp_path, php_fpm, isidorus):
    app, php = php_fpm
    with running_nginx(tmp_path) as server:
        nginx = server.nginx(
            f"http://127.0.0.1:{isidorus}/auth/check", f"http://127.0.0.1:{isidorus}/login"
        )
        port = server.http_port
        nginx.publish(
            make_site(service="app", domain="app.example.test", port=php, allow=("family",),
                      fastcgi_root=str(app), deny=("/private/",), listen_http=port)
        )  # fmt: skip
        nginx.publish(
            make_site(service="open", domain="app.example.test", path="/open", port=php,
                      sso="none", sso_header=None, fastcgi_root=str(app),
                      front_controller=True, listen_http=port)
        )  # fmt: skip
        host = {"Host": f"app.example.test:{port}"}
        spoof = {"X-Remote-User": "admin", "Remote-User": "admin"}
        assert server.get("app.example.test", "/").status_code == 302  # to the login page

        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as alice:
            login(alice, isidorus, "alice")
            r = alice.get("/?x=1", headers={**host, **spoof})
            assert r.status_code == 200, r.text
            assert r.json() == {
                "user": "alice", "remote_user": "alice", "spoofed": None,
                "script": str(app / "index.php"), "uri": "/?x=1",
            }  # fmt: skip
            css = alice.get("/style.css", headers=host)
            assert (css.status_code, css.text) == (200, "body { color: black }\n")
            assert alice.get("/private/secret.php", headers=host).status_code == 404
            assert alice.get("/nosuch.php", headers=host).status_code == 404
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as bob:
            login(bob, isidorus, "bob")  # not in the family
            assert bob.get("/", headers=host).status_code == 403

        # under a path, public: routes go to its index, nobody's name reaches it
        r = server.get("app.example.test", "/open/some/route?a=1", headers=spoof)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "user": None, "remote_user": "", "spoofed": None,
            "script": str(app / "index.php"), "uri": "/open/some/route?a=1",
        }  # fmt: skip
        assert server.get("app.example.test", "/open/style.css").status_code == 200
