"""Installed services on the web: the public page, the portal's tiles, the admin area's
Services pages and their forms, and the jobs that follow installs.

Services are recorded in the state database directly; their process state and health come
from a status function handed to the app (no process manager runs here). Changes of who
may use a service go through the real ops, with nginx's files in a temporary directory and
`true` standing in for nginx's test and reload."""

import html
import os
import re
import threading
import time

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from isidorus.ops import accounts as ops
from isidorus.ops.services import ServiceStatus
from isidorus.services import catalog, installed
from isidorus.services.errors import ServiceError
from isidorus.services.lifecycle import Added
from isidorus.state.schema import audit_log
from isidorus.web.app import create_app
from isidorus.web.jobs import Busy, Jobs
from isidorus.web.status import StatusBoard
from tests.web.test_app import PW, csrf_of, host, login  # noqa: F401  (fixtures)

ADMIN_PW = "the host keeper's passphrase"


@pytest.fixture(autouse=True)
def machinery(tmp_path, monkeypatch):
    """The host's programs, as the services' settings find them: nginx's files in a
    temporary directory, accepted and reloaded by `true`; logs in another."""
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("ISIDORUS_NGINX_SITES_DIR", str(tmp_path / "nginx"))
    monkeypatch.setenv("ISIDORUS_NGINX_TEST_COMMAND", "true")
    monkeypatch.setenv("ISIDORUS_NGINX_RELOAD_COMMAND", "true")
    monkeypatch.setenv("ISIDORUS_SERVICES_TLS", "none")
    monkeypatch.setenv("ISIDORUS_SERVICE_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "nginx").mkdir()
    (tmp_path / "logs").mkdir()
    return tmp_path


def make_installed(data_dir, service="radicale", allow=(), state="installed"):
    db = ops.open_state(data_dir)
    manifest = catalog.get(service).manifest
    with db.write() as conn:
        installed.begin(conn, manifest, f"{service}.example.org", "/")
        if state == "installed":
            installed.finish(conn, manifest.id, Added())
        installed.set_allowed(conn, manifest.id, tuple(allow))
    db.close()


class FakeStatus:
    """What the process manager and the health checks would say, and how often asked."""

    def __init__(self, process="running", health="ok"):
        self.process, self.health, self.calls = process, health, 0

    def __call__(self, db, data_dir):
        self.calls += 1
        with db.read() as conn:
            found = installed.all_installed(conn)
        return [ServiceStatus(s, self.process, self.health) for s in found]


@pytest.fixture
def status():
    return FakeStatus()


@pytest.fixture
def app(host, status):  # noqa: F811
    return create_app(host, list_services=status)


@pytest.fixture
def visitor(app):
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.fixture
def admin(app):
    with TestClient(app, base_url="http://localhost") as c:
        login(c, "admin", ADMIN_PW)
        c.csrf = csrf_of(c.get("/admin").text)
        yield c


def post(c, url, **data):
    return c.post(url, data={"csrf": c.csrf, **data}, follow_redirects=False)


def error_of(text):
    return html.unescape(re.search(r'class="error" role="alert">([^<]*)<', text).group(1))


def audit_actions(host):  # noqa: F811
    db = ops.open_state(host)
    with db.read() as conn:
        rows = conn.execute(select(audit_log.c.action, audit_log.c.target)).all()
    db.close()
    return [tuple(r) for r in rows]


# -- the public page


def test_the_public_page_says_when_no_service_is_installed(visitor, status):
    page = visitor.get("/").text
    assert "No service is installed yet." in page
    assert status.calls == 0  # nothing to check


def test_the_public_page_lists_the_services_with_what_they_replace(host, visitor, status):  # noqa: F811
    make_installed(host, "radicale")
    make_installed(host, "whoogle", state="installing")  # not yet
    page = visitor.get("/").text
    assert "Radicale" in page and "Calendars, address books" in page
    assert "Replaces: Google Calendar, Google Contacts" in page
    assert '<span class="up">working</span>' in page
    assert "Whoogle" not in page and "No service is installed" not in page


def test_the_services_are_described_in_the_visitors_language(host, visitor, status):  # noqa: F811
    make_installed(host, "radicale")
    visitor.get("/lang/fr?next=/")
    page = visitor.get("/").text
    assert "Agendas, carnets d&#39;adresses" in page and "Calendars, address books" not in page
    # every service of the catalog is described in French
    for manifest in catalog.entries().values():
        assert manifest.manifest.described_in("fr") != manifest.manifest.description
        assert manifest.manifest.described_in("de") == manifest.manifest.description


def test_the_public_page_checks_the_services_at_most_once_per_ttl(host, visitor, status):  # noqa: F811
    make_installed(host)
    for _ in range(5):
        visitor.get("/")
    assert status.calls == 1


@pytest.mark.parametrize(
    ("process", "health", "shown"),
    [
        ("running", "ok", '<span class="up">working</span>'),
        ("running", "port 5232: Connection refused", '<span class="down">not working</span>'),
        ("stopped", "stopped", '<span class="down">not working</span>'),
        ("starting", "starting", '<span class="down">starting</span>'),
    ],
)
def test_the_public_page_shows_a_word_not_the_details(host, process, health, shown):  # noqa: F811
    make_installed(host)
    with TestClient(create_app(host, FakeStatus(process, health))) as c:
        page = c.get("/").text
    assert shown in page and "5232" not in page


def test_a_process_manager_out_of_reach_does_not_break_the_page(host):  # noqa: F811
    def broken(db, data_dir):
        raise RuntimeError("supervisord is not running")

    make_installed(host)
    with TestClient(create_app(host, broken)) as c:
        page = c.get("/")
    assert page.status_code == 200 and "Radicale" in page.text
    assert '<span class="unknown">status unknown</span>' in page.text


def test_a_stale_status_is_served_while_it_is_checked_again(host):  # noqa: F811
    make_installed(host)
    db = ops.open_state(host)
    try:
        rows = installed_rows(db)
        slow = threading.Event()
        fake = FakeStatus()

        def probe(db, data_dir):
            slow.wait(5)
            return fake(db, data_dir)

        board = StatusBoard(db, host, probe)
        slow.set()
        assert board.cached(rows)["radicale"].up  # the first one waits
        slow.clear()
        board.TTL = 0.0
        started = time.monotonic()
        assert board.cached(rows)["radicale"].up  # stale, served at once
        assert time.monotonic() - started < 1
        slow.set()
        for _ in range(50):
            if fake.calls == 2:
                break
            time.sleep(0.05)
        assert fake.calls == 2  # checked again, in the background
    finally:
        db.close()


def installed_rows(db):
    with db.read() as conn:
        return installed.all_installed(conn)


# -- the portal


def test_the_portal_shows_the_services_a_member_may_use(host, app):  # noqa: F811
    make_installed(host, "radicale", allow=["family"])  # alice is in family, bob is not
    make_installed(host, "whoogle")  # every member
    make_installed(host, "bepasty", state="installing")
    with TestClient(app, base_url="http://localhost") as alice:
        login(alice)
        page = alice.get("/portal").text
    assert '<a href="https://radicale.example.org/"><strong>Radicale</strong>' in page
    assert "Replaces: Google Calendar" in page
    assert '<a href="https://whoogle.example.org/">' in page
    assert "bepasty" not in page.lower()
    with TestClient(app, base_url="http://localhost") as bob:
        login(bob, "bob", "his own long passphrase")
        page = bob.get("/portal").text
    assert "radicale.example.org" not in page and "whoogle.example.org" in page
    with TestClient(app, base_url="http://localhost") as keeper:
        login(keeper, "admin", ADMIN_PW)
        assert "radicale.example.org" in keeper.get("/portal").text  # admins get in anywhere


def test_the_portal_says_when_no_service_is_open_to_the_member(host, app):  # noqa: F811
    make_installed(host, "radicale", allow=["family"])
    with TestClient(app, base_url="http://localhost") as bob:
        login(bob, "bob", "his own long passphrase")
        assert "No service is open to you yet." in bob.get("/portal").text


# -- the admin area


PAGES = [
    "/admin/services",
    "/admin/services/radicale",
    "/admin/services/radicale/logs",
    "/admin/services/radicale/install",
    "/admin/services/radicale/remove",
]
FORMS = ["install", "remove", "allow", "deny", "restart", "clear"]


def test_the_services_pages_and_forms_are_refused_to_members(host, app, status):  # noqa: F811
    make_installed(host, allow=["family"])
    with TestClient(app, base_url="http://localhost") as alice:
        for url in PAGES:
            assert alice.get(url, follow_redirects=False).status_code == 303  # to the login
        login(alice)
        csrf = csrf_of(alice.get("/portal").text)
        for url in PAGES:
            assert alice.get(url).status_code == 403, url
        for what in FORMS:
            r = alice.post(
                f"/admin/services/radicale/{what}",
                data={"csrf": csrf, "group": "family", "confirm": "radicale"},
            )
            assert r.status_code == 403, what
    assert not any(a.startswith("service.") for a, _ in audit_actions(host))


def test_the_services_page_shows_the_catalog_and_the_installed(host, admin):  # noqa: F811
    make_installed(host, allow=["family"])
    page = admin.get("/admin/services")
    assert page.status_code == 200 and 'http-equiv="refresh"' not in page.text
    text = page.text
    assert '<a href="/admin/services">Services</a>' in text  # in the admin's menu
    # installed: its address, state, health and groups
    row = re.search(r"<tr>\s*<td><a href=\"/admin/services/radicale\">.*?</tr>", text, re.S)
    assert row, text
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    assert cells[1:] == [
        '<a href="https://radicale.example.org/">https://radicale.example.org/</a>',
        "running",
        "ok",
        "family",
    ]
    # the catalog: every service, with what it replaces, its sign-in and version
    for m in catalog.entries().values():
        assert html.escape(m.manifest.name) in text
    assert "Google Search" in text and "single sign-on" in text and "its own accounts" in text
    assert '<a href="/admin/services/whoogle/install">Install Whoogle</a>' in text
    assert '<a href="/admin/services/radicale">installed</a>' in text
    assert '<a href="/admin/services">' in admin.get("/admin").text


def test_a_service_page(host, admin):  # noqa: F811
    make_installed(host)
    page = admin.get("/admin/services/radicale").text
    assert "https://radicale.example.org/" in page and "Every member." in page
    assert 'action="/admin/services/radicale/allow"' in page
    assert '<a href="/admin/services/radicale/remove">' in page
    assert admin.get("/admin/services/whoogle").status_code == 404  # not installed
    assert admin.get("/admin/services/nope/install").status_code == 404


def test_allow_and_deny_a_group(host, admin, machinery):  # noqa: F811
    make_installed(host)
    db = ops.open_state(host)
    ops.add_group(db, "test", "friends")
    db.close()
    r = post(admin, "/admin/services/radicale/allow", group="family")
    assert r.status_code == 303 and r.headers["location"] == "/admin/services/radicale?done=groups"
    page = admin.get(r.headers["location"]).text
    assert "Deny family" in page and "Groups saved." in page
    site = (machinery / "nginx" / "isidorus-radicale.example.org.d" / "radicale.conf").read_text()
    assert "family" in site  # nginx asks /auth/check for these groups
    assert post(admin, "/admin/services/radicale/allow", group="friends").status_code == 303
    assert post(admin, "/admin/services/radicale/deny", group="family").status_code == 303
    db = ops.open_state(host)
    with db.read() as conn:
        assert installed.get(conn, "radicale").allow == ("friends",)
    # the last group stays: without it every member would get in
    r = post(admin, "/admin/services/radicale/deny", group="friends")
    assert r.status_code == 409 and "last group" in error_of(r.text)
    r = post(admin, "/admin/services/radicale/allow", group="nobody")
    assert r.status_code == 409 and "no group 'nobody'" in error_of(r.text)
    actions = audit_actions(host)
    assert ("service.allow", "radicale") in actions and ("service.deny", "radicale") in actions


def test_the_forms_need_the_csrf_token(host, admin):  # noqa: F811
    make_installed(host)
    for what in FORMS:
        r = admin.post(
            f"/admin/services/radicale/{what}", data={"group": "family", "confirm": "radicale"}
        )
        assert r.status_code == 403, what
    db = ops.open_state(host)
    with db.read() as conn:
        assert installed.get(conn, "radicale").allow == ()
    assert not any(a.startswith("service.") for a, _ in audit_actions(host))


def test_the_logs_are_shown_escaped(host, admin, machinery):  # noqa: F811
    make_installed(host)
    lines = [f"line {i}" for i in range(150)] + ["<script>alert(1)</script> & more"]
    (machinery / "logs" / "isidorus-radicale.log").write_text("\n".join(lines) + "\n")
    page = admin.get("/admin/services/radicale/logs").text
    logs = re.search(r'<pre class="logs">(.*?)</pre>', page, re.S).group(1)
    assert logs.splitlines()[0] == "line 51" and len(logs.splitlines()) == 100
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in logs
    assert "<script>" not in page


def test_a_removal_is_confirmed_first(host, admin):  # noqa: F811
    make_installed(host)
    page = admin.get("/admin/services/radicale/remove").text
    assert 'name="purge"' in page and "Type radicale to confirm" in page
    r = post(admin, "/admin/services/radicale/remove", confirm="whoogle", purge="on")
    assert r.status_code == 400 and "type radicale" in error_of(r.text)
    db = ops.open_state(host)
    with db.read() as conn:
        assert installed.get(conn, "radicale").state == "installed"  # still there


def test_an_install_that_fails_shows_its_error(admin):
    r = post(admin, "/admin/services/whoogle/install", **{"group:nobody": "on"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/services"
    page = wait_for(admin, "/admin/services", lambda text: "Installing" not in text)
    assert "The install of whoogle failed: there is no group &#39;nobody&#39;" in page
    assert '<a href="/admin/services/whoogle/install">Install Whoogle</a>' in page
    # dismissed, it is gone
    page = admin.post(
        "/admin/services/whoogle/clear", data={"csrf": admin.csrf}, follow_redirects=True
    ).text
    assert "The install of whoogle failed" not in page


def wait_for(client, url, done, seconds=60):
    # the job runs in a thread of this process: polling gently leaves it the interpreter
    deadline = time.monotonic() + seconds
    while True:
        text = client.get(url).text
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_a_running_install_is_followed_with_its_progress(host, admin, app):  # noqa: F811
    go = threading.Event()

    def work(say):
        say("installing the packages: radicale")
        say("<b>a line</b> from apt")
        assert go.wait(10)
        return "https://radicale.example.org/"

    jobs = Jobs(host)
    jobs.start("radicale", "install", "admin", work)
    try:
        page = admin.get("/admin/services").text
        assert '<meta http-equiv="refresh" content="5">' in page
        assert "Installing radicale…" in wait_for(
            admin, "/admin/services", lambda t: "from apt" in t
        )
        page = admin.get("/admin/services").text
        assert "&lt;b&gt;a line&lt;/b&gt; from apt" in page
        # a second change of the same service is refused, whichever process gets it
        r = post(admin, "/admin/services/radicale/install")
        assert r.status_code == 409 and "being changed" in error_of(r.text)
    finally:
        go.set()
    page = wait_for(admin, "/admin/services", lambda t: "refresh" not in t)
    assert "radicale is installed, at https://radicale.example.org/." in page


# -- the jobs


def test_a_job_is_seen_by_every_process_and_ends_with_its_outcome(tmp_path):
    mine, other = Jobs(str(tmp_path)), Jobs(str(tmp_path))  # two server processes
    go = threading.Event()

    def work(say):
        say("step one")
        go.wait(10)
        raise ServiceError("port 5232 is taken")

    mine.start("radicale", "install", "admin", work)
    try:
        seen = other.get("radicale")
        assert seen.running and seen.action == "install" and seen.actor == "admin"
        with pytest.raises(Busy):
            other.start("radicale", "remove", "admin", lambda say: "")
        with pytest.raises(Busy):
            other.clear("radicale")
    finally:
        go.set()
    for _ in range(100):
        job = other.get("radicale")
        if not job.running:
            break
        time.sleep(0.02)
    assert job.state == "failed" and job.note == "port 5232 is taken"
    assert job.lines == ("step one",) and job.finished >= job.started
    other.clear("radicale")
    assert mine.get("radicale") is None and mine.all() == []


def test_a_job_whose_process_stopped_is_interrupted(tmp_path):
    jobs = Jobs(str(tmp_path))
    jobs.start("radicale", "install", "admin", lambda say: "")
    for _ in range(100):
        if not jobs.get("radicale").running:
            break
        time.sleep(0.02)
    # as a process killed during the job leaves it: "running", and nobody holds the lock
    text = (tmp_path / "jobs" / "radicale.json").read_text()
    (tmp_path / "jobs" / "radicale.json").write_text(text.replace('"done"', '"running"'))
    assert jobs.get("radicale").state == "interrupted"


def test_a_job_that_ends_while_it_is_read_is_not_interrupted(tmp_path, monkeypatch):
    jobs = Jobs(str(tmp_path))
    go = threading.Event()
    jobs.start("radicale", "sync", "admin", lambda say: str(go.wait(10)))
    seen_running = jobs._read("radicale")
    assert seen_running.running
    go.set()
    for _ in range(100):
        if not jobs._locked("radicale"):
            break
        time.sleep(0.02)
    # the read saw "running"; the job then wrote its end and let go of its lock
    reads = iter([seen_running])
    real_read = jobs._read
    monkeypatch.setattr(jobs, "_read", lambda service: next(reads, None) or real_read(service))
    job = jobs.get("radicale")
    assert job.state == "done" and job.note == "True"


def test_a_job_names_only_services(tmp_path):
    with pytest.raises(ValueError):
        Jobs(str(tmp_path)).get("../state")
    with pytest.raises(ValueError):
        Jobs(str(tmp_path)).get("radicale\n")


def test_the_services_pages_in_french(host):  # noqa: F811
    with open(os.path.join(host, ops.CONFIG_NAME), "a") as f:
        f.write('\nlanguage = "fr"\n')
    make_installed(host, allow=["family"])
    with TestClient(create_app(host, FakeStatus()), base_url="http://localhost") as c:
        page = c.get("/").text
        assert "Remplace\u00a0: Google Calendar" in page and "fonctionne" in page
        login(c, "admin", ADMIN_PW)
        c.csrf = csrf_of(c.get("/admin").text)
        page = c.get("/admin/services").text
        assert "en marche" in page and "Installer Whoogle" in page and "connexion unique" in page
        go = threading.Event()
        Jobs(host).start("whoogle", "install", "admin", lambda say: str(go.wait(10)))
        try:
            assert "Installation de whoogle…" in c.get("/admin/services").text
            # refused in a worker thread, said in the visitor's language all the same
            r = post(c, "/admin/services/whoogle/install")
            assert "whoogle est en cours de modification" in error_of(r.text)
        finally:
            go.set()
