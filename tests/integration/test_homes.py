"""The homes fixture itself: hosts in network namespaces, each with its own sshd, reached
with the ssh client through the fixture's ssh_config, as the off-site copies will be."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.homes import SLOT_DIR, Homes, running_homes

pytestmark = pytest.mark.root

MB2 = os.urandom(2_000_000)


def test_each_home_answers_as_its_user_over_its_own_link(homes: Homes) -> None:
    assert [h.name for h in homes] == ["home1", "home2"]
    assert len({h.netns for h in homes}) == len({h.address for h in homes}) == 2
    for home in homes:
        assert homes.ssh(home, "true").returncode == 0
        r = homes.ssh(home.name, 'id -un; echo "$SSH_CONNECTION"')
        assert r.returncode == 0, r.stderr
        user, connection = r.stdout.splitlines()
        assert user == home.user
        # client address, client port, server address, server port: across the veth
        client, _, server, port = connection.split()
        assert (client, server, port) == (home.host_address, home.address, "22")
        # the home's namespace has its own address and nothing of the root namespace's
        addresses = home.run("ip", "-o", "-4", "addr", "show").stdout
        assert f"inet {home.address}/30" in addresses
        assert home.host_address not in addresses
        assert home.url() == f"ssh+isidorus://{home.user}@{home.name}/store"
        assert home.url("a/b", scheme="ssh") == f"ssh://{home.user}@{home.name}/a/b"
    assert homes.ssh_command == f"ssh -F {homes.ssh_config}"


def test_home_user_owns_the_storage_and_can_run_isidorus(homes: Homes) -> None:
    home = homes["home2"]
    r = homes.ssh(home, f"touch {home.storage}/probe && {homes.isidorus} --version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("isidorus")
    assert Path(home.storage, "probe").stat().st_uid == home.uid
    # the same through the environment variable the tests give isidorus
    r2 = subprocess.run(
        [*homes.ssh_command.split(), "home1", "cat"],
        input=b"through ISIDORUS_SSH_COMMAND",
        capture_output=True,
        timeout=30,
    )
    assert r2.stdout == b"through ISIDORUS_SSH_COMMAND", r2.stderr


def test_a_forced_command_replaces_the_clients(homes: Homes, tmp_path: Path) -> None:
    home = homes["home1"]
    home.authorize(homes.key_pub, command='echo "forced, not: $SSH_ORIGINAL_COMMAND"')
    assert Path(home.authorized_keys).read_text().startswith('command="echo \\"forced')
    r = homes.ssh(home, "echo", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "forced, not: echo hello\n"
    # the other home still runs what it is asked
    assert homes.ssh("home2", "echo", "hello").stdout == "hello\n"
    # a key that is not the client's is of no use to it
    other = tmp_path / "other"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)]
    subprocess.run(keygen, check=True, timeout=30)
    home.authorize(Path(f"{other}.pub").read_text())
    r = homes.ssh(home, "true")
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_an_unknown_host_key_is_refused(homes: Homes, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = homes.write_ssh_config(tmp_path / "ssh_config", known_hosts=empty)
    r = homes.ssh("home1", "true", config=config)
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr
    assert empty.read_text() == ""  # nothing was added behind our back
    # removing one home's line from the fixture's own known_hosts refuses that home only
    known = Path(homes.known_hosts)
    known.write_text("".join(x for x in known.read_text().splitlines(True) if "home2" not in x))
    assert "Host key verification failed" in homes.ssh("home2", "true").stderr
    assert homes.ssh("home1", "true").returncode == 0


@pytest.mark.slow
def test_a_link_down_fails_at_once_and_cuts_an_open_session(homes: Homes) -> None:
    home = homes["home1"]
    # keepalives 1 s apart, 2 unanswered end it (the command line wins over ssh_config)
    keepalive = ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"]
    session = subprocess.Popen(
        [*homes.ssh_command.split(), *keepalive, home.name, "echo started; sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == b"started\n"
        home.link_down()
        start = time.monotonic()
        r = homes.ssh(home, "true")
        assert r.returncode == 255 and "No route to host" in r.stderr, r.stderr
        assert time.monotonic() - start < 3
        assert homes.ssh("home2", "true").returncode == 0  # the other home's link is up
        # the open session: its keepalives go unanswered
        code = session.wait(timeout=20)
        waited = time.monotonic() - start
        assert code == 255 and 1 < waited < 10, (code, waited)
        assert b"Timeout, server" in session.stderr.read()  # type: ignore[union-attr]
    finally:
        if session.poll() is None:
            session.kill()
        session.wait(timeout=10)
        for stream in (session.stdout, session.stderr):
            if stream is not None:
                stream.close()
    home.link_up()
    r = homes.ssh(home, "true")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_shaping_slows_a_transfer(homes: Homes) -> None:
    home = homes["home2"]

    def send() -> float:
        start = time.monotonic()
        r = homes.ssh(home, "wc -c", input=MB2)
        assert r.returncode == 0 and r.stdout.strip() == str(len(MB2)), r.stderr
        return time.monotonic() - start

    assert send() < 1.5
    home.shape("8mbit")  # 2 MB = 16 Mbit: 2 s
    slow = send()
    assert 1.5 < slow < 10
    home.unshape()
    assert send() < 1.5


def test_reset_makes_the_homes_as_new(homes: Homes) -> None:
    home = homes["home1"]
    home.authorize(homes.key_pub, command="false")
    home.shape("1mbit")
    Path(home.storage, "left-over").write_text("x")
    Path(homes.known_hosts).write_text("")
    stray = subprocess.Popen(["ip", "netns", "exec", home.netns, "sleep", "60"])
    try:
        home.stop_sshd()
        home.link_down()
        homes.reset()
        assert stray.wait(timeout=10) != 0  # killed
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(timeout=10)
    assert os.listdir(home.storage) == []
    assert home.run("tc", "qdisc", "show", "dev", "eth0").stdout.split()[1] != "tbf"
    r = homes.ssh(home, "echo", "as new")
    assert r.returncode == 0 and r.stdout == "as new\n", r.stderr


def test_everything_goes_at_the_end_even_after_a_failure() -> None:
    paths: list[Path] = []
    pid, subnet = 0, ""
    with pytest.raises(RuntimeError, match="the test failed"), running_homes(("spare",)) as h:
        home = h["spare"]
        assert home.proc is not None and h.ssh(home, "true").returncode == 0
        pid, subnet = home.proc.pid, f"{home.address.rsplit('.', 1)[0]}.0/30"
        paths = [
            Path("/run/netns", home.netns),
            Path("/sys/class/net", home.host_veth),
            SLOT_DIR / str(home.slot),
            h.base,
        ]
        assert all(p.exists() for p in paths)
        raise RuntimeError("the test failed")
    assert [p for p in paths if p.exists()] == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # sshd is gone (and was reaped)
    routes = subprocess.run(
        ["ip", "route", "show", "exact", subnet], capture_output=True, text=True, timeout=30
    )
    assert routes.returncode == 0 and routes.stdout == ""
