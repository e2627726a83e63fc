"""Services installed for real through the console script: Debian's and PyPI's packages,
a supervisord and an nginx of the test's own, `isidorus serve` answering nginx's
/auth/check, members reaching a service through nginx (and others refused)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shlex
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.integration.conftest import Isidorus, assert_one_line_error
from tests.integration.servers import free_port, stop, wait_for_port
from tests.system.nginx_server import NginxServer, running_nginx
from tests.system.supervisor import running_supervisord

# installs run apt, one per host: these share an xdist worker with the other apt tests
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("apt")]

PASSWORDS = {"alice": "winter apples keep well", "bob": "summer pears ripen fast"}
DOMAIN = "example.test"

BROKEN = """
id = "brokensvc"
name = "Broken"
description = "A service whose program exits at once: its install must leave nothing."
replaces = ["Nothing"]
version = "1.0"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["{package}"]

[run]
user = "isibroken"
command = "/bin/sh -c 'echo the broken service gives up; exit 3'"
port = {port}

[sso]
kind = "none"

[[config]]
template = "broken.conf"
path = "{{config_dir}}/broken.conf"

[health]
tcp = true
timeout = 5
"""


@dataclass
class Stack:
    run: Isidorus
    data_dir: Path
    nginx: NginxServer
    web_port: int
    env: dict[str, str]
    services_dir: Path
    root: Path
    sessions: dict[str, str] = field(default_factory=dict)

    def isidorus(self, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        return self.run(*args, "--data-dir", self.data_dir, env=self.env, **kw)

    def login(self, name: str) -> str:
        # once per member: logins are throttled, as they should be
        if name in self.sessions:
            return self.sessions[name]
        with httpx2.Client(timeout=10) as c:
            page = c.get(f"http://127.0.0.1:{self.web_port}/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            r = c.post(
                f"http://127.0.0.1:{self.web_port}/login",
                data={"csrf": csrf, "name": name, "password": PASSWORDS[name]},
            )
            assert r.status_code in (200, 303), r.text
            # the cookie is for the host's domain and its subdomains, not 127.0.0.1: read it
            # from the answer, as a browser at example.test would keep it
            cookie = next(h for h in r.headers.get_list("set-cookie") if "isidorus_session=" in h)
            assert f"Domain={DOMAIN}" in cookie or f"domain={DOMAIN}" in cookie, cookie
            self.sessions[name] = cookie.split("isidorus_session=", 1)[1].split(";", 1)[0]
            return self.sessions[name]

    def get(self, host: str, path: str, who: str | None = None) -> httpx2.Response:
        headers = {"Cookie": f"isidorus_session={self.login(who)}"} if who else {}
        return self.nginx.get(host, path, headers=headers)


@pytest.fixture
def stack(run: Isidorus) -> Iterator[Stack]:
    # in /tmp with mode 755: services run as their own users, who cannot enter pytest's dirs
    root = Path(tempfile.mkdtemp(prefix="isidorus-services-", dir="/tmp"))
    root.chmod(0o755)
    procs = []
    try:
        with running_supervisord(root / "sv") as sv, running_nginx(root) as ngx:
            data_dir = root / "host"
            run("init", "--data-dir", data_dir, "--domain", DOMAIN, "--password-stdin",
                input="the keeper's passphrase\n")  # fmt: skip
            for name, password in PASSWORDS.items():
                run("user", "add", name, "--email", f"{name}@example.org", "--password-stdin",
                    "--data-dir", data_dir, input=password + "\n")  # fmt: skip
            run("group", "add", "family", "--data-dir", data_dir)
            run("group", "add", "friends", "--data-dir", data_dir)
            run("group", "add-member", "family", "alice", "--data-dir", data_dir)
            run("group", "add-member", "friends", "bob", "--data-dir", data_dir)
            web_port = free_port()
            web = run.popen("serve", "--data-dir", data_dir, "--listen", f"127.0.0.1:{web_port}",
                            "--workers", "1")  # fmt: skip
            procs.append(web)
            wait_for_port(web_port, web, "isidorus serve")
            services_dir = root / "services.d"
            services_dir.mkdir()
            env = {
                **{f"ISIDORUS_{k.upper()}": v for k, v in sv.items()},
                "ISIDORUS_SERVICE_DATA_ROOT": str(root / "data"),
                "ISIDORUS_SERVICE_CONFIG_ROOT": str(root / "etc"),
                "ISIDORUS_SERVICES_DIR": str(services_dir),
                "ISIDORUS_NGINX_SITES_DIR": str(ngx.sites_dir),
                "ISIDORUS_NGINX_TEST_COMMAND": shlex.join(ngx.command("-t")),
                "ISIDORUS_NGINX_RELOAD_COMMAND": shlex.join(ngx.reload_command()),
                "ISIDORUS_NGINX_LISTEN": "127.0.0.1",
                "ISIDORUS_SERVICES_HTTP_PORT": str(ngx.http_port),
                "ISIDORUS_SERVICES_HTTPS_PORT": str(ngx.https_port),
                "ISIDORUS_SERVICES_TLS": "none",
                "ISIDORUS_SERVICES_AUTH_URL": f"http://127.0.0.1:{web_port}/auth/check",
                "ISIDORUS_SERVICES_LOGIN_URL": f"http://127.0.0.1:{web_port}/login",
            }
            yield Stack(run, data_dir, ngx, web_port, env, services_dir, root)
    finally:
        stop(procs)
        subprocess.run(["rm", "-rf", str(root)], check=False)


def listed(stack: Stack) -> dict[str, dict]:
    return {s["id"]: s for s in json.loads(stack.isidorus("service", "list", "--json").out)}


def wait_until_bindable(port: int, seconds: float = 120) -> None:
    """A service that binds without SO_REUSEADDR cannot take a port whose connections of
    an earlier test are still in TIME_WAIT (a minute): wait for them, boundedly."""
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                assert time.monotonic() < deadline, f"port {port} stays busy"
        time.sleep(1)


def test_two_services_installed_at_once_reached_through_nginx_then_removed(stack):
    for port in (5232, 3923, 8083):  # radicale's, copyparty's, calibreweb's (manifests)
        wait_until_bindable(port)
    # radicale from Debian's packages and calibreweb from PyPI at the same time, then
    # copyparty from PyPI
    a = stack.run.popen("service", "install", "radicale", "--allow", "family", "--data-dir",
                        stack.data_dir, "--json", env=stack.env)  # fmt: skip
    c = stack.run.popen("service", "install", "calibreweb", "--allow", "family", "--data-dir",
                        stack.data_dir, "--json", env=stack.env)  # fmt: skip
    for p in (a, c):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
        assert json.loads(out)["state"] == "running"
    wait_until_bindable(3923)
    doc = json.loads(stack.isidorus("service", "install", "copyparty", "--json").out)
    assert doc["state"] == "running"
    found = listed(stack)
    assert set(found) == {"radicale", "copyparty", "calibreweb"}
    books = f"calibreweb.{DOMAIN}"
    assert stack.get(books, "/login", "alice").status_code == 200
    assert stack.get(books, "/login", "bob").status_code == 403
    assert found["calibreweb"]["health"] == "ok"
    assert found["radicale"]["health"] == "ok" and found["radicale"]["allow"] == ["family"]
    # no TLS in these tests, and the test nginx's own port: the address says both
    assert found["radicale"]["url"] == f"http://radicale.{DOMAIN}:{stack.nginx.http_port}/"
    assert found["radicale"]["replaces"][0] == "Google Calendar"

    cal = f"radicale.{DOMAIN}"
    r = stack.get(cal, "/.web/")
    assert r.status_code == 302 and r.headers["location"].startswith(
        f"http://127.0.0.1:{stack.web_port}/login?next="
    )
    assert stack.get(cal, "/.web/", "alice").status_code == 200
    assert stack.get(cal, "/.web/", "bob").status_code == 403
    # radicale sees alice as nginx names her: her own collection, created on first use
    # (owner_only rights: had the client's X-Remote-User: bob got through, this is a 403)
    with httpx2.Client(timeout=10) as c:
        r = c.request(
            "PROPFIND",
            f"http://127.0.0.1:{stack.nginx.http_port}/alice/",
            headers={
                "Host": f"{cal}:{stack.nginx.http_port}",
                "Cookie": f"isidorus_session={stack.login('alice')}",
                "X-Remote-User": "bob",
                "Depth": "0",
            },
        )
    assert r.status_code == 207 and "/alice/" in r.text, r.text
    # a calendar app: no cookie, asked for a name and password, then signed in with them
    with httpx2.Client(timeout=30) as app:
        url = f"http://127.0.0.1:{stack.nginx.http_port}/alice/"
        host = {"Host": f"{cal}:{stack.nginx.http_port}", "Depth": "0"}
        r = app.request("PROPFIND", url, headers=host)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == f'Basic realm="{cal}", charset="UTF-8"'
        for who, password, status in (
            ("alice", PASSWORDS["alice"], 207),
            ("alice", PASSWORDS["alice"], 207),  # again: from the session it opened
            ("alice", "not her password", 401),
            ("bob", PASSWORDS["bob"], 403),  # not in the family
        ):
            r = app.request("PROPFIND", url, headers=host, auth=(who, password))
            assert r.status_code == status, (who, r.text)
        assert "/alice/" in app.request("PROPFIND", url, headers=host,
                                        auth=("alice", PASSWORDS["alice"])).text  # fmt: skip
    files = f"copyparty.{DOMAIN}"
    assert stack.get(files, "/", "bob").status_code == 200  # every member

    # groups: bob's friends get in, and the last group cannot be denied
    stack.isidorus("service", "allow", "radicale", "friends")
    assert stack.get(cal, "/.web/", "bob").status_code == 200
    stack.isidorus("service", "deny", "radicale", "family")
    assert stack.get(cal, "/.web/", "alice").status_code == 403
    r = stack.isidorus("service", "deny", "radicale", "friends", check=False)
    assert_one_line_error(r, "last group")
    r = stack.isidorus("service", "allow", "radicale", "nosuchgroup", check=False)
    assert_one_line_error(r, "no group")

    assert stack.isidorus("service", "logs", "copyparty", "-n", "20").out.strip()
    assert "healthy" in stack.isidorus("service", "restart", "copyparty").out

    # removal: unpublished and stopped, data kept; --purge takes the data too
    data = stack.root / "data"
    stack.isidorus("service", "remove", "copyparty")
    assert stack.get(files, "/", "bob").status_code == 404
    assert (data / "copyparty").is_dir()
    stack.isidorus("service", "remove", "calibreweb", "--purge")
    assert stack.get(books, "/login", "alice").status_code == 404
    stack.isidorus("service", "remove", "radicale", "--purge")
    assert stack.get(cal, "/.web/", "bob").status_code == 404
    assert not (data / "radicale").exists()
    assert listed(stack) == {}
    assert [n for n in os.listdir(stack.nginx.sites_dir) if n.startswith("isidorus-")] == []
    r = stack.isidorus("service", "remove", "radicale", check=False)
    assert_one_line_error(r, "not installed")
    audit = stack.run("audit", "--json", "--data-dir", stack.data_dir).out
    assert "service.install" in audit and "service.remove" in audit


def _absent_package() -> str:
    for name in ("sl", "figlet", "toilet"):
        r = subprocess.run(["dpkg", "-s", name], capture_output=True)
        if r.returncode != 0:
            return name
    pytest.fail("no small absent package to install: remove sl or cowsay")


def test_an_install_that_fails_midway_leaves_nothing_behind(stack):
    package = _absent_package()
    port = free_port()
    (stack.services_dir / "brokensvc.toml").write_text(BROKEN.format(package=package, port=port))
    (stack.services_dir / "brokensvc").mkdir()
    (stack.services_dir / "brokensvc" / "broken.conf").write_text("port = {{ port }}\n")
    sites_before = sorted(os.listdir(stack.nginx.sites_dir))

    r = stack.isidorus("service", "install", "brokensvc", check=False)
    # the steps it took and undid are told as it goes; then one line says what failed
    assert r.code == 1 and [ln for ln in r.err.splitlines() if "error" in ln] == [
        r.err.splitlines()[-1]
    ]
    line = r.err.splitlines()[-1]
    assert line.startswith("isidorus: error: installing brokensvc failed while "), line
    assert "everything it did was undone" in line and "gives up" in line
    assert "starting" in line or "healthy" in line
    # the package it installed, its user, directories, process and site: all gone
    assert subprocess.run(["dpkg", "-s", package], capture_output=True).returncode != 0
    with pytest.raises(KeyError):
        pwd.getpwnam("isibroken")
    assert not (stack.root / "data" / "brokensvc").exists()
    assert not (stack.root / "etc" / "brokensvc").exists()
    assert not list(Path(stack.env["ISIDORUS_SUPERVISOR_CONF_DIR"]).glob("*brokensvc*"))
    assert sorted(os.listdir(stack.nginx.sites_dir)) == sites_before
    assert listed(stack) == {}


def test_bad_requests_are_refused_in_one_line(stack):
    for args, words in (
        (("install", "nosuch"), ("no service",)),
        (("install", "radicale", "--domain", "bad domain"), ("not a domain",)),
        (("install", "radicale", "--path", "../x"), ("not a path",)),
        (("install", "radicale", "--allow", "nosuchgroup"), ("no group",)),
        (("logs", "radicale"), ("not installed",)),
        (("restart", "radicale"), ("not installed",)),
        (("allow", "radicale", "family"), ("not installed",)),
    ):
        r = stack.isidorus("service", *args, check=False)
        assert_one_line_error(r, *words)
    assert listed(stack) == {}


SLOW = """
id = "slowsvc"
name = "Slow"
description = "A service that never gets healthy: its install is killed midway."
replaces = ["Nothing"]
version = "1.0"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["{package}"]

[run]
user = "isislow"
command = "/bin/sleep 1000"
port = {port}

[sso]
kind = "none"

[health]
tcp = true
timeout = 120
"""


def test_an_install_killed_midway_is_purged_by_remove(stack):
    package = _absent_package()
    (stack.services_dir / "slowsvc.toml").write_text(SLOW.format(package=package, port=free_port()))
    p = stack.run.popen(
        "service", "install", "slowsvc", "--data-dir", stack.data_dir, env=stack.env
    )
    conf = Path(stack.env["ISIDORUS_SUPERVISOR_CONF_DIR"])
    deadline = time.monotonic() + 300
    while not list(conf.glob("*slowsvc*")):  # it waits for health now
        assert p.poll() is None and time.monotonic() < deadline, "the install did not get far"
        time.sleep(0.2)
    p.kill()
    p.wait(60)
    assert listed(stack)["slowsvc"]["state"] == "installing"
    r = stack.isidorus("service", "install", "slowsvc", check=False)
    assert_one_line_error(r, "interrupted", "remove slowsvc --purge")

    stack.isidorus("service", "remove", "slowsvc", "--purge")
    assert subprocess.run(["dpkg", "-s", package], capture_output=True).returncode != 0
    with pytest.raises(KeyError):
        pwd.getpwnam("isislow")
    assert not (stack.root / "data" / "slowsvc").exists()
    assert not list(conf.glob("*slowsvc*"))
    assert subprocess.run(["pgrep", "-f", "/bin/sleep 1000"], capture_output=True).returncode
    assert listed(stack) == {}


def test_bepasty_from_pypi_shares_a_text_among_the_family(stack):
    wait_until_bindable(5010)  # bepasty's port (its manifest)
    doc = json.loads(
        stack.isidorus("service", "install", "bepasty", "--allow", "family", "--json").out
    )
    assert doc["state"] == "running" and doc["health"] == "ok", doc
    paste = f"bepasty.{DOMAIN}"
    assert stack.get(paste, "/", "alice").status_code == 200
    assert stack.get(paste, "/", "bob").status_code == 403  # friends, not family

    # its configuration rendered, with a secret key of its own kept beside it
    conf = (stack.root / "etc" / "bepasty" / "bepasty.conf").read_text()
    secret = stack.root / "etc" / "bepasty" / ".secret-secret_key"
    assert f'SECRET_KEY = "{secret.read_text()}"' in conf and len(secret.read_text()) >= 40
    assert oct(secret.stat().st_mode & 0o777) == "0o640"
    storage = stack.root / "data" / "bepasty" / "storage"
    assert pwd.getpwuid(storage.stat().st_uid).pw_name == "bepasty"

    # alice leaves a text, and finds it again at the address bepasty gave
    cookie = {"Cookie": f"isidorus_session={stack.login('alice')}"}
    host = {"Host": f"{paste}:{stack.nginx.http_port}"}
    with httpx2.Client(timeout=30) as client:
        r = client.post(
            f"http://127.0.0.1:{stack.nginx.http_port}/+upload",
            headers={**cookie, **host},
            data={"text": "shared by alice\n", "filename": "note.txt", "contenttype": "text/plain"},
        )
    assert r.status_code in (302, 303), r.text
    item = r.headers["location"].split("#", 1)[0].rsplit("/", 1)[-1]
    got = stack.get(paste, f"/{item}/+download", "alice")
    assert (got.status_code, got.text) == (200, "shared by alice\n")
    assert stack.get(paste, f"/{item}/+download", "bob").status_code == 403

    stack.isidorus("service", "remove", "bepasty", "--purge")
    assert stack.get(paste, "/", "alice").status_code == 404
    assert not secret.exists() and not storage.exists()


def test_mumble_a_voice_server_without_a_web_site(stack):
    wait_until_bindable(64738)  # Mumble's port (its manifest)
    doc = json.loads(stack.isidorus("service", "install", "mumble", "--json").out)
    assert (doc["state"], doc["health"]) == ("running", "ok"), doc
    # its apps connect to the port itself: the address says so, and nginx has no site
    assert doc["url"] == f"mumble://mumble.{DOMAIN}:64738/"
    assert not list(stack.nginx.sites_dir.glob("**/mumble.conf"))
    password = (stack.root / "etc" / "mumble" / ".secret-server_password").read_text()
    ini = (stack.root / "etc" / "mumble" / "mumble-server.ini").read_text()
    assert f"serverpassword={password}\n" in ini and len(password) >= 40

    # Mumble speaks TLS from the first byte, with a certificate it made for itself
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", 64738), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.getpeercert(binary_form=True)
    # Debian's own mumble-server, which its package would start at boot, never starts
    assert glob.glob("/etc/rc[2-5].d/K*mumble-server")
    assert not glob.glob("/etc/rc[2-5].d/S*mumble-server")
    database = stack.root / "data" / "mumble" / "mumble-server.sqlite"
    assert database.is_file() and pwd.getpwuid(database.stat().st_uid).pw_name == "mumble-server"

    stack.isidorus("service", "remove", "mumble", "--purge")
    assert listed(stack) == {} and not database.exists()


def test_syncthing_and_whoogle_behind_single_sign_on(stack):
    for port in (8384, 5000):  # syncthing's, whoogle's (manifests)
        wait_until_bindable(port)
    for service in ("syncthing", "whoogle"):
        doc = json.loads(
            stack.isidorus("service", "install", service, "--allow", "family", "--json").out
        )
        assert (doc["state"], doc["health"]) == ("running", "ok"), doc
    # syncthing's own web interface, for a member of the family only
    sync = f"syncthing.{DOMAIN}"
    page = stack.get(sync, "/", "alice")
    assert page.status_code == 200 and "Syncthing" in page.text, page.text[:500]
    assert stack.get(sync, "/", "bob").status_code == 403
    assert stack.get(sync, "/").status_code == 302  # to the login page
    # whoogle's search page; the search itself would ask Google, which tests never do
    search = f"whoogle.{DOMAIN}"
    page = stack.get(search, "/", "alice")
    assert page.status_code == 200 and "Whoogle" in page.text, page.text[:500]
    assert stack.get(search, "/", "bob").status_code == 403
    for service in ("syncthing", "whoogle"):
        stack.isidorus("service", "remove", service, "--purge")
    assert listed(stack) == {}
