"""Upgrades with a way back, and one service's backup and restore, for real: copyparty from
PyPI upgraded in place (and an upgrade that fails, put back with its data), and two small
services of the operator's (one with a sqlite database) backed up and restored one
without the other, on the stack of test_services (supervisord, nginx, isidorus serve)."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import subprocess
from pathlib import Path

import pytest

from isidorus.services.catalog import BUILT_IN
from tests.integration import test_services
from tests.integration.conftest import assert_one_line_error
from tests.integration.servers import free_port
from tests.integration.test_services import DOMAIN, Stack, listed

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("apt")]

stack = test_services.stack  # the same stack, fixture and all

OLD, NEW = "1.20.25", "1.20.26"  # NEW is the built-in catalog's

SMALL = """
id = "{id}"
name = "{id}"
description = "Files served over HTTP, with a sqlite database beside them."
replaces = ["Nothing"]
version = "1.0"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["python3"]

[run]
user = "isi{id}"
command = "/usr/bin/python3 -m http.server {port} --bind 127.0.0.1 --directory {{data_dir}}"
port = {port}

[sso]
kind = "none"

[data]
paths = ["{{data_dir}}/www"]
databases = [{{ kind = "sqlite", name = "{id}", path = "{{data_dir}}/{id}.sqlite" }}]

[health]
tcp = true
"""


def with_backups(stack: Stack) -> Path:
    """The host's store and its passphrase file, in the stack's directory."""
    secret = stack.root / "backup.passphrase"
    stack.env["ISIDORUS_BACKUP_STORE"] = str(stack.root / "store")
    stack.env["ISIDORUS_BACKUP_PASSPHRASE_FILE"] = str(secret)
    return secret


def copyparty_manifest(version: str, pin: str | None = None, command: str | None = None) -> str:
    text = (BUILT_IN / "copyparty.toml").read_text()
    text = text.replace(f'version = "{NEW}"', f'version = "{version}"')
    text = text.replace(f"copyparty=={NEW}", f"copyparty=={pin or version}")
    if command is not None:
        text = text.replace(text.split("command = ", 1)[1].split("\n", 1)[0], json.dumps(command))
    return text


def as_user(user: str, path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    entry = pwd.getpwnam(user)
    for p in (path.parent, path):
        os.chown(p, entry.pw_uid, entry.pw_gid)


def last_line_error(r, *words: str) -> str:
    """A failed command that told its steps on stderr, then said what failed in one line."""
    assert r.code == 1, r
    assert [ln for ln in r.err.splitlines() if "error" in ln] == [r.err.splitlines()[-1]], r.err
    line = r.err.splitlines()[-1]
    assert line.startswith("isidorus: error: ") and "Traceback" not in r.err, r.err
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    return line


def copyparty_version(stack: Stack) -> str:
    exe = stack.root / "data" / "copyparty" / "env" / "bin" / "copyparty"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_copyparty_upgraded_then_a_failed_upgrade_put_back_with_its_data(stack):
    secret = with_backups(stack)
    own = stack.services_dir / "copyparty.toml"
    own.write_text(copyparty_manifest(OLD))
    test_services.wait_until_bindable(3923)  # copyparty's port: maybe in TIME_WAIT still
    stack.isidorus("service", "install", "copyparty")
    assert listed(stack)["copyparty"]["version"] == OLD
    hello = stack.root / "data" / "copyparty" / "files" / "hello.txt"
    as_user("copyparty", hello, "written before the upgrades\n")

    own.unlink()  # the catalog's manifest applies: the newer version
    r = stack.isidorus("service", "upgrade", "copyparty", check=False)
    assert_one_line_error(r, "backup passphrase file", "is missing", "head -c 32")
    secret.write_text("the host's own backups\n")
    secret.chmod(0o600)
    r = stack.isidorus("service", "upgrade", "copyparty", "--json")
    doc = json.loads(r.out)
    assert doc["upgraded"] and (doc["old_version"], doc["version"]) == (OLD, NEW)
    assert NEW in copyparty_version(stack)
    found = listed(stack)["copyparty"]
    assert (found["version"], found["state"], found["health"]) == (NEW, "running", "ok")
    assert hello.read_text() == "written before the upgrades\n"
    data = stack.root / "data" / "copyparty"
    assert not (data / "env.old").exists() and not (data / "env.new").exists()
    assert stack.get(f"copyparty.{DOMAIN}", "/", "bob").status_code == 200
    r = stack.isidorus("service", "upgrade", "copyparty")
    assert r.out.strip() == f"copyparty is already at {NEW}"
    snaps = json.loads(
        stack.run(
            "backup",
            "list",
            stack.root / "store",
            "--tag",
            "service:copyparty",
            "--json",
            "--passphrase-file",
            secret,
        ).out  # fmt: skip
    )
    assert [s["tags"] for s in snaps] == [["service:copyparty", f"version:{OLD}"]]

    # a version whose program spoils the data, then exits: the way back
    ruin = f"/bin/sh -c 'echo ruined > {hello}; exit 3'"
    own.write_text(copyparty_manifest("1.20.99", pin=OLD, command=ruin))
    r = stack.isidorus("service", "upgrade", "copyparty", check=False)
    last_line_error(
        r,
        "upgrade of copyparty to 1.20.99 failed while starting",
        f"back at {NEW} with its data of",
    )
    assert hello.read_text() == "written before the upgrades\n"
    assert NEW in copyparty_version(stack)
    found = listed(stack)["copyparty"]
    assert (found["version"], found["health"]) == (NEW, "ok")
    assert not (data / "env.old").exists() and not (data / "env.new").exists()

    # a pin that does not exist: nothing is changed, not even stopped
    own.write_text(copyparty_manifest("99.0.0"))
    r = stack.isidorus("service", "upgrade", "copyparty", check=False)
    last_line_error(
        r, "while installing from PyPI", "99.0.0", f"nothing changed: copyparty is still at {NEW}"
    )
    assert listed(stack)["copyparty"]["health"] == "ok"
    audit = stack.run("audit", "--json", "--data-dir", stack.data_dir).out
    assert "service.upgrade.failed" in audit and '"service.upgrade"' in audit


def test_one_service_backed_up_and_restored_without_the_other(stack):
    secret = with_backups(stack)
    secret.write_text("the host's own backups\n")
    data = stack.root / "data"
    for sid in ("ledger", "notes"):
        (stack.services_dir / f"{sid}.toml").write_text(SMALL.format(id=sid, port=free_port()))
        stack.isidorus("service", "install", sid)
        as_user(f"isi{sid}", data / sid / "www" / "index.html", f"{sid}'s page\n")
    db = data / "ledger" / "ledger.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("pragma journal_mode=wal")
        c.execute("create table entry (what text)")
        c.execute("insert into entry values ('bread'), ('milk')")
    os.chown(db, *_ids("isiledger"))
    for extra in ("-wal", "-shm"):
        if Path(f"{db}{extra}").exists():
            os.chown(f"{db}{extra}", *_ids("isiledger"))

    r = stack.isidorus("service", "backup", "ledger", "--json")
    doc = json.loads(r.out)
    assert doc["service"] == "ledger" and doc["version"] == "1.0" and doc["files"] == 2
    notes = stack.isidorus("service", "backup", "notes", "--json")
    assert not Path(f"{db}-shm").exists() or Path(f"{db}-shm").stat().st_uid == _ids("isiledger")[0]
    store = stack.root / "store"
    assert (store / "config").exists()  # made at first use

    # both change; only ledger goes back
    (data / "ledger" / "www" / "index.html").unlink()
    with sqlite3.connect(db) as c:
        c.execute("insert into entry values ('jam')")
    (data / "notes" / "www" / "index.html").write_text("notes' newer page\n")
    r = stack.isidorus("service", "restore", "ledger", json.loads(notes.out)["short_id"],
                       check=False)  # fmt: skip
    assert_one_line_error(r, "of notes, not of ledger")
    r = stack.isidorus("service", "restore", "ledger", "latest", "--json")
    assert json.loads(r.out)["snapshot"] == doc["snapshot"]
    assert json.loads(r.out)["health"] == "ok"
    page = data / "ledger" / "www" / "index.html"
    assert page.read_text() == "ledger's page\n"
    assert page.stat().st_uid == _ids("isiledger")[0]
    assert db.stat().st_uid == _ids("isiledger")[0]
    with sqlite3.connect(db) as c:
        assert [w for (w,) in c.execute("select what from entry order by rowid")] == [
            "bread",
            "milk",
        ]
    assert (data / "notes" / "www" / "index.html").read_text() == "notes' newer page\n"
    found = listed(stack)
    assert found["ledger"]["health"] == "ok" and found["notes"]["health"] == "ok"
    assert not list(data.glob(".restore-*")) and not list((data / "ledger").glob("*.isidorus-*"))

    r = stack.isidorus("service", "restore", "ledger", "nosuch", check=False)
    assert_one_line_error(r, "nosuch")
    r = stack.isidorus("service", "upgrade", "--all")
    assert r.out.strip() == "every installed service is at its catalog's version"
    assert_one_line_error(stack.isidorus("service", "upgrade", check=False), "--all")
    for sid in ("ledger", "notes"):
        stack.isidorus("service", "remove", sid, "--purge")


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
