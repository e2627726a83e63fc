"""`isidorus serve`'s processes, when there are several: each listens on a socket of its own.

Why          on one socket shared by every process (uvicorn's own way), the process that
             wakes first takes a burst of new connections, and their load with them: 100
             connections opened at once went 76 to one process and 24 to the other, whose
             core then idled while the first queued. Sockets of the same port with
             SO_REUSEPORT are each given their share by the kernel, by the connections'
             addresses (within a few of 50/50 for 100).
CPUs         with one process per CPU, each keeps to its own (nginx's worker_cpu_affinity
             auto): left to move, two processes and the load share two cores unevenly from
             run to run, and `/auth/check`'s p99 at 100 connections went from 3 to 5.4 ms
             between runs; kept apart, 3 ms every run. A busy program on one CPU still
             leaves that process its fair share of it.
Failure      a process that stops stops the server, with the status of a failure, for its
             service manager (systemd, supervisor) to start it again whole; SIGTERM or
             SIGINT stop every process the way uvicorn stops one (requests in progress end),
             and so does the end of the first process, even killed outright.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.connection import wait
from typing import Any

from isidorus.errors import UsageError

BACKLOG = 2048
STOP_TIMEOUT = 30.0  # seconds the processes get to end their requests


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port alongside the other processes' (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server "
            "there? give another --listen)"
        ) from None
    sock.set_inheritable(True)
    return sock


def cpu_plan(workers: int, pin: bool) -> list[int | None]:
    """The CPU each process keeps to (None: any), from the CPUs this one may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or workers < 2 or len(cpus) < 2:
        return [None] * workers
    return [cpus[i % len(cpus)] for i in range(workers)]


def _serve(sock: socket.socket, options: dict[str, Any], cpu: int | None = None) -> None:
    """One process: uvicorn on its own socket, with the app built here."""
    import uvicorn

    if cpu is not None:
        with contextlib.suppress(OSError):  # a container may forbid it: then it moves
            os.sched_setaffinity(0, {cpu})
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_end_with, args=(parent.sentinel,), daemon=True).start()

    config = uvicorn.Config("isidorus.web.app:app_from_environment", factory=True, **options)
    uvicorn.Server(config).run(sockets=[sock])


def _end_with(parent: int) -> None:
    """Stop this process as SIGTERM does once the first one is gone (killed outright, it
    could not stop the others), instead of serving on alone."""
    wait([parent])
    os.kill(os.getpid(), signal.SIGTERM)


def run(workers: int, host: str, port: int, options: dict[str, Any], *, pin: bool = True) -> int:
    """Serve with `workers` processes until stopped, each on a CPU of its own with `pin`;
    the exit status of the server."""
    sockets = [listening_socket(host, port) for _ in range(workers)]
    spawn = multiprocessing.get_context("spawn")  # as uvicorn's: no state of this one
    procs = [
        spawn.Process(target=_serve, args=(sock, options, cpu))
        for sock, cpu in zip(sockets, cpu_plan(workers, pin), strict=True)
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    for proc in procs:
        proc.start()
    try:
        alive = list(procs)
        while alive and not stopping:
            wait([proc.sentinel for proc in alive], timeout=0.5)
            for proc in [p for p in alive if not p.is_alive()]:
                alive.remove(proc)
                if not stopping:
                    sys.stderr.write(
                        f"isidorus: error: a server process stopped (exit status "
                        f"{proc.exitcode}): stopping the server\n"
                    )
                    stopping = True
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sock in sockets:
            sock.close()
    failed = any(proc.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT) for proc in procs)
    return 1 if failed else 0
