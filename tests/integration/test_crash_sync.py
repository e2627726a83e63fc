"""`kill -9` of sync at random moments: the copy stays a working store whose snapshots
all restore, and the next sync carries on without sending again what had arrived."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from .conftest import (
    Isidorus,
    assert_intact,
    assert_restores,
    create,
    manifest,
    snapshots,
    store_litter,
)
from .test_crash_safety import SEED, Killer, make_tree, mutate, timed

pytestmark = pytest.mark.slow
NO_PASS = {"ISIDORUS_PASSPHRASE": None}


def objects(store: Path) -> dict[str, int]:
    """The sizes of a store's objects and config, by path."""
    out = {}
    for p in store.rglob("*"):
        rel = p.relative_to(store).parts
        if p.is_file() and rel[0] in ("config", "keys", "snapshots", "index", "data"):
            out[f"{rel[0]}/{p.name}"] = p.stat().st_size
    return out


def check_copy(run: Isidorus, source: Path, copy: Path, captured: dict, src: Path, scratch: Path):
    """What a killed sync left: nothing, a store being made, or a working copy whose
    snapshots are snapshots of the source and restore whole."""
    if not (copy / "config").exists():
        assert not copy.exists() or not any((copy / "snapshots").glob("*"))
        return
    listed = [s["id"] for s in snapshots(run, copy)]
    assert set(listed) <= set(captured)
    assert_intact(run, copy)
    if listed:
        newest = listed[-1]
        assert_restores(run, copy, newest, src, captured[newest], scratch)


def resume(run: Isidorus, source: Path, copy: Path) -> None:
    """Sync again, to the end: it sends exactly what the copy still lacks."""
    have = objects(copy)
    want = objects(source)
    doc = json.loads(run("backup", "sync", source, copy, "--json", env=NO_PASS).out)
    assert doc["ok"] is True
    lacking = sum(size for name, size in want.items() if have.get(name) != size)
    if "config" in have:
        assert doc["bytes_sent"] == lacking
    else:  # killed while the copy was being made: that starts over (a key file)
        assert (
            lacking
            <= doc["bytes_sent"]
            <= lacking + sum(s for n, s in want.items() if n.startswith("keys/"))
        )
    assert objects(copy) == want
    assert store_litter(copy) == []


def test_kill_sync_at_random_moments(run, store, tmp_path):
    rng = random.Random(SEED + 10)
    src = make_tree(tmp_path / "src", rng, files=200, bigs=10)
    captured = {create(run, store, src)["id"]: manifest(src)}
    mutate(src, rng, 1)
    captured[create(run, store, src)["id"]] = manifest(src)

    calibrate = tmp_path / "calibrate"
    span = timed(run, store, "sync", store, calibrate, env=NO_PASS)
    shutil.rmtree(calibrate)
    kill = Killer(run, rng, span)

    # the first sync, killed: the copy is made anew each time
    for i in range(3):
        while True:
            assert kill.attempts < 12, "kills keep missing the running sync"
            copy = tmp_path / f"copy-{i}-{kill.attempts}"
            if kill(store, "sync", store, copy, env=NO_PASS):
                break
            shutil.rmtree(copy)
        check_copy(run, store, copy, captured, src, tmp_path)
        resume(run, store, copy)

    # an incremental sync, killed, on the last copy
    for step in range(2, 4):
        mutate(src, rng, step)
        captured[create(run, store, src)["id"]] = manifest(src)
        before = set(objects(copy))
        killed = kill(store, "sync", store, copy, env=NO_PASS)
        assert set(objects(copy)) >= before  # a sync only adds until it has all
        check_copy(run, store, copy, captured, src, tmp_path)
        if killed:
            resume(run, store, copy)
    assert [s["id"] for s in snapshots(run, copy)] == [s["id"] for s in snapshots(run, store)]
    for s, expected in captured.items():
        assert_restores(run, copy, s, src, expected, tmp_path)
