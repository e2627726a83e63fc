"""Bad input, hostile conditions and damaged stores: each fails with one line that names
the cause and an exit code other than 0, never a traceback, and leaves the store as it was."""

from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    KDF,
    Isidorus,
    assert_intact,
    assert_one_line_error,
    assert_restores,
    create,
    init_store,
    make_sample_tree,
    manifest,
    packs,
    restored,
    sha256_file,
    snapshots,
    store_files,
    store_litter,
    write_random,
)

# every command that takes a STORE, with what else it needs ({t}: a scratch path)
STORE_COMMANDS = {
    "list": ("list", "{s}"),
    "create": ("create", "{s}", "{src}"),
    "ls": ("ls", "{s}", "latest"),
    "cat": ("cat", "{s}", "latest", "/x"),
    "diff": ("diff", "{s}", "latest", "latest"),
    "restore": ("restore", "{s}", "latest", "{t}"),
    "verify": ("verify", "{s}"),
    "prune": ("prune", "{s}", "--keep-last", "1"),
    "gc": ("gc", "{s}"),
    "unlock": ("unlock", "{s}"),
    "change-passphrase": ("key", "change-passphrase", "{s}"),
    "export": ("key", "export", "{s}", "{t}"),
}


def command(name: str, store: Path, src: Path, scratch: Path) -> list[str]:
    return [
        a.format(s=store, src=src, t=scratch / "out") for a in ("backup", *STORE_COMMANDS[name])
    ]


# -- stores that are not there


@pytest.mark.parametrize("name", list(STORE_COMMANDS))
def test_missing_store(run, tmp_path, name):
    missing = tmp_path / "no" / "store"
    src = make_sample_tree(tmp_path / "src")
    r = run(
        *command(name, missing, src, tmp_path), check=False, env={"ISIDORUS_NEW_PASSPHRASE": "n"}
    )
    line = assert_one_line_error(r, str(missing))
    assert "does not exist" in line or "not an isidorus store" in line
    assert not (tmp_path / "no").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", list(STORE_COMMANDS))
def test_empty_directory_is_not_a_store(run, tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    src = make_sample_tree(tmp_path / "src")
    r = run(*command(name, empty, src, tmp_path), check=False, env={"ISIDORUS_NEW_PASSPHRASE": "n"})
    assert_one_line_error(r, str(empty), "not an isidorus store")
    assert os.listdir(empty) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", list(STORE_COMMANDS))
def test_regular_file_is_not_a_store(run, tmp_path, name):
    f = tmp_path / "file"
    f.write_text("just a file\n")
    src = make_sample_tree(tmp_path / "src")
    r = run(*command(name, f, src, tmp_path), check=False, env={"ISIDORUS_NEW_PASSPHRASE": "n"})
    line = assert_one_line_error(r, str(f))
    assert "does not exist" not in line
    assert "not an isidorus store" in line or "not a directory" in line.lower()
    assert f.read_text() == "just a file\n"


# -- passphrases


@pytest.fixture
def used_store(run, store, tmp_path):
    """A store with one snapshot of a sample tree."""
    src = make_sample_tree(tmp_path / "used-src")
    create(run, store, src)
    return store


@pytest.mark.parametrize(
    "args",
    [
        ("list", "{s}"),
        ("create", "{s}", "{src}"),
        ("restore", "{s}", "latest", "{t}"),
        ("verify", "{s}"),
        ("prune", "{s}", "--keep-last", "1"),
        ("gc", "{s}"),
        ("key", "export", "{s}", "{t}"),
        ("key", "change-passphrase", "{s}"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_wrong_passphrase(run, used_store, tmp_path, args):
    before = store_files(used_store)
    argv = [a.format(s=used_store, src=tmp_path / "used-src", t=tmp_path / "out") for a in args]
    r = run(
        "backup",
        *argv,
        env={"ISIDORUS_PASSPHRASE": "not the passphrase", "ISIDORUS_NEW_PASSPHRASE": "new"},
        check=False,
    )
    assert_one_line_error(r, "wrong passphrase")
    assert r.code == 1
    assert store_files(used_store) == before
    assert not (tmp_path / "out").exists()
    assert_intact(run, used_store)


def test_no_passphrase_and_no_terminal(run, used_store, tmp_path):
    before = store_files(used_store)
    no_env = {"ISIDORUS_PASSPHRASE": None}
    for args in (("list", used_store), ("create", used_store, tmp_path / "used-src")):
        r = run("backup", *args, env=no_env, check=False)
        line = assert_one_line_error(r, "no passphrase", "ISIDORUS_PASSPHRASE", "--passphrase-file")
        assert r.code == 2, line
    r = run("backup", "init", tmp_path / "new", *KDF, env=no_env, check=False)
    assert_one_line_error(r, "no passphrase")
    assert not (tmp_path / "new").exists()
    assert store_files(used_store) == before


def test_empty_or_unreadable_passphrase(run, used_store, tmp_path):
    r = run("backup", "list", used_store, env={"ISIDORUS_PASSPHRASE": ""}, check=False)
    assert_one_line_error(r, "passphrase is empty")
    r = run("backup", "init", tmp_path / "new", *KDF, env={"ISIDORUS_PASSPHRASE": ""}, check=False)
    assert_one_line_error(r, "passphrase is empty")
    assert not (tmp_path / "new").exists()
    missing = tmp_path / "no-such-file"
    r = run("backup", "list", used_store, "--passphrase-file", missing, check=False)
    assert_one_line_error(r, "cannot read the passphrase file", str(missing))
    empty = tmp_path / "empty-file"
    empty.write_text("\n")
    r = run("backup", "list", used_store, "--passphrase-file", empty, check=False)
    assert_one_line_error(r, "passphrase is empty")


# -- init


def test_init_on_an_existing_store(run, used_store):
    before = store_files(used_store)
    for extra in ((), ("--encryption", "none")):
        r = run("backup", "init", used_store, *KDF, *extra, check=False)
        assert_one_line_error(r, "already exists", str(used_store))
    assert store_files(used_store) == before
    assert len(snapshots(run, used_store)) == 1


def test_init_into_a_directory_that_holds_other_files(run, tmp_path):
    d = make_sample_tree(tmp_path / "busy")
    before = manifest(d)
    r = run("backup", "init", d, *KDF, check=False)
    assert_one_line_error(r, str(d), "not empty")
    assert manifest(d) == before


def test_usage_errors_name_the_problem(run, store):
    for args, words in (
        (("init", store, "--encryption", "rot13"), "--encryption"),
        (("prune", store, "--keep-last", "-1"), "--keep-last"),
        (("list",), "STORE"),
        (("init", store, "--kdf-memory", "1"), "--kdf-memory"),
    ):
        r = run("backup", *args, check=2)
        assert words in r.err
        assert r.err.startswith("isidorus: error:") and r.err.count("\n") == 1


# -- create


def test_missing_source_path(run, used_store, tmp_path):
    before = store_files(used_store)
    missing = tmp_path / "not-here"
    r = run("backup", "create", used_store, missing, check=False)
    assert_one_line_error(r, str(missing), "does not exist")
    assert r.code == 2
    # also among paths that exist: nothing is saved
    r = run("backup", "create", used_store, tmp_path / "used-src", missing, check=False)
    assert_one_line_error(r, "does not exist")
    assert store_files(used_store) == before
    assert len(snapshots(run, used_store)) == 1


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "", "12:00", "2026-01-01T25:00Z"],
)
def test_bad_time(run, used_store, tmp_path, value):
    before = store_files(used_store)
    r = run("backup", "create", used_store, tmp_path / "used-src", "--time", value, check=False)
    assert_one_line_error(r, "--time", "ISO 8601")
    assert r.code == 2
    assert store_files(used_store) == before


@pytest.mark.parametrize(
    "args",
    [
        ("{src}", "--image", "{img}"),
        ("{src}", "--stdin", "x.sql"),
        ("--image", "{img}", "--stdin", "x.sql"),
        (),
    ],
    ids=["path+image", "path+stdin", "image+stdin", "nothing"],
)
def test_create_needs_exactly_one_source(run, used_store, tmp_path, args):
    img = tmp_path / "disk.img"
    img.write_bytes(b"\1" * 4096)
    before = store_files(used_store)
    argv = [a.format(src=tmp_path / "used-src", img=img) for a in args]
    r = run("backup", "create", used_store, *argv, input=b"some input", check=False)
    assert_one_line_error(r, "exactly one")
    assert r.code == 2
    assert store_files(used_store) == before


def test_bad_image_and_stdin_sources(run, used_store, tmp_path):
    before = store_files(used_store)
    for args, words in (
        (("--image", tmp_path / "no.img"), ("no.img", "does not exist")),
        (("--image", tmp_path / "used-src"), ("used-src", "directory")),
        (("--stdin", "a/b.sql"), ("a/b.sql", "not a valid file name")),
        (("--stdin", ".."), ("not a valid file name",)),
        (
            (tmp_path / "used-src", tmp_path / "used-src" / "docs"),
            ("docs", "inside another path"),
        ),
    ):
        r = run("backup", "create", used_store, *args, input=b"data", check=False)
        assert_one_line_error(r, *words)
    assert store_litter(used_store) == []
    assert [p for p in store_files(used_store) if p.startswith("snapshots/")] == [
        p for p in before if p.startswith("snapshots/")
    ]
    assert_intact(run, used_store)


# -- snapshots and paths that are not there


def _ids(run: Isidorus, store: Path) -> list[str]:
    return [s["id"] for s in snapshots(run, store)]


def test_snapshot_that_does_not_exist(run, used_store, tmp_path):
    [sid] = _ids(run, used_store)
    unused = next(c for c in "0123456789abcdef" if c != sid[0])
    for ref in (unused * 64, unused):
        for args in (
            ("ls", used_store, ref),
            ("cat", used_store, ref, "/x"),
            ("restore", used_store, ref, tmp_path / "out"),
            ("diff", used_store, ref, "latest"),
            ("verify", used_store, "--snapshot", ref),
        ):
            r = run("backup", *args, check=False)
            assert_one_line_error(r, "no snapshot", repr(ref.lower()))
            assert r.code == 1
    assert not (tmp_path / "out").exists()


def test_latest_of_an_empty_store(run, store, tmp_path):
    for args in (("ls", store, "latest"), ("restore", store, "latest", tmp_path / "out")):
        r = run("backup", *args, check=False)
        assert_one_line_error(r, "no snapshot yet")
    assert not (tmp_path / "out").exists()


def test_ambiguous_prefix(run, store, tmp_path):
    by_first: dict[str, list[str]] = {}
    for i in range(17):  # 16 hex digits: the 17th snapshot shares a first digit at the latest
        doc = create(
            run, store, "--stdin", "n.txt", "--time", f"2026-01-01T00:00:{i:02d}Z", input=b"%d" % i
        )
        by_first.setdefault(doc["id"][0], []).append(doc["id"])
        if len(by_first[doc["id"][0]]) == 2:
            break
    prefix, (a, b) = next((k, v) for k, v in by_first.items() if len(v) == 2)
    shared = os.path.commonprefix([a, b])
    for ref in (prefix, shared):
        r = run("backup", "cat", store, ref, "/n.txt", check=False)
        assert_one_line_error(r, repr(ref), "matches 2 snapshots")
    # one more character settles it
    assert run("backup", "cat", store, a[: len(shared) + 1], "/n.txt").out != ""


def test_paths_that_are_not_in_the_snapshot(run, used_store, tmp_path):
    src = tmp_path / "used-src"
    for args in (
        ("cat", used_store, "latest", src / "nope.txt"),
        ("ls", used_store, "latest", src / "nope"),
        ("cat", used_store, "latest", src / "hello.txt" / "below"),
    ):
        r = run("backup", *args, check=False)
        assert_one_line_error(r, "is not in snapshot")
    r = run(
        "backup",
        "restore",
        used_store,
        "latest",
        tmp_path / "out",
        "--path",
        src / "nope",
        check=False,
    )
    assert_one_line_error(r, str(src / "nope"), "not in snapshot")
    assert not (tmp_path / "out").exists()


def test_cat_of_a_directory_or_special_file(run, used_store, tmp_path):
    src = tmp_path / "used-src"
    for p, kind in (
        (src, "dir"),
        (src / "docs", "dir"),
        (src / "fifo", "fifo"),
        (src / "link-to-hello", "symlink"),
    ):
        r = run("backup", "cat", used_store, "latest", p, check=False, text=False)
        assert_one_line_error(r, str(p), f"is a {kind}", "not a file")
        assert r.code == 2
        assert r.out == b""


def test_restore_into_a_non_empty_directory(run, used_store, tmp_path):
    target = make_sample_tree(tmp_path / "busy", seed=9)
    before = manifest(target)
    r = run("backup", "restore", used_store, "latest", target, check=False)
    assert_one_line_error(r, str(target), "not empty", "--overwrite")
    assert r.code == 2
    assert manifest(target) == before


def test_restore_onto_a_file(run, used_store, tmp_path):
    f = tmp_path / "file"
    f.write_text("mine\n")
    r = run("backup", "restore", used_store, "latest", f, check=False)
    assert_one_line_error(r, str(f), "not a directory")
    assert f.read_text() == "mine\n"


def test_restore_image_onto_an_existing_file(run, store, tmp_path):
    img = tmp_path / "disk.img"
    write_random(img, 100_000, random.Random(1))
    create(run, store, "--image", img)
    existing = tmp_path / "existing.img"
    existing.write_text("keep me\n")
    r = run("backup", "restore", store, "latest", existing, check=False)
    assert_one_line_error(r, str(existing), "exists", "--overwrite")
    assert existing.read_text() == "keep me\n"
    run("backup", "restore", store, "latest", existing, "--overwrite")
    assert sha256_file(existing) == sha256_file(img)


def test_prune_without_a_keep_rule(run, used_store):
    create(run, used_store, "--stdin", "x", input=b"x")
    before = _ids(run, used_store)
    for extra in ((), ("--keep-last", "0"), ("--dry-run",), ("--tag", "x")):
        r = run("backup", "prune", used_store, *extra, check=False)
        assert_one_line_error(r, "--keep")
        assert r.code == 2
    assert _ids(run, used_store) == before
    assert store_litter(used_store) == []


# -- the store's file system refuses


@pytest.mark.root
def test_permission_denied_on_the_store(run, used_store, tmp_path):
    before = store_files(used_store)
    dirs = [used_store, *(p for p in used_store.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o555)
    try:
        r = run(
            "backup", "create", used_store, tmp_path / "used-src", unprivileged=True, check=False
        )
        assert_one_line_error(r, "permission denied", str(used_store))
    finally:
        for d in dirs:
            d.chmod(0o755)
    assert store_files(used_store) == before
    assert_intact(run, used_store)


@pytest.mark.root
def test_permission_denied_on_the_data_folder(run, used_store, tmp_path):
    before_ids = _ids(run, used_store)
    data_dirs = [p for p in (used_store / "data").iterdir()]
    for d in data_dirs:
        d.chmod(0o555)
    src = tmp_path / "new-data"
    src.mkdir()
    write_random(src / "n.bin", 300_000, random.Random(3))
    try:
        r = run("backup", "create", used_store, src, unprivileged=True, check=False)
        assert_one_line_error(r, "permission denied", str(used_store / "data"))
    finally:
        for d in data_dirs:
            d.chmod(0o755)
    assert store_litter(used_store) == []  # the session ended, the partial write is gone
    assert _ids(run, used_store) == before_ids
    assert_intact(run, used_store)
    create(run, used_store, src)  # and once allowed, it works


@pytest.mark.root
def test_read_only_file_system(run, mounts, tmp_path):
    mnt = mounts.tmpfs("ro", size="8m")
    store = init_store(run, mnt / "store")
    src = make_sample_tree(tmp_path / "src")
    create(run, store, src)
    before = store_files(store)
    mounts.remount(mnt, "ro")
    r = run("backup", "create", store, src, check=False)
    assert_one_line_error(r, "read-only file system")
    mounts.remount(mnt, "rw")
    assert store_files(store) == before
    assert_intact(run, store)


@pytest.mark.root
def test_a_read_only_store_can_still_be_read(run, mounts, tmp_path):
    mnt = mounts.tmpfs("ro", size="8m")
    store = init_store(run, mnt / "store")
    src = make_sample_tree(tmp_path / "src")
    expected = manifest(src)
    create(run, store, src)
    mounts.remount(mnt, "ro")
    assert len(snapshots(run, store)) == 1
    assert_restores(run, store, "latest", src, expected, tmp_path)


@pytest.mark.root
def test_disk_full(run, mounts, tmp_path):
    small = mounts.tmpfs("small", size="3m")
    store = init_store(run, small / "store")
    src = make_sample_tree(tmp_path / "src")
    expected = manifest(src)
    first = create(run, store, src)
    big = tmp_path / "big"
    big.mkdir()
    write_random(big / "random.bin", 10 << 20, random.Random(10))
    r = run("backup", "create", store, big, check=False)
    assert_one_line_error(r, "disk full")
    assert store_litter(store) == []  # no session and no partial object left
    assert _ids(run, store) == [first["id"]]
    assert_intact(run, store)
    assert_restores(run, store, first["id"], src, expected, tmp_path)
    # the store stays usable: a small backup still fits
    (src / "hello.txt").write_text("after the disk filled up\n")
    expected = manifest(src)
    again = create(run, store, src)
    assert_restores(run, store, again["id"], src, expected, tmp_path)


# -- files that cannot be read


@pytest.mark.root
def test_unreadable_files_make_a_partial_snapshot(run, store, tmp_path):
    src = make_sample_tree(tmp_path / "src")
    secret = src / "docs" / "locked.txt"
    secret.write_text("no one may read this\n")
    secret.chmod(0o000)
    closed = src / "closed"
    closed.mkdir()
    (closed / "inside.txt").write_text("unreachable\n")
    closed.chmod(0o000)
    expected = manifest(src)
    r = run("backup", "create", store, src, "--json", unprivileged=True, check=3)
    doc = json.loads(r.out)
    assert doc["partial"] is True
    assert any(str(secret) in e for e in doc["errors"])
    assert any(str(closed) in e for e in doc["errors"])
    warnings = [line for line in r.err.splitlines() if line.startswith("warning:")]
    assert any(str(secret) in w and "ermission denied" in w for w in warnings), r.err
    assert "partial" in r.err.splitlines()[-1] and doc["short_id"] in r.err
    [listed] = snapshots(run, store)
    assert listed["id"] == doc["id"] and listed["partial"] is True
    assert any(str(secret) in e for e in listed["errors"])
    assert "(partial)" in run("backup", "list", store).out
    # everything else is there and whole
    secret.chmod(0o644)
    closed.chmod(0o755)
    lines = set(run("backup", "ls", store, "latest").out.splitlines())
    assert str(secret) not in lines
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    left_out = {"docs/locked.txt", "closed/inside.txt"}
    assert manifest(restored(target, src)) == {
        k: v for k, v in expected.items() if k not in left_out
    }
    assert_intact(run, store)


# -- damaged stores


@pytest.fixture
def damaged_setup(run, store, tmp_path):
    """Two snapshots; the second adds one big file, whose data is in one new pack."""
    src = tmp_path / "tsrc"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("first\n")
    write_random(src / "sub" / "small.bin", 20_000, random.Random(11))
    first_manifest = manifest(src)
    first = create(run, store, src)["id"]
    old_packs = packs(store)
    big = src / "sub" / "big.bin"
    write_random(big, 1_500_000, random.Random(12))
    second_manifest = manifest(src)
    second = create(run, store, src)["id"]
    [new_pack] = packs(store) - old_packs
    return {
        "src": src,
        "big": big,
        "first": first,
        "second": second,
        "first_manifest": first_manifest,
        "second_manifest": second_manifest,
        "pack": new_pack,
    }


def _verify(run: Isidorus, store: Path) -> dict[str, Any]:
    r = run("backup", "verify", store, "--json", check=False)
    assert r.code == 1, r
    report: dict[str, Any] = json.loads(r.out)
    return report


def test_damaged_pack_names_the_snapshot_and_file(run, store, damaged_setup, tmp_path):
    d = damaged_setup
    flip = d["pack"]
    data = bytearray(flip.read_bytes())
    data[len(data) // 3] ^= 0x01
    flip.write_bytes(bytes(data))

    report = _verify(run, store)
    assert report["ok"] is False
    assert [x["snapshot"] for x in report["damaged"]] == [d["second"]]
    assert report["damaged"][0]["files"] == [str(d["big"])]
    assert any(flip.name in e for e in report["errors"])
    text = run("backup", "verify", store, check=1).out
    assert f"damaged snapshot {d['second'][:8]}" in text
    assert f"  {d['big']}" in text.splitlines()
    assert d["first"][:8] not in text

    # restoring the damaged file fails loudly and never leaves wrong content behind
    target = tmp_path / "target"
    r = run("backup", "restore", store, d["second"], target, check=False)
    assert_one_line_error(r)
    assert "damaged" in r.err or "authentication" in r.err
    back = restored(target, d["src"]) / "sub" / "big.bin"
    assert not back.exists() or sha256_file(back) == sha256_file(d["big"])
    assert not [p for p in target.rglob("*") if ".isidorus-" in p.name]
    r = run("backup", "cat", store, d["second"], d["big"], check=False, text=False)
    assert r.code != 0
    assert d["big"].read_bytes().startswith(r.out)  # what came out before the damage is right
    assert "isidorus: error:" in r.err and len(r.err.splitlines()) == 1
    # the other snapshot is untouched
    assert_restores(run, store, d["first"], d["src"], d["first_manifest"], tmp_path)


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_truncated_or_missing_pack(run, store, damaged_setup, tmp_path, how):
    d = damaged_setup
    if how == "truncated":
        os.truncate(d["pack"], d["pack"].stat().st_size // 2)
    else:
        d["pack"].unlink()
    report = _verify(run, store)
    assert [x["snapshot"] for x in report["damaged"]] == [d["second"]]
    assert report["damaged"][0]["files"]
    assert any(d["pack"].name in e for e in report["errors"])
    r = run("backup", "restore", store, d["second"], tmp_path / "target", check=False)
    assert_one_line_error(r)
    assert_restores(run, store, d["first"], d["src"], d["first_manifest"], tmp_path)


@pytest.mark.parametrize("cache", ["fresh", "warm"])
def test_damaged_index(run, store, damaged_setup, tmp_path, cache):
    index = sorted((store / "index").iterdir(), key=lambda p: p.stat().st_mtime_ns)[-1]
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0x01
    index.write_bytes(bytes(data))
    env = {"ISIDORUS_CACHE_DIR": str(tmp_path / "fresh-cache")} if cache == "fresh" else {}
    r = run("backup", "verify", store, env=env, check=False)
    assert r.code == 1
    assert index.name in r.out + r.err
    assert "damaged" in r.out + r.err
    assert "Traceback" not in r.out + r.err


def test_damaged_snapshot_object(run, store, damaged_setup, tmp_path):
    d = damaged_setup
    snap = store / "snapshots" / d["second"]
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0x01
    snap.write_bytes(bytes(data))
    report = _verify(run, store)
    [bad] = report["damaged"]
    assert bad["snapshot"] == d["second"] and "does not match" in bad["reason"]
    r = run("backup", "restore", store, d["second"], tmp_path / "t", check=False)
    assert_one_line_error(r, d["second"][:8], "damaged")
    assert_restores(run, store, d["first"], d["src"], d["first_manifest"], tmp_path)


def test_damaged_snapshot_object_does_not_stop_new_backups(run, store, damaged_setup):
    d = damaged_setup
    snap = store / "snapshots" / d["second"]
    snap.write_bytes(snap.read_bytes()[:-1])
    create(run, store, d["src"])
    assert d["first"] in [s["id"] for s in snapshots(run, store)]


@pytest.mark.parametrize(
    "how",
    [
        "flipped",
        "truncated",
        "deleted",
    ],
)
def test_damaged_key_file(run, store, damaged_setup, how):
    [key] = list((store / "keys").iterdir())
    raw = key.read_bytes()
    if how == "flipped":
        doc = json.loads(raw)
        i = raw.index(doc["data"].encode()) + len(doc["data"]) // 2
        c = chr(raw[i])
        other = next(x for x in string.ascii_letters if x != c).encode()
        key.write_bytes(raw[:i] + other + raw[i + 1 :])
    elif how == "truncated":
        key.write_bytes(raw[: len(raw) // 2])
    else:
        key.unlink()
    for args in (
        ("list", store),
        ("verify", store),
        ("restore", store, "latest", store.parent / "t"),
    ):
        r = run("backup", *args, check=False)
        line = assert_one_line_error(r)
        assert "damaged" in line or "integrity" in line, line
    assert not (store.parent / "t").exists()


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_damaged_config(run, store, damaged_setup, tmp_path, how):
    config = store / "config"
    raw = config.read_bytes()
    if how == "flipped":
        i = raw.index(b'"pack_size"') + len(b'"pack_size": ') + 1
        config.write_bytes(raw[:i] + (b"7" if raw[i : i + 1] != b"7" else b"8") + raw[i + 1 :])
    else:
        config.write_bytes(raw[: len(raw) // 2])
    before = store_files(store)
    for args in (
        ("list", store),
        ("create", store, damaged_setup["src"]),
        ("verify", store),
        ("gc", store),
        ("init", store, *KDF),
    ):
        r = run("backup", *args, check=False)
        line = assert_one_line_error(r)
        assert args[0] == "init" or ("config" in line and "damaged" in line), line
    assert store_files(store) == before


@pytest.mark.parametrize(
    "garbage",
    [b"\x1f\xff\xff\xff" + b"rsync" * 10, b"ls -la\n", b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1"],
    ids=["huge-frame", "a-shell-command", "not-msgpack"],
)
def test_serve_given_another_protocol_says_so_in_one_line(run, tmp_path, garbage):
    r = run("backup", "serve", "--stdio", tmp_path, input=garbage, check=False)
    assert_one_line_error(r, "does not speak isidorus's store protocol", "ssh+isidorus://")
    assert r.code == 1
