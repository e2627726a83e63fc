"""/metrics, the admin area's Backups and Jobs pages, and the public page's date of the
latest copy off site, over a real store: files backed up by the engine into the host's
store (a directory), copied by a real sync to a home's copy (another directory), and runs
recorded through ops/runs.py as the nightly job records them."""

from __future__ import annotations

import html
import os
import random
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from starlette.testclient import TestClient

from isidorus.backup.archiver import BackupOptions
from isidorus.backup.progress import NullProgress
from isidorus.backup.sync import SyncOptions
from isidorus.backup.testing import CHEAP_KDF
from isidorus.ops import accounts as ops
from isidorus.ops import offsite, runs, tokens
from isidorus.ops.backups import create_backup, init_store
from isidorus.ops.runs import Step
from isidorus.ops.store_refs import StoreRef
from isidorus.state.schema import runs as runs_table
from isidorus.web.app import create_app
from tests.web.test_app import PW, csrf_of, host, login  # noqa: F401  (fixtures)
from tests.web.test_services import FakeStatus, make_installed

ADMIN_PW = "the host keeper's passphrase"
PASSPHRASE = b"the store's own long passphrase"


class Host:
    """A host's store with two snapshots, one home's copy of it, and the runs that made
    them, as the tests find them."""

    def __init__(self, root, data_dir):
        self.root = root
        self.data_dir = data_dir
        self.store = str(root / "store")
        self.copy = str(root / "homes" / "anna")
        self.src = root / "src"
        self.results = []
        self.ref = StoreRef(self.store, lambda: PASSPHRASE, str(root / "cache"), {})

    def make_tree(self):
        rng = random.Random(7)
        etc = self.src / "etc" / "nginx"
        etc.mkdir(parents=True)
        (etc / "nginx.conf").write_text("worker_processes auto;\n" * 40)
        (self.src / "etc" / "hostname").write_text("isidorus\n")
        self.big = self.src / "srv" / "photo album.bin"
        self.big.parent.mkdir(parents=True)
        self.big.write_bytes(rng.randbytes(3_000_000))  # several chunks
        (self.src / "srv" / "ünï côde.txt").write_text("names are bytes\n")

    def back_up(self):
        result = create_backup(
            self.ref,
            BackupOptions(paths=(str(self.src),), tags=("nightly", "system")),
            NullProgress(),
        )
        self.results.append(result)
        return result

    def stored_bytes(self, where=None):
        """What the objects of a store take, counted on disk."""
        where = where or self.store
        total = 0
        for kind in ("keys", "snapshots", "index", "data"):
            for folder, _dirs, files in os.walk(os.path.join(where, kind)):
                total += sum(
                    os.path.getsize(os.path.join(folder, f)) for f in files if not f.startswith(".")
                )
        return total


def record_night(db, when, steps, status="ok", kind="nightly"):
    """A run as the nightly job records it, its steps started at `when`, a minute apart."""
    run_id = runs.begin(db, kind)
    log = []
    for i, (step, target, state, size, detail, error) in enumerate(steps):
        log.append(f"{step} {target}: {state}")
        runs.add_step(
            db,
            run_id,
            Step(step, target, state, when + timedelta(minutes=i), 30.0, size, error, detail),
            "\n".join(log) + "\n",
        )
    runs.finish(db, run_id, status, "\n".join(log) + "\nthe end <of> the night\n")
    with db.write() as conn:  # as if it ran that night
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id == run_id)
            .values(started_at=when, finished_at=when + timedelta(minutes=len(steps) + 1))
        )
    return run_id


def figures(result):
    return {
        "snapshot": result.snapshot.short_id,
        "files": result.files,
        "bytes_total": result.bytes_total,
        "bytes_new": result.bytes_new,
        "bytes_stored": result.bytes_stored,
    }


@pytest.fixture
def world(host, tmp_path, monkeypatch):  # noqa: F811
    """Settings that point at a store of this test; two backups of a small tree, a sync
    to anna's copy, and two nights recorded: the first ok, the second with marc's copy
    failed."""
    config = tmp_path / "isidorus.toml"
    config.write_text(
        '[remotes.anna]\nurl = "' + str(tmp_path / "homes" / "anna") + '"\n'
        "[remotes.marc]\n"
        'url = "ssh+isidorus://isidorus@marc.invalid/isidorus"\n'
    )
    secret = tmp_path / "backup.passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    monkeypatch.setenv("ISIDORUS_CONFIG", str(config))
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("ISIDORUS_BACKUP_PASSPHRASE_FILE", str(secret))
    monkeypatch.setenv("ISIDORUS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ISIDORUS_SSH_COMMAND", str(fake_ssh(tmp_path)))
    w = Host(tmp_path, host)
    init_store(w.store, lambda: PASSPHRASE, kdf=CHEAP_KDF)
    w.make_tree()
    first = w.back_up()
    (w.src / "etc" / "hostname").write_text("isidorus.example.org\n")
    second = w.back_up()
    os.makedirs(os.path.dirname(w.copy))
    w.sync = offsite.sync(w.ref, w.copy, SyncOptions(), NullProgress())
    db = ops.open_state(host)
    day1 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    day2 = day1 + timedelta(days=1)
    w.night1 = record_night(
        db,
        day1,
        [
            ("state", "", "ok", 1000, {"file": "state.sqlite"}, ""),
            ("backup", "system", "ok", first.bytes_new, figures(first), ""),
            ("prune", "local", "ok", 0, {"kept": 1, "removed": 0}, ""),
            ("gc", "local", "ok", 0, {"bytes_freed": 0}, ""),
            ("sync", "anna", "ok", 5000, {"url": w.copy, "snapshots_copied": 1}, ""),
        ],
    )
    w.night2 = record_night(
        db,
        day2,
        [
            ("backup", "system", "ok", second.bytes_new, figures(second), ""),
            ("gc", "local", "ok", 0, {"bytes_freed": 100}, ""),
            ("sync", "anna", "ok", w.sync.bytes_sent, {"url": w.copy, "snapshots_copied": 2}, ""),
            ("sync", "marc", "failed", 0, {}, "ssh: marc.invalid: Name or service not known"),
        ],
        status="failed",
    )
    w.day1, w.day2 = day1, day2
    w.db = db
    yield w
    db.close()


def fake_ssh(tmp_path):
    """An ssh that cannot reach any host, as a home that is down looks."""
    path = tmp_path / "ssh"
    path.write_text(
        "#!/bin/sh\necho 'ssh: Could not resolve hostname marc.invalid' >&2\nexit 255\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def status():
    return FakeStatus()


@pytest.fixture
def app(world, status):
    return create_app(world.data_dir, list_services=status)


@pytest.fixture
def admin(app):
    with TestClient(app, base_url="http://localhost") as c:
        login(c, "admin", ADMIN_PW)
        yield c


@pytest.fixture
def alice(app):
    with TestClient(app, base_url="http://localhost") as c:
        login(c, "alice", PW)
        yield c


@pytest.fixture
def token(world):
    return tokens.add_token(world.db, "test", "prometheus", "admin").secret


def metrics_of(text):
    """{(name, labels as a sorted tuple): value}, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(app, token, **headers):
    with TestClient(app, base_url="http://localhost") as c:
        return c.get("/metrics", headers={"Authorization": f"Bearer {token}", **headers})


# -- /metrics


def test_metrics_hold_the_store_the_runs_and_the_copies(world, app, token):
    make_installed(world.data_dir, "radicale")
    r = scrape(app, token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = metrics_of(r.text)

    second = world.results[1]
    assert m[("isidorus_backup_last_success_timestamp_seconds", (("target", "system"),))] == (
        world.day2.timestamp()
    )
    assert m[("isidorus_backup_last_ok", (("target", "system"),))] == 1
    anna, marc = (("remote", "anna"),), (("remote", "marc"),)
    assert (
        m[("isidorus_sync_last_success_timestamp_seconds", anna)]
        == (world.day2 + timedelta(minutes=2)).timestamp()
    )
    assert m[("isidorus_sync_last_success_bytes", anna)] == world.sync.bytes_sent
    assert m[("isidorus_sync_last_ok", anna)] == 1
    assert m[("isidorus_sync_last_ok", marc)] == 0
    assert ("isidorus_sync_last_success_timestamp_seconds", marc) not in m  # never succeeded
    assert (
        m[("isidorus_offsite_last_success_timestamp_seconds", ())]
        == m[("isidorus_sync_last_success_timestamp_seconds", anna)]
    )

    nightly = (("kind", "nightly"),)
    last = runs.get_run(world.db, world.night2)
    assert m[("isidorus_run_last_start_timestamp_seconds", nightly)] == last.started_at.timestamp()
    assert m[("isidorus_run_last_duration_seconds", nightly)] == 5 * 60
    assert m[("isidorus_run_last_status", (("kind", "nightly"), ("status", "failed")))] == 1
    assert m[("isidorus_run_last_status", (("kind", "nightly"), ("status", "ok")))] == 0
    assert m[("isidorus_run_last_errors", nightly)] == 1
    assert m[("isidorus_run_last_bytes", nightly)] == second.bytes_new + world.sync.bytes_sent
    assert m[("isidorus_run_running", nightly)] == 0

    stored = world.stored_bytes()
    logical = sum(r.bytes_total for r in world.results)
    assert m[("isidorus_store_up", ())] == 1
    assert m[("isidorus_store_snapshots", ())] == 2
    assert m[("isidorus_store_stored_bytes", ())] == stored
    assert m[("isidorus_store_logical_bytes", ())] == logical
    assert m[("isidorus_store_dedup_ratio", ())] == pytest.approx(logical / stored)
    assert logical / stored > 1.5  # the second backup stored almost nothing new
    assert m[("isidorus_service_up", (("service", "radicale"),))] == 1


def test_metrics_follow_the_store_at_each_scrape(world, app, token):
    before = metrics_of(scrape(app, token).text)
    world.back_up()
    after = metrics_of(scrape(app, token).text)
    assert after[("isidorus_store_snapshots", ())] == before[("isidorus_store_snapshots", ())] + 1
    assert after[("isidorus_store_stored_bytes", ())] == world.stored_bytes()
    assert after[("isidorus_store_logical_bytes", ())] == sum(r.bytes_total for r in world.results)


def test_a_store_that_cannot_be_read_is_told_not_fatal(world, app, token, monkeypatch):
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", str(world.root / "no-store"))
    r = scrape(app, token)
    assert r.status_code == 200
    m = metrics_of(r.text)
    assert m[("isidorus_store_up", ())] == 0
    assert ("isidorus_store_snapshots", ()) not in m
    assert m[("isidorus_backup_last_ok", (("target", "system"),))] == 1  # the history stays


def test_without_the_passphrase_the_store_is_still_counted(world, app, token, monkeypatch):
    monkeypatch.setenv("ISIDORUS_BACKUP_PASSPHRASE_FILE", str(world.root / "missing"))
    m = metrics_of(scrape(app, token).text)
    assert m[("isidorus_store_snapshots", ())] == 2
    assert m[("isidorus_store_stored_bytes", ())] == world.stored_bytes()
    assert ("isidorus_store_dedup_ratio", ()) not in m


def test_openmetrics_when_prometheus_asks_for_it(app, token):
    r = scrape(app, token, Accept="application/openmetrics-text; version=1.0.0")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


@pytest.mark.parametrize(
    "header",
    [None, "Bearer isi_not-a-token", "Bearer ", "Basic YWRtaW46eA==", "isi_without-scheme"],
)
def test_metrics_refuse_a_missing_or_bad_token(app, header):
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get("/metrics", headers={"Authorization": header} if header else {})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "isidorus_" not in r.text and "Traceback" not in r.text
    assert len(r.text.strip().splitlines()) == 1  # one line: the cause and the fix


def test_a_token_whose_user_is_no_longer_an_admin_is_refused(world, app):
    ops.add_user(world.db, "test", "carol", "carol@example.org", PW, is_admin=True)
    secret = tokens.add_token(world.db, "test", "carols", "carol").secret
    ops.set_admin(world.db, "test", "carol", False)
    r = scrape(app, secret)
    assert r.status_code == 403 and "not an admin" in r.text


def test_loopback_may_scrape_without_a_token_unless_a_proxy_forwarded_it(app):
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40000)) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401
        assert c.get("/metrics", headers={"X-Real-IP": "203.0.113.9"}).status_code == 401
        # a bad token is refused even from loopback
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    with TestClient(app, base_url="http://localhost", client=("::1", 40000)) as c:
        assert c.get("/metrics").status_code == 200
    with TestClient(app, base_url="http://localhost", client=("192.0.2.7", 40000)) as c:
        assert c.get("/metrics").status_code == 401


# -- the Backups page


def test_the_backups_page_shows_the_store_its_snapshots_and_the_copies(world, admin):
    page = admin.get("/admin/backups")
    assert page.status_code == 200
    text = html.unescape(page.text)
    for result in world.results:
        assert result.snapshot.short_id in text
        assert f'href="/admin/backups/{result.snapshot.id}"' in text
    assert "nightly, system" in text
    assert world.store in text
    # anna's copy was listed now: both snapshots are there
    anna = text[text.index("<h3>anna</h3>") : text.index("<h3>marc</h3>")]
    assert "2 snapshots" in anna and "ok" in anna
    # marc cannot be reached: the page says why, and is no error itself
    marc = text[text.index("<h3>marc</h3>") :]
    assert "cannot be reached" in marc and "marc.invalid" in marc
    assert "Name or service not known" in marc  # the failed sync's own error
    # the chart is drawn here: an SVG with the store's size after each night
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    assert 'role="img"' in svg and "<polyline" in svg
    assert svg.count("<circle") == 2
    assert "<script" not in page.text


def test_the_backups_page_says_when_the_store_cannot_be_read(world, admin, monkeypatch):
    monkeypatch.setenv("ISIDORUS_BACKUP_STORE", str(world.root / "no-store"))
    page = admin.get("/admin/backups")
    assert page.status_code == 200
    assert "The store cannot be read" in page.text and "does not exist" in page.text


def test_the_backups_page_in_french(world, admin):
    admin.cookies.set("isidorus_lang", "fr")
    page = html.unescape(admin.get("/admin/backups").text)
    assert "Le dépôt de l'hébergeur" in page and "Copies hors site" in page
    assert "injoignable" in page


def test_a_file_is_taken_back_byte_for_byte(world, admin):
    snap = world.results[0].snapshot
    folder = f"{world.src}/srv"
    page = admin.get(f"/admin/backups/{snap.id}", params={"path": folder})
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "photo album.bin" in text and "ünï côde.txt" in text
    link = re.search(r'href="(/admin/backups/[0-9a-f]+/file\?path=[^"]*photo[^"]*)"', page.text)
    assert link, "no link to the file"
    r = admin.get(html.unescape(link.group(1)))
    assert r.status_code == 200
    assert r.content == world.big.read_bytes()
    assert r.headers["content-disposition"].startswith("attachment;")
    assert "photo%20album.bin" in r.headers["content-disposition"]
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(world.big.stat().st_size)
    # a name that is not ASCII comes back under its own name
    r = admin.get(f"/admin/backups/{snap.id}/file?path=" + quote(f"{world.src}/srv/ünï côde.txt"))
    assert r.content == b"names are bytes\n"
    assert "filename*=UTF-8''%C3%BCn%C3%AF%20c%C3%B4de.txt" in r.headers["content-disposition"]


def test_the_folders_of_a_snapshot_are_browsed_from_the_root(world, admin):
    snap = world.results[1].snapshot
    page = admin.get(f"/admin/backups/{snap.id}")
    assert page.status_code == 200
    first = world.src.parts[1]  # the snapshot holds the path under its full name
    assert f">{first}/<" in page.text
    # the second snapshot holds the changed file
    r = admin.get(f"/admin/backups/{snap.id}/file", params={"path": f"{world.src}/etc/hostname"})
    assert r.content == b"isidorus.example.org\n"


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/admin/backups/0123abcd", 404),  # no such snapshot
        ("/admin/backups/not-an-id", 404),
        ("/admin/backups/{id}?path=/no/such/folder", 404),
        ("/admin/backups/{id}/file?path=/no/such/file", 404),
        ("/admin/backups/{id}/file?path={src}/etc", 404),  # a folder, not a file
        ("/admin/backups/{id}?path={src}/etc/hostname", 404),  # a file, not a folder
        ("/admin/backups/{id}/file?path=/", 404),
        ("/admin/backups/{id}/file?path={src}/../../etc/passwd", 400),
        ("/admin/backups/{id}/file?path=etc/hostname", 400),
        ("/admin/backups/{id}/file?path=%2Fetc%00x", 400),
        ("/admin/jobs/999", 404),
    ],
)
def test_what_is_not_there_is_a_clean_page(world, admin, url, status):
    r = admin.get(url.format(id=world.results[0].snapshot.id, src=world.src))
    assert r.status_code == status
    assert "<h1>" in r.text and "Traceback" not in r.text
    assert "internal error" not in r.text


def test_the_download_needs_the_passphrase(world, admin, monkeypatch):
    monkeypatch.setenv("ISIDORUS_BACKUP_PASSPHRASE_FILE", str(world.root / "missing"))
    snap = world.results[0].snapshot
    r = admin.get(f"/admin/backups/{snap.id}/file", params={"path": f"{world.src}/etc/hostname"})
    assert r.status_code == 400 and "passphrase file" in r.text


# -- the Jobs pages


def test_the_jobs_page_lists_the_runs(world, admin):
    page = admin.get("/admin/jobs")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert f'href="/admin/jobs/{world.night1}"' in text
    assert f'href="/admin/jobs/{world.night2}"' in text
    assert "2026-03-01 03:00" in text and "2026-03-02 03:00" in text
    assert "failed" in text and "Name or service not known" in text
    # filtered by kind
    assert "No job has run yet." in admin.get("/admin/jobs?kind=update").text


def test_a_run_page_shows_its_steps_and_its_log(world, admin):
    page = admin.get(f"/admin/jobs/{world.night2}")
    assert page.status_code == 200
    text = page.text
    assert "copy off site" in text and "anna" in text and "marc" in text
    assert "Name or service not known" in text
    assert "the end &lt;of&gt; the night" in text  # the log, escaped
    assert world.results[1].snapshot.short_id in text  # the backup step's detail


def test_members_get_403_on_every_new_admin_page(world, alice):
    snap = world.results[0].snapshot.id
    for url in (
        "/admin/backups",
        f"/admin/backups/{snap}",
        f"/admin/backups/{snap}/file?path={world.src}/etc/hostname",
        "/admin/jobs",
        f"/admin/jobs/{world.night1}",
    ):
        r = alice.get(url)
        assert r.status_code == 403, url
        assert "isidorus.example.org" not in r.text


def test_visitors_are_sent_to_the_login(app):
    with TestClient(app, base_url="http://localhost") as c:
        for url in ("/admin/backups", "/admin/jobs"):
            r = c.get(url, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_the_admin_area_links_the_new_pages(admin):
    page = admin.get("/admin").text
    assert 'href="/admin/backups"' in page and 'href="/admin/jobs"' in page


# -- the public page


def test_the_public_page_shows_the_latest_copy_off_site(world, app):
    with TestClient(app, base_url="http://localhost") as c:
        text = html.unescape(c.get("/").text)
    assert "Latest copy kept off site: March 2, 2026 at 03:02 (UTC)." in text


def test_the_public_page_without_any_copy(host):  # noqa: F811
    with TestClient(create_app(host, list_services=FakeStatus()), base_url="http://x") as c:
        text = c.get("/").text
    assert "No copy has been kept off site yet." in text
    with TestClient(create_app(host, list_services=FakeStatus()), base_url="http://x") as c:
        c.cookies.set("isidorus_lang", "fr")
        assert "Aucune copie n'a encore été gardée hors site." in html.unescape(c.get("/").text)


def test_a_run_under_way(world, app, admin, token):
    running = runs.begin(world.db, "nightly")
    m = metrics_of(scrape(app, token).text)
    assert m[("isidorus_run_running", (("kind", "nightly"),))] == 1
    # the latest finished run is still the one told
    assert m[("isidorus_run_last_errors", (("kind", "nightly"),))] == 1
    page = admin.get(f"/admin/jobs/{running}").text
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "No step has ended yet." in page
    assert "running" in admin.get("/admin/jobs").text


def test_a_broken_configuration_does_not_stop_the_metrics(world, app, token):
    with open(os.environ["ISIDORUS_CONFIG"], "a") as f:
        f.write("[remotes.zed]\nurl = 3\n")
    r = scrape(app, token)
    assert r.status_code == 200
    m = metrics_of(r.text)  # the copies are still known from the history
    assert m[("isidorus_sync_last_ok", (("remote", "anna"),))] == 1
