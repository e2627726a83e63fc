"""`isidorus serve --workers N`: each process listens on a socket of its own, so a burst of
connections is shared out between them; a process that dies stops the server with a
failure for its service manager, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from tests.integration.servers import free_port, stop, wait_for_port


@pytest.fixture
def home(run, tmp_path):
    home = tmp_path / "host"
    run("init", "--data-dir", home, "--password-stdin", input="the keeper's passphrase\n")
    return home


def connections_by_process(port: int) -> dict[int, int]:
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[int, int] = {}
    for line in out.splitlines():
        pid = int(line.split("pid=", 1)[1].split(",", 1)[0])
        counts[pid] = counts.get(pid, 0) + 1
    return counts


def listening_processes(port: int, server: int) -> set[int]:
    """The processes listening on `port`, but the first one (`server`), once there are 2."""
    found: set[int] = set()
    for _ in range(50):
        out = subprocess.run(
            ["ss", "-Htlnp", f"( sport = :{port} )"], capture_output=True, text=True
        ).stdout
        found = {int(p.split(",", 1)[0]) for p in out.split("pid=")[1:]} - {server}
        if len(found) == 2:
            break
        time.sleep(0.1)
    return found


def test_a_burst_of_connections_is_shared_out(run, home):
    port = free_port()
    web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    held = []
    try:
        wait_for_port(port, web, "isidorus serve")
        for _ in range(100):  # at once, as a load or nginx's pool opens them
            held.append(socket.create_connection(("127.0.0.1", port)))
        for s in held:  # each is answered: the process that took it serves it
            s.sendall(b"GET /auth/check HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in held:
            assert s.recv(4096).startswith(b"HTTP/1.1 401")
        counts = connections_by_process(port)
        assert len(counts) == 2 and web.pid not in counts  # the two server processes
        # a shared socket gave one process three in four; its own socket each, about half
        assert sum(counts.values()) == 100 and min(counts.values()) >= 25, counts
    finally:
        for s in held:
            s.close()
        stop([web])


def test_a_process_that_dies_stops_the_server_with_a_failure(run, home):
    port = free_port()
    web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    wait_for_port(port, web, "isidorus serve")
    listening = listening_processes(port, web.pid)
    assert len(listening) == 2, listening
    victim = sorted(listening)[0]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    try:
        code = web.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop([web])
        raise
    err = web.stderr.read().decode() if web.stderr else ""
    assert code == 1, err
    assert "a server process stopped (exit status -9): stopping the server" in err
    out = subprocess.run(["ss", "-Htln", f"( sport = :{port} )"], capture_output=True, text=True)
    assert out.stdout.strip() == ""  # the other process went with it


@pytest.mark.parametrize("flag", [None, "--no-cpu-affinity", "setting off"])
def test_each_process_keeps_to_a_cpu_of_its_own(run, home, flag):
    port = free_port()
    args = ["serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    env = {}
    if flag == "setting off":
        env["ISIDORUS_SERVE_CPU_AFFINITY"] = "false"
    elif flag:
        args.append(flag)
    web = run.popen(*args, env=env)
    held = []
    try:
        wait_for_port(port, web, "isidorus serve")
        for _ in range(40):  # answered by both: each process is past its start
            held.append(socket.create_connection(("127.0.0.1", port)))
        for s in held:
            s.sendall(b"GET /auth/check HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 401")
        workers = set(connections_by_process(port))
        assert len(workers) == 2 and web.pid not in workers, workers
        mine = sorted(os.sched_getaffinity(0))
        assert len(mine) >= 2, "this machine gives the tests a single CPU"
        placed = [os.sched_getaffinity(pid) for pid in sorted(workers)]
        if flag is None:
            # the first two CPUs, one each, whichever process got which
            assert sorted(placed, key=min) == [{mine[0]}, {mine[1]}]
        else:
            assert placed == [set(mine), set(mine)]
    finally:
        for s in held:
            s.close()
        stop([web])


def test_sigterm_stops_every_process(run, home):
    port = free_port()
    web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    wait_for_port(port, web, "isidorus serve")
    web.send_signal(signal.SIGTERM)
    assert web.wait(timeout=60) == 0
    out = subprocess.run(["ss", "-Htln", f"( sport = :{port} )"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_a_port_in_use_is_said_in_one_line(run, home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2",
                check=False)  # fmt: skip
    assert r.code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in r.err and "--listen" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


def test_the_processes_go_with_a_server_killed_outright(run, home):
    port = free_port()
    web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    wait_for_port(port, web, "isidorus serve")
    web.kill()  # SIGKILL: it cannot stop the others itself
    web.wait(timeout=10)
    listening = ["ss", "-Htln", f"( sport = :{port} )"]
    for _ in range(100):
        out = subprocess.run(listening, capture_output=True, text=True).stdout.strip()
        if not out:
            break
        time.sleep(0.1)
    assert out == "", "a server process serves on alone"
