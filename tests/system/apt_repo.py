"""A local apt repository of the tests' own: toy Debian packages built with dpkg-deb, in two
flat archives (`stable`, and `toy-security`, whose name makes its packages security
updates), and an apt configuration that reads these sources only, with lists and a cache
of their own. apt run with APT_CONFIG pointing at it upgrades and downgrades the toys for
real, and never sees the host's mirror: nothing else of the host is upgraded.

    repo = make_apt_repo(root)
    repo.apt("install", "-y", "isidorus-toy-plain=1.0")
    ... ISIDORUS_APT_CONFIG=repo.config ...
    repo.purge()
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 600  # seconds: apt waits for a lock another test of this host may hold

PLAIN, SECURE, WEB = "isidorus-toy-plain", "isidorus-toy-secure", "isidorus-toy-web"
TOYS = (PLAIN, SECURE, WEB)

# the toy web server: 1.0 serves its page; 1.1 answers 503 to everything, as a new version
# that lost its configuration would
WEB_1_0 = """#!/bin/sh
exec /usr/bin/python3 -m http.server "$1" --bind 127.0.0.1 --directory /usr/share/isidorus-toy-web
"""
WEB_1_1 = """#!/usr/bin/python3
import http.server
import sys


class Broken(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"isidorus-toy-web 1.1 lost its configuration\\n")


http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Broken).serve_forever()
"""

# (package, version, archive, the program it ships, if any)
TOY_PACKAGES = (
    (PLAIN, "1.0", "stable", None),
    (PLAIN, "1.1", "stable", None),
    (SECURE, "1.0", "stable", None),
    (SECURE, "1.1", "toy-security", None),
    (WEB, "1.0", "stable", WEB_1_0),
    (WEB, "1.1", "toy-security", WEB_1_1),
)


@dataclass
class AptRepo:
    root: Path
    config: Path  # the apt configuration file (APT_CONFIG)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "APT_CONFIG": str(self.config),
            "DEBIAN_FRONTEND": "noninteractive",
        }

    def apt(self, *args: str) -> str:
        """apt-get ARGS on the toy sources only; its output."""
        p = subprocess.run(
            ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert p.returncode == 0, f"apt-get {' '.join(args)}: {p.stdout}{p.stderr}"
        return p.stdout

    def install(self, *pinned: str) -> None:
        """Install these NAME=VERSION, apt's lists of the toys refreshed first."""
        self.apt("update")
        self.apt("install", "-y", "--allow-downgrades", *pinned)

    def purge(self) -> None:
        """Take every toy off the host (an earlier run's too)."""
        there = [p for p in TOYS if installed_version(p)]
        if there:
            self.apt("purge", "-y", *there)
        assert not any(installed_version(p) for p in TOYS)


def installed_version(name: str) -> str:
    """The version dpkg has installed, or ""."""
    p = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    state, _, version = p.stdout.partition(" ")
    return version if state == "installed" else ""


def make_apt_repo(root: Path) -> AptRepo:
    """Build the toys and their two archives under `root` (which apt's unprivileged
    downloader must be able to read: mode 755 up the tree), and the apt configuration."""
    archives = {"stable": root / "stable", "toy-security": root / "security"}
    built: dict[str, list[Path]] = {name: [] for name in archives}
    for package, version, archive, program in TOY_PACKAGES:
        built[archive].append(_build(root / "build", package, version, program, archives[archive]))
    for suite, folder in archives.items():
        _index(folder, built[suite], suite)
    sources = root / "sources.list"
    sources.write_text(
        "".join(f"deb [trusted=yes] file:{folder} ./\n" for folder in archives.values())
    )
    for d in ("sources.list.d", "lists/partial", "cache/archives/partial"):
        (root / d).mkdir(parents=True, exist_ok=True)
    config = root / "apt.conf"
    config.write_text(
        f'Dir::Etc::SourceList "{sources}";\n'
        f'Dir::Etc::SourceParts "{root / "sources.list.d"}";\n'
        f'Dir::State::Lists "{root / "lists"}";\n'
        f'Dir::Cache "{root / "cache"}";\n'
    )
    return AptRepo(root, config)


def _build(work: Path, package: str, version: str, program: str | None, into: Path) -> Path:
    tree = work / f"{package}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: isidorus tests <tests@example.org>\nSection: misc\nPriority: optional\n"
        f"Description: a toy package of isidorus's tests\n"
    )
    share = tree / "usr" / "share" / package
    share.mkdir(parents=True)
    (share / "index.html").write_text(f"{package} {version}\n")
    if program is not None:
        exe = tree / "usr" / "bin" / package
        exe.parent.mkdir(parents=True)
        exe.write_text(program)
        exe.chmod(0o755)
    into.mkdir(parents=True, exist_ok=True)
    deb = into / f"{package}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    return deb


def _index(folder: Path, debs: list[Path], suite: str) -> None:
    """Packages and Release, as apt-ftparchive would write them for a flat archive."""
    stanzas = []
    for deb in debs:
        data = deb.read_bytes()
        control = subprocess.run(
            ["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True
        ).stdout.strip()
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    index = "\n".join(stanzas).encode()
    (folder / "Packages").write_bytes(index)
    (folder / "Release").write_text(
        f"Origin: Isidorus-Test\nLabel: Isidorus-Test\nSuite: {suite}\nCodename: {suite}\n"
        "Date: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: all amd64 arm64\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n"
    )
