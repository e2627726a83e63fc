"""SftpBackend against OpenSSH's own sftp-server, run directly as the backend's command
(no ssh, no network): the conformance suite, then what is particular to SFTP."""

import os
import shutil
import subprocess
import threading

import pytest
from paramiko.sftp import CMD_EXTENDED, CMD_OPEN, CMD_RENAME, CMD_WRITE

from isidorus.backup.errors import BackendError, StoreError
from isidorus.backup.remote import conformance, sftp
from isidorus.backup.remote.base import KINDS
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.remote.sftp import SftpBackend
from isidorus.backup.remote.sftp_session import SftpSession
from isidorus.errors import UsageError

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# root without the capabilities that bypass file modes (as tests/integration/conftest.py)
UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]

pytestmark = pytest.mark.skipif(
    not os.access(SFTP_SERVER, os.X_OK), reason="needs OpenSSH's sftp-server (openssh-server)"
)


def make_sftp(path, argv=None, **kwargs):
    return SftpBackend(f"ssh://test.invalid{path}", argv=argv or [SFTP_SERVER], **kwargs)


def content(data):
    return conformance.content_name(data)


@pytest.mark.parametrize("check", conformance.CHECKS, ids=[c.__name__ for c in conformance.CHECKS])
def test_conformance(check, tmp_path):
    counter = iter(range(1000))
    conformance.run_check(lambda: make_sftp(tmp_path / f"store{next(counter)}"), check)


@pytest.fixture
def store(tmp_path):
    b = make_sftp(tmp_path / "store")
    b.create()
    yield b
    b.close()


def tmp_files(path):
    return sorted(os.listdir(os.path.join(path, "tmp")))


def tree(root):
    """Every folder and file under root, with the bytes of the files."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = None
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(rel, f)] = fh.read()
    return out


# -- the same layout as a directory store


def test_the_layout_is_a_directory_stores(tmp_path):
    """The same objects written through SFTP and to a directory make the same tree, so a
    store copied with rsync or scp either way stays a store."""
    backends = [make_sftp(tmp_path / "sftp"), LocalBackend(str(tmp_path / "local"))]
    objects = [(kind, b"object of " + kind.encode()) for kind in KINDS]
    for b in backends:
        b.create()
        b.write("config", "config", b'{"format": "test"}')
        for kind, data in objects:
            b.write(kind, content(data) if kind not in ("locks", "gc") else "state", data)
        up = b.upload()
        up.write(b"a pack")
        up.commit("data", content(b"a pack"))
        b.close()
    assert tree(tmp_path / "sftp") == tree(tmp_path / "local")
    assert (tmp_path / "sftp" / "data" / content(b"a pack")[:2] / content(b"a pack")).exists()
    # and each reads what the other wrote
    shutil.copytree(tmp_path / "local", tmp_path / "copied")
    copied = make_sftp(tmp_path / "copied")
    assert copied.read("data", content(b"a pack")) == b"a pack"
    assert dict(copied.list("index")) == {content(b"object of index"): 15}
    copied.close()


def test_files_are_private_as_in_a_directory_store(store, tmp_path):
    store.write("keys", content(b"key"), b"key")
    assert os.stat(tmp_path / "store" / "keys" / content(b"key")).st_mode & 0o777 == 0o600


def test_no_temporary_files_are_left(store, tmp_path):
    data = b"x" * 5000
    store.write("data", content(data), data)
    store.write("data", content(data), data)  # already there
    with pytest.raises(FileExistsError):
        store.write("data", content(data), data, exclusive=True)
    store.write("locks", "a", b"1")
    store.write("locks", "a", b"2")  # replaced
    with pytest.raises(FileExistsError):
        store.write("locks", "a", b"3", exclusive=True)
    store.replace("data", content(data), data)
    big = os.urandom(sftp.UPLOAD_PIECE + 1000)
    for _ in range(2):  # the second commit finds the object there
        up = store.upload()
        up.write(big)
        up.commit("data", content(big))
    up = store.upload()
    up.write(big)
    up.abort()
    assert tmp_files(tmp_path / "store") == []
    assert store.read("locks", "a") == b"2"
    assert store.read("data", content(big)) == big


def test_writes_are_synced_before_they_are_named(store, monkeypatch):
    """fsync@openssh.com on the file (with its last writes) before the rename, then on its
    folder (opened beside the file); three round trips in all."""
    sent = []
    real = SftpSession.batch

    def batch(self, requests):
        sent.append([(t, args[0] if t == CMD_EXTENDED else None) for t, args in requests])
        return real(self, requests)

    monkeypatch.setattr(SftpSession, "batch", batch)
    store.write("data", content(b"durable"), b"durable")
    store.write("locks", "me", b"session")
    monkeypatch.undo()
    fsync = (CMD_EXTENDED, "fsync@openssh.com")
    steps = [[(CMD_OPEN, None), (CMD_OPEN, None)], [(CMD_WRITE, None), fsync]]
    assert sent[:3] == [*steps, [(CMD_RENAME, None), fsync]]  # RENAME never replaces
    assert sent[3:] == [*steps, [(CMD_EXTENDED, "posix-rename@openssh.com"), fsync]]


def test_create_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "photo.jpg").write_bytes(b"\xff\xd8")
    b = make_sftp(tmp_path / "store")
    with pytest.raises(StoreError, match="not empty"):
        b.create()
    b.close()
    assert os.listdir(tmp_path / "store") == ["photo.jpg"]


def test_create_makes_missing_parents(tmp_path):
    b = make_sftp(tmp_path / "a" / "b" / "store")
    b.create()
    b.close()
    assert sorted(os.listdir(tmp_path / "a" / "b" / "store" / "data")) == [
        f"{i:02x}" for i in range(256)
    ]


def test_clean_tmp_and_list_skip_leftovers(store, tmp_path):
    store.write("index", content(b"kept"), b"kept")
    for leftover in ("tmp/dead-123.tmp", "tmp/alive-456.tmp", "index/.partial"):
        (tmp_path / "store" / leftover).write_bytes(b"")
    assert dict(store.list("index")) == {content(b"kept"): 4}
    store.clean_tmp({"alive"})
    assert tmp_files(tmp_path / "store") == ["alive-456.tmp"]


@pytest.mark.parametrize(("kind", "name"), [("data", "../config"), ("index", "a/b"), ("x", "ab")])
def test_bad_addresses_fail_before_anything_is_sent(tmp_path, kind, name):
    b = make_sftp(tmp_path / "store", argv=["/nonexistent/sftp-server"])
    for call in (b.write, b.replace):
        with pytest.raises(ValueError):
            call(kind, name, b"x")
    with pytest.raises(ValueError):
        b.read_range(kind, name, 0, 1)


def test_the_url_and_the_ssh_command():
    b = SftpBackend("ssh://backup@friend.example.org:2222/srv/isidorus/", "ssh -F /etc/cfg")
    assert b.location == "ssh://backup@friend.example.org:2222/srv/isidorus"
    assert b.root == "/srv/isidorus"
    argv = b._argv
    assert argv[:3] == ["ssh", "-F", "/etc/cfg"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "backup"
    assert argv[-4:] == ["-s", "--", "friend.example.org", "sftp"]
    with pytest.raises(UsageError):
        SftpBackend("ssh://friend.example.org/")
    with pytest.raises(UsageError):
        SftpBackend("ssh+isidorus://friend.example.org/x")


# -- atomicity when things break


def cut_after(n):
    """A server whose connection drops once the client has sent n bytes: `dd` alone
    reads the client's pipe (a shell running a pipeline would hold it open too), and dd
    passes on each block as it comes."""
    return [
        "bash",
        "-c",
        f"exec dd iflag=count_bytes count={n} bs=64k status=none > >(exec {SFTP_SERVER})",
    ]


def test_a_write_cut_short_leaves_nothing_under_its_name(tmp_path):
    LocalBackend(str(tmp_path / "store")).create()
    data = os.urandom(1024 * 1024)
    b = make_sftp(tmp_path / "store", argv=cut_after(300_000))
    with pytest.raises(BackendError, match="ended unexpectedly") as info:
        b.write("data", content(data), data)
    assert not info.value.permanent  # worth trying again
    b.close()
    local = LocalBackend(str(tmp_path / "store"))
    assert dict(local.list("data")) == {}
    assert tmp_files(tmp_path / "store") != []  # the piece sent: gc's to remove
    local.clean_tmp(set())
    assert tmp_files(tmp_path / "store") == []


def sessions(backend):
    return [s for s in backend._pool._born]


def test_a_killed_server_is_dropped_and_the_call_goes_on(store):
    """A session that broke after it had worked (a link dropped while idle) is thrown away
    and the call is tried once more on a new one."""
    store.write("index", content(b"one"), b"one")
    (old,) = sessions(store)
    old.pipe.proc.kill()
    old.pipe.proc.wait()
    assert store.read("index", content(b"one")) == b"one"
    assert sessions(store) != [old] and len(sessions(store)) == 1
    assert old.broken


def test_an_upload_survives_a_killed_server_and_commits_whole(store, tmp_path):
    big = os.urandom(2 * sftp.UPLOAD_PIECE + 5)
    up = store.upload()
    up.write(big[: sftp.UPLOAD_PIECE + 1])  # sent
    for s in sessions(store):
        s.pipe.proc.kill()
    up.write(big[sftp.UPLOAD_PIECE + 1 :])
    assert dict(store.list("data")) == {}  # not named before the commit
    up.commit("data", content(big))
    assert store.read("data", content(big)) == big
    assert tmp_files(tmp_path / "store") == []


def test_an_exclusive_write_is_not_tried_twice(store, tmp_path):
    store.write("index", content(b"warm"), b"warm")
    for s in sessions(store):
        s.pipe.proc.kill()
    with pytest.raises(BackendError, match="ended unexpectedly"):
        store.write("locks", "exclusive", b"me", exclusive=True)
    store.write("locks", "exclusive", b"me", exclusive=True)  # a new session
    assert store.read("locks", "exclusive") == b"me"


# -- errors, each in one line with its fix


@pytest.mark.parametrize(
    ("stderr", "message"),
    [
        ("Host key verification failed.", "not in known_hosts"),
        ("backup@friend: Permission denied (publickey).", "refused the login"),
        ("ssh: Could not resolve hostname friend: Name or service not known", "cannot find"),
        ("ssh: connect to host friend port 22: Connection refused", "run the command again"),
    ],
)
def test_ssh_failures_are_explained(tmp_path, stderr, message):
    b = make_sftp(tmp_path / "store", argv=["sh", "-c", f"echo '{stderr}' >&2; exit 255"])
    with pytest.raises(BackendError, match=message) as info:
        b.exists("config", "config")
    assert "\n" not in str(info.value)
    assert sessions(b) == []  # nothing half open is kept


def test_a_shell_that_prints_garbage(tmp_path):
    b = make_sftp(tmp_path / "store", argv=["sh", "-c", f"echo Welcome home; exec {SFTP_SERVER}"])
    with pytest.raises(BackendError, match="does not speak SFTP.*print nothing"):
        b.exists("config", "config")


def test_no_ssh_client(tmp_path):
    b = SftpBackend(f"ssh://friend{tmp_path}/store", "/nonexistent/ssh")
    with pytest.raises(UsageError, match="openssh-client"):
        b.exists("config", "config")


def test_a_missing_store(tmp_path):
    b = make_sftp(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        b.read("config", "config")
    with pytest.raises(BackendError, match="lacks a folder of the store.*backup init"):
        b.write("index", content(b"x"), b"x")
    b.close()


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 1 MiB holding a store."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        LocalBackend(str(mnt / "store")).create()
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.root
def test_a_full_disk(small_disk):
    b = make_sftp(small_disk / "store")
    data = os.urandom(2 * 1024 * 1024)
    with pytest.raises(BackendError, match="the home's disk is full.*free some space") as info:
        b.write("data", content(data), data)
    assert info.value.permanent
    up = b.upload()
    with pytest.raises(BackendError, match="disk is full"):
        for _ in range(3):
            up.write(os.urandom(sftp.UPLOAD_PIECE // 2))
    assert tmp_files(small_disk / "store") == []  # both cleaned up
    assert dict(b.list("data")) == {}
    b.write("index", content(b"small"), b"small")  # what fits still goes in
    b.close()


@pytest.mark.root
def test_a_read_only_file_system(small_disk):
    b = make_sftp(small_disk / "store")
    b.write("index", content(b"before"), b"before")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(BackendError, match="read-only") as info:
        b.write("index", content(b"after"), b"after")
    assert info.value.permanent
    assert b.read("index", content(b"before")) == b"before"  # reading still works
    b.close()


@pytest.mark.root
def test_permission_denied(tmp_path):
    LocalBackend(str(tmp_path / "store")).create()
    os.chmod(tmp_path / "store" / "tmp", 0o555)
    b = make_sftp(tmp_path / "store", argv=[*UNPRIVILEGED, SFTP_SERVER])
    with pytest.raises(BackendError, match="permission denied on index/.*able to write") as info:
        b.write("index", content(b"x"), b"x")
    assert info.value.permanent
    assert b.exists("index", content(b"x")) is False
    b.close()


# -- threads


def test_threads_share_a_few_sessions(tmp_path):
    b = make_sftp(tmp_path / "store", connections=2)
    b.create()
    opened = []
    real = b._connect

    def connect():
        opened.append(1)
        return real()

    b._connect = connect
    b._pool._make = connect
    datas = [os.urandom(3000 + i) for i in range(40)]
    errors = []

    def work(i):
        try:
            for j, d in enumerate(datas):
                if (i + j) % 3 == 0:
                    b.write("data", content(d), d)
                elif b.exists("data", content(d)):
                    assert b.read_range("data", content(d), 10, 100) == d[10:110]
                if j % 10 == i % 10:
                    names = dict(b.list("data"))
                    assert all(names[n] == len(x) for x in datas if (n := content(x)) in names)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(opened) <= 2
    assert dict(b.list("data")) == {content(d): len(d) for d in datas}
    procs = [s.pipe.proc for s in sessions(b)]
    b.close()
    assert all(p.poll() is not None for p in procs)  # close ends the sftp-servers


def test_backend_for_passes_the_ssh_settings():
    from isidorus.ops.stores import backend_for

    b = backend_for(
        "ssh://friend.example.org/srv/isidorus",
        {"ssh_command": "ssh -F /etc/isidorus/ssh_config", "limit_rate": "2M"},
    )
    assert isinstance(b, SftpBackend)
    assert b._argv[:3] == ["ssh", "-F", "/etc/isidorus/ssh_config"]
    assert b._rate_limit is not None and b._rate_limit.rate == 2 * 1024 * 1024
