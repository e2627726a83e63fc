"""scrub: every object checked against its name without the key; repairs from another
copy, without the key too; and verify's repairs, with it."""

import pytest

from isidorus.backup.errors import StoreError
from isidorus.backup.remote.memory import MemoryBackend
from isidorus.backup.scrub import repair_objects, scrub_store
from isidorus.backup.sync import copy_store
from isidorus.backup.testing import make_repository
from isidorus.backup.verify import VerifyOptions, repair_from_copy, verify_store

from .copies import Recorder, assert_intact, backup, contents, make_files, open_copy


@pytest.fixture
def pair(tmp_path):
    """A store with two snapshots and a copy of it (made by sync): (store, copy backend)."""
    repo = make_repository()
    make_files(tmp_path / "a", [300_000, 5_000], seed=1)
    make_files(tmp_path / "b", [200_000], seed=2)
    backup(repo, tmp_path / "a")
    backup(repo, tmp_path / "b")
    copy = MemoryBackend("memory:copy")
    copy_store(repo.backend, copy)
    yield repo, copy
    repo.close()


def flip(backend, kind, name, offset=None):
    data = bytearray(backend.objects[(kind, name)])
    data[len(data) // 2 if offset is None else offset] ^= 0x40
    backend.objects[(kind, name)] = bytes(data)


def first(backend, kind):
    return sorted(n for n, _s in backend.list(kind))[0]


@pytest.mark.parametrize("kind", ["data", "index", "snapshots", "keys"])
def test_a_flipped_byte_is_found_without_the_key_and_repaired_from_the_copy(pair, kind):
    repo, copy = pair
    store = repo.backend
    name = first(store, kind)
    good = store.read(kind, name)
    flip(store, kind, name)
    total = sum(1 for k in ("keys", "snapshots", "index", "data") for _ in store.list(k))

    report = scrub_store(store)  # the backend alone: no key, no passphrase
    assert not report.ok
    assert report.damaged == [
        {
            "object": f"{kind}/{name}",
            "problem": "does not match its name (damaged or tampered with)",
        }
    ]
    assert report.missing == [] and report.objects_checked == total

    repaired, failed = repair_objects(store, copy, report.problems())
    assert (repaired, failed) == ([f"{kind}/{name}"], [])
    assert store.read(kind, name) == good
    assert scrub_store(store).ok
    assert_intact(repo)


def test_an_object_damaged_in_both_copies_is_reported_as_not_repairable(pair):
    repo, copy = pair
    pack, index = first(repo.backend, "data"), first(repo.backend, "index")
    flip(repo.backend, "data", pack)
    flip(copy, "data", pack, offset=7)
    flip(repo.backend, "index", index)
    report = scrub_store(repo.backend)
    repaired, failed = repair_objects(repo.backend, copy, report.problems())
    assert repaired == [f"index/{index}"]
    assert failed == [{"object": f"data/{pack}", "problem": "it is damaged in memory:copy too"}]
    after = scrub_store(repo.backend)
    assert [p["object"] for p in after.damaged] == [f"data/{pack}"]


def test_an_object_the_other_copy_lacks_is_reported(pair):
    repo, copy = pair
    snap = first(repo.backend, "snapshots")
    flip(repo.backend, "snapshots", snap)
    copy.remove("snapshots", snap)
    report = scrub_store(repo.backend)
    repaired, failed = repair_objects(repo.backend, copy, report.problems())
    assert repaired == []
    assert failed == [{"object": f"snapshots/{snap}", "problem": "memory:copy does not have it"}]


def test_a_damaged_config_is_found_and_repaired(pair):
    repo, copy = pair
    raw = repo.backend.read("config", "config")
    repo.backend.objects[("config", "config")] = raw.replace(b'"zstd"', b'"zstf"')
    report = scrub_store(repo.backend)
    assert [p["object"] for p in report.damaged] == ["config"]
    assert report.store_id == repo.id  # still readable in the damaged text
    repaired, failed = repair_objects(repo.backend, copy, report.problems())
    assert repaired == ["config"] and failed == []
    assert repo.backend.read("config", "config") == raw


def test_missing_key_files_are_found_and_put_back(pair):
    repo, copy = pair
    for name, _s in list(repo.backend.list("keys")):
        repo.backend.remove("keys", name)
    report = scrub_store(repo.backend)
    assert [p["object"] for p in report.missing] == ["keys"]
    repaired, failed = repair_objects(repo.backend, copy, report.problems())
    assert repaired == ["keys"] and failed == []
    assert contents(repo.backend) == contents(copy)


def test_a_missing_pack_of_an_unencrypted_store_is_found(tmp_path):
    repo = make_repository(encrypted=False)
    make_files(tmp_path / "a", [100_000], seed=3)
    backup(repo, tmp_path / "a")
    copy = MemoryBackend()
    copy_store(repo.backend, copy)
    pack = first(repo.backend, "data")
    repo.backend.remove("data", pack)
    report = scrub_store(repo.backend)
    assert report.missing == [
        {"object": f"data/{pack}", "problem": "named by the index, but missing"}
    ]
    assert repair_objects(repo.backend, copy, report.problems()) == ([f"data/{pack}"], [])
    assert scrub_store(repo.backend).ok
    repo.close()


def test_a_backend_without_replace_repairs_by_remove_then_write(pair):
    repo, copy = pair
    pack = first(repo.backend, "data")
    flip(repo.backend, "data", pack)
    plain = Recorder(repo.backend)  # offers no `replace`
    repaired, failed = repair_objects(plain, copy, scrub_store(plain).problems())
    assert repaired == [f"data/{pack}"] and failed == []
    assert plain.removed == [("data", pack)] and plain.written == [("data", pack)]
    assert scrub_store(repo.backend).ok


def test_a_store_that_does_not_take_the_repair_says_so(pair):
    repo, copy = pair

    class AppendOnly(Recorder):
        def remove(self, kind, name):
            pass  # removals are only queued there

    pack = first(repo.backend, "data")
    flip(repo.backend, "data", pack)
    store = AppendOnly(repo.backend)
    repaired, failed = repair_objects(store, copy, scrub_store(store).problems())
    assert repaired == [] and "did not take" in failed[0]["problem"]


def test_scrub_of_a_place_without_a_store(tmp_path):
    with pytest.raises(StoreError, match="not an isidorus store"):
        scrub_store(MemoryBackend())


def test_a_stray_file_is_reported(pair):
    repo, _copy = pair
    repo.backend.write("snapshots", "notes.txt", b"hello")
    report = scrub_store(repo.backend)
    assert report.damaged == [
        {
            "object": "snapshots/notes.txt",
            "problem": "is not named by a hash: not an object of the store",
        }
    ]


# -- verify, with the key


def test_verify_repairs_damaged_and_missing_objects_from_the_copy(pair, tmp_path):
    repo, copy = pair
    pack = first(repo.backend, "data")
    flip(repo.backend, "data", pack)
    snap = first(repo.backend, "snapshots")
    flip(repo.backend, "snapshots", snap)
    before = verify_store(repo, VerifyOptions(threads=2))
    assert not before.ok
    assert sorted(before.objects) == sorted([f"data/{pack}", f"snapshots/{snap}"])

    report = repair_from_copy(repo, copy, before, VerifyOptions(threads=2))
    assert sorted(report.repaired) == sorted(before.objects) and report.not_repaired == []
    assert report.ok and report.after.ok
    assert contents(repo.backend) == contents(copy)


def test_verify_finds_a_lost_pack_and_index_in_the_copy(pair):
    repo, copy = pair
    pack = first(repo.backend, "data")
    index = [
        n
        for n, _s in repo.backend.list("index")
        if pack in {p for p, _e in repo.load_index_file(n)}
    ]
    repo.backend.remove("data", pack)
    for n in index:
        repo.backend.remove("index", n)
    repo.refresh_index()
    before = verify_store(repo, VerifyOptions(threads=2))
    assert not before.ok and before.missing_blobs and before.objects == []

    other = make_repository(copy, cache_dir=":memory:")
    report = repair_from_copy(
        repo, copy, before, VerifyOptions(threads=2), open_other=lambda: other
    )
    assert sorted(report.repaired) == sorted([f"data/{pack}", *(f"index/{n}" for n in index)])
    assert report.ok


def test_verify_names_what_neither_copy_has(pair):
    repo, copy = pair
    pack = first(repo.backend, "data")
    flip(repo.backend, "data", pack)
    copy.remove("data", pack)
    before = verify_store(repo, VerifyOptions(threads=2))
    report = repair_from_copy(repo, copy, before, VerifyOptions(threads=2))
    assert not report.ok
    assert report.not_repaired == [
        {"object": f"data/{pack}", "problem": "memory:copy does not have it"}
    ]


def test_verify_repairs_only_from_a_copy_of_the_same_store(pair, tmp_path):
    repo, _copy = pair
    flip(repo.backend, "data", first(repo.backend, "data"))
    stranger = make_repository()
    before = verify_store(repo, VerifyOptions(threads=2))
    with pytest.raises(StoreError, match="another store"):
        repair_from_copy(repo, stranger.backend, before, VerifyOptions(threads=2))
    stranger.close()


def test_the_repaired_copy_restores(pair, tmp_path):
    repo, copy = pair
    pack = first(copy, "data")
    flip(copy, "data", pack)
    report = scrub_store(copy)
    assert repair_objects(copy, repo.backend, report.problems())[1] == []
    other = open_copy(copy, tmp_path)
    assert_intact(other)
    other.close()
