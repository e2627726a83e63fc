"""`isidorus backup …` on an ssh:// store, through the console script. ISIDORUS_SSH_COMMAND
names a stand-in for ssh that answers every connection with OpenSSH's sftp-server on this
machine, so the whole path runs (the setting, ssh's command line, SFTP over a pipe) without
sshd; real sshd is in test_homes*.py."""

from __future__ import annotations

import os
import random
import shlex

import pytest

from .conftest import (
    KDF,
    assert_intact,
    assert_one_line_error,
    assert_restores,
    create,
    manifest,
    snapshots,
    store_litter,
    write_random,
)

SFTP_SERVER = "/usr/lib/openssh/sftp-server"

pytestmark = pytest.mark.skipif(
    not os.access(SFTP_SERVER, os.X_OK), reason="needs OpenSSH's sftp-server (openssh-server)"
)


@pytest.fixture
def fake_ssh(run, tmp_path):
    """ISIDORUS_SSH_COMMAND is a script that logs its arguments and runs sftp-server."""
    log = tmp_path / "ssh-arguments"
    script = tmp_path / "fake-ssh"
    script.write_text(
        "#!/bin/sh\n"
        "# ssh -G (the options ssh would use): none of interest\n"
        'case " $* " in *" -G "*) exit 0 ;; esac\n'
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        f"exec {SFTP_SERVER}\n"
    )
    script.chmod(0o755)
    run.env["ISIDORUS_SSH_COMMAND"] = f"{script} -F /etc/isidorus/ssh_config"
    return log


def test_a_store_on_an_sftp_host_from_init_to_restore(run, fake_ssh, sample_tree, tmp_path):
    on_host = tmp_path / "on-the-host" / "store"
    store = f"ssh://backup@friend.example.org:2222{on_host}"
    r = run("backup", "init", store, *KDF)
    assert r.out.strip() == f"created an encrypted store at {store}"

    write_random(sample_tree / "data" / "big.bin", 6 * 1024 * 1024, random.Random(5))
    first_tree = manifest(sample_tree)
    first = create(run, store, sample_tree, "--time", "2026-03-01T12:00:00Z")
    (sample_tree / "hello.txt").write_text("changed\n")
    second_tree = manifest(sample_tree)
    second = create(run, store, sample_tree, "--time", "2026-03-02T12:00:00Z")
    assert second["bytes_read"] < first["bytes_read"]  # incremental

    assert [s["id"] for s in snapshots(run, store)] == [first["id"], second["id"]]
    assert_restores(run, store, first["id"], sample_tree, first_tree, tmp_path)
    assert_restores(run, store, second["id"], sample_tree, second_tree, tmp_path)
    assert_intact(run, store)
    assert store_litter(on_host) == []
    # on the host it is a directory store: the same commands read it by its path
    assert [s["id"] for s in snapshots(run, on_host)] == [first["id"], second["id"]]

    # isidorus asked the operator's ssh for the sftp subsystem of that host, as that user
    words = fake_ssh.read_text().splitlines()[0].split()
    assert words[:2] == ["-F", "/etc/isidorus/ssh_config"]  # the setting's options first
    assert words[-4:] == ["-s", "--", "friend.example.org", "sftp"]
    assert "BatchMode=yes" in words and "StrictHostKeyChecking=yes" in words
    assert words[words.index("-l") + 1] == "backup" and words[words.index("-p") + 1] == "2222"


def test_a_copy_on_an_sftp_host(run, fake_ssh, sample_tree, tmp_path):
    source = tmp_path / "source"
    run("backup", "init", source, *KDF)
    snap = create(run, source, sample_tree)
    copy = f"ssh://friend.example.org{tmp_path}/copy"
    run("backup", "sync", source, copy)
    assert [s["id"] for s in snapshots(run, copy)] == [snap["id"]]
    run("backup", "scrub", copy, env={"ISIDORUS_PASSPHRASE": None})
    assert_restores(run, copy, snap["id"], sample_tree, manifest(sample_tree), tmp_path)


def test_errors_on_an_sftp_host(run, fake_ssh, tmp_path):
    r = run("backup", "list", f"ssh://friend.example.org{tmp_path}/nothing", check=False)
    assert r.code == 1
    assert_one_line_error(r, "not an isidorus store")
    refusing = tmp_path / "refusing-ssh"
    refusing.write_text("#!/bin/sh\necho 'Host key verification failed.' >&2\nexit 255\n")
    refusing.chmod(0o755)
    r = run(
        "backup",
        "list",
        f"ssh://friend.example.org{tmp_path}/store",
        env={"ISIDORUS_SSH_COMMAND": str(refusing)},
        check=False,
    )
    assert r.code == 1
    assert_one_line_error(r, "known_hosts")
