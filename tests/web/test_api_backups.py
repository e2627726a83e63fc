"""The REST API's backups and remotes over a real host's store: files backed up by the
engine into a store made with the host's passphrase file, as the nightly job finds it,
and copied by the API's own jobs to a home's copy (another directory). Damage is made by
hand in the store's files, and the jobs that find or repair it are followed to their
end."""

from __future__ import annotations

import os
import threading

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from isidorus.backup import locks
from isidorus.backup.archiver import BackupOptions
from isidorus.backup.progress import NullProgress
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.testing import CHEAP_KDF
from isidorus.ops import accounts as ops
from isidorus.ops import backups as ops_backups
from isidorus.ops import monitoring, runs
from isidorus.ops import tokens as ops_tokens
from isidorus.ops.backups import create_backup, init_store
from isidorus.ops.store_refs import StoreRef
from isidorus.state.schema import users
from isidorus.web.app import create_app
from isidorus.web.jobs import Jobs
from tests.web.test_api import assert_error
from tests.web.test_api_services import audit_rows, wait_for
from tests.web.test_app import host  # noqa: F401  (fixture)

V1 = "/api/v1"
PASSPHRASE = b"the store's own long passphrase"


class World:
    """The host's store with two nightly snapshots of a small tree, and a remote for a
    home's copy (not made yet)."""

    def __init__(self, root, data_dir, config):
        self.root, self.data_dir, self.config = root, data_dir, config
        self.store = str(root / "store")
        self.copy = str(root / "homes" / "anna")
        self.src = root / "src"
        self.ref = StoreRef(self.store, lambda: PASSPHRASE, str(root / "cache"), {})

    def back_up(self):
        return create_backup(
            self.ref,
            BackupOptions(paths=(str(self.src),), tags=("nightly", "system")),
            NullProgress(),
        ).snapshot

    def snapshots(self, where=None):
        ref = (
            self.ref
            if where is None
            else StoreRef(where, lambda: PASSPHRASE, self.ref.cache_dir, {})
        )
        return [s.id for s in ops_backups.list_snapshots(ref)[0]]

    def objects(self, kind, where=None):
        """The files of the store's objects of a kind, sorted."""
        top = os.path.join(where or self.store, kind)
        return sorted(
            os.path.join(d, f) for d, _dirs, files in os.walk(top) for f in files if f[0] != "."
        )


def damage(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xffdamage\xff")


@pytest.fixture
def world(host, tmp_path, monkeypatch):  # noqa: F811
    config = tmp_path / "isidorus.toml"
    config.write_text("[nightly]\nkeep = { last = 1 }\n")
    secret = tmp_path / "backup.passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    monkeypatch.setenv("ISIDORUS_CONFIG", str(config))
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("ISIDORUS_BACKUP_PASSPHRASE_FILE", str(secret))
    monkeypatch.setenv("ISIDORUS_CACHE_DIR", str(tmp_path / "cache"))
    w = World(tmp_path, host, config)
    init_store(w.store, lambda: PASSPHRASE, kdf=CHEAP_KDF)
    (w.src / "etc").mkdir(parents=True)
    (w.src / "etc" / "hostname").write_text("isidorus\n")
    (w.src / "srv").mkdir()
    (w.src / "srv" / "album.bin").write_bytes(os.urandom(300_000))
    (w.src / "old.bin").write_bytes(os.urandom(200_000))  # the first snapshot's alone
    w.first = w.back_up()
    (w.src / "etc" / "hostname").write_text("isidorus.example.org\n")
    os.remove(w.src / "old.bin")
    w.second = w.back_up()
    (tmp_path / "homes").mkdir()
    return w


@pytest.fixture
def client(host):  # noqa: F811
    with TestClient(create_app(host), base_url="http://localhost") as c:
        yield c


@pytest.fixture
def db(host):  # noqa: F811
    d = ops.open_state(host)
    yield d
    d.close()


@pytest.fixture
def api(client, db):
    secret = ops_tokens.add_token(db, "test", "ci", "admin").secret
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def add_anna(api, world):
    r = api.post(f"{V1}/backups/remotes", json={"name": "anna", "url": world.copy})
    assert r.status_code == 201, r.text
    return r.json()


def finished(api, r):
    """The job a POST started, once it ended."""
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/api/v1/backups/job"
    return wait_for(api, r.headers["location"], seconds=60)


ENDPOINTS = [
    ("GET", "/backups/snapshots"),
    ("DELETE", "/backups/snapshots/abcd"),
    ("GET", "/backups/snapshots/latest/files"),
    ("GET", "/backups/snapshots/latest/file?path=/x"),
    ("GET", "/backups/snapshots/latest/diff?to=latest"),
    ("POST", "/backups/unlock"),
    ("POST", "/backups/verify"),
    ("POST", "/backups/prune"),
    ("POST", "/backups/gc"),
    ("POST", "/backups/scrub"),
    ("POST", "/backups/repair-index"),
    ("GET", "/backups/job"),
    ("DELETE", "/backups/job"),
    ("GET", "/backups/remotes"),
    ("POST", "/backups/remotes"),
    ("GET", "/backups/remotes/anna"),
    ("DELETE", "/backups/remotes/anna"),
    ("POST", "/backups/remotes/anna/sync"),
    ("POST", "/backups/remotes/anna/scrub"),
]


def test_every_endpoint_is_documented_and_needs_an_admins_token(client, db, world):
    doc = client.get("/api/openapi.json").json()
    documented = {(m.upper(), p) for p, ms in doc["paths"].items() for m in ms}
    for method, path in ENDPOINTS:
        templ = path.split("?")[0].replace("abcd", "{snapshot}").replace("latest", "{snapshot}")
        templ = templ.replace("/anna", "/{name}")
        assert (method, "/v1" + templ) in documented, (method, path)
        if method == "POST" and templ.endswith(("verify", "prune", "gc", "sync", "scrub")):
            assert "Location" in doc["paths"]["/v1" + templ]["post"]["responses"]["202"]["headers"]
    for method, path in ENDPOINTS:
        assert_error(client.request(method, V1 + path), 401, "Authorization: Bearer")
    ops.add_user(db, "test", "root2", "root2@example.org", "another admin's phrase", is_admin=True)
    secret = ops_tokens.add_token(db, "test", "script", "root2").secret
    with db.write() as conn:
        conn.execute(update(users).where(users.c.name == "root2").values(is_admin=False))
    for method, path in ENDPOINTS:
        r = client.request(method, V1 + path, headers={"Authorization": f"Bearer {secret}"})
        assert_error(r, 403, "not an admin")
    assert world.snapshots() == [world.first.id, world.second.id]
    assert not os.path.exists(world.copy)


# -- the snapshots


def test_the_snapshots(api, world):
    r = api.get(f"{V1}/backups/snapshots")
    assert r.status_code == 200
    got = r.json()
    assert [s["id"] for s in got["snapshots"]] == [world.first.id, world.second.id]
    assert got["damaged"] == []
    first = got["snapshots"][0]
    assert first["tags"] == ["nightly", "system"] and first["paths"] == [str(world.src)]
    assert first["short_id"] == world.first.id[:8] and first["kind"] == "files"
    assert first["summary"]["files"] == world.first.summary["files"]
    tagged = api.get(f"{V1}/backups/snapshots", params={"tag": ["nightly", "system"]}).json()
    assert len(tagged["snapshots"]) == 2
    assert api.get(f"{V1}/backups/snapshots", params={"tag": "service:x"}).json() == {
        "snapshots": [],
        "damaged": [],
    }
    assert_error(api.get(f"{V1}/backups/snapshots", params={"colour": "blue"}), 422, "colour")


def test_a_store_not_made_yet_or_without_its_passphrase(api, world, tmp_path, monkeypatch):
    os.remove(tmp_path / "backup.passphrase")
    assert_error(api.get(f"{V1}/backups/snapshots"), 400, "passphrase file", "is missing")
    assert_error(api.post(f"{V1}/backups/verify"), 400, "passphrase file")
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", str(tmp_path / "nowhere"))
    for method, path in (
        ("GET", "/backups/snapshots"),
        ("POST", "/backups/verify"),
        ("POST", "/backups/prune"),
        ("POST", "/backups/gc"),
        ("POST", "/backups/scrub"),
        ("POST", "/backups/repair-index"),
        ("POST", "/backups/unlock"),
        ("DELETE", f"/backups/snapshots/{world.first.id}"),
    ):
        assert_error(api.request(method, V1 + path), 409, "does not exist yet", "nightly job")
    assert_error(api.get(f"{V1}/backups/job"), 404, "no job on the host's store")
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", "s3://bucket/store")
    assert_error(api.get(f"{V1}/backups/snapshots"), 400, "directory of this host")


def test_a_snapshots_folders_files_and_changes(api, world):
    src = str(world.src)
    r = api.get(f"{V1}/backups/snapshots/{world.second.id[:10]}/files", params={"path": src})
    assert r.status_code == 200
    got = r.json()
    assert got["snapshot"] == world.second.id and got["path"] == src
    assert [(e["name"], e["type"]) for e in got["entries"]] == [("etc", "dir"), ("srv", "dir")]
    r = api.get(f"{V1}/backups/snapshots/latest/files", params={"path": f"{src}/srv"})
    assert [(e["name"], e["size"]) for e in r.json()["entries"]] == [("album.bin", 300_000)]

    r = api.get(
        f"{V1}/backups/snapshots/{world.first.id}/file", params={"path": f"{src}/etc/hostname"}
    )
    assert r.status_code == 200 and r.content == b"isidorus\n"
    assert r.headers["content-type"] == "application/octet-stream"
    assert 'filename="hostname"' in r.headers["content-disposition"]
    r = api.get(f"{V1}/backups/snapshots/latest/file", params={"path": f"{src}/srv/album.bin"})
    assert r.content == (world.src / "srv" / "album.bin").read_bytes()

    r = api.get(f"{V1}/backups/snapshots/{world.first.id}/diff", params={"to": world.second.id})
    assert r.status_code == 200
    changes = {(c["change"], c["path"]) for c in r.json()}
    assert {("-", f"{src}/old.bin"), ("M", f"{src}/etc/hostname")} <= changes
    assert {c for c, _p in changes} <= {"-", "M", "U"}  # and the folders' times

    files = f"{V1}/backups/snapshots/%s/files"
    assert_error(api.get(files % "0000000000"), 404, "0000000000")
    assert_error(api.get(files % "latest", params={"path": "/no/such"}), 404, "/no/such")
    assert_error(
        api.get(files % "latest", params={"path": f"{src}/etc/hostname"}), 404, "not a folder"
    )
    assert_error(api.get(files % "latest", params={"path": "etc"}), 400, "starts with /")
    assert_error(api.get(files % "latest", params={"path": "/a/../b"}), 400, "..")
    file = f"{V1}/backups/snapshots/latest/file"
    assert_error(api.get(file, params={"path": src}), 404, "not a file")
    assert_error(api.get(file), 422, "path")
    diff = f"{V1}/backups/snapshots/latest/diff"
    assert_error(api.get(diff, params={"to": "ffffffff"}), 404, "ffffffff")
    assert_error(api.get(diff), 422, "to")


def test_forget_a_snapshot(api, db, world):
    assert api.delete(f"{V1}/backups/snapshots/{world.first.id[:12]}").status_code == 204
    assert world.snapshots() == [world.second.id]
    assert_error(api.delete(f"{V1}/backups/snapshots/{world.first.id[:12]}"), 404, "matches 0")
    assert ("api:ci", "backup.forget", world.store) in audit_rows(db)


def test_unlock(api, db, world):
    backend = LocalBackend(world.store)
    gone = locks.Session("a" * 32, "backup", os.uname().nodename, "", 2**22 + 7, 1)
    backend.write("locks", gone.name, gone.to_json())
    r = api.post(f"{V1}/backups/unlock")
    assert r.status_code == 200
    assert r.json() == {"removed": [gone.describe()]}
    assert [n for n, _ in backend.list("locks")] == []
    assert api.post(f"{V1}/backups/unlock", json={}).json() == {"removed": []}
    assert_error(api.post(f"{V1}/backups/unlock", json={"everything": True}), 422, "everything")
    assert [a for _, a, _ in audit_rows(db)].count("backup.unlock") == 1


# -- the jobs on the host's store


def test_verify_finds_damage_and_repairs_it_from_a_copy(api, db, world):
    assert_error(api.get(f"{V1}/backups/job"), 404)
    job = finished(api, api.post(f"{V1}/backups/verify"))
    assert job["state"] == "done" and job["action"] == "verify" and job["actor"] == "api:ci"
    assert job["note"].startswith("intact: 2 snapshots")
    assert job["result"]["ok"] is True and job["result"]["snapshots_checked"] == 2
    assert job["lines"][0].startswith("verify: ")
    # structure only: no pack is read
    job = finished(api, api.post(f"{V1}/backups/verify", json={"read_data": False}))
    assert job["state"] == "done" and job["result"]["bytes_checked"] == 0, job

    add_anna(api, world)
    assert finished(api, api.post(f"{V1}/backups/remotes/anna/sync"))["state"] == "done"
    for pack in world.objects("data"):
        damage(pack)
    job = finished(api, api.post(f"{V1}/backups/verify", json={"sample_percent": 100}))
    assert job["state"] == "failed" and job["note"].startswith("damaged: ")
    assert {d["snapshot"] for d in job["result"]["damaged"]} == {world.first.id, world.second.id}
    assert any(line.startswith("damaged snapshot ") for line in job["lines"])

    job = finished(api, api.post(f"{V1}/backups/verify", json={"repair_from": "anna"}))
    assert job["state"] == "done", job
    assert job["result"]["before"]["ok"] is False and job["result"]["ok"] is True
    assert job["result"]["repaired"] and any(x.startswith("repaired ") for x in job["lines"])
    assert ("api:ci", "backup.repair", world.store) in audit_rows(db)

    assert_error(api.post(f"{V1}/backups/verify", json={"repair_from": "marc"}), 404, "'marc'")
    assert_error(api.post(f"{V1}/backups/verify", json={"sample_percent": 0}), 422, "sample")
    assert_error(api.post(f"{V1}/backups/verify", json={"snapshots": ["../x"]}), 422, "snapshots")


def test_prune_keeps_what_the_nightly_retention_keeps(api, db, world):
    job = finished(api, api.post(f"{V1}/backups/prune", json={"dry_run": True}))
    assert job["state"] == "done" and job["note"] == "1 kept, 1 to remove"
    assert job["result"]["dry_run"] is True and job["result"]["policy"] == {"last": 1}
    assert world.snapshots() == [world.first.id, world.second.id]
    assert "backup.prune" not in [a for _, a, _ in audit_rows(db)]

    job = finished(api, api.post(f"{V1}/backups/prune"))
    assert job["state"] == "done" and job["note"] == "1 kept, 1 removed"
    assert f"remove {world.first.short_id}" in job["lines"]
    assert world.snapshots() == [world.second.id]
    assert ("api:ci", "backup.prune", world.store) in audit_rows(db)

    packs = len(world.objects("data"))
    job = finished(api, api.post(f"{V1}/backups/gc", json={"wait": False}))
    assert job["state"] == "done" and job["result"]["done"] is True, job
    assert job["result"]["bytes_freed"] > 0 and len(world.objects("data")) <= packs
    assert ("api:ci", "backup.gc", world.store) in audit_rows(db)
    r = api.get(f"{V1}/backups/snapshots/latest/file", params={"path": f"{world.src}/etc/hostname"})
    assert r.content == b"isidorus.example.org\n"
    assert_error(api.post(f"{V1}/backups/prune", json={"dry_run": "maybe"}), 422, "dry_run")


def test_scrub_and_repair_index(api, db, world):
    job = finished(api, api.post(f"{V1}/backups/scrub"))
    assert job["state"] == "done" and job["note"].startswith("intact: ")
    assert job["result"]["ok"] is True and job["result"]["objects_checked"] > 0

    for index in world.objects("index"):
        os.remove(index)
    job = finished(api, api.post(f"{V1}/backups/repair-index"))
    assert job["state"] == "done" and job["note"].startswith("index rebuilt: ")
    assert job["result"]["packs_indexed"] == len(world.objects("data"))
    assert world.objects("index")
    assert ("api:ci", "backup.repair-index", world.store) in audit_rows(db)

    add_anna(api, world)
    finished(api, api.post(f"{V1}/backups/remotes/anna/sync"))
    damage(world.objects("snapshots")[0])
    job = finished(api, api.post(f"{V1}/backups/scrub"))
    assert job["state"] == "failed" and job["note"].startswith("damaged: ")
    assert [d["object"] for d in job["result"]["damaged"]] == [
        "snapshots/" + os.path.basename(world.objects("snapshots")[0])
    ]
    job = finished(api, api.post(f"{V1}/backups/scrub", json={"repair_from": "anna"}))
    assert job["state"] == "done" and job["note"].startswith("repaired: "), job
    assert world.snapshots() == [world.first.id, world.second.id]
    assert_error(api.post(f"{V1}/backups/scrub", json={"repair_from": "no such"}), 422)


def test_one_job_on_the_store_at_a_time(api, host, world):  # noqa: F811
    go = threading.Event()

    def work(say):
        say("holding the store")
        assert go.wait(10)
        return "held"

    other = Jobs(host, "host-jobs")  # another server process's job
    other.start("backups", "gc", "api:other", work)
    try:
        for method, path in (
            ("POST", "/backups/verify"),
            ("POST", "/backups/prune"),
            ("POST", "/backups/scrub"),
            ("POST", "/backups/unlock"),
            ("DELETE", f"/backups/snapshots/{world.first.id}"),
            ("DELETE", "/backups/job"),
        ):
            r = api.request(method, V1 + path)
            assert_error(r, 409, "runs")
        assert "gc, by api:other" in api.post(f"{V1}/backups/gc").json()["error"]
        job = api.get(f"{V1}/backups/job").json()
        assert job["state"] == "running" and job["lines"] == ["holding the store"]
        listed = api.get(f"{V1}/jobs").json()
        assert [(j["target"], j["url"]) for j in listed] == [("backups", "/api/v1/backups/job")]
    finally:
        go.set()
    assert wait_for(api, f"{V1}/backups/job")["note"] == "held"
    assert api.delete(f"{V1}/backups/job").status_code == 204
    assert_error(api.get(f"{V1}/backups/job"), 404)
    assert world.snapshots() == [world.first.id, world.second.id]


# -- the remotes, and the copies there


def test_the_remotes(api, db, world):
    assert api.get(f"{V1}/backups/remotes").json() == []
    made = add_anna(api, world)
    assert made == {
        "name": "anna",
        "url": world.copy,
        "file": str(world.config) + ".d/remotes.toml",
    }
    assert api.get(f"{V1}/backups/remotes").json() == [made]
    assert api.get(f"{V1}/backups/remotes/anna").json() == made
    again = {"name": "anna", "url": "/elsewhere"}
    assert_error(api.post(f"{V1}/backups/remotes", json=again), 409, "exists")
    bad = {"name": "marc", "url": "relative/path"}
    assert_error(api.post(f"{V1}/backups/remotes", json=bad), 400, "relative path")
    bad = {"name": "marc", "url": "ftp://marc.example.org/x"}
    assert_error(api.post(f"{V1}/backups/remotes", json=bad), 400, "ftp://")
    bad = {"name": "-marc", "url": "/srv/x"}
    assert_error(api.post(f"{V1}/backups/remotes", json=bad), 422, "name")
    assert_error(api.get(f"{V1}/backups/remotes/marc"), 404, "no remote 'marc'")

    with open(world.config, "a") as f:
        f.write('[remotes.marc]\nurl = "ssh://marc.example.org/isidorus"\n')
    assert [r["name"] for r in api.get(f"{V1}/backups/remotes").json()] == ["anna", "marc"]
    assert_error(api.delete(f"{V1}/backups/remotes/marc"), 409, "remove it from that file")
    assert api.delete(f"{V1}/backups/remotes/anna").status_code == 204
    assert_error(api.delete(f"{V1}/backups/remotes/anna"), 404)
    assert [r["name"] for r in api.get(f"{V1}/backups/remotes").json()] == ["marc"]
    rows = audit_rows(db)
    assert ("api:ci", "backup.remote.add", "anna") in rows
    assert ("api:ci", "backup.remote.remove", "anna") in rows


def test_a_copy_that_fails_is_in_the_history_as_failed(api, db, world, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = {"name": "marc", "url": str(blocker / "copy")}
    assert api.post(f"{V1}/backups/remotes", json=bad).status_code == 201
    job = finished(api, api.post(f"{V1}/backups/remotes/marc/sync"))
    assert job["state"] == "failed"
    [copy] = runs.list_runs(db, kind="copy")
    assert copy.status == "failed" and copy.steps[0].status == "failed"
    assert copy.steps[0].error == job["note"]
    assert monitoring.last_offsite_copy(db) is None


def test_a_copy_to_a_remote_and_a_check_of_it(api, db, world):
    assert_error(api.post(f"{V1}/backups/remotes/anna/sync"), 404, "no remote 'anna'")
    add_anna(api, world)
    job = finished(api, api.post(f"{V1}/backups/remotes/anna/sync"))
    assert job["state"] == "done" and job["action"] == "sync"
    assert job["result"]["snapshots_copied"] == 2 and job["result"]["created"] is True
    assert job["lines"][0] == f"copying to anna ({world.copy})"
    assert world.snapshots(world.copy) == [world.first.id, world.second.id]
    assert ("api:ci", "backup.sync", "anna") in audit_rows(db)
    # in the jobs' history, where doctor and the status page look for the copies made
    assert monitoring.last_offsite_copy(db) is not None
    [copy] = runs.list_runs(db, kind="copy")
    assert copy.status == "ok" and [(s.step, s.target, s.status) for s in copy.steps] == [
        ("sync", "anna", "ok")
    ]
    assert copy.steps[0].bytes == job["result"]["bytes_sent"] > 0
    assert copy.steps[0].detail["snapshots_copied"] == 2
    again = finished(api, api.post(f"{V1}/backups/remotes/anna/sync"))
    assert again["result"]["snapshots_copied"] == 0

    job = finished(api, api.post(f"{V1}/backups/remotes/anna/scrub"))
    assert job["state"] == "done" and job["note"].startswith("intact: ")
    pack = world.objects("data", world.copy)[0]
    damage(pack)
    job = finished(api, api.post(f"{V1}/backups/remotes/anna/scrub", json={"repair": False}))
    assert job["state"] == "failed"
    assert job["result"]["damaged"][0]["object"].endswith(os.path.basename(pack))
    job = finished(api, api.post(f"{V1}/backups/remotes/anna/scrub", json={"repair": True}))
    assert job["state"] == "done" and job["result"]["repaired"], job
    assert ("api:ci", "backup.repair", world.copy) in audit_rows(db)
    assert_error(api.post(f"{V1}/backups/remotes/marc/scrub"), 404, "'marc'")
