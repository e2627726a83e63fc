"""Directory use cases: keep the LDAP directory in step with the accounts, and the full
sync that repairs it.

Once `keep_in_step()` has been called on a host's state (`accounts.open_state` does it
when the config has an `[ldap]` table), every committed change to users, groups or
memberships, whichever use case made it, is followed by a sync. When the directory cannot
be written, the change still stands and `warn` hears why; `sync_directory()` (the
`isidorus directory sync` command) puts things right later.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from isidorus.accounts import groups as groups_
from isidorus.accounts import users as users_
from isidorus.directory.config import DirectoryConfig, load_config
from isidorus.directory.errors import DirectoryError, NoDirectory
from isidorus.ops.database import CONFIG_NAME
from isidorus.state.db import Database

# the tables whose changes the directory shows
ACCOUNT_TABLES = frozenset({"users", "groups", "memberships"})

log = logging.getLogger("isidorus.directory")

__all__ = ["SyncReport", "keep_in_step", "load_config", "sync_directory", "sync_host_directory"]


@dataclass(frozen=True)
class SyncReport:
    url: str
    base_dn: str
    dry_run: bool
    added: int
    updated: int
    deleted: int
    unchanged: int
    changes: tuple[str, ...]  # one line each, e.g. "add uid=alice,ou=people,dc=example,dc=org"
    problems: tuple[str, ...]  # one line for each entry the server refused

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "base_dn": self.base_dn,
            "dry_run": self.dry_run,
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "changes": list(self.changes),
            "problems": list(self.problems),
        }


def sync_directory(db: Database, config: DirectoryConfig, *, dry_run: bool = False) -> SyncReport:
    """Make the directory match the accounts: adds, modifies and deletes entries, and
    reports what it did (with `dry_run`, what it would do). Idempotent. Raises
    DirectoryError when the directory cannot be reached or refuses isidorus's bind; an
    entry it refuses is reported in `problems`."""
    # here, not above: only hosts that keep a directory load ldap3 (a tenth of a second)
    from isidorus.directory import ldap
    from isidorus.directory.entries import DirectoryGroup, DirectoryUser

    with one_sync_at_a_time(config):
        with db.write() as conn:  # every account as the directory needs it, at one moment
            hashes = users_.password_hashes(conn)
            users = [
                DirectoryUser(u.name, u.email, u.fullname, hashes[u.name], u.disabled)
                for u in users_.list_users(conn)
            ]
            groups = [
                DirectoryGroup(g.name, g.description, g.members) for g in groups_.list_groups(conn)
            ]
        result = ldap.sync(config, users, groups, dry_run=dry_run)
    stats = result.plan.stats()
    return SyncReport(
        url=config.url,
        base_dn=config.base_dn,
        dry_run=dry_run,
        added=stats["added"],
        updated=stats["updated"],
        deleted=stats["deleted"],
        unchanged=stats["unchanged"],
        changes=tuple(c.describe() for c in result.plan.changes),
        problems=result.problems,
    )


def sync_host_directory(db: Database, data_dir: str, *, dry_run: bool = False) -> SyncReport:
    """`sync_directory` with the directory the host's configuration (in `data_dir`)
    describes: NoDirectory when it has no `[ldap]` table, DirectoryConfigError when that
    table is wrong."""
    config_file = os.path.join(data_dir, CONFIG_NAME)
    config = load_config(config_file)
    if config is None:
        raise NoDirectory(
            f"{config_file} has no [ldap] table: add one to keep a directory "
            "(see docs/directory.md)"
        )
    return sync_directory(db, config, dry_run=dry_run)


@contextlib.contextmanager
def one_sync_at_a_time(config: DirectoryConfig) -> Iterator[None]:
    """Syncs of one host (the web server's, the commands') take turns: otherwise one that
    read the accounts before a change could write after the sync of that change, and
    undo it in the directory until the next sync."""
    fd = os.open(config.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        yield
    finally:
        os.close(fd)


def keep_in_step(
    db: Database, config_file: str, warn: Callable[[str], None] | None = None
) -> DirectoryConfig | None:
    """From now on, follow every committed change to the accounts in `db` with a sync of
    the directory configured in `config_file` (nothing when it has no `[ldap]` table).
    A sync that fails is told to `warn` (default: the `isidorus.directory` logger) in one
    line, and the change stands. Raises DirectoryConfigError for a wrong `[ldap]` table."""
    config = load_config(config_file)
    if config is None:
        return None
    say = warn or log.warning

    def after_commit(tables: frozenset[str]) -> None:
        if not tables & ACCOUNT_TABLES:
            return
        try:
            report = sync_directory(db, config)
        except DirectoryError as exc:
            say(f"the change is saved, but not in the LDAP directory: {exc}; {_LATER}")
            return
        if report.problems:
            more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
            say(f"the LDAP directory refused an entry: {report.problems[0]}{more}; {_LATER}")

    db.observers.append(after_commit)
    return config


_LATER = "run `isidorus directory sync` once this is fixed"
