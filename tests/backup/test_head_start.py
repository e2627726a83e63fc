"""The head start of a sync to a home: the packs the copy most likely lacks (by the memo of
its last complete sync) begin to cross before the sync has its lock and listing, and a
wrong guess costs bytes, never a wrong copy."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from isidorus.backup import head_start, locks, transfer
from isidorus.backup.errors import BackendError, LockedError
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
    monkeypatch.setattr(head_start, "PIECE", 64 * 1024)
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

    class SlowToList(Counting):
        """A copy whose listing of packs comes back once the new ones have crossed: the
        head start goes on until the sync knows what the copy lacks."""

        def list(self, kind):
            if kind == "data":
                for _ in range(1000):
                    if self.sent >= sum(new.values()):
                        break
                    time.sleep(0.01)
            return super().list(kind)

    counting = SlowToList(dest)
    r = copy_store(source.backend, counting, SyncOptions(threads=2), memo=memo)
    assert r.ok and r.packs_sent == len(new)
    # every new pack went ahead, and was carried on, not resent
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
    head._thread.join(10)  # the budget spent, it ends on its own
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
    writing = threading.Event()
    opened = []

    class SlowLink(Counting):
        def upload(self):
            opened.append(1)
            up = super().upload()
            real_write = up.write

            def write(data):
                writing.set()
                assert link.wait(10)
                real_write(data)

            up.write = write
            return up

    head = HeadStart(source.backend, SlowLink(dest), guess).start()
    assert writing.wait(10)
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
    # the piece on its way when the sync took the pack, and nothing more
    assert taking_first[0] is not None
    assert taking_first[0].offset == min(guess[0][1], head_start.PIECE)
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


class Pipelined(Counting):
    """A link whose answers come when the test says: each `answers.release()` opens the
    window for one more piece."""

    def __init__(self, inner):
        super().__init__(inner)
        self.answers = threading.Semaphore(0)
        self.answering = True
        self.limits = []

    def wait_unanswered(self, limit, timeout):
        self.limits.append(limit)
        return self.answers.acquire(timeout=timeout)


def new_guess(source, dest, tmp_path):
    copy_store(source.backend, dest)
    grow(source, tmp_path)
    return sorted((n, s) for n, s in source.backend.list("data") if n not in packs(dest))


def test_a_full_window_holds_the_head_start_back_and_stop_ends_it(source, tmp_path, monkeypatch):
    monkeypatch.setattr(head_start, "PIECE", 4096)
    dest = LocalBackend(str(tmp_path / "home"))
    guess = new_guess(source, dest, tmp_path)
    link = Pipelined(dest)
    head = HeadStart(source.backend, link, guess).start()
    time.sleep(0.2)
    assert link.sent == 0  # nothing answered yet: no piece goes behind the others
    for _ in range(3):
        link.answers.release()
    for _ in range(1000):
        if link.sent >= 3 * 4096:
            break
        time.sleep(0.005)
    time.sleep(0.1)
    assert link.sent == 3 * 4096  # one piece for each answer, no more
    head.stop()
    head._thread.join(10)
    assert not head._thread.is_alive()  # stopped, far from the budget
    assert link.sent == 3 * 4096 < sum(s for _n, s in guess)
    assert sum(st.offset for st in head.started.values()) == 3 * 4096  # kept for the sync
    head.close()
    assert tmp_files(dest) == []


def test_a_stop_while_the_window_is_full_ends_the_head_start(source, tmp_path):
    dest = LocalBackend(str(tmp_path / "home"))
    link = Pipelined(dest)
    head = HeadStart(source.backend, link, new_guess(source, dest, tmp_path)).start()
    time.sleep(0.1)
    head.stop()  # the window never opens: the head start does not wait for it
    head._thread.join(5)
    assert not head._thread.is_alive() and link.sent == 0
    head.close()
    assert tmp_files(dest) == []


def test_a_failed_sync_teaches_the_memo_what_arrived(source, tmp_path, monkeypatch):
    """A sync cut short: the packs that arrived are in the memo, so the next head start
    does not send them again."""
    monkeypatch.setattr(head_start, "PIECE", 64 * 1024)
    dest = LocalBackend(str(tmp_path / "home"))
    memo = CopyMemo(str(tmp_path / "cache"), dest.location)
    copy_store(source.backend, dest, memo=memo)
    grow(source, tmp_path)
    grow(source, tmp_path, seed=8)
    new = sorted(n for n in packs(source.backend) if n not in packs(dest))
    assert len(new) >= 2

    class CutAfterOne(Counting):
        """The link goes down once one pack has arrived (whole or as an upload)."""

        arrived = 0

        def _arrive(self, kind):
            if kind == "data":
                if self.arrived >= 1:
                    raise BackendError("the link went down")
                self.arrived += 1

        def write(self, kind, name, data, *, exclusive=False):
            self._arrive(kind)
            super().write(kind, name, data, exclusive=exclusive)

        def upload(self):
            up, arrive = super().upload(), self._arrive
            real_commit = up.commit

            def commit(kind, name):
                arrive(kind)
                real_commit(kind, name)

            up.commit = commit
            return up

    with pytest.raises(BackendError, match="went down"):
        copy_store(source.backend, CutAfterOne(dest), SyncOptions(threads=1), memo=memo)
    store_id = json.loads(source.backend.read("config", "config"))["id"]
    arrived = packs(dest)
    assert arrived & set(new)  # one pack crossed before the cut
    assert memo.load(store_id) == arrived  # and the memo knows it

    counting = Counting(dest)
    r = copy_store(source.backend, counting, memo=memo)
    assert r.ok and contents(dest) == contents(source.backend)
    assert counting.sent == r.bytes_sent  # nothing that had arrived crossed again


def test_the_window_is_wider_until_the_other_end_answers(source, tmp_path):
    """A home slow to start receives what ssh lets cross meanwhile; once it answers, the
    sync's requests wait behind no more than the narrower window."""
    dest = LocalBackend(str(tmp_path / "home"))
    link = Pipelined(dest)
    link.answering = False
    head = HeadStart(source.backend, link, new_guess(source, dest, tmp_path)).start()
    time.sleep(0.1)
    link.answering = True
    time.sleep(0.1)
    head.stop()
    head._thread.join(5)
    head.close()
    early = head_start.EARLY_WINDOW - head_start.PIECE
    late = head_start.WINDOW - head_start.PIECE
    assert early > late
    assert link.limits[0] == early and link.limits[-1] == late
    assert set(link.limits) == {early, late}
