"""A PostgreSQL server of the tests' own, made with Debian's binaries in a temporary
directory and removed at the end, whatever happened.

It listens on a free port of 127.0.0.1 (password logins, SCRAM) and on a Unix socket in its
directory (the `postgres` superuser, trusted, which makes a fresh database for each test).
initdb refuses to run as root, so as root the server runs as the `postgres` system user.
fsync is off: the tests need a real server, not a durable one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

USER = "isidorus"
PASSWORD = "tests-own-secret-7Q"
TIMEOUT = 60  # seconds, for each command of the server


def bin_dir() -> Path:
    """The newest installed PostgreSQL's programs, e.g. /usr/lib/postgresql/15/bin."""
    found = [Path(p).parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if not found:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (scripts/test does)")
    return max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """A running server: `url(dbname)` for isidorus, `new_database()` for each test."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.socket_dir = root
        self.log = root / "server.log"
        self._names = itertools.count(1)

    def url(self, dbname: str, *, password: str | None = PASSWORD, port: int = 0) -> str:
        auth = USER if password is None else f"{USER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        )

    def new_database(self) -> str:
        """An empty database owned by the isidorus user; its name."""
        name = f"test_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{USER}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """The URL of a fresh database, dropped afterwards."""
        name = self.new_database()
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("no `postgres` system user to run PostgreSQL: apt-get install postgresql")
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str], what: str) -> None:
    p = subprocess.run(
        _as_server_user(argv), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if p.returncode:
        pytest.fail(f"{what} failed ({p.returncode}): {p.stderr.strip()}")


@contextlib.contextmanager
def running_cluster(tag: str = "") -> Iterator[Cluster]:
    """Make, start, yield, then stop and remove a cluster (also when the tests fail)."""
    binaries = bin_dir()
    # in /tmp, not under pytest's or TMPDIR's directories: those may be private to root,
    # and the server is not root (and a short path keeps the socket's within its limit)
    root = Path(tempfile.mkdtemp(prefix=f"isidorus-pg{tag}-", dir="/tmp"))
    try:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)
        cluster = Cluster(root, 0)
        _run(
            [
                str(binaries / "initdb"),
                "--pgdata",
                str(cluster.data),
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb",
        )
        yield from _started(binaries, cluster)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _started(binaries: Path, cluster: Cluster) -> Iterator[Cluster]:
    options = (
        "-c listen_addresses=127.0.0.1 "
        f"-c unix_socket_directories={cluster.socket_dir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    pg_ctl = [str(binaries / "pg_ctl"), "--pgdata", str(cluster.data)]
    try:
        for attempt in range(3):  # another program may take the free port before the server
            cluster.port = free_port()
            start = [*pg_ctl, "--log", str(cluster.log), "--wait", "--timeout", str(TIMEOUT)]
            p = subprocess.run(
                _as_server_user([*start, "-o", f"-c port={cluster.port} {options}", "start"]),
                capture_output=True,
                timeout=TIMEOUT + 10,
                check=False,
            )
            if p.returncode == 0:
                break
            if attempt == 2:
                pytest.fail(f"PostgreSQL did not start: {cluster.log.read_text()[-2000:]}")
        with cluster.admin() as conn:
            conn.execute(f"CREATE ROLE \"{USER}\" LOGIN PASSWORD '{PASSWORD}'")
        yield cluster
    finally:
        # whatever state it is in (stopping one that never started fails, harmlessly)
        subprocess.run(
            _as_server_user([*pg_ctl, "--mode=immediate", "stop"]),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
