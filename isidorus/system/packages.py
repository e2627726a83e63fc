"""The software a service needs: Debian packages (apt), PyPI packages in the service's own
venv (pip), npm packages in the service's own directory.

Every install says what it added, so that a failed service install can take back exactly
that and nothing more: `apt_install` returns the packages that were not there before, and
`apt_remove` refuses to remove anything else along with them.

While apt installs, a policy-rc.d held in place forbids packages to start their daemons:
radicale's or prosody's own instance would otherwise take the port isidorus gives the
service. The one the host had (Docker images ship one) is put back byte for byte after, or
at the next install if a process was killed in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from isidorus.system.errors import HostError, HostTimeout
from isidorus.system.run import last_line, run

VENV_DEBIAN = ("python3-venv",)  # Debian's python3 makes venvs only with this
NPM_DEBIAN = ("nodejs", "npm")

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_SAVED = POLICY_RC_D + ".isidorus-saved"  # the host's own, while ours is in place
POLICY_MARK = "# isidorus: no daemon starts while it installs packages"
POLICY_SCRIPT = f"#!/bin/sh\n{POLICY_MARK}; removed when it is done\nexit 101\n"

LOCK_PATH = "/run/lock/isidorus-apt.lock"
DPKG_FRONTEND_LOCK = "/var/lib/dpkg/lock-frontend"  # what apt, apt-get and dpkg take
APT_LOCK_WAIT = 300.0  # seconds: unattended-upgrades can hold apt's lock for minutes
APT_TIMEOUT = 1800.0  # seconds for one apt-get, after it got the lock
PIP_TIMEOUT = 1800.0  # some packages build from source
LISTS_DIR = "/var/lib/apt/lists"
LISTS_MAX_AGE = 86400.0  # seconds: older lists may name versions the mirror dropped

DEBIAN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
# a changed configuration file keeps the host's version rather than waiting for an answer
DPKG_OPTIONS = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
# dpkg states in which a package is on the host, whole or not (rollback removes those too)
PRESENT = frozenset(
    {"installed", "half-installed", "unpacked", "half-configured", "triggers-awaited"}
    | {"triggers-pending"}
)

_updated = False  # apt-get update runs at most once per process


def debian_installed(names: Sequence[str]) -> set[str]:
    """Which of these Debian packages are installed now (dpkg-query), or provided by an
    installed package (a virtual name); unknown names are simply not. Takes no lock."""
    status = _dpkg_status(_checked(names))
    return {n for n, state in status.items() if state in ("installed", "provided")}


def apt_install(names: Sequence[str]) -> list[str]:
    """Install these Debian packages without their recommendations and without letting
    them start a daemon; return, in order, those that were not installed before (what a
    rollback removes). Runs `apt-get update` once per process when a package is unknown to
    apt or its lists are older than a day. Waits up to APT_LOCK_WAIT seconds for another
    isidorus or apt, then HostTimeout. On failure, removes what it had added, then
    HostError names the package or apt's reason. Idempotent; safe across processes."""
    names = _checked(names)
    with _apt_lock():
        _recover_policy()
        status = _dpkg_status(names)
        before = {n for n, s in status.items() if s in PRESENT or s == "provided"}
        missing = [n for n in names if status.get(n) not in ("installed", "provided")]
        if not missing:
            return []
        unknown = _unknown(missing)
        if (unknown or _lists_stale()) and _update_once():
            unknown = _unknown(missing)
        if unknown:
            listed = ", ".join(unknown)
            raise HostError(
                f"no installable Debian package named {listed} (not in apt's lists, even after "
                "apt-get update): correct [source] debian, or add the apt source that has it"
            )
        with _daemons_held():
            try:
                _apt_get(["install", "-y", "--no-install-recommends", *DPKG_OPTIONS, *missing])
            except HostError as exc:
                raise _rolled_back(exc, names, before) from None
        after = _dpkg_status(names)
    return [n for n in names if n not in before and after.get(n) == "installed"]


def apt_remove(names: Sequence[str]) -> None:
    """Remove these Debian packages, keeping their configuration (`apt-get remove`, not
    purge). Absent ones are skipped. Refuses, with HostError naming them, when apt would
    also remove other packages that depend on these. Same lock as apt_install."""
    names = _checked(names)
    with _apt_lock():
        _recover_policy()
        _remove_locked(names)


def debian_versions(names: Sequence[str]) -> dict[str, str]:
    """The installed version of each of these Debian packages; absent ones are left out."""
    names = _checked(names)
    if not names:
        return {}
    fmt = "-f=${Package}\t${Version}\t${db:Status-Status}\n"
    wanted, found = set(names), {}
    for line in run(["dpkg-query", "-W", fmt], what="dpkg-query").stdout.splitlines():
        name, version, state = (line.split("\t") + ["", ""])[:3]
        if name in wanted and state == "installed":
            found[name] = version
    return found


def apt_upgrade(names: Sequence[str]) -> dict[str, str]:
    """Upgrade these installed Debian packages to apt's candidates (`apt-get install
    --only-upgrade`, daemons held back, lists refreshed when older than a day); returns the
    previous version of each package that changed, for `apt_downgrade`. Same lock and
    errors as apt_install."""
    names = _checked(names)
    if not names:
        return {}
    with _apt_lock():
        _recover_policy()
        before = debian_versions(names)
        if not before:
            return {}
        if _lists_stale():
            _update_once()
        with _daemons_held():
            _apt_get(["install", "-y", "--only-upgrade", "--no-install-recommends"]
                     + [*DPKG_OPTIONS, *before])  # fmt: skip
        after = debian_versions(names)
    return {n: v for n, v in before.items() if after.get(n) != v}


def apt_downgrade(versions: Mapping[str, str]) -> None:
    """Put these Debian packages back at these versions (`apt-get install NAME=VERSION
    --allow-downgrades`). HostError, before changing anything, when apt no longer offers
    one of them (its mirror dropped it), naming the package and version."""
    if not versions:
        return
    _checked(list(versions))
    with _apt_lock():
        _recover_policy()
        for name, version in versions.items():
            table = run(["apt-cache", "madison", name], env=APT_ENV, what="apt-cache").stdout
            offered = {ln.split("|")[1].strip() for ln in table.splitlines() if ln.count("|") >= 2}
            if version not in offered:
                raise HostError(
                    f"apt no longer offers {name} {version}, so it cannot be put back: "
                    "install that version's .deb by hand if it is still needed"
                )
        pinned = [f"{n}={v}" for n, v in versions.items()]
        with _daemons_held():
            _apt_get(["install", "-y", "--allow-downgrades", "--no-install-recommends",
                      *DPKG_OPTIONS, *pinned])  # fmt: skip


@dataclass(frozen=True)
class Upgrade:
    """One package apt would change, as its simulation (`apt-get -s`) tells it."""

    name: str
    installed: str  # "" when apt would install it anew (a new dependency)
    candidate: str
    origins: tuple[str, ...]  # where the candidate comes from: "Debian-Security:12/stable-security"

    @property
    def security(self) -> bool:
        """Whether the candidate comes from a security archive (Debian-Security, or a suite
        named *-security, as Debian's and Ubuntu's are)."""
        for origin in self.origins:
            name, _, release = origin.partition(":")
            if name == "Debian-Security" or release.rsplit("/", 1)[-1].endswith("-security"):
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "installed": self.installed,
            "candidate": self.candidate,
            "security": self.security,
            "origins": list(self.origins),
        }


def apt_upgradable() -> list[Upgrade]:
    """The installed packages `apt-get upgrade` would upgrade now, from apt's lists as they
    are (no new package, no removal; held packages stay): a simulation, which takes no lock
    and needs no root. HostError when apt cannot tell (a broken dpkg state, a bad source)."""
    return [u for u in _simulate(["upgrade"]) if u.installed]


def apt_upgrade_plan(names: Sequence[str]) -> list[Upgrade]:
    """Everything `apt_upgrade(names)` would change, the dependencies it pulls along
    included: a simulation, which takes no lock and needs no root."""
    names = _checked(names)
    if not names:
        return []
    return _simulate(["install", "--only-upgrade", "--no-install-recommends", *names])


def apt_refresh() -> None:
    """`apt-get update`, now (under isidorus's apt lock): what an update needs to see the
    mirror's new versions. HostError names apt's reason when a source cannot be read; the
    apt runs of this process that follow then use the lists of before."""
    global _updated
    with _apt_lock():
        _updated = True  # failed or not: the installs that follow do not try again
        _apt_get(["update"])


@contextlib.contextmanager
def apt_config(path: str) -> Iterator[None]:
    """Every apt-get and apt-cache that this process runs in the block reads this apt
    configuration file (apt's APT_CONFIG), before /etc/apt/apt.conf.d: other sources, lists
    or options. "" changes nothing. Not for threads that run apt for something else."""
    if not path:
        yield
        return
    had = APT_ENV.get("APT_CONFIG")
    APT_ENV["APT_CONFIG"] = path
    try:
        yield
    finally:
        if had is None:
            APT_ENV.pop("APT_CONFIG", None)
        else:
            APT_ENV["APT_CONFIG"] = had


def wait_for_apt() -> None:
    """Return once no other process holds apt's lock or isidorus's (see apt_busy), waiting
    up to APT_LOCK_WAIT seconds; then HostTimeout names the holder."""
    deadline = time.monotonic() + APT_LOCK_WAIT
    while busy := apt_busy():
        if time.monotonic() >= deadline:
            raise HostTimeout(
                f"apt is busy: {busy}, for {APT_LOCK_WAIT:.0f} s now; let it finish (or stop "
                "it), then retry"
            )
        time.sleep(0.5)


def apt_busy() -> str:
    """Who holds apt's lock (dpkg's frontend lock) or isidorus's own apt lock now, in
    words ("process 812 (unattended-upgr) holds /var/lib/dpkg/lock-frontend"); "" when no
    other process does. Looks, without taking either lock: it never gets in apt's way."""
    for path in (LOCK_PATH, DPKG_FRONTEND_LOCK):
        for pid in _lock_holders(path):
            if pid != os.getpid():
                return f"process {pid} ({_command_name(pid)}) holds {path}"
    return ""


def venv_install(venv: str, requirements: Sequence[str], python: str = "/usr/bin/python3") -> None:
    """Make the venv if it has no pip yet (`python -m venv`), then pip-install the pinned
    requirements into it. HostError names the package and pip's last line; a venv this
    call made is removed again when it fails. When `python` cannot make venvs (Debian's
    needs python3-venv, VENV_DEBIAN), the error says so. Idempotent."""
    _no_options(requirements)
    made = False
    if not os.path.exists(os.path.join(venv, "bin", "pip")):
        made = not os.path.exists(venv)
        _make_venv(venv, python, made)
    if not requirements:
        return
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install"]
    result = run(
        [*pip, "--disable-pip-version-check", "--no-input", "--quiet", *requirements],
        timeout=PIP_TIMEOUT,
        what="pip",
        check=False,
    )
    if result.returncode != 0:
        if made:
            shutil.rmtree(venv, ignore_errors=True)
        reason = last_line(result)
        raise HostError(f"pip could not install {_culprit(requirements, reason)}: {reason}")


def venv_retarget(venv: str, final: str) -> None:
    """Make a venv built at `venv` ready to be renamed to `final`: pip writes the venv's
    absolute path into its scripts' first lines (and venv into the activate scripts and
    pyvenv.cfg), which would otherwise name a directory that is gone. Call it just before
    the rename; files that do not name `venv` are left as they are."""
    here = re.escape(os.fsencode(venv.rstrip("/")))
    there = os.fsencode(final.rstrip("/"))
    # the path itself, not a longer name that starts with it (env.new2)
    pattern = re.compile(here + rb"(?=[/\"'\s]|$)", re.MULTILINE)
    names = [
        e.path for e in os.scandir(os.path.join(venv, "bin")) if e.is_file(follow_symlinks=False)
    ]
    for path in [*names, os.path.join(venv, "pyvenv.cfg")]:
        with open(path, "rb") as f:
            data = f.read(2)
            if data != b"#!" and not os.path.basename(path).startswith(("activate", "pyvenv")):
                continue  # a program, not a script
            data += f.read()
        fixed = pattern.sub(lambda _m: there, data)
        if fixed != data:
            tmp = path + ".isidorus-tmp"
            with open(tmp, "wb") as f:
                f.write(fixed)
            shutil.copymode(path, tmp)
            os.replace(tmp, path)


def npm_install(prefix: str, packages: Sequence[str]) -> None:
    """Install pinned npm packages (NAME@VERSION) under `prefix`/node_modules. Needs npm
    (NPM_DEBIAN). HostError names the package and npm's reason. Idempotent."""
    _no_options(packages)
    if not packages:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise HostError("npm is not installed: install the Debian packages " + " ".join(NPM_DEBIAN))
    result = run(
        [npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", *packages],
        env={"npm_config_update_notifier": "false"},
        timeout=PIP_TIMEOUT,
        what="npm",
        check=False,
    )
    if result.returncode != 0:
        reason = _npm_reason(result)
        raise HostError(f"npm could not install {_culprit(packages, reason)}: {reason}")


# apt


def _checked(names: Sequence[str]) -> list[str]:
    for n in names:
        if not DEBIAN_NAME.match(n):
            raise HostError(f"{n!r} is not a Debian package name")
    return list(dict.fromkeys(names))


def _dpkg_status(names: Sequence[str]) -> dict[str, str]:
    """dpkg's state of each name it knows; "provided" for a name no package has but an
    installed one provides (nodesource's nodejs provides npm, and conflicts with Debian's)."""
    if not names:
        return {}
    fmt = "-f=${Package}\t${db:Status-Status}\t${Provides}\n"
    lines = run(["dpkg-query", "-W", fmt], what="dpkg-query").stdout.splitlines()
    wanted = set(names)
    status: dict[str, str] = {}
    provided: set[str] = set()
    for line in lines:
        name, _, rest = line.partition("\t")
        state, _, provides = rest.partition("\t")
        if name in wanted and status.get(name) != "installed":  # one line per architecture
            status[name] = state
        if state == "installed" and provides:
            provided.update(p.split()[0].split(":")[0] for p in provides.split(",") if p.strip())
    for name in wanted & provided:
        if status.get(name) not in PRESENT:
            status[name] = "provided"
    return status


@contextlib.contextmanager
def _apt_lock() -> Iterator[None]:
    """Only one isidorus runs apt at a time: the policy-rc.d swap is not reentrant."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + APT_LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HostTimeout(
                        f"another isidorus has been installing packages for {APT_LOCK_WAIT:.0f}"
                        f" s (lock {LOCK_PATH}): let it finish, then retry"
                    ) from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def _apt_get(args: list[str]) -> None:
    """apt-get, waiting a bounded time for a lock another program holds (dpkg's lock through
    apt's own timeout; the lists' lock, which apt-get update does not wait for, here)."""
    deadline = time.monotonic() + APT_LOCK_WAIT
    while True:
        wait = max(1, int(deadline - time.monotonic()))
        argv = ["apt-get", "-q", "-o", f"DPkg::Lock::Timeout={wait}", *args]
        result = run(argv, env=APT_ENV, timeout=wait + APT_TIMEOUT, what="apt-get", check=False)
        if result.returncode == 0:
            return
        output = result.stdout + result.stderr
        if "Could not get lock" not in output and "Unable to acquire the dpkg" not in output:
            raise HostError(f"apt-get {args[0]} failed: {_apt_reason(result)}")
        if time.monotonic() >= deadline:
            holder = re.search(r"held by process (\d+ \([^)]*\))", output)
            # apt names the holder of dpkg's lock in most of its messages, not in all
            pids = _lock_holders(DPKG_FRONTEND_LOCK)
            who = (
                f"process {holder.group(1)}"
                if holder
                else f"process {pids[0]} ({_command_name(pids[0])})"
                if pids
                else "another program"
            )
            raise HostTimeout(
                f"apt is busy: {who} held its lock for {APT_LOCK_WAIT:.0f} s; "
                "let it finish (or stop it), then retry"
            )
        time.sleep(2)


def _apt_reason(result: subprocess.CompletedProcess[str]) -> str:
    # dpkg's own complaint says which package failed; apt's last line only says dpkg did
    lines = [ln.strip() for ln in (result.stdout + "\n" + result.stderr).splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("dpkg: error processing package") and i + 1 < len(lines):
            return f"{line} {lines[i + 1]}"
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("E: ")]
    return errors[0].removeprefix("E: ") if errors else last_line(result)


def _update_once() -> bool:
    """apt-get update, unless this process did already; True when it ran now."""
    global _updated
    if _updated:
        return False
    _apt_get(["update"])
    _updated = True
    return True


def _lists_stale() -> bool:
    try:
        with os.scandir(LISTS_DIR) as entries:
            newest = max(
                (e.stat().st_mtime for e in entries if e.is_file() and e.name != "lock"),
                default=0.0,
            )
    except OSError:
        return True
    return time.time() - newest > LISTS_MAX_AGE


def _unknown(names: Sequence[str]) -> list[str]:
    """The names apt has no installation candidate for."""
    result = run(["apt-cache", "policy", *names], env=APT_ENV, what="apt-cache")
    candidates: dict[str, str] = {}
    name = ""
    for line in result.stdout.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        elif line.strip().startswith("Candidate:"):
            candidates[name] = line.split(":", 1)[1].strip()
    return [n for n in names if candidates.get(n, "(none)") == "(none)"]


# `Inst NAME [OLD] (NEW ORIGIN, ORIGIN… [ARCH])`, one line per package apt would unpack
_INST = re.compile(r"^Inst (\S+)(?: \[([^\]]*)\])? \(([^)]*)\)")


def _simulate(args: list[str]) -> list[Upgrade]:
    argv = ["apt-get", "-s", "-q", "-o", "Debug::NoLocking=1", *args]
    result = run(argv, env=APT_ENV, what="apt-get", check=False)
    if result.returncode != 0:
        raise HostError(f"apt-get {args[0]} cannot tell what it would do: {_apt_reason(result)}")
    return parse_simulation(result.stdout)


def parse_simulation(text: str) -> list[Upgrade]:
    """The packages an `apt-get -s` output says apt would unpack, once each, in its order."""
    found: dict[str, Upgrade] = {}
    for line in text.splitlines():
        m = _INST.match(line)
        if m is None:
            continue
        name = m.group(1).split(":")[0]  # libc6:i386 goes with libc6
        inner = re.sub(r"\s*\[[^\]]*\]$", "", m.group(3).strip())
        candidate, _, where = inner.partition(" ")
        origins = tuple(o.strip() for o in where.split(",") if o.strip())
        found.setdefault(name, Upgrade(name, m.group(2) or "", candidate, origins))
    return list(found.values())


def _lock_holders(path: str) -> list[int]:
    """The processes that hold a lock (flock or POSIX) on `path`, from /proc/locks."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    for line in lines:
        parts = line.split()
        # "1: POSIX  ADVISORY  WRITE 812 fe:00:402117 0 EOF"; "->" marks a waiter
        if len(parts) >= 6 and parts[1] != "->" and parts[5] == want:
            with contextlib.suppress(ValueError):
                holders.append(int(parts[4]))
    return [p for p in holders if p > 0]


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "gone"


def _remove_locked(names: Sequence[str]) -> None:
    present = [n for n, s in _dpkg_status(names).items() if s in PRESENT]
    if not present:
        return
    plan = run(["apt-get", "-s", "remove", *present], env=APT_ENV, what="apt-get").stdout
    removed = {ln.split()[1].split(":")[0] for ln in plan.splitlines() if ln.startswith("Remv ")}
    others = sorted(removed - set(present))
    if others:
        raise HostError(
            f"removing {', '.join(present)} would also remove {', '.join(others)}, which "
            "depend on it: isidorus removes only what it installed; remove them by hand if meant"
        )
    _apt_get(["remove", "-y", *present])


def _rolled_back(exc: HostError, names: Sequence[str], before: set[str]) -> HostError:
    """The error of a failed install, after taking back what it had unpacked."""
    added = [n for n, s in _dpkg_status(names).items() if s in PRESENT and n not in before]
    try:
        _remove_locked(added)
    except HostError as again:
        return HostError(f"{exc}; removing {' '.join(added)} failed too: {again}")
    return exc


# policy-rc.d


@contextlib.contextmanager
def _daemons_held() -> Iterator[None]:
    new = POLICY_RC_D + ".isidorus-new"
    with open(new, "w", encoding="utf-8") as f:
        f.write(POLICY_SCRIPT)
    os.chmod(new, 0o755)
    # a hard link keeps the host's own, bytes, mode and owner, until it goes back
    had = os.path.lexists(POLICY_RC_D)
    if had:
        os.link(POLICY_RC_D, POLICY_SAVED, follow_symlinks=False)
    os.replace(new, POLICY_RC_D)
    try:
        yield
    finally:
        if had:
            os.replace(POLICY_SAVED, POLICY_RC_D)
        else:
            os.unlink(POLICY_RC_D)


def _recover_policy() -> None:
    """Put the host's policy-rc.d back if an isidorus was killed while it held its own."""
    if _is_ours(POLICY_RC_D):
        if os.path.lexists(POLICY_SAVED):
            os.replace(POLICY_SAVED, POLICY_RC_D)
        else:
            os.unlink(POLICY_RC_D)
    elif os.path.lexists(POLICY_SAVED):  # killed before ours went in: the host's is in place
        os.unlink(POLICY_SAVED)


def _is_ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return POLICY_MARK in f.read(4096)
    except OSError:
        return False


# pip and npm


def _no_options(packages: Sequence[str]) -> None:
    for p in packages:
        if not p or p.startswith("-"):
            raise HostError(f"{p!r} is not a package: write NAME==VERSION or NAME@VERSION")


def _make_venv(venv: str, python: str, made: bool) -> None:
    result = run([python, "-m", "venv", venv], what="python -m venv", check=False)
    if result.returncode == 0:
        return
    if made:
        shutil.rmtree(venv, ignore_errors=True)
    # Debian's python3 prints a long notice and fails when python3-venv is missing
    if run([python, "-m", "ensurepip", "--version"], what="ensurepip", check=False).returncode:
        raise HostError(
            f"{python} cannot make a venv (no ensurepip): install the Debian package "
            + " ".join(VENV_DEBIAN)
        )
    raise HostError(f"cannot make the venv {venv} with {python}: {last_line(result)}")


def _culprit(packages: Sequence[str], reason: str) -> str:
    """The packages a pip or npm error line is about, or all of them."""

    def bare(spec: str) -> str:
        return re.split(r"==|\[|@(?=\d)", spec)[0].lower().replace("_", "-")

    said = reason.lower().replace("_", "-")
    named = [p for p in packages if bare(p) in said]
    return ", ".join(named or packages)


def _npm_reason(result: subprocess.CompletedProcess[str]) -> str:
    # npm ends with where its log is; its telling line comes after the code and errno ones
    for line in result.stderr.splitlines():
        for prefix in ("npm error ", "npm ERR! "):
            if line.startswith(prefix):
                text = line.removeprefix(prefix).strip()
                skip = ("code ", "errno ", "syscall ", "A complete log", "Log files")
                if text and not text.startswith(skip):
                    return text
    return last_line(result)
