"""Whole nights on a real host made by the tests: two services with sqlite databases under
supervisord behind nginx (the stack of test_services), two homes in network namespaces
with their own sshd serving append-only copies (tests/integration/homes.py), and a real
SMTP server (aiosmtpd) for the notifications; `isidorus nightly` as the admin runs it."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from isidorus.settings import SETTINGS
from tests.integration import test_services
from tests.integration.conftest import TIMEOUT, write_random
from tests.integration.homes import Home, Homes
from tests.integration.servers import free_port
from tests.integration.test_service_upgrade import SMALL, _ids, as_user, with_backups
from tests.integration.test_services import Stack

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("apt")]

stack = test_services.stack


class Inbox:
    """Messages an SMTP server of the test's own received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def wait(self, count: int, seconds: float = 30) -> list[Message]:
        deadline = time.monotonic() + seconds
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} messages, not {count}"
            time.sleep(0.1)
        return self.messages


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def serve_at(homes: Homes, home: Home) -> None:
    command = f"{homes.isidorus} backup serve --stdio {home.storage} --append-only"
    home.authorize(homes.key_pub, command=command)


def night(stack: Stack, check: bool | int = True) -> dict:
    r = stack.isidorus("nightly", "--json", check=check)
    return json.loads(r.out)


def steps(doc: dict) -> dict[str, dict]:
    return {f"{s['step']} {s['target']}".strip(): s for s in doc["steps"]}


def snapshots(store: Path) -> set[str]:
    return {p.name for p in (store / "snapshots").rglob("*") if p.is_file()}


def set_up(stack: Stack, homes: Homes, smtp_port: int, tmp: Path) -> Path:
    """Two services with data and a database, the host's store, two homes, the
    configuration of the nights; the folder of the system files the nights save."""
    secret = with_backups(stack)
    secret.write_text("the host's own backups\n")
    data = stack.root / "data"
    for sid in ("ledger", "notes"):
        (stack.services_dir / f"{sid}.toml").write_text(SMALL.format(id=sid, port=free_port()))
        stack.isidorus("service", "install", sid)
        as_user(f"isi{sid}", data / sid / "www" / "index.html", f"{sid}'s page\n")
        db = data / sid / f"{sid}.sqlite"
        with sqlite3.connect(db) as c:
            c.execute("create table entry (what text)")
            c.execute("insert into entry values ('bread')")
        os.chown(db, *_ids(f"isi{sid}"))
    system = stack.root / "system"
    (system / "etc").mkdir(parents=True)
    (system / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    for home in homes:
        serve_at(homes, home)
    config = stack.root / "isidorus.toml"
    config.write_text(
        f"""
[nightly]
paths = ["{system}"]
random_delay = "0"
verify_percent = 100
keep = {{ last = 50 }}

[notify]
urls = ["mailto://127.0.0.1:{smtp_port}?from=isidorus@example.test&to=admin@example.test"]

[remotes.home1]
url = "{homes["home1"].url()}"

[remotes.home2]
url = "{homes["home2"].url()}"
"""
    )
    # keepalives a second apart: a cut link is noticed in seconds
    ssh = f"{homes.ssh_command} -o ServerAliveInterval=1 -o ServerAliveCountMax=3"
    stack.env.update({"ISIDORUS_CONFIG": str(config), "ISIDORUS_SSH_COMMAND": ssh})
    return system


def test_nights_with_a_home_cut_off_a_failing_dump_and_one_cut_short(stack, homes, smtp):
    inbox, port = smtp
    system = set_up(stack, homes, port, stack.root)
    store = stack.root / "store"
    data = stack.root / "data"
    copies = {h.name: Path(h.storage) / "store" for h in homes}

    # a good night: every step, nothing to tell
    first = night(stack)
    assert first["status"] == "ok", first
    done = steps(first)
    assert list(done) == [
        "store " + str(store), "state", "dump ledger", "backup ledger", "dump notes",
        "backup notes", "backup system", "prune local", "gc local", "sync home1", "sync home2",
        "verify local",
    ]  # fmt: skip
    assert done["sync home1"]["bytes"] > 0 and done["sync home1"]["detail"]["snapshots_copied"] == 3
    assert done["verify local"]["detail"]["damaged"] == 0
    for copy in copies.values():
        assert snapshots(copy) == snapshots(store) and len(snapshots(store)) == 3
    assert inbox.messages == []
    listed = json.loads(stack.isidorus("jobs", "--json").out)
    assert [(r["id"], r["status"]) for r in listed] == [(first["id"], "ok")]

    # home1 cut off: the night says so, home2 still gets the night, the admin is told
    homes["home1"].link_down()
    (system / "etc" / "hosts").write_text("127.0.0.1 localhost\n10.0.0.2 nas\n")
    cut = night(stack, check=1)
    done = steps(cut)
    assert cut["status"] == "failed" and done["sync home1"]["status"] == "failed"
    assert done["sync home1"]["error"], done["sync home1"]
    assert done["sync home2"]["status"] == "ok"
    assert snapshots(copies["home2"]) == snapshots(store) != snapshots(copies["home1"])
    mail = inbox.wait(1)[0]
    assert "nightly job failed: sync home1" in mail["Subject"], mail["Subject"]
    assert "sync home1" in mail.get_payload(0).get_payload(decode=True).decode()
    homes["home1"].link_up()

    # ledger's database is broken: its dump fails, its data is not snapshotted without it,
    # everything else goes on; the admin is told and restores the last good night
    db = data / "ledger" / "ledger.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    broken = night(stack, check=1)
    done = steps(broken)
    assert done["dump ledger"]["status"] == "failed"
    assert "ledger.sqlite" in done["dump ledger"]["error"]
    assert "backup ledger" not in done
    assert all(
        done[k]["status"] == "ok"
        for k in ("dump notes", "backup notes", "backup system", "sync home1", "sync home2")
    )
    assert snapshots(copies["home1"]) == snapshots(store)  # home1 caught up
    mail = inbox.wait(2)[1]
    assert "dump ledger" in mail["Subject"], mail["Subject"]
    stack.isidorus("service", "restore", "ledger", "latest")
    with sqlite3.connect(db) as c:
        assert c.execute("select what from entry").fetchall() == [("bread",)]

    # a night cut short (power lost) while it copies: a second one meanwhile is refused,
    # the next one marks it interrupted and does everything again
    for home in homes:
        home.shape("2mbit")
    write_random(system / "big.bin", 3 << 20, random.Random(7))
    p = stack.run.popen("nightly", "--data-dir", stack.data_dir, env=stack.env)
    deadline = time.monotonic() + TIMEOUT
    while True:
        latest = json.loads(stack.isidorus("jobs", "--json", "--limit", "1").out)[0]
        if latest["status"] == "running" and any(
            s["step"] == "backup" and s["target"] == "system" for s in latest["steps"]
        ):
            break
        assert p.poll() is None and time.monotonic() < deadline, latest
        time.sleep(0.2)
    again = stack.isidorus("nightly", check=1)
    assert (
        again.err.strip()
        .splitlines()[-1]
        .startswith("isidorus: error: a nightly job is already running (pid ")
    ), again.err
    os.kill(p.pid, signal.SIGKILL)
    p.wait(TIMEOUT)
    for home in homes:
        home.unshape()
    cut_short = latest["id"]
    assert json.loads(stack.isidorus("jobs", str(cut_short), "--json").out)["status"] == "running"
    resumed = night(stack)
    assert resumed["status"] == "ok", resumed
    assert any("was cut short" in line for line in resumed["log"])
    assert json.loads(stack.isidorus("jobs", str(cut_short), "--json").out)["status"] == (
        "interrupted"
    )
    for copy in copies.values():
        assert snapshots(copy) == snapshots(store)
    assert len(inbox.messages) == 2  # a good night after the bad ones: nothing more to tell

    # doctor sees a service down, and the nights so far; the next night tells the admin
    sv = stack.env["ISIDORUS_SUPERVISOR_CONFIG"]
    subprocess.run(["supervisorctl", "-c", sv, "stop", "isidorus-notes"], check=True,
                   capture_output=True, timeout=TIMEOUT)  # fmt: skip
    r = stack.isidorus("doctor", "--json", check=1)
    found = json.loads(r.out)
    assert found["worst"] == "critical"
    by_check = {}
    for f in found["findings"]:
        by_check.setdefault(f["check"], []).append(f)
    notes = [f for f in by_check["service"] if f["message"].startswith("notes")]
    assert notes[0]["severity"] == "critical" and "isidorus service logs notes" in notes[0]["fix"]
    assert {f["severity"] for f in by_check["remote"]} == {"ok"}
    assert by_check["backup"][0]["severity"] == "ok"
    later = night(stack)  # its data and database are there: it is saved all the same
    assert later["status"] == "ok", later
    mail = inbox.wait(3)[2]
    assert "notes is not healthy" in mail["Subject"] + mail.as_string()


def test_notify_test_reaches_the_admin_or_names_the_target_that_failed(stack, smtp, tmp_path):
    inbox, port = smtp
    config = tmp_path / "isidorus.toml"
    env = {**stack.env, "ISIDORUS_CONFIG": str(config)}
    config.write_text("")
    r = stack.run("notify", "test", "--data-dir", stack.data_dir, env=env, check=2)
    assert "no notification target" in r.err
    config.write_text(
        f'[notify]\nurls = ["mailto://127.0.0.1:{port}?from=i@example.test&to=a@example.test"]\n'
    )
    r = stack.run("notify", "test", "--data-dir", stack.data_dir, env=env)
    assert r.out.strip() == "sent to 1 target(s)"
    assert "isidorus test message" in inbox.wait(1)[0]["Subject"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config.write_text(
        f'[notify]\nurls = ["mailto://127.0.0.1:{closed}?from=i@example.test&to=a@example.test"]\n'
    )
    r = stack.run("notify", "test", "--data-dir", stack.data_dir, env=env, check=2)
    assert r.err.strip().splitlines()[-1].startswith("isidorus: error: these targets did not")
    config.write_text('[notify]\nurls = ["nosuch://x"]\n')
    r = stack.run("nightly", "--data-dir", stack.data_dir, env=env, check=2)
    assert "not a notification URL apprise knows" in r.err
    assert json.loads(stack.run("jobs", "--json", "--data-dir", stack.data_dir).out) == []


def test_the_scheduler_runs_a_missed_night_at_once_then_waits(stack):
    secret = with_backups(stack)
    secret.write_text("the host's own backups\n")
    # the settings in the configuration file, as on a real host: the scheduled nights do
    # not see the variables of the shell that set them up
    config = stack.root / "isidorus.toml"
    by_env = {s.env_name: s for s in SETTINGS}
    lines = []
    for key, value in sorted(stack.env.items()):
        s = by_env[key]
        lines.append(f"{s.name} = {value if isinstance(s.default, int) else json.dumps(value)}")
    paths = json.dumps([str(stack.root / "services.d")])
    config.write_text("\n".join(lines) + f'\n[nightly]\npaths = {paths}\nrandom_delay = "0"\n')
    stack.env.clear()
    stack.env["ISIDORUS_CONFIG"] = str(config)
    r = stack.isidorus("schedule", "status", "--json")
    assert json.loads(r.out)["kind"] == "none"
    # set up two days ago, and the server was off since: last night was missed
    (stack.data_dir / "schedule.json").write_text(
        json.dumps({"installed_at": "2026-01-01T00:00:00+00:00"})
    )
    r = stack.isidorus("schedule", "install")
    assert r.out.startswith("isidorus scheduler under supervisord: every day at 03:00"), r.out

    def runs() -> list[dict]:
        return json.loads(stack.isidorus("jobs", "--json").out)

    deadline = time.monotonic() + 120
    while not runs() or runs()[0]["status"] == "running":
        assert time.monotonic() < deadline, "the missed night did not run"
        time.sleep(0.5)
    assert [r["status"] for r in runs()] == ["ok"]
    status = json.loads(stack.isidorus("schedule", "status", "--json").out)
    assert (status["kind"], status["state"]) == ("isidorus scheduler", "running")
    assert status["last_run"]["status"] == "ok" and status["next_due"] is not None
    time.sleep(2)
    assert len(runs()) == 1  # it ran that night, and waits for the next one
    log = stack.isidorus("schedule", "status").out
    assert "next at" in log
    stack.isidorus("schedule", "remove")
    assert json.loads(stack.isidorus("schedule", "status", "--json").out)["kind"] == "none"


def test_serve_with_scheduler_runs_the_missed_night(run, tmp_path):
    data_dir = tmp_path / "host"
    run("init", "--data-dir", data_dir, "--domain", "example.test", "--password-stdin",
        input="the keeper's passphrase\n")  # fmt: skip
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hello\n")
    secret = tmp_path / "backup.passphrase"
    secret.write_text("the host's own backups\n")
    config = tmp_path / "isidorus.toml"
    config.write_text(
        f'[nightly]\npaths = ["{tmp_path / "etc"}"]\nrandom_delay = "0"\nverify_percent = 0\n'
    )
    env = {
        "ISIDORUS_CONFIG": str(config),
        "ISIDORUS_BACKUP_STORE": str(tmp_path / "store"),
        "ISIDORUS_BACKUP_PASSPHRASE_FILE": str(secret),
        "ISIDORUS_SERVICE_DATA_ROOT": str(tmp_path / "services"),
    }
    # set up long ago, and nothing ran since: the night of last night was missed
    (data_dir / "schedule.json").write_text(
        json.dumps({"installed_at": "2026-01-01T00:00:00+00:00"})
    )
    port = free_port()
    server = run.popen("serve", "--data-dir", data_dir, "--listen", f"127.0.0.1:{port}",
                       "--workers", "1", "--scheduler", env=env)  # fmt: skip

    def runs() -> list[dict]:
        return json.loads(run("jobs", "--json", "--data-dir", data_dir, env=env).out)

    deadline = time.monotonic() + 120
    while not runs() or runs()[0]["status"] == "running":
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        assert time.monotonic() < deadline, "the missed night did not run"
        time.sleep(0.5)
    assert [r["status"] for r in runs()] == ["ok"]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # and it serves all the while
    time.sleep(1)
    assert len(runs()) == 1  # that night done, it waits for the next one
    server.terminate()
    _, err = server.communicate(timeout=TIMEOUT)
    assert "scheduler: the night due at" in err.decode() and "was missed" in err.decode()
