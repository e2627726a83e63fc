"""The system users services run as, and the directories they own.

A service runs as its own system user (uid below FIRST_PERSON_UID, no login shell, its
own group of the same name). isidorus never takes over nor removes a person's account, nor
root: a manifest naming one is refused. A user that already exists as a system user (the
Debian package made it: radicale, prosody) is used as it is, and left in place by a
rollback, since the install did not create it.
"""

from __future__ import annotations

import grp
import os
import pwd
import re

from isidorus.system.errors import HostError
from isidorus.system.run import run

FIRST_PERSON_UID = 1000  # Debian's UID_MIN: accounts from here up belong to people
NOLOGIN = "/usr/sbin/nologin"
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def ensure_system_user(name: str, home: str) -> bool:
    """Create the system user `name` with its own group, `home` as its home (not created
    here) and no login shell, unless it exists; True when created now (what a rollback
    removes). HostError when `name` is root or a person's account, or when a group of that
    name exists without the user. Idempotent."""
    existing = _account(name)
    if existing is not None:
        return False
    try:
        group = grp.getgrnam(name)
    except KeyError:
        pass
    else:
        raise HostError(
            f"a group {name} (gid {group.gr_gid}) exists without a user of that name: "
            f"remove it (groupdel {name}) or give the service another [run] user"
        )
    argv = ["useradd", "--system", "--home-dir", home, "--no-create-home"]
    run([*argv, "--shell", NOLOGIN, "--user-group", name], what="useradd")
    return True


def remove_system_user(name: str) -> None:
    """Remove the system user `name` and its group (`userdel`, which leaves its files: they
    are the service's data, removed or kept by whoever called). Absent: nothing to do.
    HostError for root or a person's account, or while a process runs as the user."""
    if _account(name) is not None:
        run(["userdel", name], what="userdel")


def make_directory(path: str, owner: str, mode: int = 0o750) -> bool:
    """Make the directory `path` (and any missing parent, root's) owned by `owner` and
    `owner`'s group, with `mode`; True when created now (what a rollback removes). An
    existing directory is left as it is. HostError for an unknown owner, or when `path` is
    something else than a directory."""
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise HostError(f"cannot give {path} to {owner}: no such user") from None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # private until it has its owner, then the mode asked for (the umask left aside)
        os.mkdir(path, 0o700)
    except FileExistsError:
        if os.path.isdir(path):
            return False
        raise HostError(f"{path} exists and is not a directory: move it away, then retry") from None
    except OSError as exc:
        raise HostError(f"cannot make the directory {path}: {exc.strerror}") from None
    try:
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, mode)
    except OSError as exc:
        os.rmdir(path)
        raise HostError(f"cannot give the directory {path} to {owner}: {exc.strerror}") from None
    return True


def _account(name: str) -> pwd.struct_passwd | None:
    """The system account `name`, None when absent; refuses root and people's accounts."""
    if not USER_NAME.match(name):
        raise HostError(f"{name!r} is not a user name: lowercase letters, digits, - and _")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        raise HostError(f"{name} is root: a service never runs as root; give it its own user")
    if entry.pw_uid >= FIRST_PERSON_UID:
        raise HostError(
            f"{name} has uid {entry.pw_uid}, not a system user's: isidorus never takes over a "
            "person's account; give the service another [run] user"
        )
    return entry
