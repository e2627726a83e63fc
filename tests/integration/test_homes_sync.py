"""Off-site copies at homes over SSH, end to end: the real console script on this side,
real sshd in network namespaces on the other (tests/integration/homes.py), the home's
account confined by the forced command `isidorus backup serve --stdio … --append-only`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    TIMEOUT,
    assert_one_line_error,
    create,
    flip_byte,
    init_store,
    make_sample_tree,
    manifest,
    packs,
    restored,
    wait_until,
    write_random,
)
from tests.integration.homes import Home, Homes

pytestmark = [pytest.mark.root, pytest.mark.slow]

NO_PASS = {"ISIDORUS_PASSPHRASE": None}


def ssh_env(homes: Homes, **extra: str | None) -> dict[str, str | None]:
    # keepalives a second apart: a cut link is noticed in seconds, not a minute
    command = f"{homes.ssh_command} -o ServerAliveInterval=1 -o ServerAliveCountMax=3"
    return {"ISIDORUS_SSH_COMMAND": command, **extra}


def serve_at(homes: Homes, home: Home, *extra: str) -> None:
    """Authorize the client's key at the home with the forced command a home uses."""
    command = f"{homes.isidorus} backup serve --stdio {home.storage} --append-only"
    home.authorize(homes.key_pub, command=" ".join([command, *extra]))


def copy_dir(home: Home) -> Path:
    return Path(home.storage) / "store"


def objects(store: Path) -> dict[str, int]:
    out = {}
    for kind in ("keys", "snapshots", "index", "data"):
        for p in (store / kind).rglob("*"):
            if p.is_file():
                out[f"{kind}/{p.name}"] = p.stat().st_size
    return out


def sync(run, source, dest, *args, check=True, **kw):
    r = run("backup", "sync", source, dest, *args, "--json", check=check, **kw)
    return json.loads(r.out) if r.out.strip() else r


def grow(src: Path, name: str, size: int, seed: int) -> None:
    write_random(src / name, size, random.Random(seed))


def test_first_and_incremental_sync_over_a_shaped_link_then_restore(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    home.shape("20mbit")
    store = init_store(run, tmp_path / "store")
    src = make_sample_tree(tmp_path / "src")
    create(run, store, src)
    url = home.url()
    env = ssh_env(homes, **NO_PASS)

    first = sync(run, store, url, env=env)
    assert first["ok"] and first["created"] and first["snapshots_copied"] == 1
    assert objects(copy_dir(home)) == objects(store)
    assert first["bytes_sent"] == sum(objects(store).values()) + (store / "config").stat().st_size
    assert first["chunks_sent"] == first["packs_sent"] == len(packs(store))

    before = objects(store)
    grow(src, "new.bin", 700_000, 7)
    second_manifest = manifest(src)
    create(run, store, src)
    new = {k: v for k, v in objects(store).items() if k not in before}
    new_packs = sum(v for k, v in new.items() if k.startswith("data/"))
    inc = sync(run, store, url, env=env)
    assert inc["snapshots_copied"] == 1 and inc["packs_sent"] == 1
    assert inc["bytes_sent"] == sum(new.values())  # exactly the new objects
    assert inc["bytes_sent"] <= 1.1 * new_packs
    assert objects(copy_dir(home)) == objects(store)
    # the home holds sealed objects only: no file name, no content in the clear
    for p in copy_dir(home).rglob("*"):
        if p.is_file() and p.name != "config":
            assert b"hello, world" not in p.read_bytes() and b"new.bin" not in p.read_bytes()

    # the copy restores, verifies (a sample of its packs) over ssh, with the passphrase
    target = tmp_path / "restored"
    run("backup", "restore", url, "latest", target, env=ssh_env(homes))
    assert manifest(restored(target, src)) == second_manifest
    r = run("backup", "verify", url, "--sample", "50", "--json", env=ssh_env(homes))
    assert json.loads(r.out)["ok"] is True


def test_a_cut_link_and_a_killed_sync_resume_without_sending_again(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    store = init_store(run, tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):  # a pack per backup: five packs of 1.5 MB
        grow(src, f"part{i}.bin", 1_500_000, i)
        create(run, store, src)
    total = len(packs(store))
    url = home.url()
    env = ssh_env(homes, **NO_PASS)
    home.shape("8mbit")  # about 1 MB/s: the sync takes several seconds

    def arrived() -> int:
        return len(list((copy_dir(home) / "data").glob("*/*")))

    # 1. the link goes down in the middle
    p = run.popen("backup", "sync", store, url, env=env)
    wait_until(lambda: arrived() >= 1, "a first pack at the home", timeout=60)
    home.link_down()
    try:
        out, err = p.communicate(timeout=60)
    finally:
        home.link_up()
    assert p.returncode != 0
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isidorus: error: "), err
    assert "connection" in lines[0] or "no route" in lines[0].lower(), err
    # no snapshot is shown before all its data is there
    assert list((copy_dir(home) / "snapshots").iterdir()) == []
    got = arrived()
    assert 1 <= got < total

    # 2. the process is killed in the middle of the next try
    p = run.popen("backup", "sync", store, url, env=env)
    wait_until(lambda: arrived() > got, "another pack at the home", timeout=60)
    p.kill()
    p.wait(TIMEOUT)
    # the home may still be writing what arrived before the client died: let it finish
    wait_until(
        lambda: subprocess.run(["pgrep", "-f", "backup serve --stdio"]).returncode != 0,
        "the home's serve to end",
        timeout=60,
    )
    got2 = arrived()
    assert list((copy_dir(home) / "snapshots").iterdir()) == []

    # 3. the next run carries on: what arrived is not sent again
    home.unshape()
    done = sync(run, store, url, env=env)
    assert done["ok"] and done["snapshots_copied"] == 5
    assert done["packs_sent"] == total - got2
    assert objects(copy_dir(home)) == objects(store)
    assert os.listdir(copy_dir(home) / "tmp") == []  # the killed upload was thrown away
    r = run("backup", "verify", url, "--json", env=ssh_env(homes))
    assert json.loads(r.out)["ok"] is True


def test_a_full_disk_at_the_home_stops_the_sync_cleanly(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    store = init_store(run, tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        grow(src, f"part{i}.bin", 1_200_000, 10 + i)
        create(run, store, src)
    disk = Path(home.storage)
    mount = ["mount", "-t", "tmpfs", "-o", f"size=2m,uid={home.uid},gid={home.gid},mode=0700"]
    # sshd runs in a mount namespace copied when it started (`ip netns exec`): it sees a
    # mount made before it starts, and shares that file system with this side
    home.stop_sshd()
    subprocess.run([*mount, "tmpfs", str(disk)], check=True, timeout=TIMEOUT)
    home.start_sshd()
    try:
        r = sync(run, store, home.url(), env=ssh_env(homes, **NO_PASS), check=False)
        line = assert_one_line_error(r, "full")
        assert "nothing was lost" in line or "free" in line
        assert list((copy_dir(home) / "snapshots").iterdir()) == []
        arrived = len(list((copy_dir(home) / "data").glob("*/*")))
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True, timeout=TIMEOUT)
        done = sync(run, store, home.url(), env=ssh_env(homes, **NO_PASS))
        assert done["ok"] and done["snapshots_copied"] == 3
        assert done["packs_sent"] == len(packs(store)) - arrived
        assert objects(copy_dir(home)) == objects(store)
    finally:
        home.stop_sshd()
        subprocess.run(["umount", "-l", str(disk)], timeout=TIMEOUT)
        home.start_sshd()


def test_a_pack_damaged_at_one_home_is_repaired_from_the_other(run, homes, tmp_path):
    one, two = homes["home1"], homes["home2"]
    serve_at(homes, one)
    serve_at(homes, two)
    store = init_store(run, tmp_path / "store")
    src = make_sample_tree(tmp_path / "src")
    create(run, store, src)
    env = ssh_env(homes, **NO_PASS)
    sync(run, store, one.url(), env=env)
    sync(run, store, two.url(), env=env)
    pack = next(iter(packs(copy_dir(one))))
    good = pack.read_bytes()
    flip_byte(pack, 1000)

    r = run("backup", "scrub", one.url(), "--json", env=env, check=1)
    found = json.loads(r.out)
    assert [d["object"] for d in found["damaged"]] == [f"data/{pack.name}"]
    r = run("backup", "scrub", one.url(), "--repair-from", two.url(), "--json", env=env)
    fixed = json.loads(r.out)
    assert fixed["ok"] and fixed["repaired"] == [f"data/{pack.name}"]
    assert pack.read_bytes() == good
    run("backup", "scrub", one.url(), env=env)


def test_an_append_only_home_keeps_what_the_server_prunes(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    store = init_store(run, tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        grow(src, f"v{i}.bin", 200_000, 20 + i)
        (src / f"v{i - 1}.bin").unlink(missing_ok=True)
        create(run, store, src)
    env = ssh_env(homes, **NO_PASS)
    sync(run, store, home.url(), env=env)
    kept = objects(copy_dir(home))

    run("backup", "prune", store, "--keep-last", "1")
    run("backup", "gc", store)
    r = sync(run, store, home.url(), env=env)
    assert r["snapshots_removed"] == 2 and r["removals_queued"] == r["objects_removed"] > 2
    # the server sees the mirror it asked for; the home still holds every object
    listed = json.loads(run("backup", "list", home.url(), "--json", env=ssh_env(homes)).out)
    assert len(listed) == 1
    assert objects(copy_dir(home)) == kept
    # the home's owner sees the queue, and can cancel it all
    queue = json.loads(run("backup", "removals", "list", copy_dir(home), "--json").out)
    assert len(queue["pending"]) == r["objects_removed"] and queue["held"] is False
    run("backup", "removals", "cancel", copy_dir(home))
    listed = json.loads(run("backup", "list", home.url(), "--json", env=ssh_env(homes)).out)
    assert len(listed) == 3  # back in view: the history can be restored from the home

    # the server cannot delete or overwrite from afar, whatever it asks
    run("backup", "forget", home.url(), listed[0]["id"], env=ssh_env(homes))
    assert objects(copy_dir(home)) == kept
    assert len(json.loads(run("backup", "list", home.url(), "--json", env=ssh_env(homes)).out)) == 2
    r = run("backup", "init", home.url(), "--kdf-memory", "8", "--kdf-time", "1", check=False,
            env=ssh_env(homes))  # fmt: skip
    assert_one_line_error(r, "already exists")
    assert objects(copy_dir(home)) == kept

    # once released and due (a delay of 0 here), the next connection carries them out
    run("backup", "removals", "release", copy_dir(home))
    serve_at(homes, home, "--removal-delay", "0")
    r = sync(run, store, home.url(), env=env)
    assert r["removals_queued"] == r["objects_removed"] > 2
    # the forget, due at once, went at the start of that connection; the rest waits
    forgotten = f"snapshots/{listed[0]['id']}"
    assert objects(copy_dir(home)) == {k: v for k, v in kept.items() if k != forgotten}
    run("backup", "list", home.url(), env=ssh_env(homes))  # the next connection
    assert objects(copy_dir(home)) == objects(store)


def test_paths_out_of_the_served_directory_are_refused(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    outside = Path(home.storage).parent
    before = sorted(os.listdir(outside))
    for path in ("../escape", "a/../../escape"):
        url = f"ssh+isidorus://{home.user}@{home.name}/{path}"
        r = run("backup", "init", url, "--kdf-memory", "8", "--kdf-time", "1", check=False,
                env=ssh_env(homes))  # fmt: skip
        assert_one_line_error(r, "leads out of the served directory")
    assert sorted(os.listdir(outside)) == before


def test_an_unknown_host_key_is_refused(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = homes.write_ssh_config(tmp_path / "ssh_config", known_hosts=empty)
    store = init_store(run, tmp_path / "store")
    r = sync(run, store, home.url(), env={"ISIDORUS_SSH_COMMAND": f"ssh -F {config}"}, check=False)
    assert_one_line_error(r, "host key", "known_hosts")
    assert empty.read_text() == ""  # nothing was added behind the operator's back
    assert not copy_dir(home).exists()


def test_limit_rate_paces_the_sync(run, homes, tmp_path):
    home = homes["home1"]
    serve_at(homes, home)
    store = init_store(run, tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    grow(src, "one.bin", 1_500_000, 30)
    create(run, store, src)
    start = time.monotonic()
    r = sync(run, store, home.url(), "--limit-rate", "500K", env=ssh_env(homes, **NO_PASS))
    took = time.monotonic() - start
    # 1.5 MB at 500 KiB/s cannot take less than about 2 s, with the one-second burst
    assert r["ok"] and took > 1.9
    r = run("backup", "sync", store, home.url(), "--limit-rate", "fast", check=False)
    assert_one_line_error(r, "not a rate")


def test_home_setup_makes_an_account_whose_key_line_works(run, homes, tmp_path):
    home = homes["home2"]
    pub = tmp_path / "server.pub"
    pub.write_text(homes.key_pub + "\n")
    where = Path(home.storage) / "copies"
    r = run("backup", "home-setup", "--user", home.user, "--key-file", pub, "--dir", where,
            "--quota", "50M", "--removal-delay", "7d", "--json")  # fmt: skip
    made = json.loads(r.out)
    assert made["created_user"] is False and made["directory"] == str(where)
    assert where.stat().st_uid == home.uid and (where.stat().st_mode & 0o777) == 0o700
    line = Path(made["authorized_keys"]).read_text().strip()
    assert line == made["line"] and line.endswith(homes.key_pub.strip())
    assert line.startswith('command="') and ",restrict " in line
    for word in ("serve --stdio", "--append-only", "--removal-delay 7d", f"--quota {50 << 20}"):
        assert word in line
    # the line as sshd reads it: the server's copies land in the directory, append-only
    Path(home.authorized_keys).write_text(line + "\n")
    store = init_store(run, tmp_path / "store")
    src = make_sample_tree(tmp_path / "src")
    create(run, store, src)
    url = f"ssh+isidorus://{home.user}@{home.name}/isidorus"
    doc = sync(run, store, url, env=ssh_env(homes, **NO_PASS))
    assert doc["ok"] and objects(where / "isidorus") == objects(store)
    snap = json.loads(run("backup", "list", url, "--json", env=ssh_env(homes)).out)[0]["id"]
    run("backup", "forget", url, snap, env=ssh_env(homes))
    assert objects(where / "isidorus") == objects(store)  # only queued
    # a shell is not to be had with that key
    r2 = homes.ssh(home, "cat /etc/passwd")
    assert "root:" not in r2.stdout


def test_home_setup_refuses_bad_input_in_one_line(run, tmp_path):
    for args, words in (
        (("--user", "Bad Name", "--key", "ssh-ed25519 AAAA x"), ("not a user name",)),
        (("--user", "isiok", "--key", "not a key"), ("public key",)),
        (("--user", "isiok"), ("--key",)),
        (("--user", "isiok", "--key", "ssh-ed25519 AAAA x", "--dir", "rel"), ("relative",)),
        (("--user", "isiok", "--key", "ssh-ed25519 AAAA x", "--quota", "lots"), ("quota",)),
    ):
        r = run("backup", "home-setup", *args, check=False)
        assert_one_line_error(r, *words)


def test_a_plain_sftp_home_takes_a_copy_that_restores(run, homes, tmp_path):
    home = homes["home2"]  # an ordinary ssh account: no forced command, sftp only
    store = init_store(run, tmp_path / "store")
    src = make_sample_tree(tmp_path / "src")
    expected = manifest(src)
    create(run, store, src)
    url = f"ssh://{home.user}@{home.name}{home.storage}/plain"
    home.shape("20mbit")
    doc = sync(run, store, url, env=ssh_env(homes, **NO_PASS))
    assert doc["ok"] and doc["created"] and doc["snapshots_copied"] == 1
    assert objects(Path(home.storage) / "plain") == objects(store)
    grow(src, "more.bin", 300_000, 40)
    create(run, store, src)
    inc = sync(run, store, url, env=ssh_env(homes, **NO_PASS))
    assert inc["snapshots_copied"] == 1 and inc["packs_sent"] == 1
    target = tmp_path / "restored"
    run("backup", "restore", url, json.loads(run("backup", "list", url, "--json",
        env=ssh_env(homes)).out)[0]["id"], target, env=ssh_env(homes))  # fmt: skip
    assert manifest(restored(target, src)) == expected
    r = run("backup", "scrub", url, "--json", env=ssh_env(homes, **NO_PASS))
    assert json.loads(r.out)["ok"] is True
