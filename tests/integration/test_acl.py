"""POSIX ACLs (access and default) survive a backup and restore, checked with the real
setfacl/getfacl of Debian's acl package."""

import subprocess

import pytest

from tests.integration.conftest import create, restored


def getfacl(path):
    out = subprocess.run(
        ["getfacl", "--omit-header", "--numeric", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line for line in out.splitlines() if line)


@pytest.mark.root
def test_acls_round_trip(run, store, tmp_path):
    src = tmp_path / "src"
    (src / "shared").mkdir(parents=True)
    f = src / "shared" / "notes.txt"
    f.write_text("for the family\n")
    subprocess.run(["setfacl", "-m", "u:65534:rw,g:65534:r,m::rw", str(f)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:65534:rwx", str(src / "shared")], check=True)
    before = {p: getfacl(p) for p in (f, src / "shared")}
    assert any("user:65534:rw-" in line for line in before[f])  # the ACL is really there
    create(run, store, src)
    out = tmp_path / "out"
    run("backup", "restore", store, "latest", out)
    back = restored(out, src)
    assert getfacl(back / "shared" / "notes.txt") == before[f]
    assert getfacl(back / "shared") == before[src / "shared"]
    assert any(line.startswith("default:user:65534:rwx") for line in getfacl(back / "shared"))
