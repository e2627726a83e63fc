"""Updates for real: toy Debian packages from a local apt repository of the test's own
(tests/system/apt_repo.py: apt reads only its sources, through the apt_config setting),
upgraded by `isidorus update apply`, a service that its package's new version breaks put
back at the version of before, and the runs in the jobs history."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from isidorus.ops import runs, updates
from isidorus.ops.accounts import open_state
from isidorus.system import packages
from isidorus.system.errors import HostTimeout
from tests.integration import test_services
from tests.integration.conftest import ISIDORUS, TIMEOUT, Isidorus, assert_one_line_error
from tests.integration.servers import free_port
from tests.integration.test_service_upgrade import as_user, with_backups
from tests.integration.test_services import Stack, listed
from tests.system.apt_repo import PLAIN, SECURE, WEB, AptRepo, installed_version, make_apt_repo

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("apt")]

stack = test_services.stack  # supervisord, nginx and isidorus serve of the test's own

UPDATE_LOCK = "/run/lock/isidorus-update.lock"
DPKG_LOCK = "/var/lib/dpkg/lock-frontend"

TOY_WEB = """
id = "toyweb"
name = "Toy web"
description = "A page served by a program of a Debian package of the tests' own."
replaces = ["Nothing"]
version = "1.0"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["isidorus-toy-web"]

[run]
user = "isitoyweb"
command = "/usr/bin/isidorus-toy-web {{port}}"
port = {port}

[sso]
kind = "none"

[data]
paths = ["{{data_dir}}/www"]

[health]
http = "/"
expect = [200]
timeout = 10
"""

NOTES = """
id = "toynotes"
name = "Toy notes"
description = "Files served over HTTP by Debian's python3."
replaces = ["Nothing"]
version = "{version}"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["python3"]

[run]
user = "isitoynotes"
command = "/usr/bin/python3 -m http.server {port} --bind 127.0.0.1 --directory {{data_dir}}"
port = {port}

[sso]
kind = "none"

[data]
paths = ["{{data_dir}}/www"]

[health]
tcp = true
timeout = 10
"""


@pytest.fixture
def repo() -> Iterator[AptRepo]:
    """The toy repository, in /tmp with mode 755 (apt's downloader reads it as _apt); the
    toys are off the host before and after the test."""
    root = Path(tempfile.mkdtemp(prefix="isidorus-apt-", dir="/tmp"))
    root.chmod(0o755)
    made = make_apt_repo(root)
    made.purge()
    try:
        yield made
    finally:
        made.purge()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def host(run: Isidorus, repo: AptRepo, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A host without services: its data directory, and the environment of its commands
    (apt on the toy sources, no backups, no manifests of this machine's operator)."""
    data_dir = tmp_path / "host"
    run("init", "--data-dir", data_dir, "--domain", "example.test", "--password-stdin",
        input="the keeper's passphrase\n")  # fmt: skip
    (tmp_path / "services.d").mkdir()
    env = {
        "ISIDORUS_APT_CONFIG": str(repo.config),
        "ISIDORUS_SERVICES_DIR": str(tmp_path / "services.d"),
        "ISIDORUS_BACKUP_PASSPHRASE_FILE": str(tmp_path / "no-backup.passphrase"),
        "ISIDORUS_BACKUP_STORE": str(tmp_path / "store"),
    }
    yield data_dir, env


def update_runs(data_dir: Path) -> list[runs.Run]:
    db = open_state(str(data_dir))
    try:
        return list(reversed(runs.list_runs(db, kind="update")))
    finally:
        db.close()


def steps(doc: dict) -> list[tuple[str, str, str]]:
    return [(s["step"], s["target"], s["status"]) for s in doc["steps"]]


def test_check_then_security_only_then_everything(run, repo, host):
    data_dir, env = host
    repo.install(f"{PLAIN}=1.0", f"{SECURE}=1.0")

    r = run("update", "check", "--json", "--data-dir", data_dir, env=env)
    doc = json.loads(r.out)
    assert doc["refreshed"] is True and doc["services"] == []
    found = {p["name"]: p for p in doc["packages"]}
    assert set(found) == {PLAIN, SECURE}  # the toy sources only: nothing of the host's
    assert (found[PLAIN]["installed"], found[PLAIN]["candidate"]) == ("1.0", "1.1")
    assert found[PLAIN]["security"] is False and found[SECURE]["security"] is True
    assert found[SECURE]["origins"] == ["Isidorus-Test:toy-security"]
    r = run("update", "check", "--data-dir", data_dir, env=env)
    lines = r.out.splitlines()
    assert any(ln.startswith(SECURE) and ln.endswith("1.1  security") for ln in lines), r.out
    assert any(ln.startswith(PLAIN) and ln.endswith("-> 1.1") for ln in lines), r.out

    assert doctor_updates(run, data_dir, env) == ("warning", "1 security updates wait")

    r = run("update", "apply", "--security-only", "--json", "--data-dir", data_dir, env=env)
    doc = json.loads(r.out)
    assert doc["kind"] == "update" and doc["status"] == "ok"
    assert steps(doc) == [("snapshot", "packages", "ok"), ("apt", "", "ok")]
    snap, apt = doc["steps"]
    assert snap["detail"]["packages"] == {
        SECURE: {"installed": "1.0", "candidate": "1.1", "security": True}
    }
    assert apt["detail"]["upgraded"] == {SECURE: ["1.0", "1.1"]}
    assert apt["detail"]["security_only"] is True
    assert installed_version(SECURE) == "1.1" and installed_version(PLAIN) == "1.0"
    assert "security updates only" in r.err

    r = run("update", "check", "--json", "--data-dir", data_dir, env=env)
    assert [p["name"] for p in json.loads(r.out)["packages"]] == [PLAIN]
    assert doctor_updates(run, data_dir, env) == ("info", "1 package and 0 service updates wait")

    r = run("update", "apply", "--data-dir", data_dir, env=env)
    assert installed_version(PLAIN) == "1.1"
    assert r.out.splitlines()[-1] == "update ok: 1 Debian package(s) upgraded"
    assert any(ln.split()[:2] == ["apt", "-"] and f"{PLAIN} 1.0 -> 1.1" in ln
               for ln in r.out.splitlines()), r.out  # fmt: skip

    r = run("update", "apply", "--json", "--data-dir", data_dir, env=env)
    assert json.loads(r.out)["steps"] == [] and "nothing to update" in r.err
    assert run("update", "check", "--data-dir", data_dir, env=env).out == "nothing to update\n"
    assert doctor_updates(run, data_dir, env) == ("ok", "everything is up to date")

    history = update_runs(data_dir)
    assert [(h.status, len(h.steps)) for h in history] == [("ok", 2), ("ok", 2), ("ok", 0)]
    assert history[1].steps[1].detail["upgraded"] == {PLAIN: ["1.0", "1.1"]}
    assert "update ok" in history[1].log.splitlines()[-1]


def doctor_updates(run: Isidorus, data_dir: Path, env: dict[str, str]) -> tuple[str, str]:
    r = run("doctor", "--json", "--data-dir", data_dir, env=env, check=False)
    found = [f for f in json.loads(r.out)["findings"] if f["check"] == "updates"]
    assert len(found) == 1, found
    return found[0]["severity"], found[0]["message"]


def test_the_night_applies_the_security_updates_after_its_backups(run, repo, host, tmp_path):
    data_dir, env = host
    repo.install(f"{PLAIN}=1.0", f"{SECURE}=1.0")
    secret = tmp_path / "backup.passphrase"
    secret.write_text("the host's own backups\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hello\n")
    config = tmp_path / "isidorus.toml"
    config.write_text(
        f'[nightly]\npaths = ["{tmp_path / "etc"}"]\nverify_percent = 0\nsecurity_updates = true\n'
    )
    env = {**env, "ISIDORUS_BACKUP_PASSPHRASE_FILE": str(secret), "ISIDORUS_CONFIG": str(config)}
    doc = json.loads(run("nightly", "--json", "--data-dir", data_dir, env=env).out)
    names = [f"{s['step']} {s['target']}".strip() for s in doc["steps"]]
    assert names.index("backup system") < names.index("updates") < names.index("prune local")
    step = next(s for s in doc["steps"] if s["step"] == "updates")
    assert step["status"] == "ok" and step["detail"]["status"] == "ok"
    assert installed_version(SECURE) == "1.1" and installed_version(PLAIN) == "1.0"
    [update] = update_runs(data_dir)
    assert update.id == step["detail"]["run"] and update.status == "ok"


def test_a_service_its_package_upgrade_breaks_goes_back(stack: Stack, repo):
    stack.env["ISIDORUS_APT_CONFIG"] = str(repo.config)
    secret = with_backups(stack)  # the file is written for the second update only
    repo.install(f"{WEB}=1.0")
    web_port, notes_port = free_port(), free_port()
    (stack.services_dir / "toyweb.toml").write_text(TOY_WEB.format(port=web_port))
    notes = stack.services_dir / "toynotes.toml"
    notes.write_text(NOTES.format(version="1.0", port=notes_port))
    data = stack.root / "data"
    for sid, user in (("toyweb", "isitoyweb"), ("toynotes", "isitoynotes")):
        stack.isidorus("service", "install", sid)
        as_user(user, data / sid / "www" / "index.html", f"{sid}'s own page\n")
    assert httpx2.get(f"http://127.0.0.1:{web_port}/").status_code == 200
    notes.write_text(NOTES.format(version="1.1", port=notes_port))

    doc = json.loads(stack.isidorus("update", "check", "--json").out)
    assert [(p["name"], p["installed"], p["candidate"], p["security"]) for p in doc["packages"]] \
        == [(WEB, "1.0", "1.1", True)]  # fmt: skip
    assert doc["services"] == [{"id": "toynotes", "version": "1.0", "catalog_version": "1.1"}]

    # backups configured, but one cannot be taken: nothing changes
    secret.write_text("")
    r = stack.isidorus("update", "apply", "--security-only", "--json", check=1)
    doc = json.loads(r.out)
    assert steps(doc) == [
        ("snapshot", "packages", "ok"),
        ("snapshot", "toynotes", "failed"),
        ("snapshot", "toyweb", "failed"),
    ]
    assert "passphrase file" in doc["steps"][1]["error"] and "is empty" in doc["steps"][1]["error"]
    assert "nothing was changed: a snapshot failed" in r.err
    assert r.err.splitlines()[-1].endswith("failed: snapshot toynotes, snapshot toyweb (run 1)")
    assert installed_version(WEB) == "1.0"
    secret.unlink()

    # security only, without backups: no service upgrade, no snapshot of the data
    r = stack.isidorus("update", "apply", "--security-only", check=1)
    assert "no backup taken" in r.err
    last = r.err.splitlines()[-1]
    assert last.startswith("isidorus: error: update failed: 1 Debian package(s) upgraded")
    assert last.endswith("; rolled back, healthy again: toyweb (run 2)")
    table = [ln.split()[:3] for ln in r.out.splitlines()]
    assert table == [
        ["snapshot", "packages", "ok"],
        ["snapshot", "toynotes", "skipped"],
        ["snapshot", "toyweb", "skipped"],
        ["apt", "-", "ok"],
        ["health", "toynotes", "ok"],
        ["health", "toyweb", "failed"],
        ["rollback", "toyweb", "ok"],
    ], r.out
    assert "GET / answered 503" in r.out and f"{WEB} back at 1.0; healthy again" in r.out
    assert installed_version(WEB) == "1.0"
    found = listed(stack)
    assert (found["toyweb"]["health"], found["toynotes"]["health"]) == ("ok", "ok")
    assert found["toynotes"]["version"] == "1.0"
    assert httpx2.get(f"http://127.0.0.1:{web_port}/").status_code == 200

    # everything, with backups: the notes upgraded, the web broken again and put back again
    secret.write_text("the host's own backups\n")
    secret.chmod(0o600)
    r = stack.isidorus("update", "apply", "--json", check=1)
    doc = json.loads(r.out)
    assert doc["status"] == "failed"
    assert steps(doc) == [
        ("snapshot", "packages", "ok"),
        ("snapshot", "toynotes", "ok"),
        ("snapshot", "toyweb", "ok"),
        ("apt", "", "ok"),
        ("upgrade", "toynotes", "ok"),
        ("health", "toynotes", "ok"),
        ("health", "toyweb", "failed"),
        ("rollback", "toyweb", "ok"),
    ]
    by = {(s["step"], s["target"]): s for s in doc["steps"]}
    assert by[("apt", "")]["detail"]["upgraded"] == {WEB: ["1.0", "1.1"]}
    assert by[("upgrade", "toynotes")]["detail"]["to"] == "1.1"
    assert by[("rollback", "toyweb")]["detail"]["packages"] == {WEB: "1.0"}
    assert by[("rollback", "toyweb")]["detail"]["health"] == "ok"
    assert by[("health", "toyweb")]["error"].startswith(f"after the upgrade of {WEB}: ")
    snapshot = by[("snapshot", "toyweb")]["detail"]["snapshot"]
    assert "apt-mark hold isidorus-toy-web" in "\n".join(doc["log"])
    assert r.err.splitlines()[-1].endswith(f"rolled back, healthy again: toyweb (run {doc['id']})")
    assert installed_version(WEB) == "1.0"
    found = listed(stack)
    assert found["toynotes"]["version"] == "1.1" and found["toynotes"]["health"] == "ok"
    assert found["toyweb"]["health"] == "ok"
    kept = json.loads(
        stack.run(
            "backup",
            "list",
            stack.root / "store",
            "--tag",
            "service:toyweb",
            "--json",
            "--passphrase-file",
            secret,
        ).out  # fmt: skip
    )
    assert [s["id"] for s in kept] == [snapshot]

    history = update_runs(stack.data_dir)
    assert [h.status for h in history] == ["failed", "failed", "failed"]
    assert [s.step for s in history[2].steps if s.status == "failed"] == ["health"]
    audit = stack.run("audit", "--json", "--data-dir", stack.data_dir).out
    assert '"update.failed"' in audit and '"update.start"' in audit
    for sid in ("toyweb", "toynotes"):
        stack.isidorus("service", "remove", sid, "--purge")


def test_bad_input_and_busy_locks_are_one_line(run, repo, host, monkeypatch, tmp_path):
    data_dir, env = host
    r = run("update", "check", "--security-only", "--data-dir", data_dir, env=env, check=2)
    assert_one_line_error(r, "no such option", "--security-only")
    r = run("update", "apply", "now", "--data-dir", data_dir, env=env, check=2)
    assert_one_line_error(r, "unexpected extra argument")
    r = run("update", "apply", "--data-dir", data_dir, check=2,
            env={**env, "ISIDORUS_APT_CONFIG": "/nonexistent/apt.conf"})  # fmt: skip
    assert_one_line_error(r, "apt_config", "/nonexistent/apt.conf", "not a file")

    # not root: said before the state is even opened
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ISIDORUS]
    p = subprocess.run([*nobody, "update", "apply", "--data-dir", str(data_dir)],
                       env=run.environment(env), capture_output=True, text=True,
                       timeout=TIMEOUT, check=False)  # fmt: skip
    assert p.returncode == 2 and p.stderr == (
        "isidorus: error: applying updates needs root (it runs apt and restarts services): "
        "run it as root\n"
    ), p

    repo.install(f"{PLAIN}=1.0")
    # a source that cannot be read: one warning, and the lists of before
    broken = repo.root / "broken.conf"
    broken.write_text(
        repo.config.read_text().replace(str(repo.root / "sources.list"), str(broken) + ".list")
    )
    Path(str(broken) + ".list").write_text(
        (repo.root / "sources.list").read_text()
        + "deb [trusted=yes] file:/nonexistent/isidorus ./\n"
    )
    r = run("update", "check", "--json", "--data-dir", data_dir,
            env={**env, "ISIDORUS_APT_CONFIG": str(broken)})  # fmt: skip
    doc = json.loads(r.out)
    assert doc["refreshed"] is False and [p["name"] for p in doc["packages"]] == [PLAIN]
    warned = [ln for ln in r.err.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "apt's lists could not be refreshed" in warned[0], r.err
    assert "/nonexistent/isidorus" in warned[0]

    before = len(update_runs(data_dir))
    with held(UPDATE_LOCK):
        r = run("update", "apply", "--data-dir", data_dir, env=env, check=1)
    assert_one_line_error(r, "another isidorus update is running", f"pid {os.getpid()}")
    assert len(update_runs(data_dir)) == before  # refused before a run began

    # another program holds apt's lock: the update waits for it, boundedly, then names it
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ISIDORUS_CONFIG", str(tmp_path / "no-such-config.toml"))
    monkeypatch.setattr(packages, "APT_LOCK_WAIT", 2.0)
    said: list[str] = []
    db = open_state(str(data_dir))
    try:
        with apt_held(600) as pid, pytest.raises(HostTimeout) as exc:
            updates.apply_updates(db, str(data_dir), security_only=False, actor="test",
                                  say=said.append)  # fmt: skip
    finally:
        db.close()
    assert str(exc.value).startswith(f"apt is busy: process {pid} (python")
    assert f"holds {DPKG_LOCK}, for 2 s now; let it finish" in str(exc.value)
    assert "\n" not in str(exc.value) and said[0].startswith("waiting for apt, up to 2 s: ")
    assert installed_version(PLAIN) == "1.0"
    assert len(update_runs(data_dir)) == before

    with apt_held(5) as pid:  # let go after 5 s: the update goes on then
        r = run("update", "apply", "--data-dir", data_dir, env=env)
    assert f"waiting for apt, up to 300 s: process {pid} (" in r.err
    assert installed_version(PLAIN) == "1.1"


class held:
    """Hold a flock of this host for the block, with this process's id in the file
    (waiting, boundedly, for another holder)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                assert time.monotonic() < deadline, f"{self.path} stays held"
                time.sleep(0.5)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# a program that takes apt's lock as apt does (a POSIX lock on dpkg's frontend lock),
# says so, and keeps it for ARGV[2] seconds
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
deadline = time.monotonic() + 300  # another apt of this host may hold it for a while
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("apt's lock stays held")
        time.sleep(0.5)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def apt_held(seconds: float) -> Iterator[int]:
    """Another program holds apt's lock for `seconds` (or until the block ends); its pid."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, DPKG_LOCK, str(seconds)],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline() == "held\n"
        yield p.pid
    finally:
        p.kill()
        p.wait(timeout=TIMEOUT)
        p.stdout.close()  # type: ignore[union-attr]
