"""End-to-end fixtures: the real `isidorus` console script, run in a subprocess.

Every test gets its own index cache (ISIDORUS_CACHE_DIR), no configuration file, the
passphrase in ISIDORUS_PASSPHRASE, stdin that is not a terminal, and stores made with
cheap key derivation (`--kdf-memory 8 --kdf-time 1`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.integration.homes import Homes, running_homes

TIMEOUT = 120  # seconds, for every subprocess
PASSPHRASE = "correct horse battery staple"
KDF = ("--kdf-memory", "8", "--kdf-time", "1")

# Root without the capabilities that bypass file modes: the kernel checks permissions as
# it does for any unprivileged user. (Switching to `nobody` would need an interpreter that
# `nobody` can reach, which a virtualenv under /root is not.)
UNPRIVILEGED = (
    "setpriv",
    "--inh-caps=-all",
    "--bounding-set=-dac_override,-dac_read_search",
)


def _console_script() -> str:
    beside = Path(sys.executable).with_name("isidorus")
    if beside.exists():
        return str(beside)
    found = shutil.which("isidorus")
    assert found, "the isidorus console script is not installed"
    return found


ISIDORUS = _console_script()


class Result(NamedTuple):
    code: int
    out: Any  # str, or bytes when run with text=False
    err: str


class Isidorus:
    """Runs `isidorus ARGS…` as a separate process and returns (code, stdout, stderr)."""

    def __init__(self, cache_dir: Path, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISIDORUS_")}
        env.update(
            ISIDORUS_PASSPHRASE=PASSPHRASE,
            ISIDORUS_CACHE_DIR=str(cache_dir),
            ISIDORUS_CONFIG=str(config),
            TZ="UTC",
            LC_ALL="C.UTF-8",
        )
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def environment(self, env: Mapping[str, str | None] | None) -> dict[str, str]:
        out = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = v
        return out

    def argv(self, args: tuple[Any, ...], unprivileged: bool) -> list[str]:
        prefix = list(UNPRIVILEGED) if unprivileged else []
        return [*prefix, ISIDORUS, *(str(a) for a in args)]

    def __call__(
        self,
        *args: Any,
        input: bytes | str | None = None,
        env: Mapping[str, str | None] | None = None,
        check: bool | int = True,
        text: bool = True,
        unprivileged: bool = False,
    ) -> Result:
        """check: True wants exit 0, an int wants that code, False checks nothing."""
        data = input.encode() if isinstance(input, str) else input
        p = subprocess.run(
            self.argv(args, unprivileged),
            input=data,
            stdin=subprocess.DEVNULL if data is None else None,
            capture_output=True,
            env=self.environment(env),
            timeout=TIMEOUT,
        )
        err = p.stderr.decode("utf-8", "surrogateescape")
        out: Any = p.stdout.decode("utf-8", "surrogateescape") if text else p.stdout
        r = Result(p.returncode, out, err)
        where = f"isidorus {' '.join(str(a) for a in args)} -> {r.code}\n{err}"
        assert "Traceback" not in err, where
        assert "internal error" not in err, where
        if not isinstance(check, bool):
            assert r.code == check, where
        elif check:
            assert r.code == 0, where
        return r

    def popen(
        self,
        *args: Any,
        env: Mapping[str, str | None] | None = None,
        stdin: Any = subprocess.DEVNULL,
        unprivileged: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start isidorus in the background; the fixture reaps it at the end of the test."""
        p = subprocess.Popen(
            self.argv(args, unprivileged),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(env),
        )
        self.procs.append(p)
        return p

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=TIMEOUT)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Isidorus]:
    runner = Isidorus(tmp_path / "cache", tmp_path / "no-such-config.toml")
    try:
        yield runner
    finally:
        runner.reap()


# -- trees


def write_random(path: Path, size: int, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(size))


def make_sample_tree(root: Path, seed: int = 1) -> Path:
    """A small tree with one of everything a backup must keep: nested and empty
    directories, empty, text, compressible and multi-chunk random files, a hard link,
    symlinks (one dangling), a fifo, odd modes, old times and a non-ASCII name."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "hello.txt").write_text("hello, world\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "ünï côde name.txt").write_text("file names are bytes\n")
    docs = root / "docs"
    (docs / "deep" / "er").mkdir(parents=True)
    (docs / "readme.md").write_text("isidorus keeps backups of your services.\n" * 5000)
    (docs / "deep" / "er" / "nested.txt").write_text("nested\n")
    data = root / "data"
    data.mkdir()
    write_random(data / "random.bin", 1_500_000, rng)
    os.link(data / "random.bin", data / "same-inode.bin")
    write_random(data / "small.bin", 10_000, rng)
    (root / "emptydir").mkdir()
    os.symlink("hello.txt", root / "link-to-hello")
    os.symlink("does/not/exist", root / "dangling")
    os.mkfifo(root / "fifo")
    run_sh = root / "run.sh"
    run_sh.write_text("#!/bin/sh\necho hi\n")
    run_sh.chmod(0o755)
    private = root / "private"
    private.mkdir()
    (private / "secret.txt").write_text("the cake is a lie\n")
    (private / "secret.txt").chmod(0o600)
    private.chmod(0o700)
    old = 981_173_106_123_456_789  # 2001-02-03, with nanoseconds
    os.utime(docs / "readme.md", ns=(old, old))
    os.utime(docs / "deep", ns=(old, old))
    os.utime(root / "link-to-hello", ns=(old, old), follow_symlinks=False)
    return root


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    return make_sample_tree(tmp_path / "src")


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry(path: str, st: os.stat_result, links: bool) -> tuple[Any, ...]:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return ("file", sha256_file(path), mode, st.st_mtime_ns, *([st.st_nlink] if links else []))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", mode, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        return ("symlink", os.readlink(path))
    return (stat.filemode(st.st_mode)[0], mode, st.st_mtime_ns)


def manifest(root: Path | str, *, links: bool = True) -> dict[str, tuple[Any, ...]]:
    """Each entry below root (and root itself, as "."): type, content hash, mode and
    mtime; with `links`, also the link count, so hard links must stay hard links."""
    root = str(root)
    out = {".": _entry(root, os.lstat(root), links)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = _entry(p, os.lstat(p), links)
    return out


def restored(target: Path, src: Path) -> Path:
    """Where a snapshot of the absolute path src lands when restored into target."""
    return target / src.relative_to("/")


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


# -- stores


def init_store(run: Isidorus, path: Path, *extra: str) -> Path:
    r = run("backup", "init", path, *KDF, *extra)
    assert "created" in r.out
    return path


@pytest.fixture
def store(run: Isidorus, tmp_path: Path) -> Path:
    return init_store(run, tmp_path / "store")


def create(run: Isidorus, store: Path, *args: Any, **kw: Any) -> dict[str, Any]:
    """`backup create STORE ARGS --json`, parsed."""
    r = run("backup", "create", store, *args, "--json", **kw)
    doc: dict[str, Any] = json.loads(r.out)
    return doc


def snapshots(run: Isidorus, store: Path, *args: Any, **kw: Any) -> list[dict[str, Any]]:
    """`backup list STORE ARGS --json`, parsed."""
    r = run("backup", "list", store, *args, "--json", **kw)
    docs: list[dict[str, Any]] = json.loads(r.out)
    return docs


def assert_intact(run: Isidorus, store: Path) -> dict[str, Any]:
    r = run("backup", "verify", store, "--json", check=False)
    report: dict[str, Any] = json.loads(r.out) if r.out.strip() else {}
    assert r.code == 0 and report.get("ok") is True, f"verify: {r}"
    assert report["damaged"] == [] and report["errors"] == []
    return report


def assert_restores(
    run: Isidorus, store: Path, snapshot: str, src: Path, expected: dict[str, Any], scratch: Path
) -> None:
    """Restore snapshot into a fresh directory and compare it with the manifest of src
    taken when the snapshot was made."""
    target = scratch / f"restore-{snapshot[:12]}-{time.monotonic_ns()}"
    run("backup", "restore", store, snapshot, target)
    try:
        assert manifest(restored(target, src)) == expected
    finally:
        shutil.rmtree(target)


def store_litter(store: Path) -> list[str]:
    """What a finished command must not leave in a store: sessions and partial writes."""
    return sorted(
        f"{kind}/{name}"
        for kind in ("locks", "tmp")
        if (store / kind).is_dir()
        for name in os.listdir(store / kind)
    )


def store_files(store: Path) -> dict[str, str]:
    """Every object of a store with its hash, to show that a command changed nothing."""
    out = {}
    for dirpath, _dirs, files in os.walk(store):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, store)] = sha256_file(p)
    return out


def packs(store: Path) -> set[Path]:
    return {p for p in (store / "data").glob("*/*") if p.is_file()}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x55
    path.write_bytes(bytes(data))


def assert_one_line_error(r: Result, *words: str) -> str:
    """A failed command: exit code not 0, one line on stderr naming the cause."""
    assert r.code != 0, r
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    line = lines[0]
    assert line.startswith("isidorus: error: "), line
    for w in words:
        assert w.lower() in line.lower(), f"{w!r} not in {line!r}"
    assert "Traceback" not in r.err and "Traceback" not in str(r.out)
    return line


# -- mounts (root only)


class Mounts:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def tmpfs(self, where: str | Path, size: str = "3m") -> Path:
        """Mount a tmpfs of `size` at `where` (a name under the test's directory, or a
        path); it is unmounted when the test ends."""
        d = self.base / where
        d.mkdir(exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
            check=True,
            timeout=TIMEOUT,
        )
        self.mounted.append(d)
        return d

    def remount(self, d: Path, how: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{how}", str(d)], check=True, timeout=TIMEOUT)

    def unmount_all(self) -> None:
        for d in reversed(self.mounted):
            r = subprocess.run(["umount", str(d)], capture_output=True, timeout=TIMEOUT)
            if r.returncode:
                subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=TIMEOUT)
        self.mounted.clear()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(tmp_path)
    try:
        yield m
    finally:
        m.unmount_all()


# -- homes: hosts in network namespaces with an sshd of their own (root only)


@pytest.fixture(scope="session")
def homes_session() -> Iterator[Homes]:
    """This process's two homes (home1, home2), made at their first use (each xdist
    worker makes its own), removed at the end. Tests use `homes`; this one is for fixtures
    of a wider scope, which see whatever the tests before them left."""
    with running_homes() as made:
        yield made


@pytest.fixture
def homes(homes_session: Homes) -> Iterator[Homes]:
    """The homes as new for each test: links up and not shaped, sshd running, only the
    fixture's key authorized (no forced command), storage empty, ssh_config and
    known_hosts as written at the start; and again after the test."""
    homes_session.reset()
    try:
        yield homes_session
    finally:
        homes_session.reset()
