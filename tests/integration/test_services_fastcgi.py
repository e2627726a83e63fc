"""PHP services installed for real: each runs a PHP-FPM of its own under the process manager,
and nginx serves the application's files and hands its pages to it over FastCGI. DokuWiki
signs members in against the host's LDAP directory (a real slapd); Shaarli lives under a
path of a shared domain. On the stack of test_services (supervisord, nginx, isidorus)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2

from tests.integration import test_services
from tests.integration.conftest import assert_one_line_error
from tests.integration.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    READER_DN,
    READER_PASSWORD,
    running_slapd,
)
from tests.integration.test_services import DOMAIN, PASSWORDS, Stack, listed, wait_until_bindable

pytestmark = test_services.pytestmark
stack = test_services.stack  # the same stack, fixture and all


def client(stack: Stack, host: str) -> httpx2.Client:
    """A browser of the site `host` behind the test's nginx: it keeps the cookies the site
    sets (for its domain, which the jar would not match with 127.0.0.1); `visit` follows
    the site's redirects."""
    jar: dict[str, str] = {}
    authority = f"{host}:{stack.nginx.http_port}"

    def keep(response: httpx2.Response) -> None:
        for line in response.headers.get_list("set-cookie"):
            name, _, value = line.split(";", 1)[0].partition("=")
            jar[name.strip()] = value.strip()
        web.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())

    web = httpx2.Client(
        base_url=f"http://127.0.0.1:{stack.nginx.http_port}",
        headers={"Host": authority},
        timeout=30,
        event_hooks={"response": [keep]},
    )
    return web


def visit(web: httpx2.Client, path: str) -> httpx2.Response:
    """GET `path`, following the site's redirects (each with the cookies set so far)."""
    for _ in range(10):
        r = web.get(path)
        if r.status_code not in (301, 302, 303, 307, 308):
            return r
        # to the site itself (with or without the test's port): through nginx again
        where = urlsplit(r.headers["location"])
        path = where.path + (f"?{where.query}" if where.query else "")
    raise AssertionError(f"more than 10 redirects, the last to {path}")


def with_directory(stack: Stack, slapd) -> None:  # type: ignore[no-untyped-def]
    """The host keeps its accounts in the slapd too, with a DN the services search with."""
    with slapd.connection() as admin:
        admin.add(BASE_DN, ["organization", "dcObject"], {"o": "example", "dc": "example"})
        admin.add(READER_DN, ["organizationalRole", "simpleSecurityObject"],
                  {"cn": "services", "userPassword": READER_PASSWORD})  # fmt: skip
    (stack.data_dir / "ldap.secret").write_text(ADMIN_PASSWORD + "\n")
    (stack.data_dir / "ldap-services.secret").write_text(READER_PASSWORD + "\n")
    with open(stack.data_dir / "isidorus.toml", "a") as f:
        f.write(
            f'\n[ldap]\nurl = "{slapd.url}"\nbase_dn = "{BASE_DN}"\nbind_dn = "{ADMIN_DN}"\n'
            'bind_password_file = "ldap.secret"\n'
            f'services_bind_dn = "{READER_DN}"\n'
            'services_bind_password_file = "ldap-services.secret"\n'
        )
    stack.isidorus("directory", "sync")


@contextlib.contextmanager
def installed_with_directory(stack: Stack, tmp_path: Path, service: str) -> Iterator[dict]:
    """The service installed on the stack once it keeps its accounts in a slapd too."""
    with running_slapd(tmp_path / "slapd") as slapd:
        with_directory(stack, slapd)
        doc = json.loads(stack.isidorus("service", "install", service, "--json").out)
        assert (doc["state"], doc["health"]) == ("running", "ok"), doc
        yield doc


def sign_in_to_dokuwiki(web: httpx2.Client, name: str, password: str) -> str:
    """DokuWiki's own login form, as a member fills it in; the start page after it."""
    form = web.get("/doku.php", params={"id": "start", "do": "login"})
    assert form.status_code == 200, form.text
    sectok = re.search(r'name="sectok" value="([^"]*)"', form.text)
    assert sectok is not None, form.text
    web.post(
        "/doku.php",
        data={"id": "start", "do": "login", "sectok": sectok[1], "u": name, "p": password},
    )
    return web.get("/doku.php", params={"id": "start"}).text


def test_dokuwiki_signs_members_in_through_ldap(stack, tmp_path):
    wait_until_bindable(9002)  # its PHP-FPM's port (its manifest)
    # without a directory, the install says what the host lacks and changes nothing
    r = stack.isidorus("service", "install", "dokuwiki", check=False)
    assert_one_line_error(r, "dokuwiki", "LDAP", "services_bind_dn", "docs/directory.md")
    assert listed(stack) == {}

    with installed_with_directory(stack, tmp_path, "dokuwiki") as doc:
        wiki = f"dokuwiki.{DOMAIN}"
        assert doc["url"] == f"http://{wiki}:{stack.nginx.http_port}/"

        # the directory's settings went into DokuWiki's protected configuration
        conf = Path("/etc/dokuwiki/local.protected.php").read_text()
        assert "'authldap'" in conf and f"'{READER_DN}'" in conf
        assert f"'{READER_PASSWORD}'" in conf

        with client(stack, wiki) as web:
            home = web.get("/")
            assert home.status_code == 200 and "DokuWiki" in home.text  # index → doku.php
            # its static files come from nginx, its code stays unreadable
            assert web.get("/lib/exe/css.php").status_code == 200
            for hidden in ("/inc/init.php", "/bin/indexer.php", "/conf/local.php"):
                assert web.get(hidden).status_code == 404, hidden

            page = sign_in_to_dokuwiki(web, "alice", "not her password")
            assert "do=logout" not in page
        with client(stack, wiki) as web:
            page = sign_in_to_dokuwiki(web, "alice", PASSWORDS["alice"])
            assert "do=logout" in page and "alice" in page
            # a member writes a page: DokuWiki keeps it as a text file where Debian has them
            form = web.get("/doku.php", params={"id": "minutes", "do": "edit"}).text
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
            assert "sectok" in fields, form
            saved = web.post(
                "/doku.php",
                data={**fields, "id": "minutes", "do[save]": "1", "wikitext": "Met on Tuesday."},
            )
            assert saved.status_code in (200, 302, 303), saved.text
        assert Path("/var/lib/dokuwiki/data/pages/minutes.txt").read_text() == "Met on Tuesday."

        stack.isidorus("service", "remove", "dokuwiki", "--purge")
        assert not Path("/etc/dokuwiki/local.protected.php").exists()
        assert stack.nginx.get(wiki, "/").status_code == 404
        assert listed(stack) == {}


def test_shaarli_under_a_path_of_a_shared_domain(stack):
    wait_until_bindable(9003)  # its PHP-FPM's port (its manifest)
    doc = json.loads(
        stack.isidorus(
            "service", "install", "shaarli", "--domain", DOMAIN, "--path", "/links", "--json"
        ).out
    )
    assert (doc["state"], doc["health"]) == ("running", "ok"), doc
    with client(stack, DOMAIN) as web:
        assert web.get("/links").headers["location"].endswith("/links/")
        # every page is a route of index.php: the first visit is its set-up form
        first = visit(web, "/links/")
        assert first.status_code == 200 and "/links/install" in str(first.url), first.url
        assert "Shaarli" in first.text
        # its code is not served, and a client cannot pass for a member
        assert web.get("/links/application/Utils.php").status_code == 404
        assert web.get("/links/nosuch.php").status_code == 404
    stack.isidorus("service", "remove", "shaarli")
    assert stack.nginx.get(DOMAIN, "/links/").status_code == 404


def test_roundcube_webmail_with_its_own_database(stack):
    wait_until_bindable(9004)  # its PHP-FPM's port (its manifest)
    doc = json.loads(
        stack.isidorus("service", "install", "roundcube", "--allow", "family", "--json").out
    )
    assert (doc["state"], doc["health"]) == ("running", "ok"), doc
    mail = f"roundcube.{DOMAIN}"
    with client(stack, mail) as web:
        page = web.get("/")
        assert page.status_code == 200, page.text
        assert f"Webmail of {mail}" in page.text  # isidorus's configuration, not Debian's
        token = re.search(r'name="_token" value="([^"]+)"', page.text)
        assert token is not None, page.text
        # its sessions live in its database, made with its tables at the first page
        database = stack.root / "data" / "roundcube" / "roundcube.db"
        with contextlib.closing(sqlite3.connect(database)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"session", "users"} <= tables, tables
        # signing in asks the mail server, which this test host has not: Roundcube says so
        r = web.post(
            "/?_task=login",
            data={"_token": token[1], "_task": "login", "_action": "login",
                  "_user": "alice@example.test", "_pass": PASSWORDS["alice"]},
        )  # fmt: skip
        assert "Connection to storage server failed" in r.text, r.text[-2000:]
    stack.isidorus("service", "remove", "roundcube", "--purge")
    assert listed(stack) == {} and not database.exists()


def test_wordpress_a_blog_in_the_hosts_mariadb(stack):
    wait_until_bindable(9001)  # its PHP-FPM's port (its manifest)
    try:
        doc = json.loads(stack.isidorus("service", "install", "wordpress", "--json").out)
        assert (doc["state"], doc["health"]) == ("running", "ok"), doc
        # its database, made at install, owned by its user, who signs in without a password
        config = Path("/etc/wordpress/config-isidorus.php").read_text()
        assert "define('DB_USER', 'www-data');" in config and "'DB_PASSWORD', ''" in config
        blog = f"wordpress.{DOMAIN}"
        with client(stack, blog) as web:
            setup = visit(web, "/")
            assert "/wp-admin/install.php" in str(setup.url), setup.url
            done = web.post(
                "/wp-admin/install.php?step=2",
                data={"weblog_title": "News of the choir", "user_name": "keeper",
                      "admin_password": "a long secret for the blog",
                      "admin_password2": "a long secret for the blog", "pw_weak": "1",
                      "admin_email": "keeper@example.org", "blog_public": "0",
                      "language": ""},
            )  # fmt: skip
            assert done.status_code == 200 and "Success!" in done.text, done.text[-3000:]
            home = visit(web, "/")
            assert home.status_code == 200 and "News of the choir" in home.text
            # its theme's files come from wp-content, served as files; no script runs there
            css = web.get("/wp-content/themes/twentytwentythree/style.css")
            assert css.status_code == 200 and "Twenty Twenty-Three" in css.text
            assert web.get("/wp-content/index.php").status_code == 404
        # the posts are in MariaDB, and go with a purge
        tables = subprocess.run(
            ["mysql", "--batch", "--skip-column-names", "-e", "SHOW TABLES FROM wordpress"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "wp_posts" in tables, tables
        stack.isidorus("service", "remove", "wordpress", "--purge")
        assert not Path("/etc/wordpress/config-isidorus.php").exists()
        gone = subprocess.run(["mysql", "-e", "SHOW DATABASES LIKE 'wordpress'"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "wordpress" not in gone
    finally:  # the host's MariaDB, which the install started, as it was before the test
        if os.path.exists("/etc/init.d/mariadb"):
            subprocess.run(["mysql", "-e", "DROP DATABASE IF EXISTS wordpress"], check=False)
            subprocess.run(["/etc/init.d/mariadb", "stop"], capture_output=True, check=False)
