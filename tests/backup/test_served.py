"""`ssh+isidorus://` stores: the client of `isidorus backup serve` against the real server
program, run as a subprocess over pipes (no ssh here: tests/integration/test_homes_sync.py
goes through real sshd)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from isidorus.backup.errors import BackendError
from isidorus.backup.remote import conformance
from isidorus.backup.remote import served as served_module
from isidorus.backup.remote.served import ServedBackend
from isidorus.backup.removals import RemovalQueue

ISIDORUS = str(Path(sys.executable).with_name("isidorus"))


def make_served(root: Path, store: str = "store", *extra: str) -> ServedBackend:
    argv = [ISIDORUS, "backup", "serve", "--stdio", str(root), *extra]
    return ServedBackend(f"ssh+isidorus://home/{store}", argv=argv)


def blob(tag: str, size: int = 1000) -> tuple[str, bytes]:
    data = (hashlib.sha256(tag.encode()).digest() * (size // 32 + 1))[:size]
    return hashlib.sha256(data).hexdigest(), data


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_conformance(check, tmp_path):
    counter = iter(range(1000))
    conformance.run_check(lambda: make_served(tmp_path, f"store{next(counter)}"), check)


@pytest.fixture
def served(tmp_path):
    b = make_served(tmp_path, "store", "--append-only", "--removal-delay", "1d")
    b.create()
    yield b
    b.close()


def test_append_only_queues_removals_and_hides_them(served, tmp_path):
    name, data = blob("a")
    served.write("data", name, data)
    served.write("locks", "s1", b"{}")
    served.remove("data", name)
    served.remove("locks", "s1")  # locks come and go freely
    assert not served.exists("data", name) and list(served.list("data")) == []
    with pytest.raises(FileNotFoundError):
        served.read("data", name)
    assert served.removals_queued == 1
    # the bytes are still on the home's disk, and listed in its queue
    assert (tmp_path / "store" / "data" / name[:2] / name).read_bytes() == data
    assert not (tmp_path / "store" / "locks" / "s1").exists()
    queue = RemovalQueue(str(tmp_path / "store"))
    assert [(r.kind, r.name) for r in queue.pending()] == [("data", name)]
    queue.close()


def test_append_only_never_overwrites(served, tmp_path):
    name, data = blob("b")
    served.write("data", name, data)
    served.write("data", name, b"other bytes under the same name")
    assert served.read("data", name) == data
    up = served.upload()
    up.write(b"forged")
    up.commit("data", name)
    assert served.read("data", name) == data
    with pytest.raises(BackendError, match="append-only"):
        served.replace("data", name, b"forged")
    with pytest.raises(BackendError, match="intact"):
        served.replace("data", name, data)
    with pytest.raises(BackendError, match="config stays"):
        served.remove("config", "config")
    assert (tmp_path / "store" / "data" / name[:2] / name).read_bytes() == data


def test_an_object_written_again_leaves_the_queue(served, tmp_path):
    name, data = blob("c")
    served.write("index", name, data)
    served.remove("index", name)
    served.write("index", name, data)
    assert served.exists("index", name)
    queue = RemovalQueue(str(tmp_path / "store"))
    assert queue.pending() == []
    queue.close()


def test_due_removals_are_carried_out_at_the_next_connection_in_order(tmp_path):
    b = make_served(tmp_path, "store", "--append-only", "--removal-delay", "0")
    b.create()
    b.write("config", "config", b"{}")
    names = {k: blob(k) for k in ("data", "index", "snapshots")}
    for kind, (name, data) in names.items():
        b.write(kind, name, data)
    for kind in ("data", "index", "snapshots"):  # in the wrong order on purpose
        b.remove(kind, names[kind][0])
    b.close()
    store = tmp_path / "store"
    assert (store / "snapshots" / names["snapshots"][0]).exists()
    removed_at = {}
    c = make_served(tmp_path, "store", "--append-only", "--removal-delay", "0")
    assert list(c.list("data")) == []  # the connection opens
    c.close()
    for kind, (name, _data) in names.items():
        path = store / kind / (f"{name[:2]}/{name}" if kind == "data" else name)
        assert not path.exists()
        removed_at[kind] = True
    queue = RemovalQueue(str(store))
    assert queue.pending() == []
    queue.close()


def test_ordered_apply_removes_snapshots_before_packs(tmp_path):
    from isidorus.backup.remote.local import LocalBackend

    store = tmp_path / "s"
    local = LocalBackend(str(store))
    local.create()
    order = []
    real = local.remove
    local.remove = lambda kind, name: (order.append(kind), real(kind, name))  # type: ignore[method-assign]
    queue = RemovalQueue(str(store))
    for kind in ("data", "keys", "index", "snapshots"):
        name, data = blob(kind)
        local.write(kind, name, data)
        queue.ask(kind, name)
    r = queue.apply(local, 0)
    assert r.removed == 4 and order == ["snapshots", "index", "data", "keys"]
    queue.close()


def test_cancel_holds_every_later_removal_until_released(tmp_path):
    from isidorus.backup.remote.local import LocalBackend

    store = tmp_path / "s"
    local = LocalBackend(str(store))
    local.create()
    queue = RemovalQueue(str(store))
    a, da = blob("a")
    b, db = blob("b")
    local.write("data", a, da)
    local.write("data", b, db)
    queue.ask("data", a)
    assert queue.cancel() == 1
    queue.ask("data", b)
    r = queue.apply(local, 0)
    assert r.held and r.removed == 0 and local.exists("data", b)
    assert queue.release() is True
    r = queue.apply(local, 0)
    assert r.removed == 1 and not local.exists("data", b) and local.exists("data", a)
    queue.close()


def test_a_removal_waits_for_its_delay(tmp_path):
    from isidorus.backup.remote.local import LocalBackend

    local = LocalBackend(str(tmp_path / "s"))
    local.create()
    queue = RemovalQueue(str(tmp_path / "s"))
    name, data = blob("x")
    local.write("data", name, data)
    queue.ask("data", name)
    r = queue.apply(local, 3600)
    assert r.removed == 0 and r.waiting == 1 and local.exists("data", name)
    r = queue.apply(local, 3600, now=time.time() + 3601)
    assert r.removed == 1 and not local.exists("data", name)
    queue.close()


@pytest.mark.parametrize("path", ["../escape", "a/../../escape", "/..", "./"])
def test_paths_that_leave_the_served_directory_are_refused(tmp_path, path):
    root = tmp_path / "root"
    root.mkdir()
    b = ServedBackend(
        f"ssh+isidorus://home/x{path}",
        argv=[ISIDORUS, "backup", "serve", "--stdio", str(root)],
    )
    b.target = b.target.__class__(b.target.scheme, "home", None, None, path)
    with pytest.raises(BackendError, match="served directory"):
        b.create()
    b.close()
    assert sorted(os.listdir(tmp_path)) == ["root"]


def test_a_symbolic_link_out_of_the_served_directory_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    b = make_served(root, "link/store")
    with pytest.raises(BackendError, match="symbolic link"):
        b.create()
    b.close()
    assert list((tmp_path / "outside").iterdir()) == []


def test_quota_refuses_writes_past_it(tmp_path):
    b = make_served(tmp_path, "store", "--quota", "100K")
    b.create()
    name, data = blob("small", 50_000)
    b.write("data", name, data)
    big, bigdata = blob("big", 80_000)
    with pytest.raises(BackendError, match="quota of 100.0 KiB is reached") as info:
        b.write("data", big, bigdata)
    assert info.value.permanent
    up = b.upload()
    with pytest.raises(BackendError, match="quota"):
        up.write(bigdata)
        up.commit("data", big)
    up.abort()
    assert not b.exists("data", big)
    assert os.listdir(tmp_path / "store" / "tmp") == []
    b.close()


def test_a_dropped_upload_does_not_count_against_the_quota(tmp_path):
    b = make_served(tmp_path, "store", "--quota", "100K")
    b.create()
    name, data = blob("kept", 60_000)
    for _ in range(3):  # a head start the copy did not need, three times over
        up = b.upload()
        up.write(data)
        up.abort()
    b.write("data", name, data)  # 60 KB of 100: only what is kept counts
    assert b.exists("data", name)
    b.close()


def test_a_server_that_dies_mid_upload_leaves_nothing_and_says_so(tmp_path):
    b = make_served(tmp_path)
    b.create()
    up = b.upload()
    up.write(b"x" * 100_000)
    assert b._pipe is not None
    b._pipe.proc.kill()
    with pytest.raises(BackendError, match="connection"):
        for _ in range(50):  # bounded: the kill shows up at the next request
            up.write(b"y" * 100_000)
            time.sleep(0.02)
        up.commit("data", "0" * 64)
    with pytest.raises(BackendError):
        b.exists("data", "0" * 64)
    b.close()
    assert not (tmp_path / "store" / "data" / "00" / ("0" * 64)).exists()


def test_requests_from_many_threads_are_pipelined(tmp_path):
    b = make_served(tmp_path)
    b.create()
    items = [blob(str(i), 20_000) for i in range(40)]
    errors = []

    def work(chunk):
        try:
            for name, data in chunk:
                b.write("data", name, data)
                assert b.read("data", name) == data
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(items[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert {n for n, _ in b.list("data")} == {n for n, _ in items}
    b.close()


def test_a_host_that_does_not_serve_isidorus_is_named(tmp_path):
    b = ServedBackend("ssh+isidorus://home/store", argv=["sh", "-c", "echo hello; cat >/dev/null"])
    with pytest.raises(BackendError, match="does not answer as `isidorus backup serve`"):
        b.exists("data", "0" * 64)
    b.close()


def test_append_only_lets_a_damaged_object_be_repaired(served, tmp_path):
    name, data = blob("d")
    served.write("data", name, data)
    path = tmp_path / "store" / "data" / name[:2] / name
    path.write_bytes(b"rotten" + data[6:])
    served.replace("data", name, data)
    assert path.read_bytes() == data


def test_upload_bytes_count_as_unanswered_until_the_home_answers(tmp_path):
    """What a head start may still add behind: the bytes of uploads sent and not answered.
    A home that reads and answers nothing keeps them all on the way; a real one answers."""
    mute = ServedBackend("ssh+isidorus://home/store", argv=["sh", "-c", "cat >/dev/null"])
    try:
        up = mute.upload()
        up.write(b"x" * (3 * 1024 * 1024 + 5))  # four pieces on their way
        assert not mute.wait_unanswered(3 * 1024 * 1024, 0.05)
        assert mute.wait_unanswered(3 * 1024 * 1024 + 5, 0)
    finally:
        mute.close()
    assert mute.wait_unanswered(0, 5)  # a closed connection answers every request (failed)

    served = make_served(tmp_path)
    try:
        served.create()
        up = served.upload()
        data = os.urandom(2 * 1024 * 1024)
        up.write(data)
        assert served.wait_unanswered(0, 30)
        up.commit("data", hashlib.sha256(data).hexdigest())
    finally:
        served.close()


def test_a_home_that_falls_silent_is_given_up(tmp_path, monkeypatch):
    """The home sends signs of life: an idle connection lives on, and one whose home
    stops sending anything ends, with a one-line reason, instead of hanging."""
    monkeypatch.setattr(served_module, "TICKS", 0.1)  # silent for 0.4 s: gone
    b = make_served(tmp_path)
    b.create()
    assert b.info["ticks"] == 0.1
    time.sleep(1.0)  # idle far longer than the silence allowed: the ticks kept it
    assert b.exists("data", "0" * 64) is False
    assert b._pipe is not None
    home = b._pipe.proc.pid
    os.kill(home, signal.SIGSTOP)  # no answer, no sign of life, the pipe still open
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"home has sent nothing for \d+ s: the link"):
            b.exists("data", "0" * 64)
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(home, signal.SIGCONT)
    b.close()


@pytest.mark.parametrize(("asked", "every"), [(0.01, 0.1), (None, 0.0)])
def test_a_home_sends_signs_of_life_only_when_asked(tmp_path, asked, every):
    """Every `ticks` seconds (no more often than ten a second), a frame that answers no
    request; a client that asks for none (an older one) gets none."""
    from isidorus.backup.remote import wire
    from isidorus.backup.serve import ServeOptions, _read_frame, serve

    r_req, w_req = os.pipe()
    r_ans, w_ans = os.pipe()
    rfile, wfile = os.fdopen(r_req, "rb"), os.fdopen(w_ans, "wb")
    home = threading.Thread(target=serve, args=(ServeOptions(str(tmp_path)), rfile, wfile))
    home.start()
    hello: dict[str, object] = {"path": "store"}
    if asked is not None:
        hello["ticks"] = asked
    os.write(w_req, wire.encode(["hello", wire.VERSION, hello]))
    answers = os.fdopen(r_ans, "rb")
    greeting = _read_frame(answers)
    assert greeting[:2] == [0, 0] and greeting[2]["ticks"] == every
    time.sleep(0.45)
    os.close(w_req)  # the client goes: the home stops, its ticker with it
    home.join(10)
    assert not home.is_alive()
    wfile.close()
    rfile.close()
    frames = []
    while (frame := _read_frame(answers)) is not None:
        frames.append(frame)
    answers.close()
    assert all(f == [wire.TICK] for f in frames)
    assert (3 <= len(frames) <= 5) if asked else frames == []
