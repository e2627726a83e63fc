"""What apt's simulation says it would upgrade, and which upgrades are security ones: table
tests of the parser on lines as apt 2.x prints them."""

from __future__ import annotations

import pytest

from isidorus.system.packages import Upgrade, parse_simulation

CASES = [
    (
        "Inst bash [5.2.15-2+b7] (5.2.15-2+b8 Debian:12.5/stable [amd64])",
        Upgrade("bash", "5.2.15-2+b7", "5.2.15-2+b8", ("Debian:12.5/stable",)),
        False,
    ),
    (
        "Inst zstd [1.5.4+dfsg2-5] (1.5.4+dfsg2-5+deb12u1 "
        "Debian-Security:12/stable-security [amd64])",
        Upgrade(
            "zstd",
            "1.5.4+dfsg2-5",
            "1.5.4+dfsg2-5+deb12u1",
            ("Debian-Security:12/stable-security",),
        ),
        True,
    ),
    (  # in both archives: a security fix all the same
        "Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, "
        "Debian-Security:12/oldstable-security [amd64]) []",
        Upgrade(
            "libgcrypt20",
            "1.10.1-3",
            "1.10.1-3+deb12u1",
            ("Debian:12.15/oldstable", "Debian-Security:12/oldstable-security"),
        ),
        True,
    ),
    (  # Ubuntu's archive: by the suite's name
        "Inst openssl [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.18 Ubuntu:22.04/jammy-security [amd64])",
        Upgrade(
            "openssl", "3.0.2-0ubuntu1.15", "3.0.2-0ubuntu1.18", ("Ubuntu:22.04/jammy-security",)
        ),
        True,
    ),
    (  # a source without a version in its Release file
        "Inst toy [1.0] (1.1 Isidorus-Test:toy-security [all])",
        Upgrade("toy", "1.0", "1.1", ("Isidorus-Test:toy-security",)),
        True,
    ),
    (  # an epoch, a foreign architecture
        "Inst libc6:i386 [2:2.36-9] (2:2.36-9+deb12u4 Debian:12.5/stable [i386])",
        Upgrade("libc6", "2:2.36-9", "2:2.36-9+deb12u4", ("Debian:12.5/stable",)),
        False,
    ),
    (  # a new dependency
        "Inst libnew1 (0.3-1 Debian:12.5/stable [amd64])",
        Upgrade("libnew1", "", "0.3-1", ("Debian:12.5/stable",)),
        False,
    ),
    (  # a .deb without an archive
        "Inst local [1] (2 [all])",
        Upgrade("local", "1", "2", ()),
        False,
    ),
]


@pytest.mark.parametrize(("line", "expected", "security"), CASES)
def test_a_simulated_line(line, expected, security):
    assert parse_simulation(line) == [expected]
    assert expected.security is security


def test_only_what_apt_would_unpack_once_each():
    text = "\n".join(
        [
            "NOTE: This is only a simulation!",
            "Reading package lists...",
            "The following packages will be upgraded:",
            "  bash zstd",
            "Inst bash [1] (2 Debian:12.5/stable [amd64])",
            "Inst libc6:i386 [1] (2 Debian:12.5/stable [i386])",
            "Inst libc6 [1] (2 Debian:12.5/stable [amd64])",
            "Conf bash (2 Debian:12.5/stable [amd64])",
            "Remv oldthing [3]",
        ]
    )
    assert [(u.name, u.installed, u.candidate) for u in parse_simulation(text)] == [
        ("bash", "1", "2"),
        ("libc6", "1", "2"),
    ]
    assert Upgrade("x", "1", "2", ("Debian:12/stable",)).to_json() == {
        "name": "x",
        "installed": "1",
        "candidate": "2",
        "security": False,
        "origins": ["Debian:12/stable"],
    }
