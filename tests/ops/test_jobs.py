"""The jobs' history, their configuration, the schedule's arithmetic and the diagnosis,
on real state databases (SQLite and PostgreSQL), real files and a real SMTP server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from isidorus.errors import NotFoundError, UsageError
from isidorus.ops import doctor, jobs_config, notify, runs, schedule
from isidorus.ops.runs import Step
from isidorus.settings import Remote
from isidorus.state.db import Database
from isidorus.state.migrations import migrate


@pytest.fixture
def db(state_url):
    d = Database(state_url)
    migrate(d)
    yield d
    d.close()


def step(name: str, target: str = "", status: str = "ok", at: datetime | None = None, **kw) -> Step:
    return Step(name, target, status, at or datetime.now(UTC), **kw)


# --- the history ---------------------------------------------------------------------


def test_a_run_is_recorded_step_by_step_and_a_cut_one_is_marked_interrupted(db):
    first = runs.begin(db, "nightly")
    runs.add_step(db, first, step("backup", "system", bytes=100), "one\n")
    # the process dies here: the run stays "running", with what it had done
    found = runs.get_run(db, first)
    assert (found.status, found.bytes, found.log, found.finished_at) == (
        "running",
        100,
        "one\n",
        None,
    )

    second = runs.begin(db, "nightly")
    assert runs.get_run(db, first).status == "interrupted"
    runs.add_step(db, second, step("sync", "anna", bytes=40, detail={"packs_sent": 2}), "a\n")
    runs.add_step(db, second, step("sync", "marc", "failed", error="no route"), "a\nb\n")
    done = runs.finish(db, second, "failed", "a\nb\nc\n")
    assert (done.status, done.bytes, done.errors) == ("failed", 40, 1)
    assert done.seconds is not None and done.seconds >= 0
    assert [(s.step, s.target, s.status) for s in done.steps] == [
        ("sync", "anna", "ok"),
        ("sync", "marc", "failed"),
    ]
    assert done.steps[0].detail == {"packs_sent": 2}
    doc = done.to_json()
    assert doc["log"] == ["a", "b", "c"] and doc["finished_at"].endswith("Z")

    # an update's run is of another kind: it leaves the nightly ones alone
    other = runs.begin(db, "update")
    assert runs.get_run(db, second).status == "failed"
    assert [r.id for r in runs.list_runs(db)] == [other, second, first]
    assert [r.id for r in runs.list_runs(db, kind="nightly", limit=1)] == [second]


def test_the_last_success_per_target_and_the_latest_step_of_each(db):
    t0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    run = runs.begin(db, "nightly")
    runs.add_step(db, run, step("sync", "anna", at=t0), "")
    runs.add_step(db, run, step("sync", "marc", at=t0), "")
    run = runs.begin(db, "nightly")
    runs.add_step(db, run, step("sync", "anna", at=t0 + timedelta(days=1)), "")
    runs.add_step(db, run, step("sync", "marc", "failed", at=t0 + timedelta(days=1)), "")
    assert runs.last_ok(db, "sync", "anna") == t0 + timedelta(days=1)
    assert runs.last_ok(db, "sync", "marc") == t0
    assert runs.last_ok(db, "sync") == t0 + timedelta(days=1)
    assert runs.last_ok(db, "backup") is None
    latest = runs.latest_steps(db, "sync")
    assert {k: v.status for k, v in latest.items()} == {"anna": "ok", "marc": "failed"}


def test_bad_requests_of_the_history_are_one_line_errors(db):
    with pytest.raises(NotFoundError, match="no run 42"):
        runs.get_run(db, 42)
    with pytest.raises(UsageError, match="unknown kind"):
        runs.begin(db, "weekly")
    with pytest.raises(UsageError, match="1 to 1000"):
        runs.list_runs(db, limit=0)


# --- the configuration -----------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_then_every_key_read(tmp_path):
    jobs = jobs_config.load(str(tmp_path / "absent.toml"))
    assert jobs.nightly.time == "03:00" and jobs.nightly.remotes is None
    assert jobs.nightly.keep.daily == 7 and jobs.notify.urls == ()

    conf = tmp_path / "isidorus.toml"
    write(
        conf,
        """
[nightly]
time = "1:30"
random_delay = "15m"
paths = ["/etc", "/srv"]
excludes = ["*.tmp"]
remotes = ["anna"]
verify_percent = 10
keep = { daily = 3, monthly = 2 }
security_updates = true

[notify]
urls = ["mailto://a:b@smtp.example.org"]
remote_days = 2
certificate_days = 7.5
disk_percent = 80
digest = true
""",
    )
    # a later file of the .d folder changes one key, and only that one
    (tmp_path / "isidorus.toml.d").mkdir()
    write(tmp_path / "isidorus.toml.d" / "50-time.toml", '[nightly]\ntime = "04:05"\n')
    jobs = jobs_config.load(str(conf))
    n = jobs.nightly
    assert (n.hour, n.minute, n.random_delay) == (4, 5, 900)
    assert (n.paths, n.excludes, n.remotes, n.verify_percent) == (
        ("/etc", "/srv"), ("*.tmp",), ("anna",), 10.0,
    )  # fmt: skip
    assert (n.keep.daily, n.keep.monthly, n.keep.weekly) == (3, 2, 0)
    assert n.security_updates
    assert jobs.notify.digest and jobs.notify.disk_percent == 80
    assert jobs.notify.certificate_days == 7.5


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[nightly]\ntime = "25:00"\n', ["nightly.time", '"HH:MM"']),
        ('[nightly]\nwhen = "03:00"\n', ["nightly.when", "unknown key", "time, random_delay"]),
        ('[nightly]\npaths = ["etc"]\n', ["nightly.paths", "absolute"]),
        ('[nightly]\npaths = "/etc"\n', ["nightly.paths", "list of strings"]),
        ('[nightly]\nrandom_delay = "soon"\n', ["not a delay"]),
        ("[nightly]\nverify_percent = 150\n", ["nightly.verify_percent", "0 to 100"]),
        ("[nightly]\nkeep = { daily = 0 }\n", ["nightly.keep", "keeps nothing"]),
        ("[nightly]\nkeep = { dayly = 3 }\n", ["unknown rule 'dayly'"]),
        ("[nightly]\nkeep = { daily = -1 }\n", ["daily must be a whole number"]),
        ('[notify]\nurls = ["admin@example.org"]\n', ["notify.urls", "not a notification URL"]),
        ('[notify]\ndigest = "yes"\n', ["notify.digest", "true or false"]),
        ("[notify]\ndisk_percent = 0\n", ["notify.disk_percent", "1 to 100"]),
        ("[notify]\nemail = 1\n", ["notify.email", "unknown key"]),
        ('[nightly]\nsecurity_updates = "yes"\n', ["nightly.security_updates", "true or false"]),
        ('nightly = "03:00"\n', ["must be a table"]),
    ],
)
def test_a_bad_configuration_is_one_line_naming_file_and_key(tmp_path, text, words):
    conf = write(tmp_path / "isidorus.toml", text)
    with pytest.raises(UsageError) as exc:
        jobs_config.load(conf)
    message = str(exc.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    if "must be a table" not in message:
        assert conf in message


# --- the schedule ----------------------------------------------------------------------


def nightly(time: str = "03:00") -> jobs_config.NightlyConfig:
    h, m = time.split(":")
    return jobs_config.NightlyConfig(hour=int(h), minute=int(m), random_delay=600)


def test_slots_and_missed_nights():
    tz = datetime.now().astimezone().tzinfo
    n = nightly("03:00")
    before = datetime(2026, 12, 5, 2, 0, tzinfo=tz)
    after = datetime(2026, 12, 5, 3, 30, tzinfo=tz)
    assert schedule.last_slot(n, before) == datetime(2026, 12, 4, 3, 0, tzinfo=tz)
    assert schedule.last_slot(n, after) == datetime(2026, 12, 5, 3, 0, tzinfo=tz)
    assert schedule.next_slot(n, after) == datetime(2026, 12, 6, 3, 0, tzinfo=tz)
    # set up yesterday evening, no run yet, now past 3:00: that night was missed
    evening = datetime(2026, 12, 4, 20, 0, tzinfo=tz)
    assert schedule.missed(n, after, None, evening)
    assert not schedule.missed(n, before, None, evening)  # 3:00 has not come yet
    # ran at 3:04 today: nothing missed; ran the day before: today's was
    assert not schedule.missed(n, after, after.replace(minute=4), evening)
    assert schedule.missed(n, after, after - timedelta(days=1), evening)
    # never set up, never ran: nothing can have been missed
    assert not schedule.missed(n, after, None, None)


def test_the_timer_and_its_service_pass_systemd_analyze(tmp_path):
    assert shutil.which("systemd-analyze"), "apt-get install systemd (scripts/test does)"
    n = jobs_config.NightlyConfig(hour=2, minute=45, random_delay=1800)
    argv = schedule.command("/var/lib/isidorus", "nightly")
    (tmp_path / "isidorus-nightly.service").write_text(schedule.service_unit(argv))
    (tmp_path / "isidorus-nightly.timer").write_text(schedule.timer_unit(n))
    p = subprocess.run(
        ["systemd-analyze", "verify", "isidorus-nightly.timer", "isidorus-nightly.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "ignoring" not in p.stderr.lower(), p.stderr
    timer = schedule.timer_unit(n)
    for line in ("OnCalendar=*-*-* 02:45:00", "RandomizedDelaySec=1800", "Persistent=true"):
        assert line in timer.splitlines()
    p = subprocess.run(
        ["systemd-analyze", "calendar", "*-*-* 02:45:00"], capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0 and "02:45:00" in p.stdout


# --- the diagnosis ---------------------------------------------------------------------


def jobs(**notify_kw) -> jobs_config.JobsConfig:
    return jobs_config.JobsConfig(
        jobs_config.NightlyConfig(), jobs_config.NotifyConfig(**notify_kw)
    )


def test_backups_and_remotes_late_or_never_are_warnings(db):
    now = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    remotes = {n: Remote(n, f"/copies/{n}", "x.toml") for n in ("anna", "marc")}
    never = doctor.backups(db, now) + doctor.offsite(db, jobs(), remotes, now)
    assert [(f.check, f.severity) for f in never] == [("backup", "warning")] + [
        ("remote", "warning")
    ] * 2
    assert "never" in never[0].message and "isidorus nightly" in never[0].fix

    run = runs.begin(db, "nightly")
    last_night = now - timedelta(hours=6)
    runs.add_step(db, run, step("backup", "system", at=last_night), "")
    runs.add_step(db, run, step("sync", "anna", at=last_night), "")
    runs.add_step(db, run, step("sync", "marc", "failed", at=last_night, error="no route"), "")
    runs.finish(db, run, "failed", "")
    found = doctor.backups(db, now) + doctor.offsite(db, jobs(remote_days=3), remotes, now)
    by = {(f.check, f.message.split(":")[0]): f.severity for f in found}
    assert by[("backup", "last nightly backup 6 h ago")] == "ok"
    assert any("failed at: sync marc" in f.message for f in found)
    assert by[("remote", "anna")] == "ok"
    assert by[("remote", "marc has never received a copy")] == "warning"

    # four days on, with nothing since: the backup is late and anna is stale
    later = now + timedelta(days=4)
    found = doctor.backups(db, later) + doctor.offsite(db, jobs(remote_days=3), remotes, later)
    assert any(f.severity == "warning" and "of 4 days ago" in f.message for f in found)
    assert any(f.severity == "warning" and "anna has not been reached" in f.message for f in found)
    assert doctor.offsite(db, jobs(), {}, now)[0].message.startswith("no off-site copy")


def test_a_clock_gone_back_is_critical(db):
    run = runs.begin(db, "nightly")
    runs.finish(db, run, "ok", "")
    started = runs.get_run(db, run).started_at
    found = doctor.clock(db, started - timedelta(hours=2))
    assert [f.severity for f in found] == ["critical"] and "behind" in found[0].message


def test_a_domain_that_does_not_resolve_is_a_warning(db, tmp_path):
    data = tmp_path / "host"
    data.mkdir()
    (data / "isidorus.toml").write_text('domain = "no-such-host.invalid"\n')
    found = doctor.dns(db, str(data))
    assert [(f.severity, f.message) for f in found] == [
        ("warning", "no-such-host.invalid does not resolve")
    ]
    (data / "isidorus.toml").write_text('domain = "localhost.localdomain"\n')
    socket.getaddrinfo("localhost", None)  # the machine resolves its own name at least


@pytest.mark.root
def test_a_nearly_full_disk_is_a_warning_then_critical(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        conf = {"service_data_root": str(mnt / "services"), "backup_store": ""}
        fine = doctor.disks(str(mnt), conf, jobs(disk_percent=50))
        assert fine[0].severity == "ok" and fine[0].message.startswith(str(mnt))
        (mnt / "fill").write_bytes(os.urandom(600 * 1024))
        warn = doctor.disks(str(mnt), conf, jobs(disk_percent=50))
        assert warn[0].severity == "warning" and "prune" in warn[0].fix
        with open(mnt / "more", "wb", buffering=0) as f:  # to the last block
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        assert doctor.disks(str(mnt), conf, jobs(disk_percent=50))[0].severity == "critical"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --- notifications ---------------------------------------------------------------------


def test_a_night_message_only_when_something_is_to_be_told():
    now = datetime.now(UTC)
    good = runs.Run(1, "nightly", "ok", now, now, 10, 0, steps=[step("backup", "system")])
    fine = [doctor.Finding("disk", "ok", "/: 10% used")]
    assert notify.night_message(good, fine, "h.example", digest=False) is None
    digest = notify.night_message(good, fine, "h.example", digest=True)
    assert digest is not None and not digest.failure and "nightly job ok" in digest.title

    bad = runs.Run(2, "nightly", "failed", now, now, 0, 1,
                   steps=[step("sync", "marc", "failed", error="No route to host")])  # fmt: skip
    message = notify.night_message(bad, fine, "h.example", digest=False)
    assert message is not None and message.failure
    assert message.title == "[h.example] nightly job failed: sync marc"
    assert "- sync marc: No route to host" in message.body and "isidorus jobs 2" in message.body

    # no NTP is told by doctor, not every night; a full disk is
    quiet = [doctor.Finding("clock", "warning", "no NTP"), doctor.Finding("dns", "warning", "x")]
    assert notify.night_message(good, quiet, "h", digest=False) is None
    full = [doctor.Finding("disk", "critical", "/: 99% used", "free space")]
    told = notify.night_message(good, full, "h", digest=False)
    assert told is not None and told.title == "[h] /: 99% used" and "free space" in told.body


def test_a_url_apprise_cannot_use_is_refused_in_one_line():
    with pytest.raises(UsageError) as exc:
        notify.check_urls(["nosuchservice://user:secret@example.org"])
    assert "secret" not in str(exc.value) and "***@example.org" in str(exc.value)
