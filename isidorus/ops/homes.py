"""The side of the people who lend a disk: serving a copy, its queued removals, and
setting up an account for a server's copies.

A home needs no passphrase and never sees one: it stores sealed objects, serves them to
one server's key (the forced command of `authorized_keys`), keeps the history that server
asks to remove for a delay of its owner's choosing, and can check its copy with `scrub`.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
from dataclasses import dataclass, field

from isidorus.backup.errors import StoreError
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.remote.wire import ProtocolError
from isidorus.backup.removals import ApplyResult, Removal, RemovalQueue
from isidorus.backup.serve import ServeOptions, serve_stdio
from isidorus.errors import UsageError

_USER = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/=]+(\s+.*)?")


def serve(options: ServeOptions) -> None:
    """Answer one client on stdin and stdout (see backup/serve.py)."""
    if not os.path.isdir(options.root):
        raise StoreError(
            f"the served directory {options.root} does not exist: create it (owned by the "
            "account that serves it) or fix the forced command"
        )
    try:
        serve_stdio(options)
    except ProtocolError as exc:
        # rsync, scp or a shell pointed at the account: its forced command answers only
        # isidorus's store protocol
        raise StoreError(
            f"the client does not speak isidorus's store protocol ({exc}): this account "
            "answers `isidorus backup sync` to ssh+isidorus:// only"
        ) from None


def _queue(store_dir: str) -> RemovalQueue:
    if not os.path.exists(os.path.join(store_dir, "config")):
        raise StoreError(f"{store_dir} holds no store: give the directory of a copy")
    return RemovalQueue(store_dir)


@dataclass
class RemovalList:
    pending: list[Removal] = field(default_factory=list)
    held_since: float | None = None


def list_removals(store_dir: str) -> RemovalList:
    queue = _queue(store_dir)
    try:
        return RemovalList(queue.pending(), queue.held_since())
    finally:
        queue.close()


def cancel_removals(store_dir: str) -> int:
    queue = _queue(store_dir)
    try:
        return queue.cancel()
    finally:
        queue.close()


def release_removals(store_dir: str) -> bool:
    queue = _queue(store_dir)
    try:
        return queue.release()
    finally:
        queue.close()


def apply_removals(store_dir: str, delay: float) -> ApplyResult:
    queue = _queue(store_dir)
    backend = LocalBackend(store_dir)
    try:
        return queue.apply(backend, delay)
    finally:
        queue.close()
        backend.close()


@dataclass(frozen=True)
class HomeSetup:
    """An account at a home for one server's copies."""

    user: str
    key: str  # the server's public key, one line of authorized_keys
    directory: str  # where its stores live: the forced command confines them there
    isidorus: str  # the isidorus command at this home, as sshd will run it
    quota: int = 0
    removal_delay: str = "14d"
    append_only: bool = True


@dataclass
class HomeSetupResult:
    user: str
    directory: str
    authorized_keys: str
    line: str
    created_user: bool
    url: str
    host_keys: list[str] = field(default_factory=list)  # fingerprints to give the server's admin


def forced_command(setup: HomeSetup) -> str:
    argv = [*shlex.split(setup.isidorus), "backup", "serve", "--stdio", setup.directory]
    if setup.append_only:
        argv += ["--append-only", "--removal-delay", setup.removal_delay]
    if setup.quota:
        argv += ["--quota", str(setup.quota)]
    return " ".join(shlex.quote(a) for a in argv)


def authorized_line(setup: HomeSetup) -> str:
    command = forced_command(setup).replace("\\", "\\\\").replace('"', '\\"')
    # restrict: no shell, no forwarding, no pty; only the forced command runs
    return f'command="{command}",restrict {setup.key.strip()}'


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError(f"{argv[0]} was not found: run this on a Debian home as root") from None
    except subprocess.CalledProcessError as exc:
        raise UsageError(f"{' '.join(argv)} failed: {exc.stderr.strip()}") from None


def _host_keys() -> list[str]:
    out = []
    for name in sorted(os.listdir("/etc/ssh")) if os.path.isdir("/etc/ssh") else []:
        if name.startswith("ssh_host_") and name.endswith(".pub"):
            r = subprocess.run(
                ["ssh-keygen", "-l", "-f", os.path.join("/etc/ssh", name)],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                out.append(r.stdout.strip())
    return out


def setup_home(setup: HomeSetup, hostname: str) -> HomeSetupResult:
    """Make (or update) the account: a system user with a locked password, the directory
    for its stores, and its one authorized_keys line with the forced command. Running it
    again with other options rewrites the line; stores are never touched."""
    if not _USER.fullmatch(setup.user):
        raise UsageError(
            f"{setup.user!r} is not a user name: lowercase letters, digits, '_' and '-'"
        )
    if not _KEY.fullmatch(setup.key.strip()) or "\n" in setup.key.strip():
        raise UsageError(
            "the key is not one OpenSSH public key line (ssh-ed25519 AAAA… comment): give "
            "the server's .pub file"
        )
    if not os.path.isabs(setup.directory):
        raise UsageError(f"{setup.directory!r} is relative: give an absolute directory")
    if os.geteuid() != 0:
        raise UsageError("home-setup makes a user account: run it as root (sudo)")
    created = False
    try:
        pw = pwd.getpwnam(setup.user)
    except KeyError:
        # a shell is needed for sshd to run the forced command; the password stays locked
        _run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", "--comment",
             "isidorus copies", setup.user]
        )  # fmt: skip
        pw = pwd.getpwnam(setup.user)
        created = True
    os.makedirs(setup.directory, mode=0o700, exist_ok=True)
    os.chown(setup.directory, pw.pw_uid, pw.pw_gid)
    ssh_dir = os.path.join(pw.pw_dir, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
    keys = os.path.join(ssh_dir, "authorized_keys")
    line = authorized_line(setup)
    tmp = keys + ".tmp"
    with open(tmp, "w") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, keys)
    return HomeSetupResult(
        user=setup.user,
        directory=setup.directory,
        authorized_keys=keys,
        line=line,
        created_user=created,
        url=f"ssh+isidorus://{setup.user}@{hostname}/isidorus",
        host_keys=_host_keys(),
    )
