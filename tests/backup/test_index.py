import hashlib
import threading

import pytest

from isidorus.backup.index import IndexCache, Location
from isidorus.backup.pack import DATA, TREE, BlobEntry


def _id(i):
    return hashlib.sha256(b"blob %d" % i).digest()


def _pack(i):
    return hashlib.sha256(b"pack %d" % i).hexdigest()


def _entries(first, n, btype=DATA):
    return [BlobEntry(btype, _id(first + k), 100 * k, 90, 200, 1) for k in range(n)]


@pytest.fixture
def cache(tmp_path):
    c = IndexCache(str(tmp_path / "cache" / "index.sqlite"))
    yield c
    c.close()


def test_add_and_lookup(cache):
    cache.add("idx1", [(_pack(1), _entries(0, 3)), (_pack(2), _entries(3, 2, TREE))])
    assert cache.lookup(_id(1)) == Location(_pack(1), 100, 90, 200, 1, DATA)
    assert cache.lookup(_id(4)) == Location(_pack(2), 100, 90, 200, 1, TREE)
    assert cache.lookup(_id(99)) is None
    assert cache.count() == 5
    assert cache.packs() == {_pack(1): 3, _pack(2): 2}
    assert cache.known_files().keys() == {"idx1"}
    assert sorted((p, e.id) for p, e in cache.entries_of_file("idx1")) == sorted(
        [(_pack(1), _id(k)) for k in range(3)] + [(_pack(2), _id(k)) for k in (3, 4)]
    )


def test_add_twice_is_a_no_op(cache):
    cache.add("idx1", [(_pack(1), _entries(0, 3))])
    cache.add("idx1", [(_pack(1), _entries(0, 3)), (_pack(2), _entries(10, 1))])
    assert cache.count() == 3
    assert cache.lookup(_id(10)) is None


def test_a_blob_in_two_packs(cache):
    cache.add("idx1", [(_pack(1), _entries(0, 2))])
    cache.add("idx2", [(_pack(2), _entries(1, 1))])
    assert {loc.pack for loc in cache.lookup_all(_id(1))} == {_pack(1), _pack(2)}
    assert cache.lookup(_id(1)).pack in {_pack(1), _pack(2)}
    assert [loc.pack for loc in cache.lookup_all(_id(0))] == [_pack(1)]


def test_sync_follows_the_store(cache):
    store = {
        "a": [(_pack(1), _entries(0, 2))],
        "b": [(_pack(2), _entries(2, 2))],
        "c": [(_pack(3), _entries(4, 2))],
    }
    loaded = []

    def load(name):
        loaded.append(name)
        return store[name]

    cache.sync({"a", "b"}, load)
    assert sorted(loaded) == ["a", "b"]
    assert cache.count() == 4
    # gc replaced `a` by `c`: c is read, a's blobs vanish, b is not read again
    cache.sync({"b", "c"}, load)
    assert sorted(loaded) == ["a", "b", "c"]
    assert cache.known_files().keys() == {"b", "c"}
    assert cache.lookup(_id(0)) is None and cache.lookup(_id(1)) is None
    assert cache.lookup(_id(2)).pack == _pack(2)
    assert cache.lookup(_id(5)).pack == _pack(3)
    assert set(cache.packs()) == {_pack(2), _pack(3)}
    cache.sync(set(), load)
    assert cache.count() == 0 and cache.known_files() == {}


def test_sync_keeps_a_blob_still_named_by_another_index(cache):
    cache.add("old", [(_pack(1), _entries(0, 2))])
    cache.add("new", [(_pack(2), _entries(1, 1))])
    cache.sync({"new"}, lambda name: [])
    assert [loc.pack for loc in cache.lookup_all(_id(1))] == [_pack(2)]
    assert cache.lookup(_id(0)) is None


def test_usable_and_condemned(cache):
    cache.add("idx", [(_pack(1), _entries(0, 4))])
    assert all(cache.usable(_id(k)) for k in range(4))
    assert not cache.usable(_id(50))
    assert not cache.has_condemned and cache.condemned_epoch() == ""
    cache.set_condemned("e1", [_id(1), _id(3), _id(50)])
    assert cache.has_condemned and cache.condemned_epoch() == "e1"
    assert [cache.usable(_id(k)) for k in range(4)] == [True, False, True, False]
    assert cache.lookup(_id(1)) is not None  # condemned blobs can still be read
    cache.set_condemned("e2", [_id(0)])
    assert [cache.usable(_id(k)) for k in range(4)] == [False, True, True, True]
    cache.set_condemned("", [])
    assert not cache.has_condemned and cache.condemned_epoch() == ""
    assert all(cache.usable(_id(k)) for k in range(4))


def test_cache_persists_and_reopens(tmp_path):
    path = str(tmp_path / "c" / "index.sqlite")
    c = IndexCache(path)
    c.add("idx", [(_pack(1), _entries(0, 2))])
    c.set_condemned("ep", [_id(0)])
    c.close()
    c = IndexCache(path)
    try:
        assert c.known_files().keys() == {"idx"}
        assert c.has_condemned and c.condemned_epoch() == "ep"
        assert not c.usable(_id(0)) and c.usable(_id(1))
    finally:
        c.close()


def test_write_rolls_back_on_error(cache):
    with pytest.raises(RuntimeError), cache.write() as db:
        db.execute("INSERT INTO index_files (name) VALUES ('half')")
        raise RuntimeError
    assert cache.known_files() == {}


def test_threads_share_the_cache(cache):
    errors = []

    def add(i):
        try:
            cache.add(f"idx{i}", [(_pack(i), _entries(10 * i, 10))])
            for k in range(10 * i, 10 * i + 10):
                assert cache.lookup(_id(k)) is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.count() == 60
    assert len(cache.known_files()) == 6


@pytest.mark.parametrize("where", ["file", ":memory:"])
def test_one_thread_writes_while_another_reads(tmp_path, where):
    cache = IndexCache(str(tmp_path / "c" / "index.sqlite") if where == "file" else where)
    cache.add("idx1", [(_pack(1), _entries(0, 1))])
    looked, go = threading.Event(), threading.Event()
    seen, errors = [], []

    def reader():
        try:
            seen.append(cache.lookup(_id(0)))
            looked.set()
            go.wait(10)
            seen.append(cache.lookup(_id(1)))
        except BaseException as exc:
            errors.append(exc)
            looked.set()

    t = threading.Thread(target=reader)
    t.start()
    try:
        looked.wait(10)
        cache.add("idx2", [(_pack(2), _entries(1, 1))])  # while the reader is mid-way
    finally:
        go.set()
        t.join()
        cache.close()
    assert errors == []
    assert seen[0] is not None and seen[0].pack == _pack(1)
    assert seen[1] is not None and seen[1].pack == _pack(2)


@pytest.mark.parametrize("where", ["file", ":memory:"])
def test_a_backup_with_the_index_cache(tmp_path, where):
    from isidorus.backup.archiver import BackupOptions, create_snapshot
    from isidorus.backup.testing import make_repository

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"some bytes" * 1000)
    repo = make_repository(cache_dir=str(tmp_path / "cache") if where == "file" else where)
    try:
        result = create_snapshot(repo, BackupOptions(paths=(str(src),), threads=2))
        assert result.files == 1 and result.bytes_read == 10000
    finally:
        repo.close()
