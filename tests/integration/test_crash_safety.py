"""Crash safety: `kill -9` at random moments, then check that nothing was lost.

After every kill the store verifies, every snapshot it lists restores exactly what it
captured, and the next command is not blocked by the session the dead process left.
The moments are random, but drawn from a fixed seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from .conftest import (
    TIMEOUT,
    Isidorus,
    assert_intact,
    assert_restores,
    create,
    manifest,
    snapshots,
    store_litter,
    wait_until,
    write_random,
)

Env = Mapping[str, str | None] | None
SEED = 20261125
BIG = 1_500_000

pytestmark = pytest.mark.slow


def make_tree(root: Path, rng: random.Random, files: int = 300, bigs: int = 6) -> Path:
    """`files` files in 12 folders, `bigs` of them of BIG bytes, the others small."""
    for i in range(files):
        d = root / f"d{i % 12:02d}"
        d.mkdir(parents=True, exist_ok=True)
        if i < bigs:
            write_random(d / f"big-{i:03d}.bin", BIG, rng)
        else:
            write_random(d / f"f-{i:03d}.bin", rng.randint(0, 12_000), rng)
    return root


def mutate(root: Path, rng: random.Random, step: int) -> None:
    """New content for two big files and some small ones; one file more, one less."""
    for p in rng.sample(sorted(root.glob("*/big-*.bin")), 2):
        write_random(p, BIG, rng)
    smalls = sorted(root.glob("*/f-*.bin"))
    for p in rng.sample(smalls, 20):
        write_random(p, rng.randint(0, 12_000), rng)
    (root / f"d{step % 12:02d}" / f"new-{step}.txt").write_text(f"step {step}\n")
    rng.choice(smalls).unlink()


def sessions(store: Path) -> set[str]:
    return set(os.listdir(store / "locks"))


def start(
    run: Isidorus,
    store: Path,
    *args: object,
    env: Env = None,
    registered: bool = True,
) -> subprocess.Popen[bytes]:
    """Start a command and return once it has registered its session (or ended); with
    `registered` False, at once."""
    before = sessions(store)
    p = run.popen("backup", *args, env=env)
    if registered:
        wait_until(
            lambda: bool(sessions(store) - before) or p.poll() is not None,
            "a session",
            interval=0.001,
        )
    return p


def timed(
    run: Isidorus, store: Path, *args: object, env: Env = None, registered: bool = True
) -> float:
    """Run a command to its end; returns how long it worked once its session was
    registered (or, with `registered` False, in all): the span in which to kill it."""
    p = start(run, store, *args, env=env, registered=registered)
    t0 = time.monotonic()
    assert p.wait(timeout=TIMEOUT) == 0
    return time.monotonic() - t0


class Killer:
    """kill -9 commands at a random moment of their work: once their session is
    registered or, with `registered` False, from their start (for commands whose work
    is over in a few milliseconds). The window starts as long as one uninterrupted run;
    when a command ends before its moment comes, the window shrinks to what that run
    took, so kills keep landing on a loaded machine as on an idle one."""

    def __init__(
        self, run: Isidorus, rng: random.Random, span: float, registered: bool = True
    ) -> None:
        self.run = run
        self.rng = rng
        self.span = span
        self.registered = registered
        self.kills = 0
        self.attempts = 0

    def __call__(self, store: Path, *args: object, env: Env = None) -> bool:
        """Run `backup ARGS`; True when it was killed while running."""
        self.attempts += 1
        p = start(self.run, store, *args, env=env, registered=self.registered)
        t0 = time.monotonic()
        try:
            p.wait(timeout=self.rng.uniform(0.0, self.span))
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
        _out, err = p.communicate(timeout=TIMEOUT)  # reaped: its pid is really gone now
        if p.returncode == -signal.SIGKILL:
            self.kills += 1
            return True
        assert p.returncode == 0, err.decode()
        assert b"Traceback" not in err
        self.span = min(self.span, time.monotonic() - t0)
        return False


def ids(run: Isidorus, store: Path) -> list[str]:
    return [s["id"] for s in snapshots(run, store)]


def test_kill_create_at_random_moments(run, store, tmp_path):
    rng = random.Random(SEED)
    src = make_tree(tmp_path / "src", rng)
    captured = {create(run, store, src)["id"]: manifest(src)}
    mutate(src, rng, 0)
    expected = manifest(src)
    span = timed(run, store, "create", store, src)
    [new] = set(ids(run, store)) - set(captured)
    captured[new] = expected

    kill = Killer(run, rng, span)
    while kill.kills < 5:
        assert kill.attempts < 15, "kills keep missing the running create"
        step = kill.attempts + 1
        mutate(src, rng, step)
        expected = manifest(src)
        before = set(captured)
        kill(store, "create", store, src)
        listed = ids(run, store)
        fresh = [s for s in listed if s not in before]
        assert len(fresh) <= 1
        captured.update((s, expected) for s in fresh)
        assert set(listed) == set(captured)  # nothing older was lost
        assert_intact(run, store)
        for s in fresh:
            assert_restores(run, store, s, src, expected, tmp_path)

    # the sessions of the killed processes block nothing: a last backup runs through
    mutate(src, rng, 99)
    expected = manifest(src)
    last = create(run, store, src)
    captured[last["id"]] = expected
    assert_intact(run, store)
    for s in ids(run, store):
        assert_restores(run, store, s, src, captured[s], tmp_path)
    run("backup", "unlock", store)
    assert os.listdir(store / "locks") == []


def test_kill_prune_at_random_moments(run, store, tmp_path):
    rng = random.Random(SEED + 1)
    contents = {}
    for i in range(8):
        data = rng.randbytes(150_000)
        doc = create(
            run,
            store,
            "--stdin",
            "dump.sql",
            "--time",
            f"2026-05-{i + 1:02d}T03:00:00Z",
            input=data,
        )
        contents[doc["id"]] = data
    order = ids(run, store)
    span = timed(run, store, "prune", store, "--keep-last", "8", registered=False)

    kill = Killer(run, rng, span, registered=False)
    for keep in (6, 4, 2):
        before = ids(run, store)
        while not kill(store, "prune", store, "--keep-last", keep):
            assert kill.attempts < 12, "kills keep missing the running prune"
        after = ids(run, store)
        assert set(after) <= set(before) and set(order[-keep:]) <= set(after)
        assert_intact(run, store)
        # the dead prune's maintenance lock does not block the next one
        doc = json.loads(run("backup", "prune", store, "--keep-last", keep, "--json").out)
        assert doc["keep"] == keep
        assert ids(run, store) == order[-keep:]
        newest = order[-1]
        assert run("backup", "cat", store, newest, "/dump.sql", text=False).out == contents[newest]
    gc = json.loads(run("backup", "gc", store, "--json").out)
    assert gc["done"] is True and gc["bytes_freed"] > 0
    assert_intact(run, store)
    for s in ids(run, store):
        target = tmp_path / f"r-{s[:8]}"
        run("backup", "restore", store, s, target)
        assert (target / "dump.sql").read_bytes() == contents[s]


@pytest.fixture
def pruned_store(run, tmp_path):
    """A store with garbage: five snapshots of a changing tree, the three oldest pruned.
    Also a copy of the tree as the oldest pruned snapshot had it."""
    rng = random.Random(SEED + 2)
    src = make_tree(tmp_path / "src", rng, files=60, bigs=3)
    store = tmp_path / "prepared"
    run("backup", "init", store, "--kdf-memory", "8", "--kdf-time", "1")
    captured = {}
    old = tmp_path / "old-tree"
    for step in range(5):
        if step:
            mutate(src, rng, step)
        if step == 1:
            shutil.copytree(src, old, symlinks=True)
        captured[create(run, store, src)["id"]] = manifest(src)
    run("backup", "prune", store, "--keep-last", "2")
    kept = ids(run, store)
    assert len(kept) == 2
    return store, src, {s: captured[s] for s in kept}, old


def test_kill_gc_at_random_moments(run, pruned_store, tmp_path):
    prepared, src, captured, old = pruned_store
    rng = random.Random(SEED + 3)
    old_expected = manifest(old)
    calibrate = tmp_path / "calibrate"
    shutil.copytree(prepared, calibrate)
    env = {"ISIDORUS_CACHE_DIR": str(tmp_path / "cache-calibrate")}
    span = timed(run, calibrate, "gc", calibrate, env=env)

    kill = Killer(run, rng, span)
    for i in range(3):
        while True:  # a fresh copy of the store for each attempt, until gc dies in it
            assert kill.attempts < 10, "kills keep missing the running gc"
            store = tmp_path / f"store-{i}-{kill.attempts}"
            shutil.copytree(prepared, store)
            own_cache = {"ISIDORUS_CACHE_DIR": str(tmp_path / f"cache-{i}-{kill.attempts}")}
            if kill(store, "gc", store, env=own_cache):
                break
        r = run("backup", "verify", store, "--json", env=own_cache, check=False)
        assert r.code == 0 and json.loads(r.out)["ok"], r
        # a backup between the kill and the next gc: it holds content that only a pruned
        # snapshot had, so gc must not free it
        new = create(run, store, old, env=own_cache)
        doc = json.loads(run("backup", "gc", store, "--json", env=own_cache).out)
        assert doc["done"] is True
        assert os.listdir(store / "gc") == []
        r = run("backup", "verify", store, "--json", env=own_cache, check=False)
        assert r.code == 0 and json.loads(r.out)["ok"], r
        listed = [s["id"] for s in snapshots(run, store, env=own_cache)]
        assert sorted(listed) == sorted([*captured, new["id"]])
        for s, expected in captured.items():
            target = tmp_path / f"r-{i}-{s[:8]}"
            run("backup", "restore", store, s, target, env=own_cache)
            assert manifest(target / src.relative_to("/")) == expected
        target = tmp_path / f"r-{i}-new"
        run("backup", "restore", store, new["id"], target, env=own_cache)
        assert manifest(target / old.relative_to("/")) == old_expected


def test_gc_killed_while_it_waits_for_a_backup(run, pruned_store, tmp_path):
    store, src, captured, old = pruned_store
    old_expected = manifest(old)
    stream = random.Random(SEED + 4).randbytes(400_000)
    held = run.popen("backup", "create", store, "--stdin", "held.bin", stdin=subprocess.PIPE)
    assert held.stdin is not None
    held.stdin.write(stream[:200_000])
    held.stdin.flush()
    wait_until(lambda: len(os.listdir(store / "locks")) == 1, "the held backup's session")

    gc = run.popen("backup", "gc", store)
    # gc marks, then waits for the held backup, which may still reuse what it condemned
    wait_until(lambda: gc.poll() is not None or gc_waits(store), "gc to wait")
    assert gc.poll() is None
    time.sleep(0.2)
    gc.kill()
    gc.communicate(timeout=TIMEOUT)

    # a backup that starts now must not rely on what the dead gc condemned
    new = create(run, store, old)
    r = run("backup", "gc", store, "--no-wait", "--json")
    doc = json.loads(r.out)
    assert doc["done"] is False and any(f"pid {held.pid}" in w for w in doc["waiting_for"])
    assert_intact(run, store)

    held.stdin.write(stream[200_000:])
    held.stdin.close()
    assert held.wait(timeout=TIMEOUT) == 0
    doc = json.loads(run("backup", "gc", store, "--json").out)
    assert doc["done"] is True and doc["bytes_freed"] > 0
    assert_intact(run, store)
    assert store_litter(store) == []
    for s, expected in captured.items():
        assert_restores(run, store, s, src, expected, tmp_path)
    assert_restores(run, store, new["id"], old, old_expected, tmp_path)
    [streamed] = [s for s in snapshots(run, store) if s["paths"] == ["held.bin"]]
    assert run("backup", "cat", store, streamed["id"], "/held.bin", text=False).out == stream


def gc_waits(store: Path) -> bool:
    """gc has written its state and listed the sessions it waits for."""
    return (store / "gc" / "state").exists() and (store / "locks" / "exclusive").exists()


def reading_from(pid: int, tree: Path) -> bool:
    """Whether process pid has a file of tree open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{tree}/"):
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("moment", ["registered", "reading"])
def test_gc_and_prune_while_a_backup_runs(run, pruned_store, tmp_path, moment):
    """The backup is frozen (SIGSTOP) either just after it registered its session, so
    it will find gc's list of condemned blobs, or while it reads its files, past that
    point, so it may reuse condemned blobs and gc must spare them."""
    store, src, captured, old = pruned_store
    # the backup's tree: what the oldest (pruned) snapshot held, plus new data
    grow = random.Random(SEED + 5)
    for i in range(4):
        write_random(old / f"extra-{i}.bin", 2_000_000, grow)
    expected = manifest(old)
    backup = start(run, store, "create", store, old, "--json")
    if moment == "reading":
        deadline = time.monotonic() + TIMEOUT
        while not reading_from(backup.pid, old) and backup.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    # freeze the backup mid-run, so that prune and gc certainly happen while it runs
    assert backup.poll() is None
    os.kill(backup.pid, signal.SIGSTOP)
    try:
        prune = json.loads(run("backup", "prune", store, "--keep-last", "1", "--json").out)
        gc = run.popen("backup", "gc", store, "--json")
        wait_until(lambda: gc.poll() is not None or gc_waits(store), "gc to wait")
        assert gc.poll() is None  # it waits: the backup may reuse what gc condemned
    finally:
        os.kill(backup.pid, signal.SIGCONT)
    out, err = backup.communicate(timeout=TIMEOUT)
    assert backup.returncode == 0, err.decode()
    made = json.loads(out)["id"]
    gc_out, gc_err = gc.communicate(timeout=TIMEOUT)
    assert gc.returncode == 0, gc_err.decode()
    assert json.loads(gc_out)["done"] is True
    assert f"pid {backup.pid}" in gc_err.decode()  # it said whom it waited for

    kept = {s["id"] for g in prune["groups"] for s in g["snapshots"] if s["keep"]}
    assert len(kept) == 1 and kept <= set(captured)
    assert set(ids(run, store)) == kept | {made}
    assert_intact(run, store)
    assert_restores(run, store, made, old, expected, tmp_path)
    [k] = kept
    assert_restores(run, store, k, src, captured[k], tmp_path)
    # once everything has ended, gc leaves nothing behind
    again = json.loads(run("backup", "gc", store, "--json").out)
    assert again["done"] is True
    assert store_litter(store) == [] and os.listdir(store / "gc") == []


def test_leftovers_of_interrupted_writes_are_cleaned(run, store, tmp_path):
    leftover = store / "tmp" / "0123456789abcdef-0011223344556677.tmp"
    leftover.write_bytes(os.urandom(100_000))
    old = time.time() - 7 * 24 * 3600
    os.utime(leftover, (old, old))
    run("backup", "gc", store)
    run("backup", "unlock", store)
    assert not leftover.exists()
