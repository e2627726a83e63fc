"""`isidorus backup …` end to end: every command on real files, through the console script."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .conftest import (
    ISIDORUS,
    KDF,
    PASSPHRASE,
    TIMEOUT,
    Isidorus,
    assert_intact,
    assert_one_line_error,
    assert_restores,
    create,
    init_store,
    manifest,
    packs,
    restored,
    sha256_file,
    snapshots,
    store_litter,
    wait_until,
    write_random,
)


def regular_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def listed_paths(src: Path) -> set[str]:
    """What `ls SNAPSHOT` shows for a snapshot of src: its ancestors, src, and below."""
    out = {str(p) for p in src.parents if str(p) != "/"} | {str(src)}
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            out.add(os.path.join(dirpath, name))
    return out


def parse_utc(s: str) -> datetime:
    assert s.endswith("Z"), s
    return datetime.fromisoformat(s[:-1] + "+00:00")


# -- init


def test_init_makes_an_empty_encrypted_store(run, tmp_path):
    path = tmp_path / "new" / "store"
    r = run("backup", "init", path, *KDF)
    assert r.out.strip() == f"created an encrypted store at {path}"
    assert "key export" in r.err  # the advice to keep a copy of the key
    assert snapshots(run, path) == []
    assert_intact(run, path)
    assert store_litter(path) == []
    # encrypted: without the passphrase nothing opens
    r = run("backup", "list", path, env={"ISIDORUS_PASSPHRASE": None}, check=False)
    assert_one_line_error(r, "passphrase")


def test_init_into_an_existing_empty_directory(run, tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    init_store(run, path)
    assert snapshots(run, path) == []


def test_unencrypted_store_needs_no_passphrase(run, tmp_path, sample_tree):
    no_pass = {"ISIDORUS_PASSPHRASE": None}
    path = tmp_path / "plain"
    r = run("backup", "init", path, "--encryption", "none", env=no_pass)
    assert "unencrypted" in r.out
    expected = manifest(sample_tree)
    snap = create(run, path, sample_tree, env=no_pass)
    assert [s["id"] for s in snapshots(run, path, env=no_pass)] == [snap["id"]]
    target = tmp_path / "out"
    run("backup", "restore", path, "latest", target, env=no_pass)
    assert manifest(restored(target, sample_tree)) == expected
    # the content is stored in the clear, but still checked against its ids
    report = json.loads(run("backup", "verify", path, "--json", env=no_pass).out)
    assert report["ok"] is True


# -- create


def test_create_reports_what_it_read_and_stored(run, store, sample_tree):
    files = regular_files(sample_tree)
    inodes = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in files}
    first = create(run, store, sample_tree)
    assert re.fullmatch(r"[0-9a-f]{64}", first["id"])
    assert first["files"] == len(files)
    assert first["bytes_read"] == sum(inodes.values())  # a hard link is read once
    assert first["bytes_new"] >= first["bytes_read"]  # contents, plus the trees
    assert 0 < first["bytes_stored"] < first["bytes_new"]  # readme.md compresses
    assert isinstance(first["seconds"], float | int) and first["seconds"] >= 0
    assert first["partial"] is False and first["errors"] == []

    # nothing changed: nothing is read again, and next to nothing is new
    second = create(run, store, sample_tree)
    assert second["id"] != first["id"]
    assert second["files"] == first["files"]
    assert second["bytes_read"] == 0
    assert second["bytes_new"] < 64 * 1024

    # one file changed: only it is read
    (sample_tree / "hello.txt").write_text("hello again, a little longer\n")
    third = create(run, store, sample_tree)
    assert third["bytes_read"] == (sample_tree / "hello.txt").stat().st_size
    assert [s["id"] for s in snapshots(run, store)] == [first["id"], second["id"], third["id"]]
    assert store_litter(store) == []


def test_create_without_json_prints_one_summary_line(run, store, sample_tree):
    r = run("backup", "create", store, sample_tree)
    [line] = r.out.splitlines()
    short = snapshots(run, store)[0]["id"][:8]
    assert line.startswith(f"snapshot {short} saved: {len(regular_files(sample_tree))} files")


def test_restore_is_identical_to_the_source(run, store, sample_tree, tmp_path):
    expected = manifest(sample_tree)
    create(run, store, sample_tree)
    target = tmp_path / "target"
    r = run("backup", "restore", store, "latest", target, "--json")
    doc = json.loads(r.out)
    assert doc["snapshot"] == snapshots(run, store)[0]["id"]
    assert doc["errors"] == []
    back = restored(target, sample_tree)
    assert manifest(back) == expected
    assert (back / "data" / "random.bin").stat().st_ino == (
        back / "data" / "same-inode.bin"
    ).stat().st_ino
    assert stat.S_ISFIFO((back / "fifo").lstat().st_mode)
    assert os.readlink(back / "dangling") == "does/not/exist"
    # no temporary files left next to the restored ones
    assert not [p for p in target.rglob("*") if ".isidorus-" in p.name]


def test_restore_of_several_paths(run, store, sample_tree, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    write_random(other / "x.bin", 70_000, random.Random(5))
    expected = manifest(sample_tree), manifest(other)
    snap = create(run, store, sample_tree, other)
    [listed] = snapshots(run, store)
    assert sorted(listed["paths"]) == sorted([str(sample_tree), str(other)])
    target = tmp_path / "target"
    run("backup", "restore", store, snap["id"], target)
    assert (manifest(restored(target, sample_tree)), manifest(restored(target, other))) == expected


def test_restore_of_a_single_file_snapshot(run, store, tmp_path):
    f = tmp_path / "one.bin"
    write_random(f, 200_000, random.Random(2))
    create(run, store, f)
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    assert sha256_file(restored(target, f)) == sha256_file(f)


def test_sparse_file_in_a_tree_stays_sparse(run, store, tmp_path):
    src = tmp_path / "sparse"
    src.mkdir()
    f = src / "holes.bin"
    chunk = random.Random(3).randbytes(100_000)
    with open(f, "wb") as out:
        out.truncate(32 << 20)
        out.seek(5 << 20)
        out.write(chunk)
        out.seek(30 << 20)
        out.write(chunk)
    if f.stat().st_blocks * 512 >= f.stat().st_size:
        pytest.fail("the file system under the tests does not keep holes")
    create(run, store, src)
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    back = restored(target, src) / "holes.bin"
    assert sha256_file(back) == sha256_file(f)
    assert back.stat().st_blocks * 512 < 4 << 20


def test_exclude_leaves_matching_paths_out(run, store, sample_tree, tmp_path):
    create(
        run,
        store,
        sample_tree,
        "--exclude",
        "*.md",  # a name glob
        "--exclude",
        "private",
        "--exclude",
        f"{sample_tree}/data/small.*",  # a path glob
    )
    lines = set(run("backup", "ls", store, "latest").out.splitlines())
    left_out = {
        sample_tree / "docs" / "readme.md",
        sample_tree / "private",
        sample_tree / "private" / "secret.txt",
        sample_tree / "data" / "small.bin",
    }
    assert not {str(p) for p in left_out} & lines
    assert str(sample_tree / "docs" / "deep" / "er" / "nested.txt") in lines
    assert str(sample_tree / "data" / "random.bin") in lines
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    back = restored(target, sample_tree)
    for p in left_out:
        assert not (back / p.relative_to(sample_tree)).exists()
    assert (back / "hello.txt").read_text() == "hello, world\n"


@pytest.mark.root
def test_one_file_system_does_not_cross_mounts(run, store, sample_tree, mounts):
    mnt = mounts.tmpfs(sample_tree / "mnt", size="1m")
    (mnt / "inside.txt").write_text("on another file system\n")
    create(run, store, sample_tree, "--one-file-system")
    lines = set(run("backup", "ls", store, "latest").out.splitlines())
    assert str(mnt) in lines  # the mount point itself is kept, empty
    assert str(mnt / "inside.txt") not in lines
    assert str(sample_tree / "docs" / "readme.md") in lines
    create(run, store, sample_tree)
    lines = set(run("backup", "ls", store, "latest").out.splitlines())
    assert str(mnt / "inside.txt") in lines


def test_time_option_sets_the_snapshot_time(run, store, sample_tree):
    late = create(run, store, sample_tree, "--time", "2024-02-29T12:34:56Z", "--tag", "late")
    early = create(run, store, sample_tree, "--time", "2023-06-01T10:00:00+02:00")
    listed = snapshots(run, store)
    # oldest first, by the time given, not by when they were made
    assert [s["id"] for s in listed] == [early["id"], late["id"]]
    assert parse_utc(listed[0]["time"]) == datetime(2023, 6, 1, 8, 0, 0, tzinfo=UTC)
    assert parse_utc(listed[1]["time"]) == datetime(2024, 2, 29, 12, 34, 56, tzinfo=UTC)
    # `latest` is the newest by time
    r = run("backup", "ls", store, "latest", sample_tree / "hello.txt", "--json")
    assert json.loads(r.out)[0]["path"] == str(sample_tree / "hello.txt")
    lines = run("backup", "list", store).out.splitlines()
    assert lines[0].startswith(f"{early['id'][:8]}  2023-06-01 08:00:00")
    assert lines[1].startswith(f"{late['id'][:8]}  2024-02-29 12:34:56")


def test_list_json_fields_and_tag_filter(run, store, sample_tree):
    a = create(run, store, sample_tree, "--tag", "nightly")
    b = create(run, store, sample_tree, "--tag", "weekly", "--tag", "nightly")
    c = create(run, store, sample_tree / "docs", "--tag", "weekly")
    listed = snapshots(run, store)
    assert [s["id"] for s in listed] == [a["id"], b["id"], c["id"]]
    for s, made in zip(listed, (a, b, c), strict=True):
        assert s["kind"] == "files"
        assert parse_utc(s["time"]) == parse_utc(made["time"])
        assert abs((parse_utc(s["time"]) - datetime.now(UTC)).total_seconds()) < 600
    assert listed[0]["tags"] == ["nightly"]
    assert sorted(listed[1]["tags"]) == ["nightly", "weekly"]
    assert listed[0]["paths"] == [str(sample_tree)]
    assert listed[2]["paths"] == [str(sample_tree / "docs")]
    assert [s["id"] for s in snapshots(run, store, "--tag", "nightly")] == [a["id"], b["id"]]
    assert [s["id"] for s in snapshots(run, store, "--tag", "weekly")] == [b["id"], c["id"]]
    both = snapshots(run, store, "--tag", "weekly", "--tag", "nightly")
    assert [s["id"] for s in both] == [b["id"]]
    assert snapshots(run, store, "--tag", "never") == []
    r = run("backup", "list", store, "--tag", "weekly")
    assert [line.split()[0] for line in r.out.splitlines()] == [b["id"][:8], c["id"][:8]]
    assert "2 snapshots" in r.err


def test_stdin_from_a_pipe(run, store, tmp_path):
    rng = random.Random(4)
    data = rng.randbytes(1_300_000) + b"INSERT INTO t VALUES (1);\n" * 20_000
    snap = create(run, store, "--stdin", "db.sql", input=data)
    assert snap["files"] == 1 and snap["bytes_read"] == len(data)
    [listed] = snapshots(run, store)
    assert listed["paths"] == ["db.sql"] and listed["kind"] == "files"
    assert run("backup", "ls", store, "latest").out.splitlines() == ["/db.sql"]
    r = run("backup", "cat", store, "latest", "/db.sql", text=False)
    assert r.out == data
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    assert (target / "db.sql").read_bytes() == data

    # through a shell pipeline, as from a database dump
    shell = subprocess.run(
        [
            "sh",
            "-c",
            f"head -c 300000 /dev/zero | '{ISIDORUS}' backup create"
            f" '{store}' --stdin zeros.bin --json",
        ],
        env=run.environment(None),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert shell.returncode == 0, shell.stderr
    zeros = json.loads(shell.stdout)
    out = run("backup", "cat", store, zeros["id"], "/zeros.bin", text=False).out
    assert out == bytes(300_000)


def test_image_of_a_sparse_file_restores_sparse_and_identical(run, store, tmp_path):
    img = tmp_path / "disk.img"
    rng = random.Random(6)
    with open(img, "wb") as f:
        f.truncate(48 << 20)
        for at in (0, 7 << 20, (33 << 20) + 12345):
            f.seek(at)
            f.write(rng.randbytes(300_000))
    if img.stat().st_blocks * 512 >= img.stat().st_size:
        pytest.fail("the file system under the tests does not keep holes")
    data_bytes = img.stat().st_blocks * 512
    snap = create(run, store, "--image", img)
    assert snap["files"] == 1
    assert snap["bytes_read"] < 8 << 20  # holes are not read
    [listed] = snapshots(run, store)
    assert listed["kind"] == "image" and listed["paths"] == [str(img)]

    out = tmp_path / "restored.img"
    run("backup", "restore", store, "latest", out)
    assert out.stat().st_size == img.stat().st_size
    assert sha256_file(out) == sha256_file(img)
    # sparse: at most the 1 MiB chunks that hold data are allocated
    assert out.stat().st_blocks * 512 <= data_bytes + (6 << 20)
    assert out.stat().st_blocks * 512 < img.stat().st_size // 4

    into_dir = tmp_path / "dir"
    into_dir.mkdir()
    run("backup", "restore", store, snap["id"], into_dir)
    assert sha256_file(into_dir / "disk.img") == sha256_file(img)


def test_image_of_a_changed_disk_stores_only_the_changed_chunks(run, store, tmp_path):
    img = tmp_path / "disk.img"
    rng = random.Random(7)
    img.write_bytes(rng.randbytes(6 << 20))
    first = create(run, store, "--image", img)
    with open(img, "r+b") as f:
        f.seek(3 << 20)
        f.write(b"changed")
    second = create(run, store, "--image", img)
    assert first["bytes_new"] >= 6 << 20
    assert second["bytes_new"] <= 2 << 20
    out = tmp_path / "out.img"
    run("backup", "restore", store, second["id"], out)
    assert sha256_file(out) == sha256_file(img)


# -- looking inside


def test_ls_lists_every_path(run, store, sample_tree):
    create(run, store, sample_tree)
    lines = run("backup", "ls", store, "latest").out.splitlines()
    assert len(lines) == len(set(lines))
    assert set(lines) == listed_paths(sample_tree)

    below = run("backup", "ls", store, "latest", sample_tree / "docs").out.splitlines()
    assert set(below) == {
        str(sample_tree / "docs" / p)
        for p in ("readme.md", "deep", "deep/er", "deep/er/nested.txt")
    }

    one = run("backup", "ls", store, "latest", sample_tree / "hello.txt").out.splitlines()
    assert one == [str(sample_tree / "hello.txt")]

    long = run("backup", "ls", store, "latest", sample_tree / "private", "-l").out.splitlines()
    [secret] = long
    assert secret.startswith("-rw-------")
    assert secret.endswith(str(sample_tree / "private" / "secret.txt"))

    entries = json.loads(run("backup", "ls", store, "latest", sample_tree, "--json").out)
    by_path = {e["path"]: e for e in entries}
    assert by_path[str(sample_tree / "data" / "random.bin")]["size"] == 1_500_000
    assert by_path[str(sample_tree / "link-to-hello")]["type"] == "symlink"
    assert by_path[str(sample_tree / "emptydir")]["type"] == "dir"
    assert by_path[str(sample_tree / "run.sh")]["mode"] == 0o755


def test_cat_prints_a_file_byte_for_byte(run, store, sample_tree):
    create(run, store, sample_tree)
    for rel in ("hello.txt", "data/random.bin", "docs/readme.md", "empty.txt", "ünï côde name.txt"):
        r = run("backup", "cat", store, "latest", sample_tree / rel, text=False)
        assert r.out == (sample_tree / rel).read_bytes(), rel
    # the second name of a hard link has the same content
    r = run("backup", "cat", store, "latest", sample_tree / "data" / "same-inode.bin", text=False)
    assert hashlib.sha256(r.out).hexdigest() == sha256_file(sample_tree / "data" / "random.bin")


def test_snapshot_by_id_prefix_or_latest(run, store, sample_tree):
    first = create(run, store, sample_tree)
    (sample_tree / "hello.txt").write_text("second version\n")
    second = create(run, store, sample_tree)
    path = sample_tree / "hello.txt"
    for ref, want in (
        (first["id"], "hello, world\n"),
        (first["id"][:8], "hello, world\n"),
        (first["id"][:12].upper(), "hello, world\n"),
        (second["id"], "second version\n"),
        (second["id"][:10], "second version\n"),
        ("latest", "second version\n"),
    ):
        assert run("backup", "cat", store, ref, path).out == want, ref


def test_diff_names_added_removed_and_modified(run, store, tmp_path):
    src = tmp_path / "d"
    (src / "keep").mkdir(parents=True)
    (src / "gone").mkdir()
    (src / "keep" / "m.txt").write_text("1\n")
    (src / "keep" / "same.txt").write_text("same\n")
    (src / "gone" / "x.txt").write_text("2\n")
    (src / "mode.sh").write_text("echo\n")
    a = create(run, store, src)
    (src / "keep" / "m.txt").write_text("1, and more\n")
    shutil.rmtree(src / "gone")
    (src / "new").mkdir()
    (src / "new" / "y.txt").write_text("n\n")
    (src / "mode.sh").chmod(0o700)
    b = create(run, store, src)
    lines = run("backup", "diff", store, a["id"], b["id"]).out.splitlines()
    changes = {tuple(line.split(None, 1)) for line in lines}
    assert {
        ("-", f"{src}/gone"),
        ("-", f"{src}/gone/x.txt"),
        ("M", f"{src}/keep/m.txt"),
        ("+", f"{src}/new"),
        ("+", f"{src}/new/y.txt"),
        ("U", f"{src}/mode.sh"),
    } <= changes
    assert not [c for c in changes if c[1].endswith("same.txt")]
    assert all(c[0] in "+-MTU" for c in changes)
    # the other way round
    back = {
        tuple(x.split(None, 1))
        for x in run("backup", "diff", store, b["id"], a["id"]).out.splitlines()
    }
    assert ("+", f"{src}/gone/x.txt") in back and ("-", f"{src}/new/y.txt") in back
    # JSON, and a snapshot against itself
    doc = json.loads(run("backup", "diff", store, a["id"][:8], "latest", "--json").out)
    assert {"change": "M", "path": f"{src}/keep/m.txt"} in doc
    assert run("backup", "diff", store, "latest", b["id"]).out == ""


# -- restore


def test_restore_path_restores_only_that_subtree(run, store, sample_tree, tmp_path):
    expected_docs = manifest(sample_tree / "docs")
    expected_private = manifest(sample_tree / "private")
    create(run, store, sample_tree)
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target, "--path", sample_tree / "docs")
    back = restored(target, sample_tree)
    assert manifest(back / "docs") == expected_docs
    assert sorted(p.name for p in back.iterdir()) == ["docs"]

    two = tmp_path / "two"
    run(
        "backup", "restore", store, "latest", two,
        "--path", sample_tree / "docs" / "deep",
        "--path", sample_tree / "private",
    )  # fmt: skip
    back = restored(two, sample_tree)
    assert sorted(p.name for p in back.iterdir()) == ["docs", "private"]
    assert [p.name for p in (back / "docs").iterdir()] == ["deep"]
    assert manifest(back / "private") == expected_private

    one_file = tmp_path / "one"
    run("backup", "restore", store, "latest", one_file, "--path", sample_tree / "hello.txt")
    files = [p for p in one_file.rglob("*") if not p.is_dir()]
    assert files == [restored(one_file, sample_tree) / "hello.txt"]


def test_restore_overwrite_replaces_existing_files(run, store, sample_tree, tmp_path):
    (sample_tree / "data" / "same-inode.bin").unlink()  # hard links: see the next test
    expected = manifest(sample_tree)
    create(run, store, sample_tree)
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    back = restored(target, sample_tree)
    (back / "hello.txt").write_text("scribbled over\n")
    (back / "data" / "random.bin").unlink()
    (back / "docs" / "readme.md").chmod(0o777)
    run("backup", "restore", store, "latest", target, "--overwrite")
    assert manifest(back) == expected


def test_restore_overwrite_keeps_hard_links(run, store, sample_tree, tmp_path):
    expected = manifest(sample_tree)
    create(run, store, sample_tree)
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target)
    (restored(target, sample_tree) / "hello.txt").write_text("scribbled over\n")
    run("backup", "restore", store, "latest", target, "--overwrite")
    assert manifest(restored(target, sample_tree)) == expected


# -- verify, prune, gc


def test_verify_an_intact_store(run, store, sample_tree):
    create(run, store, sample_tree)
    create(run, store, sample_tree / "docs")
    r = run("backup", "verify", store)
    assert r.out.splitlines()[-1].startswith("intact: 2 snapshots")
    report = assert_intact(run, store)
    assert report["snapshots_checked"] == 2
    assert report["packs_checked"] == len(packs(store))
    assert report["bytes_checked"] == sum(p.stat().st_size for p in packs(store))
    one = json.loads(run("backup", "verify", store, "--snapshot", "latest", "--json").out)
    assert one["ok"] is True and one["snapshots_checked"] == 1
    assert run("backup", "verify", store, "--no-read-data").code == 0


def test_verify_counts_the_blobs_it_checked(run, store, sample_tree):
    create(run, store, sample_tree)
    report = assert_intact(run, store)
    assert report["blobs_checked"] > 0


def test_prune_keep_last_dry_run_then_for_real(run, store, sample_tree):
    ids = []
    for day in range(1, 5):
        (sample_tree / "hello.txt").write_text(f"day {day}\n")
        ids.append(create(run, store, sample_tree, "--time", f"2026-03-0{day}T12:00:00Z")["id"])

    dry = json.loads(run("backup", "prune", store, "--keep-last", "2", "--dry-run", "--json").out)
    assert dry["dry_run"] is True and dry["keep"] == 2 and dry["remove"] == 2
    assert dry["removed"] == 0
    [group] = dry["groups"]
    decided = {s["id"]: s["keep"] for s in group["snapshots"]}
    assert decided == {ids[0]: False, ids[1]: False, ids[2]: True, ids[3]: True}
    assert [s["id"] for s in snapshots(run, store)] == ids  # nothing removed

    text = run("backup", "prune", store, "--keep-last", "2", "--dry-run").out
    assert f"would remove {ids[0][:8]}" in text

    done = json.loads(run("backup", "prune", store, "--keep-last", "2", "--json").out)
    assert done["dry_run"] is False and done["removed"] == 2
    assert [s["id"] for s in snapshots(run, store)] == ids[2:]
    assert_intact(run, store)
    assert store_litter(store) == []
    # idempotent
    again = json.loads(run("backup", "prune", store, "--keep-last", "2", "--json").out)
    assert again["removed"] == 0


def test_prune_keep_daily_and_tag(run, store, sample_tree):
    made = {}
    for name, when, tag in (
        ("d1-morning", "2026-04-01T08:00:00Z", "db"),
        ("d1-evening", "2026-04-01T20:00:00Z", "db"),
        ("d2-morning", "2026-04-02T08:00:00Z", "db"),
        ("d2-evening", "2026-04-02T20:00:00Z", "db"),
        ("other", "2026-04-01T09:00:00Z", "files"),
    ):
        made[name] = create(run, store, sample_tree, "--time", when, "--tag", tag)["id"]
    doc = json.loads(
        run("backup", "prune", store, "--keep-daily", "7", "--tag", "db", "--json").out
    )
    assert doc["removed"] == 2
    left = {s["id"] for s in snapshots(run, store)}
    assert left == {made["d1-evening"], made["d2-evening"], made["other"]}
    reasons = {s["id"]: s["reason"] for g in doc["groups"] for s in g["snapshots"]}
    assert reasons[made["d2-evening"]] == "daily 2026-04-02"
    assert made["other"] not in reasons  # another tag: not considered at all


def test_gc_frees_what_pruned_snapshots_used(run, store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(8)
    write_random(src / "a.bin", 1_200_000, rng)
    old = create(run, store, src)
    write_random(src / "a.bin", 1_200_000, rng)  # new content: the old one is only in `old`
    expected = manifest(src)
    new = create(run, store, src)
    before = sum(p.stat().st_size for p in packs(store))
    run("backup", "prune", store, "--keep-last", "1")
    assert [s["id"] for s in snapshots(run, store)] == [new["id"]]
    doc = json.loads(run("backup", "gc", store, "--json").out)
    assert doc["done"] is True
    assert doc["packs_deleted"] + doc["packs_repacked"] >= 1
    assert doc["bytes_freed"] >= 1_000_000
    after = sum(p.stat().st_size for p in packs(store))
    assert before - after >= 1_000_000
    assert_intact(run, store)
    assert_restores(run, store, new["id"], src, expected, tmp_path)
    assert old["id"] not in run("backup", "list", store).out
    # nothing left to free
    again = json.loads(run("backup", "gc", store, "--json").out)
    assert again["done"] is True and again["bytes_freed"] == 0
    text = run("backup", "gc", store).out
    assert text.startswith("gc done: 0 packs deleted")
    assert store_litter(store) == []
    assert not os.listdir(store / "gc")


# -- keys and locks


def test_change_passphrase(run, store, sample_tree, tmp_path):
    expected = manifest(sample_tree)
    create(run, store, sample_tree)
    r = run(
        "backup", "key", "change-passphrase", store,
        env={"ISIDORUS_NEW_PASSPHRASE": "a new and better one"},
    )  # fmt: skip
    assert "passphrase changed" in r.out
    old = run("backup", "list", store, check=False)
    assert_one_line_error(old, "wrong passphrase")
    new = {"ISIDORUS_PASSPHRASE": "a new and better one"}
    assert len(snapshots(run, store, env=new)) == 1
    target = tmp_path / "target"
    run("backup", "restore", store, "latest", target, env=new)
    assert manifest(restored(target, sample_tree)) == expected

    # and again, from files
    old_file, new_file = tmp_path / "old.pass", tmp_path / "new.pass"
    old_file.write_text("a new and better one\n")
    new_file.write_text("third\n")
    no_env = {"ISIDORUS_PASSPHRASE": None}
    run(
        "backup", "key", "change-passphrase", store,
        "--passphrase-file", old_file, "--new-passphrase-file", new_file, env=no_env,
    )  # fmt: skip
    assert_one_line_error(run("backup", "list", store, env=new, check=False), "wrong passphrase")
    third = run("backup", "list", store, "--passphrase-file", new_file, "--json", env=no_env)
    assert len(json.loads(third.out)) == 1
    assert len(os.listdir(store / "keys")) == 1  # the old key files are gone


def test_change_passphrase_keeps_the_key_derivation_cost(run, store, tmp_path):
    run("backup", "key", "export", store, tmp_path / "before.json")
    before = json.loads((tmp_path / "before.json").read_text())["kdf"]
    assert (before["memory_kib"], before["time_cost"]) == (8 * 1024, 1)
    new = "another passphrase"
    run("backup", "key", "change-passphrase", store, env={"ISIDORUS_NEW_PASSPHRASE": new})
    run("backup", "key", "export", store, tmp_path / "after.json", env={"ISIDORUS_PASSPHRASE": new})
    after = json.loads((tmp_path / "after.json").read_text())["kdf"]
    assert (after["memory_kib"], after["time_cost"]) == (8 * 1024, 1)


def test_passphrase_file(run, store, sample_tree, tmp_path):
    create(run, store, sample_tree)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(PASSPHRASE + "\n")
    bad.write_text("not it\n")
    no_env = {"ISIDORUS_PASSPHRASE": None}
    assert run("backup", "list", store, "--passphrase-file", good, env=no_env).code == 0
    r = run("backup", "list", store, "--passphrase-file", bad, env=no_env, check=False)
    assert_one_line_error(r, "wrong passphrase")
    # the file wins over the environment
    r = run("backup", "list", store, "--passphrase-file", bad, check=False)
    assert_one_line_error(r, "wrong passphrase")


def test_key_export_writes_a_usable_copy_of_the_key(run, store, sample_tree, tmp_path):
    expected = manifest(sample_tree)
    create(run, store, sample_tree)
    out = tmp_path / "key.json"
    r = run("backup", "key", "export", store, out)
    assert str(out) in r.out
    doc = json.loads(out.read_text())
    assert doc["kdf"]["algorithm"] == "argon2id" and doc["data"]
    assert PASSPHRASE not in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("key.json.*"))
    # the copy brings back a store whose key files are lost
    for k in (store / "keys").iterdir():
        k.unlink()
    assert run("backup", "list", store, check=False).code != 0
    data = out.read_bytes()
    (store / "keys" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    assert_restores(run, store, "latest", sample_tree, expected, tmp_path)
    # an existing file is never overwritten
    r = run("backup", "key", "export", store, out, check=False)
    assert_one_line_error(r, str(out), "exists")
    assert out.read_bytes() == data


def converse(run: Isidorus, args: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    """Run isidorus on a terminal, typing each answer at the next passphrase prompt."""
    env = run.environment({"ISIDORUS_PASSPHRASE": None})
    pid, fd = pty.fork()
    if pid == 0:  # the child: isidorus on a terminal
        os.execve(args[0], args, env)
    seen = b""
    sent = 0
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child is gone
                    break
                if not chunk:
                    break
                seen += chunk
            if sent < min(seen.count(b"assphrase: "), len(answers)):
                os.write(fd, answers[sent])
                sent += 1
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen


def test_prompted_passphrase(run, tmp_path):
    exe = ISIDORUS
    path = tmp_path / "store"
    code, seen = converse(
        run, [exe, "backup", "init", str(path), *KDF], [b"typed words\n", b"typed words\n"]
    )
    assert code == 0, seen
    assert b"Passphrase: " in seen and b"Repeat the passphrase: " in seen
    assert b"typed words" not in seen  # not echoed
    code, seen = converse(run, [exe, "backup", "list", str(path)], [b"typed words\n"])
    assert code == 0 and b"0 snapshots" in seen, seen
    assert snapshots(run, path, env={"ISIDORUS_PASSPHRASE": "typed words"}) == []

    other = tmp_path / "other"
    code, seen = converse(
        run, [exe, "backup", "init", str(other), *KDF], [b"one thing\n", b"another\n"]
    )
    assert code != 0 and b"isidorus: error: the two passphrases differ" in seen, seen
    assert not other.exists()


def test_unlock_removes_only_the_sessions_of_dead_processes(run, store):
    # a backup reading a stream holds its session until the stream ends
    held = run.popen("backup", "create", store, "--stdin", "held.bin", stdin=subprocess.PIPE)
    assert held.stdin is not None
    held.stdin.write(b"x" * 1000)
    held.stdin.flush()
    wait_until(lambda: len(os.listdir(store / "locks")) == 1, "the backup's session")
    r = run("backup", "unlock", store)
    assert r.out.splitlines()[-1] == "0 locks removed"  # alive: kept

    dead = run.popen("backup", "create", store, "--stdin", "dead.bin", stdin=subprocess.PIPE)
    wait_until(lambda: len(os.listdir(store / "locks")) == 2, "the second backup's session")
    dead.kill()
    dead.communicate(timeout=TIMEOUT)
    r = run("backup", "unlock", store)
    lines = r.out.splitlines()
    assert lines[-1] == "1 locks removed"
    assert f"pid {dead.pid}" in lines[0] and "backup" in lines[0]
    assert run("backup", "unlock", store).out.splitlines()[-1] == "0 locks removed"

    held.stdin.close()
    assert held.wait(timeout=TIMEOUT) == 0
    assert [s["paths"] for s in snapshots(run, store)] == [["held.bin"]]
    assert store_litter(store) == []
