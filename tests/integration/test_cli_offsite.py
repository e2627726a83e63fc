"""`isidorus backup sync|scrub|remote` and `verify --repair-from`, end to end through the
console script."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .conftest import (
    assert_intact,
    assert_one_line_error,
    assert_restores,
    create,
    flip_byte,
    init_store,
    make_sample_tree,
    manifest,
    packs,
    snapshots,
    store_litter,
    write_random,
)

NO_PASS = {"ISIDORUS_PASSPHRASE": None}


def objects(store: Path) -> dict[str, bytes]:
    """The store's objects and config, by path (what a copy must hold the same)."""
    out = {"config": (store / "config").read_bytes()}
    for kind in ("keys", "snapshots", "index", "data"):
        for p in (store / kind).rglob("*"):
            if p.is_file():
                out[f"{kind}/{p.name}"] = p.read_bytes()
    return out


def sync(run, source, dest, *args, **kw):
    r = run("backup", "sync", source, dest, *args, "--json", **kw)
    doc: dict = json.loads(r.out)
    return doc


def test_sync_needs_no_passphrase_and_the_copy_restores(run, store, tmp_path):
    import random

    src = make_sample_tree(tmp_path / "src")
    first = manifest(src)
    a = create(run, store, src)["id"]
    write_random(src / "data" / "more.bin", 300_000, random.Random(5))
    second = manifest(src)
    b = create(run, store, src)["id"]
    copy = tmp_path / "off-site" / "copy"

    doc = sync(run, store, copy, env=NO_PASS)
    assert doc["ok"] is True and doc["created"] is True
    assert doc["snapshots_copied"] == 2 and doc["packs_sent"] == len(packs(store))
    assert doc["bytes_sent"] == sum(len(v) for v in objects(store).values())
    assert objects(copy) == objects(store)
    assert store_litter(copy) == [] and store_litter(store) == []

    # the passphrase of the store opens the copy
    assert [s["id"] for s in snapshots(run, copy)] == [a, b]
    assert_intact(run, copy)
    assert_restores(run, copy, a, src, first, tmp_path)
    assert_restores(run, copy, b, src, second, tmp_path)

    again = sync(run, store, copy, env=NO_PASS)
    assert (again["snapshots_copied"], again["objects_sent"], again["bytes_sent"]) == (0, 0, 0)
    r = run("backup", "sync", store, copy, env=NO_PASS)
    assert r.out.startswith("0 snapshots copied: 0 packs")


def test_sync_mirrors_prune_and_gc(run, store, tmp_path):
    import random

    rng = random.Random(7)
    src = tmp_path / "src"
    src.mkdir()
    for _ in range(3):
        write_random(src / "f.bin", 200_000, rng)  # what the older snapshots had is garbage
        create(run, store, src)
    copy = tmp_path / "copy"
    sync(run, store, copy, env=NO_PASS)
    run("backup", "prune", store, "--keep-last", "1")
    assert json.loads(run("backup", "gc", store, "--json").out)["bytes_freed"] > 0
    doc = sync(run, store, copy, env=NO_PASS)
    assert doc["snapshots_removed"] == 2 and doc["objects_removed"] > 2
    assert objects(copy) == objects(store)
    assert [s["id"] for s in snapshots(run, copy)] == [s["id"] for s in snapshots(run, store)]
    assert_intact(run, copy)


def test_sync_of_chosen_snapshots_needs_the_passphrase(run, store, tmp_path):
    src = make_sample_tree(tmp_path / "src")
    a = create(run, store, src)["id"]
    (src / "hello.txt").write_text("changed\n")
    create(run, store, src)
    copy = tmp_path / "copy"
    r = run("backup", "sync", store, copy, "--snapshot", a[:8], env=NO_PASS, check=False)
    assert_one_line_error(r, "passphrase")
    assert not copy.exists()  # nothing half made
    doc = sync(run, store, copy, "--snapshot", a[:8])
    assert doc["snapshots_copied"] == 1
    assert [s["id"] for s in snapshots(run, copy)] == [a]
    assert_intact(run, copy)


def test_sync_refuses_another_store_in_one_line(run, store, tmp_path):
    other = init_store(run, tmp_path / "other")
    before = objects(other)
    r = run("backup", "sync", store, other, env=NO_PASS, check=False)
    assert r.code == 1
    assert_one_line_error(r, "holds another store")
    assert objects(other) == before
    r = run("backup", "sync", store, store, env=NO_PASS, check=False)
    assert_one_line_error(r, "same store")
    r = run("backup", "sync", tmp_path / "nowhere", tmp_path / "c", env=NO_PASS, check=False)
    assert_one_line_error(r, "does not exist")


def test_scrub_finds_damage_without_the_passphrase_and_repairs_it(run, store, tmp_path):
    src = make_sample_tree(tmp_path / "src")
    snap = create(run, store, src)["id"]
    copy = tmp_path / "copy"
    sync(run, store, copy, env=NO_PASS)
    doc = json.loads(run("backup", "scrub", copy, "--json", env=NO_PASS).out)
    assert doc["ok"] is True and doc["objects_checked"] == len(objects(copy)) - 1

    [pack] = packs(copy)
    [index] = (copy / "index").iterdir()
    [key] = (copy / "keys").iterdir()
    victims = {f"data/{pack.name}", f"index/{index.name}", f"keys/{key.name}", f"snapshots/{snap}"}
    for p in (pack, index, key, copy / "snapshots" / snap):
        flip_byte(p, p.stat().st_size // 3)
    r = run("backup", "scrub", copy, env=NO_PASS, check=1)
    assert {line.split()[1].rstrip(":") for line in r.out.splitlines()[:-1]} == victims
    assert r.out.splitlines()[-1].startswith("DAMAGED:")

    r = run("backup", "scrub", copy, "--repair-from", store, "--json", env=NO_PASS)
    doc = json.loads(r.out)
    assert doc["ok"] is True and set(doc["repaired"]) == victims and doc["not_repaired"] == []
    assert objects(copy) == objects(store)
    assert store_litter(copy) == []
    assert json.loads(run("backup", "scrub", copy, "--json", env=NO_PASS).out)["ok"] is True
    assert_intact(run, copy)

    # damaged in both copies: named, and the exit code says so
    flip_byte(pack, 10)
    flip_byte(store / "data" / pack.name[:2] / pack.name, 20)
    r = run("backup", "scrub", copy, "--repair-from", store, env=NO_PASS, check=1)
    assert f"not repaired data/{pack.name}: it is damaged in {store} too" in r.out


def test_verify_repair_from_another_copy(run, store, tmp_path):
    src = make_sample_tree(tmp_path / "src")
    expected = manifest(src)
    snap = create(run, store, src)["id"]
    copy = tmp_path / "copy"
    sync(run, store, copy, env=NO_PASS)
    [pack] = packs(store)
    flip_byte(pack, pack.stat().st_size // 2)
    run("backup", "verify", store, check=1)

    r = run("backup", "verify", store, "--repair-from", copy)
    assert f"repaired data/{pack.name}" in r.out and r.out.splitlines()[-1].startswith("intact")
    assert_intact(run, store)
    assert_restores(run, store, snap, src, expected, tmp_path)

    pack.unlink()
    (copy / "data" / pack.name[:2] / pack.name).unlink()
    r = run("backup", "verify", store, "--repair-from", copy, "--json", check=1)
    doc = json.loads(r.out)
    assert doc["ok"] is False and doc["before"]["objects"] == [f"data/{pack.name}"]
    assert doc["not_repaired"] == [
        {"object": f"data/{pack.name}", "problem": f"{copy} does not have it"}
    ]


def test_remotes(run, store, tmp_path):
    config = tmp_path / "etc" / "isidorus.toml"
    config.parent.mkdir()
    main = b"# the admin's own notes\ncache_dir = '" + str(tmp_path / "c2").encode() + b"'\n"
    config.write_bytes(main)
    env = {"ISIDORUS_CONFIG": str(config)}
    copy = tmp_path / "copy"

    r = run("backup", "remote", "add", "usb", copy, env=env)
    assert "remote:usb" in r.out
    run("backup", "remote", "add", "far", "ssh://backup@example.org:2222/srv/isidorus", env=env)
    run("backup", "remote", "add", "bucket", "s3://my-bucket/isidorus", env=env)
    listed = json.loads(run("backup", "remote", "list", "--json", env=env).out)
    assert [(x["name"], x["url"]) for x in listed] == [
        ("bucket", "s3://my-bucket/isidorus"),
        ("far", "ssh://backup@example.org:2222/srv/isidorus"),
        ("usb", str(copy)),
    ]
    assert config.read_bytes() == main  # the main file is never rewritten
    remotes_file = tmp_path / "etc" / "isidorus.toml.d" / "remotes.toml"
    assert tomllib.loads(remotes_file.read_text())["remotes"]["usb"] == {"url": str(copy)}

    # a remote's name stands for its place wherever a STORE goes
    src = make_sample_tree(tmp_path / "src")
    snap = create(run, store, src, env=env)["id"]
    doc = json.loads(
        run("backup", "sync", store, "remote:usb", "--json", env={**env, **NO_PASS}).out
    )
    assert doc["snapshots_copied"] == 1
    assert [s["id"] for s in snapshots(run, "remote:usb", env=env)] == [snap]
    run("backup", "scrub", "remote:usb", env={**env, **NO_PASS})
    r = run("backup", "list", "remote:nope", env=env, check=False)
    assert_one_line_error(r, "no remote 'nope'", "remote list")

    # other keys of the remotes file stay as they were
    text = remotes_file.read_text() + "\n[remotes.mine]\nurl = '/srv/mine'\nnote = 'by hand'\n"
    remotes_file.write_text(text)
    run("backup", "remote", "remove", "far", env=env)
    doc = tomllib.loads(remotes_file.read_text())
    assert doc["remotes"]["mine"] == {"url": "/srv/mine", "note": "by hand"}
    assert "far" not in doc["remotes"]
    assert [
        x["name"] for x in json.loads(run("backup", "remote", "list", "--json", env=env).out)
    ] == [
        "bucket",
        "mine",
        "usb",
    ]
    assert list(remotes_file.parent.iterdir()) == [remotes_file]  # no temporary file left


def test_remote_errors_are_one_line(run, tmp_path):
    env = {"ISIDORUS_CONFIG": str(tmp_path / "isidorus.toml")}
    cases = [
        (("add", "x", "relative/path"), "relative path"),
        (("add", "x", "ssh://host"), "no path"),
        (("add", "x", "ssh://host:99999/srv"), "port"),
        (("add", "x", "ssh://user:secret@host/srv"), "password"),
        (("add", "x", "s3://No_Such"), "bucket"),
        (("add", "x", "ftp://host/srv"), "ftp://"),
        (("add", "x", ""), "empty"),
        (("add", "bad/name", "/srv/x"), "not a remote name"),
        (("remove", "nope"), "no remote 'nope'"),
    ]
    for args, words in cases:
        r = run("backup", "remote", *args, env=env, check=False)
        assert r.code == 2, r
        assert_one_line_error(r, words)
    run("backup", "remote", "add", "x", "/srv/x", env=env)
    r = run("backup", "remote", "add", "x", "/srv/y", env=env, check=False)
    assert_one_line_error(r, "exists")
    (tmp_path / "isidorus.toml").write_text("[remotes.hand]\nurl = '/srv/hand'\n")
    r = run("backup", "remote", "remove", "hand", env=env, check=False)
    assert_one_line_error(r, "defined in", "isidorus.toml")
    assert run("backup", "remote", "list", env=env).out.splitlines() == [
        "hand  /srv/hand",
        "x  /srv/x",
    ]
