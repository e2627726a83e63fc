"""Homes: test hosts in network namespaces, each with a real OpenSSH server of its own.

A home is what a friend lends for an off-site copy, reached over SSH: here a network
namespace joined to the root namespace by a veth pair (10.213.SLOT.1 on our side,
10.213.SLOT.2 on the home's), a unix account (`isihome1`…) and Debian's /usr/sbin/sshd
run in the foreground inside the namespace, with its own configuration, host key, log and
authorized_keys in a temporary directory. The client side is an ssh_config file with one
host alias per home (`ssh -F CONFIG home1`), a key made for the run and a known_hosts file
holding the homes' host keys, so `StrictHostKeyChecking=yes` accepts them and nothing else.

Every packet stays on the veths: the homes have no route but their own /30, and each slot
also holds an `unreachable` route for its /30 in the root namespace, so that while a link
is down (its connected route gone) nothing for the home's address leaves by the default
route: it fails at once with "No route to host".

Slots (the SLOT above) are reserved across processes (pytest-xdist workers, other runs)
by files in /run/isidorus-homes, under a lock; a slot whose owner died is cleaned (its
processes, namespace, veth and route) by the next run that comes across it. The sshd
processes get SIGKILL if pytest dies (`setpriv --pdeathsig`). Accounts are kept across
runs (creating them is idempotent); everything else is removed when the homes stop, also
after a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import isidorus

SSHD = "/usr/sbin/sshd"
TIMEOUT = 30  # seconds, for every subprocess
SUBNET = "10.213"  # 10.213.SLOT.0/30: addresses of our own namespaces, nothing else
SLOTS = range(1, 251)
SLOT_DIR = Path("/run/isidorus-homes")
GUARD_METRIC = "1213"  # the unreachable route's metric (the connected route's is 0)
RATE_BURST = ("burst", "32kbit", "latency", "400ms")
HOME_VETH = "eth0"  # the home's side of its veth, inside its namespace

ISIDORUS = str(Path(sys.executable).parent / "isidorus")


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: bytes | str | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    data = input.encode() if isinstance(input, str) else input
    p = subprocess.run(
        list(argv),
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        timeout=timeout,
    )
    r = subprocess.CompletedProcess(
        p.args,
        p.returncode,
        p.stdout.decode("utf-8", "replace"),
        p.stderr.decode("utf-8", "replace"),
    )
    if check and r.returncode:
        raise AssertionError(f"{shlex.join(argv)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def _wait(
    predicate: Callable[[], bool], what: str, timeout: float = 10.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- slots: a subnet, a veth name and a namespace per home, reserved across processes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _slot_lock() -> Iterator[None]:
    SLOT_DIR.mkdir(mode=0o755, exist_ok=True)
    with open(SLOT_DIR / ".lock", "a") as f:
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{SLOT_DIR}/.lock held for 30 s") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _subnet(slot: int) -> str:
    return f"{SUBNET}.{slot}.0/30"


def _kill_namespace_processes(netns: str, spare: Iterable[int] = ()) -> None:
    """SIGKILL every process in the namespace but `spare`, and wait until they are gone."""
    keep = set(spare)

    def others() -> list[int]:
        r = _run(["ip", "netns", "pids", netns], check=False)
        return [int(p) for p in r.stdout.split() if int(p) not in keep]

    for pid in others():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait(lambda: not others(), f"the processes of {netns} to end")


def _release(slot: int, netns: str, veth: str) -> list[str]:
    """Remove whatever a slot may hold; returns what could not be removed."""
    problems = []
    if Path("/run/netns", netns).exists():
        try:
            _kill_namespace_processes(netns)
        except AssertionError as exc:
            problems.append(str(exc))
    steps = [
        (["ip", "link", "del", veth], Path("/sys/class/net", veth).exists()),
        (["ip", "netns", "del", netns], Path("/run/netns", netns).exists()),
    ]
    for argv, present in steps:
        if present:
            r = _run(argv, check=False)
            if r.returncode:
                problems.append(f"{shlex.join(argv)}: {r.stderr.strip()}")
    guard = ["unreachable", _subnet(slot), "metric", GUARD_METRIC]
    if _run(["ip", "route", "show", "exact", _subnet(slot), "type", "unreachable"]).stdout:
        r = _run(["ip", "route", "del", *guard], check=False)
        if r.returncode:
            problems.append(f"ip route del {' '.join(guard)}: {r.stderr.strip()}")
    if not problems:
        (SLOT_DIR / str(slot)).unlink(missing_ok=True)
    return problems


def _reserve_slot(name: str, base: Path) -> tuple[int, str, str]:
    """A free slot, with the namespace and the veth that its home will have."""
    pid = os.getpid()
    with _slot_lock():
        for slot in SLOTS:
            path = SLOT_DIR / str(slot)
            if path.exists():
                try:
                    owner = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # being written: not ours to judge
                if _alive(owner["pid"]):
                    continue
                if _release(slot, owner["netns"], owner["veth"]):
                    continue  # the leftovers would not go: leave that slot alone
                # and the files of the run that died (shared by its homes)
                shutil.rmtree(owner.get("base", "/nonexistent"), ignore_errors=True)
            netns, veth = f"isi-{pid}-{slot}-{name}", f"isih{slot}"
            # a leftover of a slot file that was lost (a cleaned /run keeps no namespace,
            # but be sure): the slot is ours now, so whatever has its names goes
            problems = _release(slot, netns, veth)
            assert not problems, problems
            owner = {"pid": pid, "netns": netns, "veth": veth, "base": str(base)}
            path.write_text(json.dumps(owner))
            return slot, netns, veth
    raise AssertionError(f"no free slot in {SLOT_DIR}: {len(SLOTS)} homes exist already")


# -- accounts


def _ensure_user(user: str) -> pwd.struct_passwd:
    """The account, made if missing (kept across runs), not locked: sshd refuses a locked
    account (a `!` password) when it does not use PAM, so its password is `*` (none)."""
    for _ in range(20):  # another xdist worker may be making it (or holding /etc/passwd)
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            argv = ["useradd", "--create-home", "--user-group", "--shell", "/bin/sh"]
            argv += ["--password", "*", "--comment", "isidorus test home", user]
            if _run(argv, check=False).returncode:
                time.sleep(0.1)
            continue
        shadow = Path("/etc/shadow").read_text().splitlines()
        locked = any(line.startswith(f"{user}:!") for line in shadow)
        if locked and _run(["usermod", "--password", "*", user], check=False).returncode:
            time.sleep(0.1)
            continue
        if not Path(pw.pw_dir).is_dir():
            Path(pw.pw_dir).mkdir(mode=0o755, parents=True)
            os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
        return pw
    raise AssertionError(f"could not make the account {user}")


def _as_user(pw: pwd.struct_passwd, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
    env = ["env", "-i", f"HOME={pw.pw_dir}", "PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8"]
    return _run([*prefix, *env, *argv], check=False)


def _grant_isidorus(pw: pwd.struct_passwd) -> None:
    """Let the account run the virtualenv's isidorus, as its forced command will.

    The checkout and the interpreter may be anywhere, under /root (mode 700) for one (CI
    clones into a folder we do not choose, pyenv lives in ~/.pyenv): on this throwaway
    test machine, the directories on the way get the x bit for others (traverse only, no
    listing); the files themselves are world-readable as installed."""
    # the script is there and executable, its interpreter starts and finds the package
    # (cheaper than `isidorus --version`, which imports the whole command line)
    python = Path(ISIDORUS).read_text().splitlines()[0].removeprefix("#!").strip()
    probe = ["sh", "-c", 'test -x "$0" && "$1" -c "import isidorus"', ISIDORUS, python]
    if _as_user(pw, probe).returncode == 0:
        return
    targets = [
        Path(ISIDORUS),
        Path(os.path.realpath(sys.executable)),
        Path(sys.prefix) / "lib",
        Path(sys.base_prefix) / "lib",
        Path(os.path.realpath(isidorus.__file__)),
    ]
    for target in targets:
        for directory in target.parents:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    r = _as_user(pw, probe)
    assert r.returncode == 0, f"{pw.pw_name} cannot run {ISIDORUS}: {r.stdout}{r.stderr}"


# -- homes


SSHD_CONFIG = """\
Port 22
ListenAddress {address}
AddressFamily inet
HostKey {host_key}
PidFile {pid_file}
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {authorized_keys}/%u
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


@dataclass
class Home:
    """One home: a namespace, its veth, its sshd and the account it lends."""

    name: str  # the ssh_config alias, e.g. "home1"
    netns: str
    address: str  # the home's side of the veth
    user: str
    storage: str  # a directory owned by `user`, where the home keeps its stores
    host_veth: str  # the root namespace's side of the veth
    host_address: str = ""  # the root namespace's address on the veth
    uid: int = -1
    gid: int = -1
    slot: int = 0
    dir: str = ""  # this home's files: sshd's configuration, host key, log
    log: str = ""  # sshd's log (LogLevel VERBOSE): what it thought of each connection
    authorized_keys: str = ""  # the user's authorized_keys file, as sshd reads it
    default_key: str = field(default="", repr=False)  # what reset() authorizes
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    shaped: bool = False

    def url(self, path: str = "store", scheme: str = "ssh+isidorus") -> str:
        """A URL through the ssh_config alias; the path is as the remote end reads it."""
        return f"{scheme}://{self.user}@{self.name}/{path}"

    def authorize(self, key_pub: str, command: str | None = None, *, add: bool = False) -> None:
        """Write the user's authorized_keys with this one key (the text of a .pub file);
        with `command`, a forced command: `command="…",restrict KEY`. With `add`, the
        line is added to those there."""
        key = key_pub.strip()
        assert key and "\n" not in key, f"one public key line, not {key_pub!r}"
        if command is None:
            line = key
        else:
            assert "\n" not in command, "a forced command is one line"
            # authorized_keys options know one escape in quotes: \"
            line = 'command="{}",restrict {}'.format(command.replace('"', '\\"'), key)
        path = Path(self.authorized_keys)
        before = path.read_text() if add and path.exists() else ""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(before + line + "\n")
        os.chown(tmp, self.uid, self.gid)
        tmp.chmod(0o600)
        tmp.replace(path)

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: bytes | str | None = None,
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the home's namespace, as root (check: fail on exit != 0)."""
        argv = ("ip", "netns", "exec", self.netns, *argv)
        return _run(argv, check=check, input=input, timeout=timeout)

    def link_down(self) -> None:
        """Cut the link: both ends of the veth go down. A new connection fails at once
        (No route to host); one that was open gets no answer (ssh's keepalives end it)."""
        _run(["ip", "-n", self.netns, "link", "set", "dev", HOME_VETH, "down"])
        _run(["ip", "link", "set", "dev", self.host_veth, "down"])

    def link_up(self) -> None:
        _run(["ip", "-n", self.netns, "link", "set", "dev", HOME_VETH, "up"])
        _run(["ip", "link", "set", "dev", self.host_veth, "up"])
        operstate = Path("/sys/class/net", self.host_veth, "operstate")
        _wait(lambda: operstate.read_text().strip() == "up", f"{self.host_veth} to be up")
        route = ["ip", "route", "show", "exact", _subnet(self.slot), "proto", "kernel"]
        _wait(lambda: bool(_run(route).stdout.strip()), f"the route to {self.name}")

    def shape(self, rate: str = "20mbit") -> None:
        """Limit both directions of the link to `rate` (a token bucket: the kernel here
        has no netem, so no added delay)."""
        tbf = ["root", "tbf", "rate", rate, *RATE_BURST]
        _run(["tc", "qdisc", "replace", "dev", self.host_veth, *tbf])
        _run(["tc", "-n", self.netns, "qdisc", "replace", "dev", HOME_VETH, *tbf])
        self.shaped = True

    def unshape(self) -> None:
        _run(["tc", "qdisc", "del", "dev", self.host_veth, "root"], check=False)
        _run(["tc", "-n", self.netns, "qdisc", "del", "dev", HOME_VETH, "root"], check=False)
        self.shaped = False

    # -- its sshd

    @property
    def sshd_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start_sshd(self) -> None:
        """Start the home's sshd (in the foreground, so we own the process) and wait until
        it accepts connections."""
        assert not self.sshd_running, f"the sshd of {self.name} runs already"
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        config = str(Path(self.dir, "sshd_config"))
        # SIGKILL when pytest dies, however it dies; `ip netns exec` and setpriv exec, so
        # the process is sshd itself
        argv = ["setpriv", "--pdeathsig", "KILL", "ip", "netns", "exec", self.netns]
        argv += [SSHD, "-D", "-E", self.log, "-f", config]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

        def listening() -> bool:
            if not self.sshd_running:
                raise AssertionError(f"the sshd of {self.name} exited:\n{self.log_text()}")
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex((self.address, 22)) == 0

        _wait(listening, f"the sshd of {self.name} to listen on {self.address}:22")

    def stop_sshd(self) -> None:
        """Stop the listener (sessions that are open go on until reset() or the end)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def reset(self) -> None:
        """As new: link up and not shaped, sshd running, only the default key authorized,
        no process left in the namespace but sshd, the storage empty."""
        if Path("/sys/class/net", self.host_veth, "operstate").read_text().strip() != "up":
            self.link_up()
        self.unshape()
        if not self.sshd_running:
            self.stop_sshd()  # reap it
            self.start_sshd()
        assert self.proc is not None
        _kill_namespace_processes(self.netns, spare=[self.proc.pid])
        self.authorize(self.default_key)
        storage = Path(self.storage)
        for entry in storage.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


class Homes:
    """The homes of a test run and what a client needs to reach them with ssh."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.homes: list[Home] = []
        self.key = str(base / "client" / "id_ed25519")  # no passphrase
        self.key_pub = ""  # the public key's line
        self.ssh_config = str(base / "client" / "ssh_config")
        self.known_hosts = str(base / "client" / "known_hosts")
        self.ssh_command = f"ssh -F {shlex.quote(self.ssh_config)}"  # ISIDORUS_SSH_COMMAND
        self.isidorus = ISIDORUS  # the console script the homes can run
        self._known_hosts_text = ""

    def __getitem__(self, key: int | str) -> Home:
        if isinstance(key, int):
            return self.homes[key]
        for home in self.homes:
            if home.name == key:
                return home
        raise KeyError(key)

    def __iter__(self) -> Iterator[Home]:
        return iter(self.homes)

    def write_ssh_config(self, path: str | Path, known_hosts: str | Path | None = None) -> str:
        """An ssh_config for the homes (at `path`), whose known_hosts file is `known_hosts`
        (the fixture's when None). Returns the path."""
        lines = []
        for home in self.homes:
            lines += [f"Host {home.name}", f"    HostName {home.address}", f"    User {home.user}"]
        lines += [
            "Host *",
            "    Port 22",
            f"    IdentityFile {self.key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts or self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    UpdateHostKeys no",
            "    BatchMode yes",
            "    AddressFamily inet",
            "    ControlMaster no",
            "    ConnectTimeout 5",
            "    ServerAliveInterval 2",
            "    ServerAliveCountMax 3",
        ]
        Path(path).write_text("\n".join(lines) + "\n")
        return str(path)

    def ssh(
        self,
        home: Home | str,
        *remote: str,
        config: str | None = None,
        input: bytes | str | None = None,
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """`ssh -F CONFIG HOME REMOTE…` from the root namespace (exit code not checked)."""
        name = home if isinstance(home, str) else home.name
        argv = ["ssh", "-F", config or self.ssh_config, name, *remote]
        return _run(argv, check=False, input=input, timeout=timeout)

    def reset(self) -> None:
        """Every home as new, and the client's files as written at the start."""
        self.write_ssh_config(self.ssh_config)
        Path(self.known_hosts).write_text(self._known_hosts_text)
        for home in self.homes:
            home.reset()

    # -- making and removing

    def _setup(self, names: Sequence[str]) -> None:
        client = self.base / "client"
        client.mkdir()
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "isidorus-tests"]
        _run([*keygen, "-f", self.key])
        self.key_pub = Path(self.key + ".pub").read_text().strip()
        known = []
        for name in names:
            home = self._add_home(name)
            host_key = Path(home.dir, "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{home.name},{home.address} {host_key[0]} {host_key[1]}")
        self._known_hosts_text = "\n".join(known) + "\n"
        self.reset()  # writes the client's files, starts the sshds
        for home in self.homes:
            r = self.ssh(home, "true")
            assert r.returncode == 0, f"ssh {home.name} true: {r.stderr}\n{home.log_text()}"

    def _add_home(self, name: str) -> Home:
        user = f"isi{name}"
        pw = _ensure_user(user)
        _grant_isidorus(pw)
        slot, netns, veth = _reserve_slot(name, self.base)
        d = self.base / name
        home = Home(
            name=name,
            netns=netns,
            address=f"{SUBNET}.{slot}.2",
            user=user,
            storage=str(d / "storage"),
            host_veth=veth,
            host_address=f"{SUBNET}.{slot}.1",
            uid=pw.pw_uid,
            gid=pw.pw_gid,
            slot=slot,
            dir=str(d),
            log=str(d / "sshd.log"),
            authorized_keys=str(d / "authorized_keys" / user),
            default_key=self.key_pub,
        )
        self.homes.append(home)  # from here on, _teardown removes what there is
        (d / "authorized_keys").mkdir(parents=True)
        (d / "storage").mkdir()
        os.chown(d / "storage", pw.pw_uid, pw.pw_gid)
        for p in (d, d / "authorized_keys"):
            p.chmod(0o755)  # sshd reads authorized_keys as the user
        host_key = str(d / "ssh_host_ed25519_key")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", host_key])
        (d / "sshd_config").write_text(
            SSHD_CONFIG.format(
                address=home.address,
                host_key=host_key,
                pid_file=d / "sshd.pid",
                user=user,
                authorized_keys=d / "authorized_keys",
            )
        )
        # the network: a guard route first, so the address never leaves by another way
        _run(["ip", "route", "add", "unreachable", _subnet(slot), "metric", GUARD_METRIC])
        _run(["ip", "netns", "add", netns])
        _run(
            ["ip", "link", "add", veth, "type", "veth"]
            + ["peer", "name", HOME_VETH, "netns", netns]
        )
        _run(["ip", "link", "set", "dev", veth, "addrgenmode", "none"])  # no IPv6 chatter
        _run(["ip", "-n", netns, "link", "set", "dev", HOME_VETH, "addrgenmode", "none"])
        _run(["ip", "addr", "add", f"{home.host_address}/30", "dev", veth])
        _run(["ip", "-n", netns, "addr", "add", f"{home.address}/30", "dev", HOME_VETH])
        _run(["ip", "-n", netns, "link", "set", "dev", "lo", "up"])
        home.link_up()
        return home

    def _teardown(self) -> None:
        problems = []
        for home in self.homes:
            with contextlib.suppress(Exception):
                home.stop_sshd()
            problems += _release(home.slot, home.netns, home.host_veth)
        self.homes.clear()
        shutil.rmtree(self.base, ignore_errors=True)
        assert not problems, f"the homes left things behind: {problems}"


@contextlib.contextmanager
def running_homes(names: Sequence[str] = ("home1", "home2")) -> Iterator[Homes]:
    """Homes, made and started, then stopped and removed (also when the block fails)."""
    assert os.geteuid() == 0, "homes need root (network namespaces, accounts)"
    assert Path(SSHD).exists(), f"no {SSHD}: run scripts/test, which installs openssh-server"
    # in /tmp, not under pytest's directories: those are private to root, and sshd reads
    # authorized_keys as the home's user, who also owns the storage
    base = Path(tempfile.mkdtemp(prefix="isidorus-homes-", dir="/tmp"))
    base.chmod(0o755)
    homes = Homes(base)
    try:
        homes._setup(names)
        yield homes
    finally:
        homes._teardown()
