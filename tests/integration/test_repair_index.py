"""A damaged index object: found, gc stays away, and repair-index rebuilds it from the packs."""

import json

from tests.integration.conftest import (
    assert_one_line_error,
    assert_restores,
    create,
    flip_byte,
    make_sample_tree,
    manifest,
)


def test_damaged_index_is_rebuilt_from_packs(run, store, tmp_path):
    src = make_sample_tree(tmp_path / "src")
    expected = manifest(src)
    snap = create(run, store, src)["id"]
    [index] = list((store / "index").iterdir())
    flip_byte(index, index.stat().st_size // 2)
    fresh = {"ISIDORUS_CACHE_DIR": str(tmp_path / "fresh-cache")}  # nothing remembered

    listed = json.loads(run("backup", "list", store, "--json", env=fresh).out)
    assert [s["id"] for s in listed] == [snap]
    r = run("backup", "verify", store, "--json", env=fresh, check=1)
    report = json.loads(r.out)
    assert not report["ok"] and any(index.name in e for e in report["errors"])
    assert report["damaged"] and report["damaged"][0]["snapshot"] == snap
    gc = run("backup", "gc", store, env=fresh, check=False)
    assert gc.code != 0
    assert_one_line_error(gc, "repair-index")
    packs_before = sorted(p.name for p in (store / "data").rglob("*") if p.is_file())

    r = json.loads(run("backup", "repair-index", store, "--json", env=fresh).out)
    assert r["unreadable_packs"] == [] and r["index_removed"] == 1
    assert r["packs_indexed"] == len(packs_before)
    assert index.name not in {p.name for p in (store / "index").iterdir()}
    assert json.loads(run("backup", "verify", store, "--json", env=fresh).out)["ok"]
    assert_restores(run, store, snap, src, expected, tmp_path)
    again = json.loads(run("backup", "repair-index", store, "--json", env=fresh).out)
    assert again["packs_indexed"] == r["packs_indexed"]  # idempotent
    assert json.loads(run("backup", "gc", store, "--json", env=fresh).out)["done"]
    assert sorted(p.name for p in (store / "data").rglob("*") if p.is_file()) == packs_before
