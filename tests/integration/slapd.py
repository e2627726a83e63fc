"""A real slapd for the tests (Debian's, with its argon2 module): its own configuration,
database and loopback port in a temporary directory, stopped when the test ends.

Its rules are those docs/directory.md gives operators: passwords serve only to bind,
every entry is readable by a bound DN (the services), nothing by anonymous visitors.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPNoSuchObjectResult

SLAPD = "/usr/sbin/slapd"
BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "the directory keeper's secret"
READER_DN = f"cn=services,{BASE_DN}"
READER_PASSWORD = "what the services bind with"

CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload argon2
pidfile {home}/slapd.pid
argsfile {home}/slapd.args

database mdb
suffix "{base}"
rootdn "{admin}"
rootpw "{password}"
directory {home}/data
maxsize 16777216
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def person_dn(name: str) -> str:
    return f"uid={name},ou=people,{BASE_DN}"


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,{BASE_DN}"


class Slapd:
    """One slapd on 127.0.0.1:PORT, its database in HOME/data (kept across stop/start)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        (home / "data").mkdir(parents=True)
        self.config = home / "slapd.conf"
        self.config.write_text(
            CONFIG.format(home=home, base=BASE_DN, admin=ADMIN_DN, password=ADMIN_PASSWORD)
        )

    def start(self) -> None:
        assert self.proc is None, "slapd runs already"
        log = open(self.home / "slapd.log", "ab")  # noqa: SIM115 (the process keeps it)
        # -d 0: stay in the foreground (so the test owns the process), log nothing
        self.proc = subprocess.Popen(
            [SLAPD, "-h", self.url, "-f", str(self.config), "-d", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise AssertionError(f"slapd exited: {self.check_config()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, "slapd did not listen within 10 s"
            time.sleep(0.02)

    def check_config(self) -> str:
        """What slapd says of its configuration (it logs nothing with -d 0)."""
        r = subprocess.run(
            [SLAPD, "-Tt", "-f", str(self.config)], capture_output=True, text=True, timeout=30
        )
        return (r.stdout + r.stderr).strip()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    # -- as a client

    @contextlib.contextmanager
    def connection(self, dn: str = ADMIN_DN, password: str = ADMIN_PASSWORD) -> Iterator[Any]:
        server = ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE)
        conn = ldap3.Connection(server, dn, password, raise_exceptions=True)
        conn.bind()
        try:
            yield conn
        finally:
            conn.unbind()

    def can_bind(self, name: str, password: str) -> bool:
        """A member's simple bind over the network, as a service checks a password."""
        server = ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE)
        conn = ldap3.Connection(server, person_dn(name), password)
        try:
            return bool(conn.bind())
        finally:
            conn.unbind()

    def whoami(self, name: str, password: str) -> subprocess.CompletedProcess[str]:
        """`ldapwhoami`, the OpenLDAP client, binding as a member."""
        return subprocess.run(
            ["ldapwhoami", "-x", "-H", self.url, "-D", person_dn(name), "-w", password],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def entry(self, dn: str) -> dict[str, list[str]] | None:
        """An entry's attributes as the admin reads them (names lowercased), or None."""
        with self.connection() as conn:
            try:
                conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"])
            except LDAPNoSuchObjectResult:
                return None
            if not conn.response:
                return None
            raw = conn.response[0]["raw_attributes"]
            return {k.lower(): sorted(v.decode() for v in vs) for k, vs in raw.items()}

    def children(self, dn: str) -> list[str]:
        with self.connection() as conn:
            conn.search(dn, "(objectClass=*)", search_scope=ldap3.LEVEL, attributes=[])
            return sorted(r["dn"] for r in conn.response if r["type"] == "searchResEntry")


@contextlib.contextmanager
def running_slapd(home: Path) -> Iterator[Slapd]:
    """A slapd started in `home` (made), stopped when the block ends."""
    assert Path(SLAPD).exists(), "slapd is not installed: run scripts/test, which installs it"
    server = Slapd(home)
    server.start()
    try:
        yield server
    finally:
        server.stop()
