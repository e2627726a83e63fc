"""sync: copies of a store made without the key, resumed after any interruption, with
snapshots that appear only once what they need is there, and deletions mirrored in order."""

import pytest

from isidorus.backup import locks, transfer
from isidorus.backup.errors import BackendError, IntegrityError, StoreError
from isidorus.backup.gc import collect_garbage
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.remote.memory import MemoryBackend
from isidorus.backup.repository import add_key, key_params
from isidorus.backup.sync import SyncOptions, copy_store
from isidorus.backup.testing import CHEAP_KDF, make_repository

from .copies import (
    KINDS,
    Recorder,
    assert_intact,
    backup,
    contents,
    make_files,
    open_copy,
    restore_files,
)


@pytest.fixture
def source(tmp_path):
    """A store with two snapshots of two trees (1.2 MB of random data in all)."""
    repo = make_repository()
    make_files(tmp_path / "a", [300_000, 200_000, 10], seed=1)
    make_files(tmp_path / "b", [400_000, 300_000], seed=2)
    backup(repo, tmp_path / "a")
    backup(repo, tmp_path / "b")
    yield repo
    repo.close()


def sizes(backend, kinds=KINDS):
    return {(k, n): s for k in kinds for n, s in backend.list(k)}


def test_first_sync_makes_a_copy_the_same_passphrase_opens(source, tmp_path):
    dest = MemoryBackend("memory:dest")
    r = copy_store(source.backend, dest)  # no key anywhere: it is never asked for
    want = contents(source.backend)
    assert r.ok and r.created
    assert contents(dest) == want  # same config (same id), same key files, same objects
    assert r.snapshots_copied == 2
    assert r.packs_sent == len(list(source.backend.list("data")))
    assert r.objects_sent == len(want)
    assert r.bytes_sent == sum(len(v) for v in want.values())
    assert r.bytes_sent > 1_200_000  # random data: it crosses whole
    assert list(dest.list("locks")) == []  # the sessions ended with the sync

    copy = open_copy(dest, tmp_path)
    assert_intact(copy)
    for snap in source.list_snapshots():
        got = restore_files(copy, snap, tmp_path / f"out-{snap.short_id}")
        [path] = snap.paths
        assert got == {
            p.name: p.read_bytes() for p in (tmp_path / path.rsplit("/", 1)[1]).iterdir()
        }
    copy.close()


def test_a_second_sync_sends_nothing_and_an_incremental_one_only_what_is_new(source, tmp_path):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    again = copy_store(source.backend, dest)
    assert (again.snapshots_copied, again.objects_sent, again.bytes_sent) == (0, 0, 0)
    assert not again.created

    before = sizes(source.backend)
    make_files(tmp_path / "c", [250_000], seed=3)
    (tmp_path / "a" / "f9").write_bytes(b"a small change")
    backup(repo := source, tmp_path / "c")
    backup(repo, tmp_path / "a")
    new = {k: s for k, s in sizes(source.backend).items() if k not in before}
    r = copy_store(source.backend, dest)
    assert r.snapshots_copied == 2
    assert r.objects_sent == len(new)
    assert r.packs_sent == sum(1 for k, _n in new if k == "data")
    assert r.bytes_sent == sum(new.values())
    # about the new data: 250 kB of random bytes and what describes it, not the 1.2 MB
    assert 250_000 < r.bytes_sent < 250_000 + 20_000
    assert contents(dest) == contents(source.backend)


@pytest.mark.parametrize("threads", [1, 4])
def test_an_interrupted_sync_resumes_without_sending_anything_twice(source, tmp_path, threads):
    full = len(contents(source.backend))  # objects a whole sync writes
    whole = copy_store(source.backend, MemoryBackend(), SyncOptions(threads=threads))
    for budget in range(full):
        dest = MemoryBackend(f"memory:dest-{budget}")
        flaky = Recorder(dest, budget=budget)
        with pytest.raises(BackendError, match="connection dropped"):
            copy_store(source.backend, flaky, SyncOptions(threads=threads))
        arrived = set(flaky.written)
        assert len(arrived) <= budget
        # what is there is a working store, and no snapshot refers to what is missing
        if dest.exists("config", "config"):
            copy = open_copy(dest, tmp_path)
            assert_intact(copy)
            copy.close()
        else:
            assert not list(dest.list("snapshots"))
        assert list(dest.list("locks")) == []  # even the failed sync let go of its lock

        again = Recorder(dest)
        r = copy_store(source.backend, again, SyncOptions(threads=threads))
        resent = set(again.written) & arrived
        if ("config", "config") in arrived:
            assert not resent
        else:  # a copy without its config is not a store yet: its making starts over
            assert {k for k, _n in resent} <= {"keys"}
        kept = arrived - resent
        assert r.objects_sent + len(kept) == whole.objects_sent
        assert r.bytes_sent + sum(len(dest.read(k, n)) for k, n in kept) == whole.bytes_sent
        assert contents(dest) == contents(source.backend)


def test_snapshots_are_written_last(source):
    dest = Recorder(MemoryBackend())
    copy_store(source.backend, dest, SyncOptions(threads=4))
    kinds = [k for k, _n in dest.written]
    # key files and config make the copy a store; then packs, index objects, snapshots
    assert kinds[-2:] == ["snapshots", "snapshots"]
    assert kinds.index("index") > max(i for i, k in enumerate(kinds) if k == "data")
    assert kinds.index("snapshots") > max(i for i, k in enumerate(kinds) if k == "index")
    assert kinds.index("config") > kinds.index("keys")


def test_pruned_and_collected_snapshots_leave_the_copy_in_order(source, tmp_path):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    old = sizes(source.backend)
    [first, second] = source.list_snapshots()
    source.backend.remove("snapshots", first.id)
    assert collect_garbage(source).done
    gone = old.keys() - sizes(source.backend).keys()
    assert {k for k, _n in gone} == {"snapshots", "index", "data"}

    rec = Recorder(dest)
    r = copy_store(source.backend, rec)
    assert set(rec.removed) == gone
    kinds = [k for k, _n in rec.removed]
    # each step leaves a working copy: snapshots first, then index objects, then packs
    assert kinds == sorted(kinds, key=["snapshots", "index", "data"].index)
    assert r.snapshots_removed == 1 and r.objects_removed == len(gone)
    assert contents(dest) == contents(source.backend)
    copy = open_copy(dest, tmp_path)
    assert [s.id for s in copy.list_snapshots()] == [second.id]
    assert_intact(copy)
    copy.close()


def test_removals_wait_while_someone_uses_the_copy(source):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    [first, _second] = source.list_snapshots()
    source.backend.remove("snapshots", first.id)
    with locks.session(dest, "restore") as reader:
        r = copy_store(source.backend, dest)
        assert r.objects_removed == 0 and reader.describe() in r.postponed
        assert dest.exists("snapshots", first.id)
    r = copy_store(source.backend, dest)
    assert r.snapshots_removed == 1 and not r.postponed


def test_a_sync_with_nothing_to_remove_does_not_ask_who_uses_the_copy(source):
    """Its end costs no listing of the sessions (round trips to a far home), and says
    nothing is postponed even while someone uses the copy."""
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    rec = Recorder(dest)
    with locks.session(dest, "restore"):
        real_list = rec.list
        listed: list[str] = []
        rec.list = lambda kind: listed.append(kind) or real_list(kind)  # type: ignore[method-assign]
        r = copy_store(source.backend, rec)
    assert r.ok and r.objects_removed == 0 and not r.postponed
    assert listed.count("locks") == 1  # once, at the start, for the stale sessions
    assert "locks" not in listed[listed.index("keys") :]  # and not again at the end


def test_a_source_emptied_of_snapshots_does_not_empty_the_copy(source):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    for name, _s in list(source.backend.list("snapshots")):
        source.backend.remove("snapshots", name)
    assert collect_garbage(source).done
    r = copy_store(source.backend, dest)
    assert r.objects_removed == 0 and "forget" in r.postponed
    assert len(list(dest.list("snapshots"))) == 2


def test_a_new_passphrase_reaches_the_copy_and_the_old_one_stops_opening_it(source, tmp_path):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    [old] = [n for n, _s in source.backend.list("keys")]
    add_key(source.backend, source.crypto.key, b"a new passphrase", key_params(source.backend))
    source.backend.remove("keys", old)
    r = copy_store(source.backend, dest)
    assert r.objects_removed == 1
    assert sizes(dest, ("keys",)) == sizes(source.backend, ("keys",))
    copy = make_repository(dest, passphrase=b"a new passphrase", cache_dir=str(tmp_path / "c"))
    assert len(copy.list_snapshots()) == 2
    copy.close()


def test_key_files_stay_when_the_source_has_none(source):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    [key] = [n for n, _s in source.backend.list("keys")]
    source.backend.remove("keys", key)  # an accident at the source
    r = copy_store(source.backend, dest)
    assert r.objects_removed == 0 and dest.exists("keys", key)


def test_another_store_is_refused_and_left_as_it_is(source):
    other = make_repository()
    before = contents(other.backend)
    with pytest.raises(StoreError, match="holds another store"):
        copy_store(source.backend, other.backend)
    assert contents(other.backend) == before
    other.close()


def test_a_directory_holding_something_else_is_refused(source, tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        copy_store(source.backend, LocalBackend(str(tmp_path / "dest")))
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["notes.txt"]


def test_a_copy_in_a_directory_restores(source, tmp_path):
    dest = LocalBackend(str(tmp_path / "absent" / "copy"))
    r = copy_store(source.backend, dest)
    assert r.created and r.snapshots_copied == 2
    assert contents(dest) == contents(source.backend)
    assert list((tmp_path / "absent" / "copy" / "tmp").iterdir()) == []
    copy = open_copy(LocalBackend(str(tmp_path / "absent" / "copy")), tmp_path)
    assert_intact(copy)
    copy.close()


def test_an_interrupted_gc_in_the_copy_stops_the_sync(source):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    dest.write("gc", "state", b"sealed state")
    with pytest.raises(StoreError, match="gc .* was interrupted"):
        copy_store(source.backend, dest)


def test_large_packs_stream_in_pieces(source, monkeypatch):
    monkeypatch.setattr(transfer, "PIECE", 64 * 1024)
    src = Recorder(source.backend)
    dest = MemoryBackend()
    r = copy_store(src, dest, SyncOptions(threads=3))
    assert contents(dest) == contents(source.backend)
    biggest = max(s for _n, s in source.backend.list("data"))
    assert biggest > 10 * transfer.PIECE
    assert src.reads >= r.bytes_sent // transfer.PIECE  # many ranges, not whole objects


def test_a_damaged_pack_is_not_copied_and_the_rest_is(source, tmp_path):
    [pack, *_] = sorted(n for n, _s in source.backend.list("data"))
    data = bytearray(source.backend.objects[("data", pack)])
    data[100] ^= 1
    source.backend.objects[("data", pack)] = bytes(data)
    dest = MemoryBackend()
    r = copy_store(source.backend, dest)
    assert not r.ok and r.damaged == [f"data/{pack}"]
    assert not dest.exists("data", pack)
    assert r.snapshots_copied == 2  # as restorable as at the source: no less
    assert sizes(dest).keys() == sizes(source.backend).keys() - {("data", pack)}


def test_a_damaged_index_object_holds_back_new_snapshots(source):
    [index, *_] = sorted(n for n, _s in source.backend.list("index"))
    source.backend.objects[("index", index)] = b"rotten"
    dest = MemoryBackend()
    r = copy_store(source.backend, dest)
    assert r.damaged == [f"index/{index}"] and "repair-index" in r.held_back
    assert list(dest.list("snapshots")) == []  # its packs would look unindexed there


def test_a_large_damaged_object_leaves_nothing_behind(source, monkeypatch):
    monkeypatch.setattr(transfer, "PIECE", 64 * 1024)
    [pack, *_] = sorted(n for n, _s in source.backend.list("data"))
    data = bytearray(source.backend.objects[("data", pack)])
    data[-1] ^= 1  # found only at the very end of the stream
    source.backend.objects[("data", pack)] = bytes(data)
    dest = MemoryBackend()
    dest.create()
    with pytest.raises(IntegrityError, match="does not match its name"):
        transfer.copy_object(source.backend, dest, "data", pack, len(data))
    assert not dest.exists("data", pack)


def test_objects_that_vanish_at_the_source_make_it_list_again(source):
    class Gc(Recorder):
        """The first read of a pack finds it gone, as after a gc of the source."""

        vanished = False

        def read(self, kind, name):
            if kind == "data" and not self.vanished:
                Gc.vanished = True
                raise FileNotFoundError(name)
            return super().read(kind, name)

    dest = Recorder(MemoryBackend())
    r = copy_store(Gc(source.backend), dest)
    assert r.ok and r.snapshots_copied == 2
    assert contents(dest.inner) == contents(source.backend)

    class Churning(Recorder):
        def read(self, kind, name):
            if kind == "data":
                raise FileNotFoundError(name)
            return super().read(kind, name)

    fresh = MemoryBackend()
    with pytest.raises(BackendError, match="kept changing"):
        copy_store(Churning(source.backend), fresh)
    assert list(fresh.list("snapshots")) == []


def test_a_sync_of_chosen_snapshots(source, tmp_path):
    [first, second] = source.list_snapshots()
    dest = MemoryBackend()
    r = copy_store(
        source.backend, dest, SyncOptions(snapshots=(first.id[:10],)), open_source=lambda: source
    )
    assert r.snapshots_copied == 1
    assert [n for n, _s in dest.list("snapshots")] == [first.id]
    assert r.bytes_sent < 0.7 * sum(s for _k, s in sizes(source.backend).items())
    copy = open_copy(dest, tmp_path)
    assert_intact(copy)  # every pack its index names is there
    assert (
        restore_files(copy, first, tmp_path / "out")["f0"] == (tmp_path / "a" / "f0").read_bytes()
    )
    copy.close()
    # a partial sync removes nothing; a full one brings the rest
    later = copy_store(source.backend, dest)
    assert later.snapshots_copied == 1 and later.objects_removed == 0
    assert contents(dest) == contents(source.backend)
    with pytest.raises(ValueError, match="key"):
        copy_store(source.backend, MemoryBackend(), SyncOptions(snapshots=(second.id,)))


def test_a_snapshot_that_does_not_exist_is_named(source):
    from isidorus.backup.errors import SnapshotNotFound

    dest = MemoryBackend()
    with pytest.raises(SnapshotNotFound, match="no snapshot 'beef'"):
        copy_store(
            source.backend, dest, SyncOptions(snapshots=("beef",)), open_source=lambda: source
        )
    assert dest.objects == {}  # nothing was made


def test_a_copy_of_an_unencrypted_store(tmp_path):
    repo = make_repository(encrypted=False)
    make_files(tmp_path / "a", [100_000], seed=4)
    snap = backup(repo, tmp_path / "a")
    dest = MemoryBackend()
    r = copy_store(repo.backend, dest)
    assert r.created and list(dest.list("keys")) == []
    copy = make_repository(dest, encrypted=False, cache_dir=str(tmp_path / "c"))
    assert restore_files(copy, snap, tmp_path / "out") == {
        "f0": (tmp_path / "a" / "f0").read_bytes()
    }
    copy.close()
    repo.close()


def test_cheap_kdf_is_kept_by_the_copy(source):
    dest = MemoryBackend()
    copy_store(source.backend, dest)
    assert key_params(dest) == CHEAP_KDF


def test_a_copy_in_an_s3_bucket(source, tmp_path, s3_env):
    """The same engine over another kind of store: it only speaks the Backend protocol."""
    from isidorus.backup.remote.s3 import S3Backend
    from isidorus.backup.scrub import repair_objects, scrub_store

    dest = S3Backend(f"s3://{s3_env.bucket_name()}/copies/home")
    r = copy_store(source.backend, dest, SyncOptions(threads=4))
    assert r.created and r.snapshots_copied == 2
    assert contents(dest) == contents(source.backend)
    make_files(tmp_path / "c", [100_000], seed=9)
    backup(source, tmp_path / "c")
    assert copy_store(source.backend, dest).snapshots_copied == 1
    assert scrub_store(dest).ok
    pack = sorted(n for n, _s in dest.list("data"))[0]
    dest.remove("data", pack)  # lost: a repair from the original puts it back
    assert repair_objects(dest, source.backend, [f"data/{pack}"]) == ([f"data/{pack}"], [])
    copy = open_copy(dest, tmp_path)
    assert len(copy.list_snapshots()) == 3
    assert_intact(copy)
    copy.close()
