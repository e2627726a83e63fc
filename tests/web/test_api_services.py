"""The REST API's services and operations: every endpoint, its errors and its answers
checked against the ops functions the command line calls, and the background jobs
followed to their end.

Services are recorded in the state database directly, their state and health come from a
stand-in (as in test_services.py), nginx's files are in a temporary directory with `true`
for its test and reload. The jobs whose work would change the machine (a real install, a
removal, a restart, a night) run stand-ins of the ops functions, that record how they were
called; an upgrade with nothing to do, and a backup and a restore without a store, run the
real ones."""

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from isidorus.ops import accounts as ops
from isidorus.ops import certificates as ops_certs
from isidorus.ops import doctor as ops_doctor
from isidorus.ops import jobs_config, runs
from isidorus.ops import nightly as ops_nightly
from isidorus.ops import schedule as ops_schedule
from isidorus.ops import services as ops_services
from isidorus.ops import tokens as ops_tokens
from isidorus.ops import updates as ops_updates
from isidorus.ops.runs import Step
from isidorus.services import catalog, installed
from isidorus.state.schema import audit_log, users
from isidorus.web.app import create_app
from tests.web.test_api import assert_error
from tests.web.test_app import host, login  # noqa: F401  (fixture)
from tests.web.test_services import ADMIN_PW, FakeStatus, make_installed

V1 = "/api/v1"


@pytest.fixture(autouse=True)
def machinery(tmp_path, monkeypatch):
    """The host's programs as the settings find them, all in temporary directories."""
    for name in ("nginx", "logs", "services", "data", "etc"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("ISIDORUS_NGINX_SITES_DIR", str(tmp_path / "nginx"))
    monkeypatch.setenv("ISIDORUS_NGINX_TEST_COMMAND", "true")
    monkeypatch.setenv("ISIDORUS_NGINX_RELOAD_COMMAND", "true")
    monkeypatch.setenv("ISIDORUS_SERVICES_TLS", "none")
    monkeypatch.setenv("ISIDORUS_SERVICE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("ISIDORUS_SERVICES_DIR", str(tmp_path / "services"))
    monkeypatch.setenv("ISIDORUS_SERVICE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("ISIDORUS_SERVICE_CONFIG_ROOT", str(tmp_path / "etc"))
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("ISIDORUS_BACKUP_PASSPHRASE_FILE", str(tmp_path / "no-passphrase"))
    return tmp_path


@pytest.fixture
def db(host):  # noqa: F811
    d = ops.open_state(host)
    yield d
    d.close()


@pytest.fixture
def status():
    return FakeStatus()


@pytest.fixture
def client(host, status):  # noqa: F811
    with TestClient(create_app(host, list_services=status), base_url="http://localhost") as c:
        yield c


@pytest.fixture
def api(client, db):
    secret = ops_tokens.add_token(db, "test", "ci", "admin").secret
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def wait_for(api, url, seconds=10):
    """The job at `url` once it is no longer running."""
    deadline = time.monotonic() + seconds
    while True:
        job = api.get(url).json()
        if job["state"] != "running" or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def audit_rows(db):
    with db.read() as conn:
        rows = conn.execute(select(audit_log.c.actor, audit_log.c.action, audit_log.c.target))
        return [tuple(r) for r in rows]


class Recorder:
    """A stand-in of an ops function: records its arguments, says a line, waits for `go`
    when asked to, then returns `result` (or raises it)."""

    def __init__(self, result, wait=False):
        self.result, self.calls, self.go = result, [], threading.Event()
        if not wait:
            self.go.set()

    def __call__(self, *args):
        self.calls.append(args)
        say = args[-1] if callable(args[-1]) else None
        if say:
            say("a line of the work")
        assert self.go.wait(10)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


# -- every endpoint: documented, and refused without an admin's token

ENDPOINTS = [
    ("GET", "/services/catalog"),
    ("GET", "/services"),
    ("GET", "/services/certificates"),
    ("GET", "/services/radicale"),
    ("POST", "/services/radicale/allow/family"),
    ("DELETE", "/services/radicale/allow/family"),
    ("POST", "/services/radicale/restart"),
    ("GET", "/services/radicale/logs"),
    ("POST", "/services/radicale/install"),
    ("POST", "/services/radicale/remove"),
    ("POST", "/services/radicale/upgrade"),
    ("POST", "/services/radicale/backup"),
    ("POST", "/services/radicale/restore"),
    ("GET", "/services/radicale/job"),
    ("DELETE", "/services/radicale/job"),
    ("GET", "/jobs"),
    ("GET", "/runs"),
    ("GET", "/runs/1"),
    ("GET", "/doctor"),
    ("GET", "/updates"),
    ("GET", "/schedule"),
    ("POST", "/nightly"),
    ("GET", "/nightly/job"),
]


def test_every_endpoint_is_documented(client):
    doc = client.get("/api/openapi.json").json()
    documented = {
        (method.upper(), path) for path, methods in doc["paths"].items() for method in methods
    }
    for method, path in ENDPOINTS:
        templ = path.replace("radicale", "{id}").replace("family", "{group}")
        templ = templ.replace("/runs/1", "/runs/{id}")
        assert (method, "/v1" + templ) in documented, (method, path)
    started = doc["paths"]["/v1/services/{id}/install"]["post"]["responses"]["202"]
    assert "Location" in started["headers"]


def test_no_token_no_entry_and_admins_only(client, db, host):  # noqa: F811
    make_installed(host)
    for method, path in ENDPOINTS:
        r = client.request(method, V1 + path, json={"snapshot": "latest"})
        assert_error(r, 401, "Authorization: Bearer")
    ops.add_user(db, "test", "root2", "root2@example.org", "another admin's phrase", is_admin=True)
    secret = ops_tokens.add_token(db, "test", "script", "root2").secret
    with db.write() as conn:  # no command demotes an admin yet: the database does it
        conn.execute(update(users).where(users.c.name == "root2").values(is_admin=False))
    for method, path in ENDPOINTS:
        r = client.request(
            method,
            V1 + path,
            json={"snapshot": "latest"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert_error(r, 403, "not an admin")
    assert not any(a.startswith("service.") for _, a, _ in audit_rows(db))
    assert client.get(f"{V1}/services/radicale/job").status_code == 401


# -- the catalog and the installed services


def test_the_catalog(api):
    r = api.get(f"{V1}/services/catalog")
    assert r.status_code == 200
    assert r.json() == [m.to_json() for m in ops_services.catalog()]
    assert "radicale" in [m["id"] for m in r.json()]


def test_the_installed_services(api, host, db, status):  # noqa: F811
    assert api.get(f"{V1}/services").json() == []
    make_installed(host, "radicale", allow=["family"])
    make_installed(host, "whoogle", state="installing")
    r = api.get(f"{V1}/services")
    assert r.status_code == 200
    assert r.json() == [s.to_json() for s in status(db, host)]
    one = api.get(f"{V1}/services/radicale").json()
    assert one["url"] == "https://radicale.example.org/" and one["allow"] == ["family"]
    assert one["state"] == "running" and one["health"] == "ok"
    assert api.get(f"{V1}/services/whoogle").json()["state"] == "installing"
    assert_error(api.get(f"{V1}/services/bepasty"), 404, "bepasty is not installed")
    assert_error(api.get(f"{V1}/services/Not%20an%20id"), 404, "no service")
    assert_error(api.get(f"{V1}/services/..%2Fstate"), 404)


def test_allow_and_deny(api, host, db, machinery):  # noqa: F811
    make_installed(host)
    ops.add_group(db, "test", "friends")
    r = api.post(f"{V1}/services/radicale/allow/family")
    assert r.status_code == 200 and r.json() == {"id": "radicale", "allow": ["family"]}
    site = (machinery / "nginx" / "isidorus-radicale.example.org.d" / "radicale.conf").read_text()
    assert "family" in site
    assert api.post(f"{V1}/services/radicale/allow/friends").json()["allow"] == [
        "family",
        "friends",
    ]
    r = api.delete(f"{V1}/services/radicale/allow/family")
    assert r.status_code == 200 and r.json()["allow"] == ["friends"]
    assert_error(api.delete(f"{V1}/services/radicale/allow/friends"), 409, "last group")
    assert_error(api.delete(f"{V1}/services/radicale/allow/family"), 409, "not among")
    assert_error(api.post(f"{V1}/services/radicale/allow/nobody"), 409, "no group 'nobody'")
    assert_error(api.post(f"{V1}/services/whoogle/allow/family"), 404, "not installed")
    with db.read() as conn:
        assert installed.get(conn, "radicale").allow == ("friends",)
    rows = audit_rows(db)
    assert ("api:ci", "service.allow", "radicale") in rows
    assert ("api:ci", "service.deny", "radicale") in rows


def test_restart(api, host, monkeypatch):  # noqa: F811
    make_installed(host)
    fake = Recorder("port 5232: Connection refused")
    monkeypatch.setattr(ops_services, "restart", fake)
    r = api.post(f"{V1}/services/radicale/restart")
    assert r.status_code == 200
    assert r.json() == {
        "id": "radicale",
        "healthy": False,
        "problem": "port 5232: Connection refused",
    }
    assert fake.calls[0][1:] == (host, "radicale", "api:ci")
    fake.result = ""
    assert api.post(f"{V1}/services/radicale/restart").json()["healthy"] is True


def test_logs(api, host, machinery):  # noqa: F811
    make_installed(host)
    lines = [f"line {i}" for i in range(150)]
    (machinery / "logs" / "isidorus-radicale.log").write_text("\n".join(lines) + "\n")
    r = api.get(f"{V1}/services/radicale/logs")
    assert r.status_code == 200 and r.json()["lines"] == lines[-100:]
    assert api.get(f"{V1}/services/radicale/logs", params={"lines": 3}).json() == {
        "id": "radicale",
        "lines": lines[-3:],
    }
    assert_error(api.get(f"{V1}/services/radicale/logs", params={"lines": 0}), 422, "lines")
    assert_error(api.get(f"{V1}/services/whoogle/logs"), 404, "not installed")


def test_certificates(api, host, db, monkeypatch):  # noqa: F811
    make_installed(host)
    assert api.get(f"{V1}/services/certificates").json() == []  # services_tls = none
    monkeypatch.setenv("ISIDORUS_SERVICES_TLS", "self-signed")
    r = api.get(f"{V1}/services/certificates")
    expected = [c.to_json() for c in ops_certs.certificates(db, host)]
    assert r.status_code == 200 and len(r.json()) == len(expected) == 1
    got = r.json()[0]
    assert got["domain"] == "radicale.example.org" and got["services"] == ["radicale"]
    assert got["issuer"] == expected[0]["issuer"]


# -- the background jobs


def test_an_install_runs_in_the_background_to_its_end(api, host, db, monkeypatch):  # noqa: F811
    def installed_at(url):
        return type("Installed", (), {"url": url})()

    fake = Recorder(installed_at("https://cal.example.org/"), wait=True)
    monkeypatch.setattr(ops_services, "install", fake)
    body = {"domain": "cal.example.org", "path": "/", "allow": ["family"]}
    r = api.post(f"{V1}/services/radicale/install", json=body)
    try:
        assert r.status_code == 202, r.text
        assert r.headers["location"] == "/api/v1/services/radicale/job"
        job = r.json()
        assert job["target"] == "radicale" and job["action"] == "install"
        assert job["actor"] == "api:ci" and job["url"] == r.headers["location"]
        assert job["state"] == "running"
        # one change of a service at a time
        assert_error(api.post(f"{V1}/services/radicale/install", json={}), 409, "being changed")
        assert_error(api.post(f"{V1}/services/radicale/restart"), 409, "being changed")
        assert_error(api.delete(f"{V1}/services/radicale/job"), 409, "being changed")
        assert [j["target"] for j in api.get(f"{V1}/jobs").json()] == ["radicale"]
    finally:
        fake.go.set()
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "done" and job["note"] == "https://cal.example.org/"
    assert job["lines"] == ["a line of the work"]
    assert datetime.fromisoformat(job["finished_at"]) <= datetime.now(UTC)
    _db, data_dir, options, actor, _say = fake.calls[0]
    assert data_dir == host and actor == "api:ci"
    assert options == ops_services.InstallOptions("radicale", "cal.example.org", "/", ("family",))
    # dismissed, it is gone
    assert api.delete(f"{V1}/services/radicale/job").status_code == 204
    assert_error(api.get(f"{V1}/services/radicale/job"), 404, "no job")
    assert_error(api.delete(f"{V1}/services/radicale/job"), 404, "no job")


def test_what_stops_an_install_is_told_at_once(api, host, monkeypatch):  # noqa: F811
    fake = Recorder(None)
    monkeypatch.setattr(ops_services, "install", fake)
    make_installed(host, "radicale")
    url = f"{V1}/services/%s/install"
    assert_error(api.post(url % "nope", json={}), 404, "no service 'nope' in the catalog")
    assert_error(api.post(url % "radicale", json={}), 409, "already installed")
    assert_error(api.post(url % "whoogle", json={"domain": "not a domain"}), 400, "domain")
    assert_error(api.post(url % "whoogle", json={"path": "no/slash"}), 400, "path")
    assert_error(api.post(url % "whoogle", json={"allow": ["nobody"]}), 409, "no group")
    assert_error(api.post(url % "whoogle", json={"allow": ["No Way"]}), 422, "allow")
    assert_error(api.post(url % "whoogle", json={"colour": "blue"}), 422, "colour")
    assert fake.calls == [] and api.get(f"{V1}/jobs").json() == []


def test_a_removal_in_the_background(api, host, monkeypatch):  # noqa: F811
    fake = Recorder(["the user radicale"])
    monkeypatch.setattr(ops_services, "remove", fake)
    assert_error(api.post(f"{V1}/services/radicale/remove"), 404, "not installed")
    make_installed(host)
    r = api.post(f"{V1}/services/radicale/remove", json={"purge": True})
    assert r.status_code == 202
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "done" and job["note"] == "the user radicale"
    assert fake.calls[0][1:5] == (host, "radicale", True, "api:ci")
    r = api.post(f"{V1}/services/radicale/remove")  # without a body: the data stays
    assert r.status_code == 202
    wait_for(api, r.headers["location"])
    assert fake.calls[1][3] is False


def test_an_upgrade_with_nothing_to_do(api, host):  # noqa: F811
    make_installed(host)  # at the catalog's version
    assert_error(api.post(f"{V1}/services/whoogle/upgrade"), 404, "not installed")
    r = api.post(f"{V1}/services/radicale/upgrade")
    assert r.status_code == 202
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "done" and job["action"] == "upgrade"
    assert job["note"] == catalog.get("radicale").manifest.version


def test_a_backup_and_a_restore_that_fail_say_why(api, host):  # noqa: F811
    make_installed(host)
    r = api.post(f"{V1}/services/radicale/backup")
    assert r.status_code == 202
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "failed" and job["action"] == "backup"
    assert job["note"] and "\n" not in job["note"]
    r = api.post(f"{V1}/services/radicale/restore", json={"snapshot": "latest"})
    assert r.status_code == 202
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "failed" and job["action"] == "restore" and job["note"]
    # the admin area's page shows the API's jobs, in its words
    login(api, "admin", ADMIN_PW)
    assert "The restore of radicale failed: " in api.get("/admin/services").text
    assert_error(api.post(f"{V1}/services/radicale/restore", json={}), 422, "snapshot")
    bad = {"snapshot": "../x"}
    assert_error(api.post(f"{V1}/services/radicale/restore", json=bad), 422, "snapshot")
    assert_error(api.post(f"{V1}/services/whoogle/backup"), 404, "not installed")


def test_a_restore_that_leaves_the_service_sick_fails(api, host, monkeypatch):  # noqa: F811
    make_installed(host)
    snap = type("Snapshot", (), {"id": "ab" * 32})()
    done = type("Restore", (), {"problem": "port 5232: refused", "snapshot": snap})()
    fake = Recorder(done)
    monkeypatch.setattr("isidorus.ops.service_backups.restore_service", fake)
    r = api.post(f"{V1}/services/radicale/restore", json={"snapshot": "abcd"})
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "failed" and "not healthy: port 5232: refused" in job["note"]
    assert fake.calls[0][1:5] == (host, "radicale", "abcd", "api:ci")


# -- the operations


def make_runs(db):
    first = runs.begin(db, "nightly")
    step = Step("backup", "radicale", "ok", datetime.now(UTC), seconds=1.5, bytes=42)
    runs.add_step(db, first, step, "backing up radicale\n")
    runs.finish(db, first, "ok", "backing up radicale\nnight ok\n")
    second = runs.begin(db, "update")
    runs.finish(db, second, "failed", "apt failed\n")
    return first, second


def test_runs(api, db):
    assert api.get(f"{V1}/runs").json() == []
    first, second = make_runs(db)
    r = api.get(f"{V1}/runs")
    assert r.status_code == 200
    expected = [x.to_json(with_log=False) for x in runs.list_runs(db, limit=20)]
    assert [x["id"] for x in r.json()] == [second, first]
    for got, want in zip(r.json(), expected, strict=True):
        assert got["status"] == want["status"] and got["steps"] == [
            {**s, "started_at": got["steps"][i]["started_at"]} for i, s in enumerate(want["steps"])
        ]
    assert [x["id"] for x in api.get(f"{V1}/runs", params={"kind": "nightly"}).json()] == [first]
    assert [x["id"] for x in api.get(f"{V1}/runs", params={"limit": 1}).json()] == [second]
    assert_error(api.get(f"{V1}/runs", params={"kind": "weekly"}), 422, "kind")
    assert_error(api.get(f"{V1}/runs", params={"limit": 0}), 422, "limit")
    assert_error(api.get(f"{V1}/runs", params={"colour": "blue"}), 422, "colour")
    one = api.get(f"{V1}/runs/{first}").json()
    assert one["log"] == ["backing up radicale", "night ok"]
    assert one["steps"][0]["bytes"] == 42 and one["steps"][0]["target"] == "radicale"
    assert_error(api.get(f"{V1}/runs/999"), 404)
    assert_error(api.get(f"{V1}/runs/x"), 422)


def test_doctor(api, db, host):  # noqa: F811
    r = api.get(f"{V1}/doctor")
    assert r.status_code == 200
    conf, jobs, remotes = jobs_config.host_config()
    findings = ops_doctor.diagnose(db, host, conf, jobs, remotes)
    got = r.json()
    assert [(f["check"], f["severity"]) for f in got["findings"]] == [
        (f.check, f.severity) for f in findings
    ]
    assert got["worst"] == ops_doctor.worst(findings)


def test_updates(api, db):
    r = api.get(f"{V1}/updates")
    assert r.status_code == 200
    assert r.json() == ops_updates.check_updates(db, refresh=False).to_json()
    assert r.json()["refreshed"] is False


def test_schedule(api, db, host):  # noqa: F811
    r = api.get(f"{V1}/schedule")
    assert r.status_code == 200
    _conf, jobs, _remotes = jobs_config.host_config()
    want = ops_schedule.status(db, host, jobs_config.host_config()[0], jobs.nightly).to_json()
    got = r.json()
    assert (got["kind"], got["time"], got["last_run"]) == (
        want["kind"],
        want["time"],
        want["last_run"],
    )


def test_the_nightly_job_in_the_background(api, host, monkeypatch):  # noqa: F811
    go = threading.Event()
    calls = []

    def night(db, data_dir, conf, jobs, remotes, say, *, notify=None):
        calls.append(data_dir)
        with ops_nightly._only_one(data_dir):  # as the real one holds the lock
            say("state: saved")
            assert go.wait(10)
            run_id = runs.begin(db, "nightly")
            return runs.finish(db, run_id, "ok", "state: saved\n")

    monkeypatch.setattr(ops_nightly, "run_nightly", night)
    assert_error(api.get(f"{V1}/nightly/job"), 404, "no nightly job")
    r = api.post(f"{V1}/nightly")
    try:
        assert r.status_code == 202, r.text
        assert r.headers["location"] == "/api/v1/nightly/job"
        assert r.json()["action"] == "nightly" and r.json()["target"] == "nightly"
        for _ in range(100):  # once it holds the lock
            if api.get(f"{V1}/nightly/job").json()["lines"]:
                break
            time.sleep(0.02)
        assert_error(api.post(f"{V1}/nightly"), 409, "a nightly job is already running")
        assert "nightly" in [j["target"] for j in api.get(f"{V1}/jobs").json()]
    finally:
        go.set()
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "done" and job["note"].endswith(" ok") and calls == [host]
    assert api.get(f"{V1}/runs", params={"kind": "nightly"}).json()[0]["status"] == "ok"


def test_a_night_started_elsewhere_refuses_another(api, host, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ops_nightly, "run_nightly", Recorder(None))
    with ops_nightly._only_one(host):  # the timer's, or the command's
        assert_error(api.post(f"{V1}/nightly"), 409, "a nightly job is already running")
    assert_error(api.get(f"{V1}/nightly/job"), 404)


def test_a_broken_configuration_file_is_a_400(api, machinery):
    (machinery / "no-config.toml").write_text("[nightly]\ncolour = 'blue'\n")
    for path in ("/doctor", "/schedule"):
        assert_error(api.get(V1 + path), 400, "colour")
    assert_error(api.post(f"{V1}/nightly"), 400, "colour")
