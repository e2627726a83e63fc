"""Back up, restore, compare: files of every kind, dedup, images, streams, browse, verify
and gc, on a store in memory."""

import hashlib
import io
import os
import random
import shutil
import socket
import stat
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from isidorus.backup import browse, locks
from isidorus.backup.archiver import (
    BackupOptions,
    create_image_snapshot,
    create_snapshot,
    create_stream_snapshot,
)
from isidorus.backup.errors import PathNotFound, SourceError
from isidorus.backup.gc import GcOptions, collect_garbage, load_state
from isidorus.backup.prune import KeepPolicy, plan_prune
from isidorus.backup.restorer import RestoreOptions, lookup_path, restore_snapshot
from isidorus.backup.testing import make_repository, make_sparse_file
from isidorus.backup.verify import VerifyOptions, verify_store
from isidorus.errors import UsageError

MiB = 1024 * 1024


# -- making trees


def _content(fill, size, seed):
    if fill == "zero":
        return bytes(size)
    if fill == "text":
        line = b"line %d of a log that compresses well\n" % seed
        return (line * (size // len(line) + 1))[:size]
    return random.Random(seed).randbytes(size)


def _valid_name(b):
    return b"/" not in b and b"\0" not in b and b not in (b".", b"..")


names = st.binary(min_size=1, max_size=16).filter(_valid_name)
modes = st.integers(0, 0o7777)
mtimes = st.integers(0, 2**33 * 10**9)  # ns, up to the year 2242
xattrs = st.dictionaries(
    st.text("abcdefghij", min_size=1, max_size=8).map("user.".__add__),
    st.binary(max_size=64),
    max_size=3,
)
sizes = st.one_of(
    st.just(0), st.integers(1, 5000), st.integers(1, 70000), st.integers(70000, 3 * MiB)
)

files = st.fixed_dictionaries(
    {
        "type": st.just("file"),
        "size": sizes,
        "seed": st.integers(0, 2**32),
        "fill": st.sampled_from(["random", "text", "zero"]),
        "mode": modes,
        "mtime": mtimes,
        "xattrs": xattrs,
    }
)
sparse_files = st.fixed_dictionaries(
    {
        "type": st.just("sparse"),
        "size": st.integers(0, 6 * MiB),
        "mode": modes,
        "mtime": mtimes,
        "xattrs": xattrs,
        "regions": st.lists(
            st.tuples(st.integers(0, 6 * MiB), st.integers(1, 70000), st.integers(0, 2**32)),
            max_size=3,
        ),
    }
)
symlinks = st.fixed_dictionaries(
    {
        "type": st.just("symlink"),
        "mtime": mtimes,
        "target": st.one_of(
            names, st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
        ),
    }
)
fifos = st.fixed_dictionaries({"type": st.just("fifo"), "mode": modes, "mtime": mtimes})
dir_modes = st.integers(0, 0o7777)


def _dirs(children):
    return st.fixed_dictionaries(
        {
            "type": st.just("dir"),
            "entries": st.dictionaries(names, children, max_size=4),
            "mode": dir_modes,
            "mtime": mtimes,
            "xattrs": xattrs,
        }
    )


entries = st.recursive(st.one_of(files, files, sparse_files, symlinks, fifos), _dirs, max_leaves=10)
trees = st.fixed_dictionaries(
    {
        "entries": st.dictionaries(names, entries, max_size=6),
        "links": st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99), names), max_size=3),
    }
)


def make_tree(root, spec):
    """Make the tree `spec` in the new directory `root` (bytes); returns the regular files
    made, in order."""
    os.mkdir(root, 0o755)
    regular, dirs, meta = [], [root], []

    def fill(where, entries):
        for name, e in entries.items():
            p = where + b"/" + name
            t = e["type"]
            if t == "file":
                with open(p, "wb") as f:
                    f.write(_content(e["fill"], e["size"], e["seed"]))
                regular.append(p)
            elif t == "sparse":
                make_sparse_file(
                    p,
                    e["size"],
                    [(off, random.Random(seed).randbytes(n)) for off, n, seed in e["regions"]],
                )
                regular.append(p)
            elif t == "symlink":
                os.symlink(e["target"], p)
            elif t == "fifo":
                os.mkfifo(p)
            elif t == "dir":
                os.mkdir(p)
                dirs.append(p)
                fill(p, e["entries"])
            meta.append((p, e))

    fill(root, spec["entries"])
    for i, j, name in spec.get("links", ()):
        if regular:
            p = dirs[j % len(dirs)] + b"/" + name
            if not os.path.lexists(p):
                os.link(regular[i % len(regular)], p)
    # metadata last, directories deepest first, so nothing made later changes it
    for p, e in meta:
        if e["type"] == "dir":
            continue
        for k, v in e.get("xattrs", {}).items():
            os.setxattr(p, k, v)
        if e["type"] != "symlink":
            os.chmod(p, e["mode"])
        os.utime(p, ns=(e["mtime"], e["mtime"]), follow_symlinks=False)
    for p, e in sorted(
        ((p, e) for p, e in meta if e["type"] == "dir"), key=lambda pe: -pe[0].count(b"/")
    ):
        for k, v in e["xattrs"].items():
            os.setxattr(p, k, v)
        os.chmod(p, e["mode"])
        os.utime(p, ns=(e["mtime"], e["mtime"]))
    os.utime(root, ns=(10**18, 10**18))
    return regular


def tree_state(root):
    """Everything a restore must bring back, by path relative to `root`, plus the groups
    of paths that are hard links of one another."""
    state, inodes = {}, {}

    def visit(p, rel):
        st_ = os.lstat(p)
        kind = stat.S_IFMT(st_.st_mode)
        info = {"kind": kind, "mtime": st_.st_mtime_ns, "uid": st_.st_uid, "gid": st_.st_gid}
        if kind != stat.S_IFLNK:
            info["mode"] = stat.S_IMODE(st_.st_mode)
            info["xattrs"] = {n: os.getxattr(p, n) for n in os.listxattr(p)}
        if kind == stat.S_IFLNK:
            info["target"] = os.readlink(p)
        elif kind == stat.S_IFREG:
            with open(p, "rb") as f:
                info["sha"] = hashlib.sha256(f.read()).hexdigest()
            info["size"] = st_.st_size
            inodes.setdefault(st_.st_ino, []).append(rel)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            info["rdev"] = st_.st_rdev
        state[rel] = info
        if kind == stat.S_IFDIR:
            for name in os.listdir(p):
                visit(p + b"/" + name, rel + b"/" + name)

    visit(root, b"")
    links = {frozenset(g) for g in inodes.values() if len(g) > 1}
    return state, links


def _blocks(root):
    out = {}
    for dirpath, _dirs, fnames in os.walk(root):
        for n in fnames:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            if stat.S_ISREG(st_.st_mode):
                out[p[len(root) :]] = st_.st_blocks
    return out


def backup(repo, *paths, **kw):
    kw.setdefault("threads", 2)
    return create_snapshot(repo, BackupOptions(paths=tuple(os.fsdecode(p) for p in paths), **kw))


def restore(repo, snap, target, **kw):
    kw.setdefault("threads", 2)
    result = restore_snapshot(repo, snap, RestoreOptions(target=os.fsdecode(target), **kw))
    assert result.errors == []
    return result


def assert_restored(src, target):
    """The restore under `target` of the backup of `src` (bytes) is the same as `src`."""
    restored = os.fsencode(target) + src
    want, want_links = tree_state(src)
    got, got_links = tree_state(restored)
    assert got.keys() == want.keys()
    for rel in want:
        assert got[rel] == want[rel], rel
    assert got_links == want_links
    # holes stay holes: a restored file takes no more room than the original (+ a block)
    src_blocks, got_blocks = _blocks(os.fsdecode(src)), _blocks(os.fsdecode(restored))
    for rel, n in src_blocks.items():
        assert got_blocks[rel] <= n + 8, rel


def _new_dir(tmp_path_factory):
    return os.fsencode(tmp_path_factory.mktemp("rt"))


# -- round trips


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=trees)
def test_round_trip_of_generated_trees(tmp_path_factory, spec):
    base = _new_dir(tmp_path_factory)
    try:
        src = base + b"/src"
        make_tree(src, spec)
        repo = make_repository()
        result = backup(repo, src)
        assert result.errors == ()
        target = base + b"/restored"
        restore(repo, result.snapshot, target)
        assert_restored(src, target)
        report = verify_store(repo, VerifyOptions(threads=2))
        assert report.ok, report.to_json()
        repo.close()
    finally:
        shutil.rmtree(base)


def _file(size, seed=0, fill="random", mode=0o644, mtime=1, xattrs=None):
    return {"type": "file", "size": size, "seed": seed, "fill": fill, "mode": mode,
            "mtime": mtime, "xattrs": xattrs or {}}  # fmt: skip


def _sparse(size, regions, mode=0o644, mtime=1, xattrs=None):
    return {"type": "sparse", "size": size, "regions": regions, "mode": mode, "mtime": mtime,
            "xattrs": xattrs or {}}  # fmt: skip


def _dir(entries, mode=0o755, mtime=1, xattrs=None):
    return {"type": "dir", "entries": entries, "mode": mode, "mtime": mtime,
            "xattrs": xattrs or {}}  # fmt: skip


EVERY_KIND = {
    "entries": {
        b"empty": _file(0),
        b"big.bin": _file(3 * MiB + 17, 1, mode=0o4755, mtime=1_700_000_000_123_456_789,
                          xattrs={"user.origin": b"\xff\x00binary"}),
        b"log.txt": _file(2 * MiB, 2, "text", mode=0o2640, mtime=999_999_999_999_999_999),
        b"zeros": _file(MiB + 1, fill="zero", mode=0o600, mtime=5),
        b"caf\xe9 \xff\xfe name": _file(10, 3, mode=0o000, mtime=7),
        b"sparse": _sparse(5 * MiB, [(0, 10, 4), (2 * MiB + 3, 70000, 5), (5 * MiB - 1, 1, 6)],
                           mode=0o640, mtime=11, xattrs={"user.a": b"1", "user.b": b""}),
        b"hole-only": _sparse(3 * MiB, [], mtime=13),
        b"dangling": {"type": "symlink", "target": b"../nowhere/\xff", "mtime": 17},
        b"to-big": {"type": "symlink", "target": b"big.bin", "mtime": 19},
        b"pipe": {"type": "fifo", "mode": 0o620, "mtime": 23},
        b"sticky": _dir({
            b"deeper": _dir({b"f": _file(100, 7, "text", mode=0o444, mtime=37)},
                            mode=0o2750, mtime=31),
            b"empty-dir": _dir({}, mode=0o000, mtime=41),
        }, mode=0o1777, mtime=29, xattrs={"user.d": b"dir"}),
    },
    "links": [(1, 0, b"big-link"), (2, 2, b"log-link"), (1, 1, b"big-link-2")],
}  # fmt: skip


def test_round_trip_of_every_kind(tmp_path):
    src = os.fsencode(tmp_path / "src")
    make_tree(src, EVERY_KIND)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fsdecode(src + b"/socket"))  # backed up, not restored: programs own those
    mtime = os.stat(src).st_mtime_ns
    repo = make_repository()
    result = backup(repo, src)
    sock.close()
    os.unlink(src + b"/socket")
    os.utime(src, ns=(mtime, mtime))
    assert result.errors == ()
    assert result.files == 8 + 3  # regular files, counting each hard link
    assert result.dirs == 4  # src, sticky, deeper, empty-dir
    # each file is read once however many links it has; of a sparse file, only its data
    assert result.bytes_read == (3 * MiB + 17) + 2 * MiB + (MiB + 1) + 10 + 100 + _data_bytes(
        src + b"/sparse"
    )
    target = tmp_path / "restored"
    restore(repo, result.snapshot, target)
    assert_restored(src, target)
    assert not os.path.lexists(os.fsencode(target) + src + b"/socket")
    big = os.stat(os.fsencode(target) + src + b"/big.bin")
    assert big.st_nlink == 3
    sparse = os.stat(os.fsencode(target) + src + b"/hole-only")
    assert sparse.st_blocks == 0 and sparse.st_size == 3 * MiB


def _data_bytes(path):
    """Bytes a backup reads from a sparse file: its data regions."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, n = os.fstat(fd).st_size, 0, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            n += end - start
            pos = end
        return n
    finally:
        os.close(fd)


def test_restore_of_a_part(tmp_path, repo):
    src = os.fsencode(tmp_path / "src")
    make_tree(src, EVERY_KIND)
    snap = backup(repo, src).snapshot
    target = tmp_path / "part"
    restore(repo, snap, target, include=(os.fsdecode(src + b"/sticky/deeper"),))
    base = os.fsencode(target) + src
    assert sorted(os.listdir(base)) == [b"sticky"]
    assert os.listdir(base + b"/sticky") == [b"deeper"]
    with open(base + b"/sticky/deeper/f", "rb") as f:
        assert f.read() == _content("text", 100, 7)
    with pytest.raises(PathNotFound):
        restore_snapshot(
            repo,
            snap,
            RestoreOptions(target=str(tmp_path / "x"), include=(os.fsdecode(src + b"/nope"),)),
        )


def test_restore_refuses_a_non_empty_target(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"new")
    snap = backup(repo, src).snapshot
    target = tmp_path / "t"
    target.mkdir()
    (target / "precious").write_bytes(b"mine")
    with pytest.raises(UsageError, match="not empty"):
        restore_snapshot(repo, snap, RestoreOptions(target=str(target)))
    assert os.listdir(target) == ["precious"]


def test_restore_with_overwrite_keeps_hard_links(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"shared")
    os.link(src / "a", src / "b")
    snap = backup(repo, src).snapshot
    target = tmp_path / "t"
    restore(repo, snap, target)
    restore(repo, snap, target, overwrite=True)
    restored = target / str(src).lstrip("/")
    assert os.stat(restored / "a").st_ino == os.stat(restored / "b").st_ino


def test_round_trip_of_the_longest_name(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / ("n" * 255)).write_bytes(b"a file with a long name")
    snap = backup(repo, src).snapshot
    restore(repo, snap, tmp_path / "t")
    assert_restored(os.fsencode(src), tmp_path / "t")


def test_restore_of_a_name_like_the_temporary_one(tmp_path, repo):
    src = tmp_path / "src"
    (src / "0").mkdir(parents=True)
    (src / "0" / "first").write_bytes(b"linked content")
    os.link(src / "0" / "first", src / "x")  # a hard link, restored after the other files
    (src / "x.isidorus-restore").write_bytes(b"a file of its own")
    snap = backup(repo, src).snapshot
    target = tmp_path / "t"
    # without its first link the hard link is restored as a copy, after every other file
    restore(repo, snap, target, include=(f"{src}/x", f"{src}/x.isidorus-restore"))
    restored = target / str(src).lstrip("/")
    assert (restored / "x").read_bytes() == b"linked content"
    assert (restored / "x.isidorus-restore").read_bytes() == b"a file of its own"


def test_excludes(tmp_path, repo):
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "big").write_bytes(b"x" * 1000)
    (src / "keep.txt").write_bytes(b"keep")
    (src / "drop.tmp").write_bytes(b"drop")
    (src / "sub").mkdir()
    (src / "sub" / "also.tmp").write_bytes(b"drop")
    result = backup(repo, src, excludes=("*.tmp", f"{src}/cache"))
    listed = {p for p, _n in browse.list_path(repo, result.snapshot, str(src))}
    assert listed == {f"{src}/keep.txt", f"{src}/sub"}
    assert result.files == 1 and result.bytes_read == 4


def test_missing_source_is_refused_before_anything_is_written(tmp_path, repo):
    before = dict(repo.backend.objects)
    with pytest.raises(SourceError, match="does not exist"):
        backup(repo, tmp_path / "missing")
    assert repo.backend.objects == before


# -- dedup


def test_shift_resistance(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(20 * MiB)
    (src / "big").write_bytes(data)
    first = backup(repo, src)
    assert first.bytes_read == len(data)
    assert len(data) <= first.bytes_new < len(data) + 64 * 1024

    # the file is chunked as if it were cut whole, though read through a smaller buffer
    node = lookup_path(repo, first.snapshot, f"{src}/big")
    ch = repo.chunker
    cdc = FastCDC(
        ch["avg_size"],
        min_size=ch["min_size"],
        max_size=ch["max_size"],
        seed=repo.crypto.key.chunker_seed,
    )
    assert [n for _cid, n in node["content"]] == [c.length for c in cdc.cut_buf(data)]
    assert len(node["content"]) > 5

    shifted = data[:1000] + b"!" + data[1000:]
    (src / "big").write_bytes(shifted)
    second = backup(repo, src)
    assert second.bytes_read == len(shifted)
    assert second.bytes_new < 0.15 * len(shifted)
    ids1 = {cid for cid, _n in node["content"]}
    node2 = lookup_path(repo, second.snapshot, f"{src}/big")
    assert sum(cid not in ids1 for cid, _n in node2["content"]) <= 2
    out = io.BytesIO()
    assert browse.cat(repo, second.snapshot, f"{src}/big", out) == len(shifted)
    assert out.getvalue() == shifted


def test_identical_files_are_stored_once(tmp_path, repo):
    data = os.urandom(2 * MiB + 5)
    for d in ("a", "b"):
        (tmp_path / d / "deep").mkdir(parents=True)
        (tmp_path / d / "deep" / f"copy-in-{d}").write_bytes(data)
    both = backup(repo, tmp_path / "a", tmp_path / "b")
    assert both.bytes_read == 2 * len(data)
    assert len(data) <= both.bytes_new < len(data) + 64 * 1024
    assert both.snapshot.paths == (str(tmp_path / "a"), str(tmp_path / "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "third").write_bytes(data)
    again = backup(repo, tmp_path / "c")
    assert again.bytes_read == len(data)
    assert again.bytes_new < 64 * 1024
    target = tmp_path / "t"
    restore(repo, both.snapshot, target)
    assert_restored(os.fsencode(tmp_path / "a"), target)
    assert_restored(os.fsencode(tmp_path / "b"), target)


def test_unchanged_tree_is_not_read_again(tmp_path, repo):
    src = os.fsencode(tmp_path / "src")
    make_tree(src, EVERY_KIND)
    first = backup(repo, src)
    assert first.bytes_read > 5 * MiB
    second = backup(repo, src)
    assert second.snapshot.parent == first.snapshot.id
    assert second.bytes_read == 0
    assert second.bytes_total == first.bytes_total
    assert second.bytes_new < 16 * 1024  # a few trees at most (the parent folders changed)
    target = tmp_path / "t"
    restore(repo, second.snapshot, target)
    assert_restored(src, target)
    # a touched file is read again, and only it
    os.utime(src + b"/log.txt", ns=(1, 1))
    third = backup(repo, src)
    assert third.bytes_read == 2 * MiB
    assert third.bytes_new < 16 * 1024  # same content, same chunks


# -- images and streams


def test_image_snapshot_of_a_sparse_file(tmp_path, repo):
    cs = repo.image_chunk_size
    image = tmp_path / "disk.img"
    rnd = random.Random(9)
    make_sparse_file(
        str(image),
        12 * cs,
        [
            (100, rnd.randbytes(5000)),  # chunk 0
            (3 * cs - 10, rnd.randbytes(20)),  # chunks 2 and 3
            (6 * cs, bytes(cs)),  # chunk 6: written, but zeros
            (9 * cs + 5, b"tail"),  # chunk 9; chunks 10 and 11 are a hole
        ],
    )
    data = image.read_bytes()
    result = create_image_snapshot(repo, str(image), BackupOptions(threads=2))
    snap = result.snapshot
    assert snap.kind == "image" and snap.paths == (str(image),)
    assert result.bytes_total == 12 * cs
    # only chunks holding something other than zeros are stored
    assert 4 * cs <= result.bytes_new < 4 * cs + 4096
    [node] = [n for _p, n in browse.list_path(repo, snap, "/")]
    offsets, pos = {}, 0
    for cid, n in node["content"]:
        offsets[pos] = cid
        pos += n
    assert pos == 12 * cs
    assert sorted(o // cs for o, cid in offsets.items() if cid is not None) == [0, 2, 3, 9]
    assert all(n == cs for cid, n in node["content"] if cid is not None)

    target = tmp_path / "restored"
    target.mkdir()
    restore_snapshot(repo, snap, RestoreOptions(target=str(target)))
    restored = target / "disk.img"
    assert restored.read_bytes() == data
    st_ = os.stat(restored)
    assert st_.st_blocks * 512 <= 4 * cs + 8192  # holes and zero chunks stay holes
    with pytest.raises(UsageError, match="exists"):
        restore_snapshot(repo, snap, RestoreOptions(target=str(restored)))

    # the same image again: nothing new
    again = create_image_snapshot(repo, str(image), BackupOptions(threads=2))
    assert again.bytes_new < 4096


def test_image_snapshot_of_a_directory_is_refused(tmp_path, repo):
    with pytest.raises(SourceError, match="directory"):
        create_image_snapshot(repo, str(tmp_path), BackupOptions())
    with pytest.raises(SourceError, match="does not exist"):
        create_image_snapshot(repo, str(tmp_path / "nope"), BackupOptions())


def test_stream_snapshot(tmp_path, repo):
    data = os.urandom(2 * MiB) + b"INSERT INTO t VALUES (1);\n" * 50000
    result = create_stream_snapshot(repo, "dump.sql", io.BytesIO(data), BackupOptions())
    assert result.bytes_read == len(data) == result.bytes_total
    assert result.snapshot.paths == ("dump.sql",)
    out = io.BytesIO()
    assert browse.cat(repo, result.snapshot, "/dump.sql", out) == len(data)
    assert out.getvalue() == data
    restore(repo, result.snapshot, tmp_path / "t")
    restored = tmp_path / "t" / "dump.sql"
    assert restored.read_bytes() == data
    assert stat.S_IMODE(os.stat(restored).st_mode) == 0o600
    again = create_stream_snapshot(repo, "dump.sql", io.BytesIO(data), BackupOptions())
    assert again.bytes_new < 4096
    empty = create_stream_snapshot(repo, "empty", io.BytesIO(b""), BackupOptions())
    assert browse.cat(repo, empty.snapshot, "/empty", io.BytesIO()) == 0
    for bad in ("", "a/b", ".", ".."):
        with pytest.raises(SourceError):
            create_stream_snapshot(repo, bad, io.BytesIO(b"x"), BackupOptions())


# -- browsing


def test_diff(tmp_path, repo):
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    for name in ("same", "changes", "chmod", "goes", "becomes-dir", "touched"):
        (src / name).write_bytes(name.encode() * 100)
    (src / "dir" / "sub" / "x").write_bytes(b"x")
    (src / "dir" / "kept").write_bytes(b"kept")
    for p in src.rglob("*"):
        os.utime(p, ns=(10**18, 10**18))
    first = backup(repo, src).snapshot

    (src / "changes").write_bytes(b"new content")
    os.chmod(src / "chmod", 0o600)
    (src / "goes").unlink()
    (src / "becomes-dir").unlink()
    (src / "becomes-dir").mkdir()
    os.utime(src / "touched", ns=(10**17, 10**17))
    (src / "new").write_bytes(b"new")
    (src / "newdir" / "inner").mkdir(parents=True)
    (src / "newdir" / "inner" / "f").write_bytes(b"f")
    shutil.rmtree(src / "dir" / "sub")
    second = backup(repo, src).snapshot

    p = str(src)
    changes = {c for c in browse.diff(repo, first, second) if c[1].startswith(p + "/")}
    assert changes == {
        ("M", f"{p}/changes"),
        ("U", f"{p}/chmod"),
        ("-", f"{p}/goes"),
        ("T", f"{p}/becomes-dir"),
        ("U", f"{p}/touched"),
        ("+", f"{p}/new"),
        ("+", f"{p}/newdir"),
        ("+", f"{p}/newdir/inner"),
        ("+", f"{p}/newdir/inner/f"),
        ("-", f"{p}/dir/sub"),
        ("-", f"{p}/dir/sub/x"),
        ("U", f"{p}/dir"),
    }
    assert list(browse.diff(repo, second, second)) == []
    back = {c for c in browse.diff(repo, second, first) if c[1].startswith(p + "/")}
    flip = {"+": "-", "-": "+"}
    assert back == {(flip.get(c, c), path) for c, path in changes}


def test_cat_and_list(tmp_path, repo):
    src = os.fsencode(tmp_path / "src")
    make_tree(src, EVERY_KIND)
    snap = backup(repo, src).snapshot
    s = os.fsdecode(src)
    for name in ("big.bin", "sparse", "hole-only", "big-link", "empty"):
        out = io.BytesIO()
        with open(src + b"/" + name.encode(), "rb") as f:
            want = f.read()
        assert browse.cat(repo, snap, f"{s}/{name}", out) == len(want)
        assert out.getvalue() == want
    with pytest.raises(UsageError, match="dir"):
        browse.cat(repo, snap, f"{s}/sticky", io.BytesIO())
    with pytest.raises(PathNotFound):
        browse.cat(repo, snap, f"{s}/missing", io.BytesIO())
    top = {p for p, _n in browse.list_path(repo, snap, s, recursive=False)}
    assert top == {f"{s}/{os.fsdecode(n)}" for n in os.listdir(src)}
    everything = {p for p, _n in browse.list_path(repo, snap, s)}
    assert f"{s}/sticky/deeper/f" in everything and f"{s}/sticky/empty-dir" in everything
    [(path, node)] = browse.list_path(repo, snap, f"{s}/to-big")
    assert path == f"{s}/to-big" and node["target"] == b"big.bin"
    with pytest.raises(PathNotFound):
        list(browse.list_path(repo, snap, f"{s}/missing"))


# -- verify


def _flip_in_pack(repo, bid):
    loc = repo.cache.lookup(bid)
    pack = bytearray(repo.backend.objects[("data", loc.pack)])
    pack[loc.offset + loc.length // 2] ^= 0x10
    repo.backend.objects[("data", loc.pack)] = bytes(pack)
    return loc.pack


def _damaged(report):
    return {d["snapshot"]: sorted(d["files"]) for d in report.damaged}


def test_verify_names_what_a_damaged_blob_breaks(tmp_path, repo):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    (a / "victim").write_bytes(os.urandom(300000))
    (a / "sub" / "other").write_bytes(os.urandom(1000))
    b.mkdir()
    (b / "unrelated").write_bytes(os.urandom(1000))
    s1 = backup(repo, a).snapshot
    s2 = backup(repo, b).snapshot
    s3 = backup(repo, a).snapshot  # unchanged: uses the same blobs
    assert s3.id != s1.id
    report = verify_store(repo, VerifyOptions(threads=2))
    assert report.ok, report.to_json()
    assert report.snapshots_checked == 3
    assert report.packs_checked == len(list(repo.backend.list("data")))
    assert report.bytes_checked > 300000

    [(cid, _n)] = lookup_path(repo, s1, f"{a}/victim")["content"]
    pack = _flip_in_pack(repo, cid)
    report = verify_store(repo, VerifyOptions(threads=2))
    assert not report.ok
    assert _damaged(report) == {s1.id: [f"{a}/victim"], s3.id: [f"{a}/victim"]}
    assert report.errors and all(pack in e for e in report.errors)

    # verify only reads what it is told to
    quick = verify_store(repo, VerifyOptions(read_data=False))
    assert quick.ok and quick.packs_checked == 0
    only = verify_store(repo, VerifyOptions(snapshots=(s2.id,), threads=2))
    assert only.snapshots_checked == 1 and only.damaged == []


def test_verify_counts_blobs(tmp_path, repo):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"f")
    backup(repo, tmp_path / "a")
    report = verify_store(repo, VerifyOptions(threads=2))
    assert report.ok and report.blobs_checked == repo.cache.count()


def test_verify_names_the_folder_of_a_damaged_tree(tmp_path, repo):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "f").write_bytes(b"f")
    (a / "g").write_bytes(b"g")
    snap = backup(repo, a).snapshot
    _flip_in_pack(repo, lookup_path(repo, snap, f"{a}/sub")["subtree"])
    report = verify_store(repo, VerifyOptions(threads=2))
    assert _damaged(report) == {snap.id: [f"{a}/sub"]}


def test_verify_reports_a_missing_pack(tmp_path, repo):
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_bytes(b"f" * 1000)
    snap = backup(repo, a).snapshot
    [pack] = [n for n, _s in repo.backend.list("data")]
    repo.backend.remove("data", pack)
    report = verify_store(repo, VerifyOptions(threads=2))
    assert any("missing" in e and pack in e for e in report.errors)
    assert _damaged(report) == {snap.id: ["/"]}


# -- prune and gc


def _packs(repo):
    return {n for n, _s in repo.backend.list("data")}


def _three_snapshots(tmp_path, repo):
    """s0 of x (c); s1 of y (a1 + c); s2 of z (b1 + c): s1 alone uses its packs."""
    common = os.urandom(500000)
    made = {}
    for d, own in (("x", None), ("y", "a1"), ("z", "b1")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "common").write_bytes(common)
        if own:
            (tmp_path / d / own).write_bytes(os.urandom(400000))
        before = _packs(repo)
        made[d] = (backup(repo, tmp_path / d).snapshot, _packs(repo) - before)
    return made


def _check_all(repo, tmp_path, dirs):
    for snap in repo.list_snapshots():
        target = tmp_path / f"check-{snap.short_id}-{os.urandom(4).hex()}"
        restore(repo, snap, target)
        [src] = snap.paths
        assert_restored(os.fsencode(src), target)
        assert os.path.basename(src) in dirs
    report = verify_store(repo, VerifyOptions(threads=2))
    assert report.ok, report.to_json()


def test_prune_then_gc_frees_the_packs_only_a_removed_snapshot_used(tmp_path, repo):
    common = os.urandom(500000)
    x, y = tmp_path / "x", tmp_path / "y"
    for d in (x, y):
        d.mkdir()
        (d / "common").write_bytes(common)
    (y / "a1").write_bytes(os.urandom(400000))
    s0 = backup(repo, x, time=datetime(2026, 1, 1, tzinfo=UTC)).snapshot
    before = _packs(repo)
    s1 = backup(repo, y, time=datetime(2026, 1, 2, tzinfo=UTC)).snapshot
    p1 = _packs(repo) - before  # a1 and s1's trees: common was stored with s0
    assert p1
    [(a1, _n)] = lookup_path(repo, s1, f"{y}/a1")["content"]
    (y / "a1").unlink()
    (y / "b1").write_bytes(os.urandom(400000))
    s2 = backup(repo, y, time=datetime(2026, 1, 3, tzinfo=UTC)).snapshot
    sizes = dict(repo.backend.list("data"))
    before = _packs(repo)

    plan = plan_prune(repo.list_snapshots(), KeepPolicy(last=1))
    assert [s.id for s in plan.to_remove] == [s1.id]
    assert {s.id for s in plan.to_keep} == {s0.id, s2.id}
    plan.execute(repo)
    assert _packs(repo) == before  # prune frees nothing by itself
    result = collect_garbage(repo)
    assert result.done
    assert _packs(repo) == before - p1
    assert result.packs_deleted == len(p1) and result.packs_repacked == 0
    assert result.bytes_freed == sum(sizes[p] for p in p1)
    assert result.condemned > 0
    assert repo.cache.lookup(a1) is None
    assert list(repo.backend.list("gc")) == []
    _check_all(repo, tmp_path, {"x", "y"})
    # nothing more to do
    again = collect_garbage(repo)
    assert again.done and again.packs_deleted == 0 and _packs(repo) == before - p1


def test_gc_repacks_a_pack_that_is_partly_used(tmp_path, repo):
    keep = os.urandom(400000)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "gone").write_bytes(os.urandom(400000))
    (tmp_path / "y" / "keep").write_bytes(keep)
    s1 = backup(repo, tmp_path / "y").snapshot
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep").write_bytes(keep)
    backup(repo, tmp_path / "z")
    [(kid, _n)] = lookup_path(repo, s1, f"{tmp_path}/y/keep")["content"]
    old_pack = repo.cache.lookup(kid).pack
    repo.backend.remove("snapshots", s1.id)
    result = collect_garbage(repo)
    assert result.done and result.packs_repacked == 1
    assert old_pack not in _packs(repo)
    assert repo.cache.lookup(kid).pack != old_pack
    _check_all(repo, tmp_path, {"z"})


def test_gc_removes_packs_no_index_names(repo):
    repo.backend.write("data", "ab" * 32, b"left by a killed backup")
    result = collect_garbage(repo)
    assert result.done and result.packs_deleted == 1
    assert _packs(repo) == set()


def test_gc_waits_for_sessions_that_may_reuse_blobs(tmp_path, repo):
    made = _three_snapshots(tmp_path, repo)
    s1, p1 = made["y"]
    repo.backend.remove("snapshots", s1.id)
    before = dict(repo.backend.objects)
    with locks.session(repo.backend, "backup") as running:
        result = collect_garbage(repo, GcOptions(wait=False))
        assert not result.done
        assert result.waiting_for == [running.describe()]
        # nothing is deleted while the session runs; gc only wrote down what it condemns
        assert {k: v for k, v in repo.backend.objects.items() if k[0] not in ("gc", "locks")} == {
            k: v for k, v in before.items() if k[0] not in ("gc", "locks")
        }
        assert load_state(repo)["phase"] == "sweep"
        again = collect_garbage(repo, GcOptions(wait=False))
        assert not again.done and _packs(repo) >= p1
    result = collect_garbage(repo, GcOptions(wait=False))
    assert result.done
    assert not (_packs(repo) & p1)
    assert load_state(repo) is None
    _check_all(repo, tmp_path, {"x", "z"})


def test_backup_during_gc_does_not_reuse_condemned_blobs(tmp_path, repo):
    made = _three_snapshots(tmp_path, repo)
    s1, _p1 = made["y"]
    a1 = (tmp_path / "y" / "a1").read_bytes()
    repo.backend.remove("snapshots", s1.id)
    with locks.session(repo.backend, "backup"):
        assert not collect_garbage(repo, GcOptions(wait=False)).done
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "a1-again").write_bytes(a1)
        during = backup(repo, tmp_path / "w")
        # a1's blob is condemned: stored again rather than referred to
        assert during.bytes_new >= len(a1)
        # an unchanged file of a parent whose chunks are condemned is read again too
        again = backup(repo, tmp_path / "w")
        assert again.snapshot.parent == during.snapshot.id
        assert again.bytes_read == len(a1)
    assert collect_garbage(repo, GcOptions(wait=False)).done
    assert not repo.cache.has_condemned
    _check_all(repo, tmp_path, {"x", "z", "w"})
    # later gcs keep what the new snapshot needs
    assert collect_garbage(repo).done
    _check_all(repo, tmp_path, {"x", "z", "w"})


# -- as root: owners and devices


@pytest.mark.root
def test_round_trip_of_owners_and_devices(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, uid, gid, mode in (("numeric", 1234, 5678, 0o4750), ("nobody", 65534, 65534, 0o2755)):
        p = src / name
        p.write_bytes(name.encode())
        os.chown(p, uid, gid)
        os.chmod(p, mode)  # after chown, which clears setuid and setgid
    (src / "owned-dir").mkdir()
    os.chown(src / "owned-dir", 4321, 8765)
    os.symlink("numeric", src / "owned-link")
    os.chown(src / "owned-link", 1111, 2222, follow_symlinks=False)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(src / "loop", 0, 6)
    repo = make_repository()
    result = backup(repo, src)
    assert result.errors == ()
    target = tmp_path / "t"
    restore(repo, result.snapshot, target)
    assert_restored(os.fsencode(src), target)
    restored = target / str(src).lstrip("/")
    assert (os.stat(restored / "numeric").st_uid, os.stat(restored / "numeric").st_gid) == (
        1234,
        5678,
    )
    assert stat.S_ISCHR(os.lstat(restored / "null").st_mode)
    assert os.lstat(restored / "loop").st_rdev == os.makedev(7, 200)
