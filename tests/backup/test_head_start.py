"""The head start of a sync to a home: the packs the copy most likely lacks (by the memo of
its last complete sync) begin to cross before the sync has its lock and listing, and a
wrong guess costs bytes, never a wrong copy."""

import json
import shutil
import threading
from pathlib import Path

import pytest

from isidorus.backup import locks, transfer
from isidorus.backup.errors import LockedError
from isidorus.backup.head_start import BUDGET, CopyMemo, HeadStart
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.sync import SyncOptions, copy_store
from isidorus.backup.testing import make_repository

from .copies import backup, contents, make_files


class Counting:
    """A backend that passes everything on and counts the bytes sent to it (whole writes
    and upload pieces), as the wire to a home would carry them."""

    def __init__(self, inner):
        self.inner = inner
        self.location = inner.location
        self.sent = 0
        self.uploads_opened = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def tmp_tag(self):
        return self.inner.tmp_tag

    @tmp_tag.setter
    def tmp_tag(self, value):
        self.inner.tmp_tag = value

    def _count(self, n):
        with self._lock:
            self.sent += n

    def write(self, kind, name, data, *, exclusive=False):
        if kind not in ("locks", "gc"):
            self._count(len(data))
        self.inner.write(kind, name, data, exclusive=exclusive)

    def upload(self):
        with self._lock:
            self.uploads_opened += 1
        inner, count = self.inner.upload(), self._count

        class Up:
            def write(self, data):
                count(len(data))
                inner.write(data)

            def commit(self, kind, name):
                inner.commit(kind, name)

            def abort(self):
                inner.abort()

        return Up()

    def list(self, kind):
        return self.inner.list(kind)


@pytest.fixture
def source(tmp_path):
    """A local store with one snapshot; `grow()` adds a second with new packs."""
    repo = make_repository(LocalBackend(str(tmp_path / "source")))
    make_files(tmp_path / "a", [300_000, 200_000], seed=1)
    backup(repo, tmp_path / "a")
    yield repo
    repo.close()


def grow(repo, tmp_path, seed=7):
    make_files(tmp_path / f"new-{seed}", [400_000, 350_000], seed=seed)
    backup(repo, tmp_path / f"new-{seed}")


def tmp_files(dest):
    tmp = Path(dest.root) / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def packs(backend):
    return {n for n, _s in backend.list("data")}


def test_a_complete_sync_teaches_the_memo_what_the_copy_holds(source, tmp_path):
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    store_id = json.loads(source.backend.read("config", "config"))["id"]
    assert memo.load(store_id) is None  # a first sync: no guess, no head start
    r = copy_store(source.backend, dest, memo=memo)
    assert r.ok
    assert memo.load(store_id) == packs(source.backend) == packs(dest)
    assert memo.load("another store") is None  # a memo of another store is no guess


def test_the_new_packs_start_ahead_and_cross_once(source, tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "PIECE", 64 * 1024)  # packs in many pieces
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    before = packs(source.backend)
    grow(source, tmp_path)
    new = {n: s for n, s in source.backend.list("data") if n not in before}
    assert new

    started = []
    real_take = HeadStart.take

    def take(self, name):
        got = real_take(self, name)
        if got is not None:
            started.append((name, got.offset))
        return got

    monkeypatch.setattr(HeadStart, "take", take)
    counting = Counting(dest)
    r = copy_store(source.backend, counting, SyncOptions(threads=2), memo=memo)
    assert r.ok and r.packs_sent == len(new)
    # every new pack went ahead (they fit in the budget), and was carried on, not resent
    assert sorted(n for n, _o in started) == sorted(new)
    assert all(offset == new[n] for n, offset in started)
    assert r.bytes_sent <= counting.sent <= r.bytes_sent  # nothing crossed twice
    assert contents(dest) == contents(source.backend)
    assert tmp_files(dest) == []
    assert memo.load(json.loads(source.backend.read("config", "config"))["id"]) == packs(dest)


def test_a_wrong_guess_costs_at_most_the_budget_and_leaves_nothing_behind(source, tmp_path):
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    store_id = json.loads(source.backend.read("config", "config"))["id"]
    memo.save(store_id, set())  # the memo says the copy holds nothing: every pack is "new"
    grow(source, tmp_path)
    counting = Counting(dest)
    r = copy_store(source.backend, counting, memo=memo)
    assert r.ok
    new_bytes = r.bytes_sent
    assert 0 < new_bytes < counting.sent <= new_bytes + BUDGET  # the waste is bounded
    assert contents(dest) == contents(source.backend)
    assert tmp_files(dest) == []  # the uploads nobody needed were dropped
    assert memo.load(store_id) == packs(dest)  # and the memo is right again


def test_a_small_budget_starts_only_the_first_pack_in_part(source, tmp_path, monkeypatch):
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    grow(source, tmp_path)
    guess = sorted((n, s) for n, s in source.backend.list("data") if n not in packs(dest))
    head = HeadStart(source.backend, dest, guess, budget=1000).start()
    first = head.take(guess[0][0])
    assert first is not None and first.offset == 1000
    assert head.take(guess[-1][0]) is None or len(guess) == 1
    first.upload.abort()
    head.close()
    assert tmp_files(dest) == []


def test_the_sync_takes_other_packs_without_waiting_and_the_head_start_leaves_them(
    source, tmp_path
):
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    grow(source, tmp_path)
    guess = sorted(source.backend.list("data"))  # what it holds or not: only the order counts
    assert len(guess) >= 2
    link = threading.Event()  # the first pack's bytes wait on a slow link
    opened = []

    class SlowLink(Counting):
        def upload(self):
            opened.append(1)
            up = super().upload()
            real_write = up.write

            def write(data):
                assert link.wait(10)
                real_write(data)

            up.write = write
            return up

    head = HeadStart(source.backend, SlowLink(dest), guess).start()
    try:
        # the head start is stuck on the first pack: the second is the sync's at once
        assert head.take(guess[1][0]) is None
        taking_first = []
        waiter = threading.Thread(target=lambda: taking_first.append(head.take(guess[0][0])))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # the first pack is the head start's: its take waits
    finally:
        link.set()
    waiter.join(10)
    assert taking_first[0] is not None and taking_first[0].offset == guess[0][1]
    head.close()
    assert opened == [1]  # it stopped at the pack the sync had taken
    taking_first[0].upload.abort()
    assert tmp_files(dest) == []


def test_a_locked_copy_stops_the_sync_and_drops_what_went_ahead(source, tmp_path):
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    grow(source, tmp_path)
    before = contents(dest)
    with locks.session(dest, "gc", exclusive=True):
        with pytest.raises(LockedError):
            copy_store(source.backend, dest, memo=memo)
        assert tmp_files(dest) == []
    assert contents(dest) == before  # nothing of the new snapshot appeared
    r = copy_store(source.backend, dest, memo=memo)
    assert r.ok and contents(dest) == contents(source.backend)


def test_a_copy_gone_from_the_home_is_made_again_despite_the_memo(source, tmp_path, monkeypatch):
    """The home's owner removed the copy: what went ahead was refused there (no copy yet),
    and the sync, which makes the copy again, sends those packs afresh instead of failing."""
    from isidorus.backup.remote.served import ServedUpload

    from .test_served import make_served

    # the refusal arrives after the head start is over (on a far link it may): the sync
    # takes the upload and only learns of it when it commits
    monkeypatch.setattr(ServedUpload, "_check_early", lambda self: None)

    taken = []
    real_take = HeadStart.take

    def take(self, name):
        got = real_take(self, name)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(HeadStart, "take", take)

    home = tmp_path / "home"
    home.mkdir()
    dest = make_served(home)
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    dest.close()
    grow(source, tmp_path)
    shutil.rmtree(home / "store")
    for _ in range(2):  # and again: the failure is not remembered
        dest = make_served(home)
        try:
            r = copy_store(source.backend, dest, memo=memo)
        finally:
            dest.close()
        assert r.ok and r.created
        assert contents(LocalBackend(str(home / "store"))) == contents(source.backend)
        shutil.rmtree(home / "store")
    assert any(taken)  # something did go ahead
