"""The REST API's changes of the host as a whole: every service's upgrade, the
certificates' renewal and the updates as background jobs; the schedule, a test
notification and the directory's sync, which answer at once.

Real where the test machine allows it: self-signed certificates written to a temporary
directory (nginx's test and reload are `true`), an SMTP server on a free port for the
notifications, a slapd for the directory. Where the work would change the machine (an
upgrade of a service, apt, supervisord), its ops function or the process manager is a
stand-in that records how it was called, as in test_api_services.py."""

import os
import threading
import types
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import update

from isidorus.ops import accounts as ops
from isidorus.ops import runs
from isidorus.ops import schedule as ops_schedule
from isidorus.ops import services as ops_services
from isidorus.ops import tokens as ops_tokens
from isidorus.ops import updates as ops_updates
from isidorus.ops.services import UpgradeResult
from isidorus.services import catalog
from isidorus.services.errors import ServiceError
from isidorus.state.schema import services as services_table
from isidorus.state.schema import users
from isidorus.system.errors import HostError
from isidorus.web.jobs import Jobs
from tests.integration.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    free_port,
    person_dn,
    running_slapd,
)
from tests.web.test_api import assert_error
from tests.web.test_api_services import (  # noqa: F401  (fixtures)
    Recorder,
    api,
    audit_rows,
    client,
    db,
    machinery,
    status,
    wait_for,
)
from tests.web.test_app import host  # noqa: F401  (fixture)
from tests.web.test_services import make_installed

V1 = "/api/v1"


@pytest.fixture(autouse=True)
def update_lock(tmp_path, monkeypatch):
    """The updates' lock of this test alone (tests run side by side)."""
    monkeypatch.setattr(ops_updates, "LOCK_PATH", str(tmp_path / "update.lock"))


ENDPOINTS = [
    ("POST", "/services/upgrade"),
    ("GET", "/services/upgrade/job"),
    ("DELETE", "/services/upgrade/job"),
    ("POST", "/services/certificates/renew"),
    ("GET", "/services/certificates/job"),
    ("DELETE", "/services/certificates/job"),
    ("POST", "/updates/apply"),
    ("GET", "/updates/job"),
    ("DELETE", "/updates/job"),
    ("DELETE", "/nightly/job"),
    ("PUT", "/schedule"),
    ("DELETE", "/schedule"),
    ("POST", "/notify/test"),
    ("POST", "/directory/sync"),
]


def test_every_endpoint_is_documented_and_needs_an_admins_token(client, db):  # noqa: F811
    doc = client.get("/api/openapi.json").json()
    documented = {(m.upper(), p) for p, ms in doc["paths"].items() for m in ms}
    for method, path in ENDPOINTS:
        assert (method, "/v1" + path) in documented, (method, path)
        assert_error(client.request(method, V1 + path), 401, "Authorization: Bearer")
    for path in ("/services/upgrade", "/services/certificates/renew", "/updates/apply"):
        assert "Location" in doc["paths"]["/v1" + path]["post"]["responses"]["202"]["headers"]
    ops.add_user(db, "test", "root2", "root2@example.org", "another admin's phrase", is_admin=True)
    made = ops_tokens.add_token(db, "test", "script", "root2").secret
    with db.write() as conn:
        conn.execute(update(users).where(users.c.name == "root2").values(is_admin=False))
    for method, path in ENDPOINTS:
        r = client.request(method, V1 + path, headers={"Authorization": f"Bearer {made}"})
        assert_error(r, 403, "not an admin")
    assert client.get(f"{V1}/jobs").status_code == 401


def hold(host, name):  # noqa: F811
    """One of the host's jobs, running in another server process until `go` is set."""
    go = threading.Event()

    def work(say):
        say("busy")
        assert go.wait(10)
        return ""

    Jobs(host, "host-jobs").start(name, "held", "api:other", work)
    return go


# -- every service's upgrade


def test_every_services_upgrade_with_nothing_to_do(api, host, db):  # noqa: F811
    make_installed(host)  # at the catalog's version
    assert_error(api.get(f"{V1}/services/upgrade/job"), 404, "no upgrade of every service")
    r = api.post(f"{V1}/services/upgrade")
    assert r.status_code == 202 and r.headers["location"] == "/api/v1/services/upgrade/job"
    job = wait_for(api, r.headers["location"])
    assert (job["target"], job["action"], job["state"]) == ("upgrades", "upgrade-all", "done")
    assert job["note"] == "every installed service is at its catalog's version"
    assert job["result"] == {"done": [], "failed": []}
    # a service's page, and the services' jobs, are not the host's
    assert_error(api.get(f"{V1}/services/upgrade"), 404, "upgrade is not installed")
    assert_error(api.get(f"{V1}/services/radicale/job"), 404)
    assert api.delete(f"{V1}/services/upgrade/job").status_code == 204
    assert_error(api.delete(f"{V1}/services/upgrade/job"), 404)


def test_every_services_upgrade_goes_on_past_a_failure(api, host, db, monkeypatch):  # noqa: F811
    for service in ("radicale", "whoogle"):
        make_installed(host, service)
    with db.write() as conn:  # both installed at an older version than the catalog's
        conn.execute(update(services_table).values(version="0.0.1"))

    def upgrade(db_, data_dir, service, actor, say):
        calls.append((data_dir, service, actor))
        if service == "radicale":
            raise ServiceError("radicale 0.0.1 is back: its health check failed")
        say(f"upgrading {service}")
        return UpgradeResult(service, "0.0.1", catalog.get(service).manifest.version, "ab" * 32)

    calls = []
    monkeypatch.setattr(ops_services, "upgrade", upgrade)
    job = wait_for(api, api.post(f"{V1}/services/upgrade").headers["location"])
    assert calls == [(host, "radicale", "api:ci"), (host, "whoogle", "api:ci")]
    assert job["state"] == "failed"
    assert (
        job["note"]
        == "the upgrade of radicale failed: radicale 0.0.1 is back: its health check failed"
    )
    assert job["result"]["failed"] == [
        {"id": "radicale", "error": "radicale 0.0.1 is back: its health check failed"}
    ]
    assert [r["id"] for r in job["result"]["done"]] == ["whoogle"]
    assert "upgrading whoogle" in job["lines"]
    assert f"whoogle is at {catalog.get('whoogle').manifest.version} (was 0.0.1)" in job["lines"]


def test_one_upgrade_of_every_service_at_a_time(api, host):  # noqa: F811
    go = hold(host, "upgrades")
    try:
        assert_error(api.post(f"{V1}/services/upgrade"), 409, "an upgrade of every service runs")
        assert_error(api.delete(f"{V1}/services/upgrade/job"), 409, "held, by api:other")
        listed = {j["target"]: j["url"] for j in api.get(f"{V1}/jobs").json()}
        assert listed == {"upgrades": "/api/v1/services/upgrade/job"}
    finally:
        go.set()
    assert wait_for(api, f"{V1}/services/upgrade/job")["state"] == "done"


# -- the certificates


def test_the_certificates_renewal(api, host, db, machinery, monkeypatch):  # noqa: F811
    assert_error(api.post(f"{V1}/services/certificates/renew"), 409, "services_tls is none")
    monkeypatch.setenv("ISIDORUS_SERVICES_TLS", "self-signed")
    monkeypatch.setenv("ISIDORUS_TLS_DIR", str(machinery / "tls"))
    make_installed(host)
    r = api.post(f"{V1}/services/certificates/renew", json={"days": 10})
    assert r.status_code == 202
    assert r.headers["location"] == "/api/v1/services/certificates/job"
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "done" and job["note"] == "renewed: radicale.example.org", job
    [cert] = job["result"]["certificates"]
    assert (cert["domain"], cert["issuer"], cert["renewed"]) == (
        "radicale.example.org",
        "self-signed",
        True,
    )
    assert os.listdir(machinery / "tls")
    assert ("api:ci", "service.certificate.renew", "radicale.example.org") in audit_rows(db)
    listed = api.get(f"{V1}/services/certificates").json()
    assert listed[0]["issuer"] == "self-signed" and listed[0]["days_left"] > 30
    again = wait_for(api, api.post(f"{V1}/services/certificates/renew").headers["location"])
    assert again["state"] == "done" and again["note"] == "no certificate was due"
    r = api.post(f"{V1}/services/certificates/renew", json={"days": 0})
    assert_error(r, 422, "days")


# -- updates


def test_updates_applied_in_the_background(api, host, db, monkeypatch):  # noqa: F811
    calls = []

    def apply(db_, data_dir, *, security_only, actor, say):
        calls.append((data_dir, security_only, actor))
        say("apt: upgrading openssl")
        run_id = runs.begin(db_, "update")
        return runs.finish(db_, run_id, "ok", "apt: upgrading openssl\n")

    monkeypatch.setattr(ops_updates, "apply_updates", apply)
    assert_error(api.get(f"{V1}/updates/job"), 404, "no update was started here")
    r = api.post(f"{V1}/updates/apply", json={"security_only": True})
    assert r.status_code == 202 and r.headers["location"] == "/api/v1/updates/job"
    job = wait_for(api, r.headers["location"])
    assert job["state"] == "done" and job["action"] == "apply"
    assert job["note"] == "update ok: nothing to update"
    assert job["lines"] == ["apt: upgrading openssl"]
    assert calls == [(host, True, "api:ci")]
    assert job["result"]["kind"] == "update" and job["result"]["status"] == "ok"
    assert api.get(f"{V1}/runs", params={"kind": "update"}).json()[0]["id"] == job["result"]["id"]
    assert_error(api.post(f"{V1}/updates/apply", json={"security": True}), 422, "security")


def test_what_stops_an_update_is_told_at_once(api, machinery, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ops_updates, "apply_updates", Recorder(None))
    with ops_updates._only_one():  # the nightly job's, or the command line's
        assert_error(api.post(f"{V1}/updates/apply"), 409, "another isidorus update is running")
    monkeypatch.setattr(ops_updates, "os", types.SimpleNamespace(geteuid=lambda: 1000))
    assert_error(api.post(f"{V1}/updates/apply"), 400, "needs root")
    monkeypatch.setattr(ops_updates, "os", os)
    (machinery / "no-config.toml").write_text("[nightly]\ncolour = 'blue'\n")
    assert_error(api.post(f"{V1}/updates/apply"), 400, "colour")
    assert_error(api.get(f"{V1}/updates/job"), 404)  # none was started


# -- the schedule


class FakeManager:
    """supervisord as the schedule sees it: what it was asked to run."""

    kind = "supervisord"

    def __init__(self):
        self.programs, self.fail = {}, False

    def install(self, spec):
        if self.fail:
            raise HostError("supervisorctl update failed: refused connection")
        self.programs[spec.name] = spec

    def restart(self, name):
        assert name in self.programs

    def uninstall(self, name):
        self.programs.pop(name, None)

    def state(self, name):
        return "running" if name in self.programs else "absent"


def test_the_schedule_set_up_and_removed(api, host, db, monkeypatch):  # noqa: F811
    manager = FakeManager()
    monkeypatch.setattr(ops_schedule, "process_manager", lambda conf: manager)
    monkeypatch.setattr(ops_schedule, "systemd_is_pid1", lambda: False)
    assert api.get(f"{V1}/schedule").json()["kind"] == "none"
    r = api.put(f"{V1}/schedule")
    assert r.status_code == 200
    got = r.json()
    assert got["set_up"] == "isidorus scheduler under supervisord: every day at 03:00"
    assert (got["kind"], got["state"], got["time"]) == ("isidorus scheduler", "running", "03:00")
    assert got["next_due"] is not None and "ISIDORUS_SERVICES_TLS" in got["unkept"]
    spec = manager.programs["isidorus-scheduler"]
    assert spec.command[-3:] == ("run", "--data-dir", host)
    assert api.get(f"{V1}/schedule").json()["state"] == "running"

    assert api.delete(f"{V1}/schedule").status_code == 204
    assert manager.programs == {} and api.get(f"{V1}/schedule").json()["kind"] == "none"
    rows = audit_rows(db)
    assert ("api:ci", "schedule.install", "") in rows and ("api:ci", "schedule.remove", "") in rows

    manager.fail = True
    assert_error(api.put(f"{V1}/schedule"), 500, "supervisorctl update failed")


# -- a test notification


@pytest.fixture
def smtp():
    """An SMTP server on a free port: the messages it was given."""
    got = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's)
            got.append(message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield got, port
    finally:
        controller.stop()


def test_a_test_notification(api, machinery, smtp):  # noqa: F811
    got, port = smtp
    assert_error(api.post(f"{V1}/notify/test"), 409, "no notification target")
    target = f"mailto://127.0.0.1:{port}?from=i@example.test&to=a@example.test"
    config = machinery / "no-config.toml"
    config.write_text(f'[notify]\nurls = ["{target}"]\n')
    r = api.post(f"{V1}/notify/test")
    assert r.status_code == 200 and r.json() == {"targets": 1, "failed": []}
    assert len(got) == 1 and "isidorus test message" in got[0]["Subject"]
    closed = free_port()
    down = target.replace(str(port), str(closed))
    config.write_text(f'[notify]\nurls = ["{target}", "{down}"]\n')
    r = api.post(f"{V1}/notify/test")
    assert r.status_code == 200 and r.json()["targets"] == 2
    assert len(r.json()["failed"]) == 1 and str(closed) in r.json()["failed"][0]
    config.write_text('[notify]\nurls = ["nosuch://x"]\n')
    assert_error(api.post(f"{V1}/notify/test"), 400, "not a notification URL apprise knows")


# -- the directory


def test_the_directory_sync(api, host, db, tmp_path):  # noqa: F811
    assert_error(api.post(f"{V1}/directory/sync"), 409, "no [ldap] table")
    config = os.path.join(host, "isidorus.toml")
    with open(os.path.join(host, "ldap.secret"), "w") as f:
        f.write(ADMIN_PASSWORD + "\n")
    with running_slapd(tmp_path / "slapd") as slapd:
        with open(config, "a") as f:
            f.write(
                f'\n[ldap]\nurl = "{slapd.url}"\nbase_dn = "{BASE_DN}"\nbind_dn = "{ADMIN_DN}"\n'
                'bind_password_file = "ldap.secret"\n'
            )
        r = api.post(f"{V1}/directory/sync", json={"dry_run": True})
        assert r.status_code == 200, r.text
        planned = r.json()
        assert planned["dry_run"] is True and planned["added"] > 0 and planned["problems"] == []
        assert f"add {person_dn('alice')}" in planned["changes"]
        assert slapd.entry(person_dn("alice")) is None
        done = api.post(f"{V1}/directory/sync").json()
        assert done["dry_run"] is False and done["added"] == planned["added"]
        assert slapd.entry(person_dn("alice"))["mail"] == ["alice@example.org"]
        again = api.post(f"{V1}/directory/sync", json={}).json()
        assert (again["added"], again["updated"], again["deleted"]) == (0, 0, 0)
        assert again["unchanged"] > 0 and again["changes"] == []
    assert_error(api.post(f"{V1}/directory/sync"), 503)
    assert_error(api.post(f"{V1}/directory/sync", json={"dry_run": "maybe"}), 422, "dry_run")
