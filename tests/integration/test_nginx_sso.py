"""Single sign-on through a real nginx: a protected service behind `auth_request`,
answered by `isidorus serve`'s /auth/check. The test starts all three (isidorus, nginx, a
tiny upstream that echoes who nginx says the user is) on loopback ports of its own."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import httpx2
import pytest

from tests.integration.servers import free_port, stop, wait_for_port

PASSWORDS = {"alice": "winter apples keep well", "bob": "summer pears ripen fast"}
UPSTREAM = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("secret service for " + self.headers.get("X-Remote-User", "?")).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")

NGINX = """
user root;
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /_isidorus_auth {{
            internal;
            proxy_pass http://127.0.0.1:{isidorus}/auth/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Isidorus-Allow "family";
        }}
        location / {{
            auth_request /_isidorus_auth;
            auth_request_set $isidorus_user $upstream_http_x_isidorus_user;
            proxy_set_header X-Remote-User $isidorus_user;
            error_page 401 = @login;
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location @login {{
            return 302 http://127.0.0.1:{isidorus}/login?next=$request_uri;
        }}
    }}
}}
"""


@pytest.fixture
def stack(run, tmp_path):
    home = tmp_path / "host"
    run("init", "--data-dir", home, "--password-stdin", input="the keeper's passphrase\n")
    for name, password in PASSWORDS.items():
        email = f"{name}@example.org"
        run("user", "add", name, "--email", email, "--password-stdin", "--data-dir", home,
            input=password + "\n")  # fmt: skip
    run("group", "add", "family", "--data-dir", home)
    run("group", "add-member", "family", "alice", "--data-dir", home)
    ports = {"isidorus": free_port(), "upstream": free_port(), "port": free_port()}
    procs = []
    try:
        web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{ports['isidorus']}")
        procs.append(web)
        up = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM, str(ports["upstream"])], stderr=subprocess.PIPE
        )
        procs.append(up)
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX.format(prefix=prefix, **ports))
        ngx = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        procs.append(ngx)
        for port, p, what in (
            (ports["isidorus"], web, "isidorus serve"),
            (ports["upstream"], up, "the upstream"),
            (ports["port"], ngx, "nginx"),
        ):
            wait_for_port(port, p, what)
        yield ports
    finally:
        stop(procs)


def login(client: httpx2.Client, isidorus: int, name: str, password: str) -> None:
    page = client.get(f"http://127.0.0.1:{isidorus}/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        f"http://127.0.0.1:{isidorus}/login",
        data={"csrf": csrf, "name": name, "password": password, "next": "/portal"},
    )
    assert r.status_code == 303, r.text


@pytest.mark.root
def test_a_service_behind_nginx(stack):
    service = f"http://127.0.0.1:{stack['port']}/calendar/"
    with httpx2.Client(timeout=10) as anonymous:
        r = anonymous.get(service)
        assert r.status_code == 302
        assert r.headers["location"] == (
            f"http://127.0.0.1:{stack['isidorus']}/login?next=/calendar/"
        )
    with httpx2.Client(timeout=10) as alice:
        login(alice, stack["isidorus"], "alice", PASSWORDS["alice"])
        r = alice.get(service)
        assert r.status_code == 200 and r.text == "secret service for alice"
    with httpx2.Client(timeout=10) as bob:  # logged in, but not in the family group
        login(bob, stack["isidorus"], "bob", PASSWORDS["bob"])
        assert bob.get(service).status_code == 403
    with httpx2.Client(timeout=10) as admin:
        login(admin, stack["isidorus"], "admin", "the keeper's passphrase")
        r = admin.get(service)
        assert r.status_code == 200 and r.text == "secret service for admin"
