"""Account use cases: the host's state, users and groups, each change in the audit log.

The CLI, the web and the API call these; `actor` names who acts (`cli:root`, a user name,
`api:<token name>`), and every change is recorded with it in the same transaction.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from isidorus.accounts import groups as groups_
from isidorus.accounts import sessions
from isidorus.accounts import users as users_
from isidorus.accounts.errors import AlreadyExists
from isidorus.accounts.groups import Group
from isidorus.accounts.users import User
from isidorus.errors import UsageError
from isidorus.ops import directory
from isidorus.state.db import Database
from isidorus.state.migrations import migrate
from isidorus.state.schema import audit_log

CONFIG_NAME = "isidorus.toml"
STATE_NAME = "state.sqlite"


def audit(conn: Connection, actor: str, action: str, target: str = "", detail: str = "") -> None:
    conn.execute(
        audit_log.insert().values(
            at=datetime.now(UTC), actor=actor, action=action, target=target, detail=detail
        )
    )


def new_password() -> str:
    """A strong password a person can type: 4 groups of 5 letters and digits."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # no look-alikes (l/1, o/0)
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4))


def open_state(data_dir: str, *, warn: Callable[[str], None] | None = None) -> Database:
    """The host's state database, migrated to this version of isidorus, and followed by
    the LDAP directory when the config has an `[ldap]` table (`warn` hears, in one line,
    when the directory could not be updated; see ops/directory.py)."""
    if not os.path.exists(os.path.join(data_dir, CONFIG_NAME)):
        raise UsageError(
            f"{data_dir} holds no isidorus host: run `isidorus init --data-dir {data_dir}` first"
        )
    db = Database.open_file(os.path.join(data_dir, STATE_NAME))
    try:
        migrate(db)
        directory.keep_in_step(db, os.path.join(data_dir, CONFIG_NAME), warn)
    except BaseException:
        db.close()
        raise
    return db


@dataclass(frozen=True)
class InitResult:
    data_dir: str
    config_path: str
    admin: str
    password: str | None  # generated, shown once; None when given by the operator
    created: bool


def init_host(
    data_dir: str, *, domain: str, admin: str, email: str, password: str | None = None
) -> InitResult:
    """Make the config file and the state database, with a first admin. Running it again
    on an initialised host changes nothing and says so."""
    config_path = os.path.join(data_dir, CONFIG_NAME)
    if os.path.exists(config_path):
        with open(config_path, "rb") as f:
            existing = tomllib.load(f)
        return InitResult(data_dir, config_path, existing.get("admin", admin), None, False)
    users_.check_name(admin)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    db = Database.open_file(os.path.join(data_dir, STATE_NAME))
    try:
        migrate(db)
        generated = password is None
        pw = new_password() if password is None else password
        with db.write() as conn:
            try:
                users_.create_user(conn, admin, email, pw, fullname="Administrator", is_admin=True)
            except AlreadyExists:
                # an init that stopped before writing the config: its password was
                # never shown, so the admin gets the one shown now
                users_.set_password(conn, admin, pw)
            audit(conn, "cli", "init", admin)
    finally:
        db.close()
    tmp = config_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(
            f'# isidorus host configuration (see docs/)\ndomain = "{domain}"\n'
            f'admin = "{admin}"\nstate = "{STATE_NAME}"\n'
        )
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, config_path)
    return InitResult(data_dir, config_path, admin, pw if generated else None, True)


def add_user(
    db: Database,
    actor: str,
    name: str,
    email: str,
    password: str,
    *,
    fullname: str = "",
    is_admin: bool = False,
) -> User:
    with db.write() as conn:
        user = users_.create_user(conn, name, email, password, fullname=fullname, is_admin=is_admin)
        audit(conn, actor, "user.add", name, "admin" if is_admin else "")
        return user


def list_users(db: Database) -> list[User]:
    with db.write() as conn:
        return users_.list_users(conn)


def remove_user(db: Database, actor: str, name: str) -> None:
    with db.write() as conn:
        sessions.end_user_sessions(conn, name)
        users_.delete_user(conn, name)
        audit(conn, actor, "user.remove", name)


def set_password(db: Database, actor: str, name: str, password: str) -> None:
    """Set a password; every session of the user ends (a stolen one among them)."""
    with db.write() as conn:
        users_.set_password(conn, name, password)
        sessions.end_user_sessions(conn, name)
        audit(conn, actor, "user.passwd", name)


def set_disabled(db: Database, actor: str, name: str, disabled: bool) -> None:
    with db.write() as conn:
        users_.set_disabled(conn, name, disabled)
        if disabled:
            sessions.end_user_sessions(conn, name)
        audit(conn, actor, "user.disable" if disabled else "user.enable", name)


def add_group(db: Database, actor: str, name: str, description: str = "") -> Group:
    with db.write() as conn:
        group = groups_.create_group(conn, name, description)
        audit(conn, actor, "group.add", name)
        return group


def remove_group(db: Database, actor: str, name: str) -> None:
    with db.write() as conn:
        groups_.delete_group(conn, name)
        audit(conn, actor, "group.remove", name)


def add_member(db: Database, actor: str, group: str, user: str) -> Group:
    with db.write() as conn:
        g = groups_.add_member(conn, group, user)
        audit(conn, actor, "group.add-member", group, user)
        return g


def remove_member(db: Database, actor: str, group: str, user: str) -> Group:
    with db.write() as conn:
        g = groups_.remove_member(conn, group, user)
        audit(conn, actor, "group.remove-member", group, user)
        return g


def list_groups(db: Database) -> list[Group]:
    with db.write() as conn:
        return groups_.list_groups(conn)


# -- logins (the web calls these)


def login(db: Database, name: str, password: str) -> tuple[User, str, str]:
    """Check a login; returns the user, the session cookie's token and the CSRF token.
    Raises LoginFailed with one message whatever was wrong."""
    with db.write() as conn:
        user = users_.authenticate(conn, name, password)
        token, csrf = sessions.start_session(conn, name)
        audit(conn, name, "login", name)
        return user, token, csrf


def session_of(db: Database, token: str) -> sessions.Session | None:
    with db.write() as conn:
        return sessions.find_session(conn, token)


def logout(db: Database, token: str) -> None:
    with db.write() as conn:
        sessions.end_session(conn, token)


def change_own_password(db: Database, name: str, current: str, new: str) -> tuple[str, str]:
    """A member changes their password: checks the current one, ends every session, and
    returns a fresh one for the browser that asked."""
    with db.write() as conn:
        users_.authenticate(conn, name, current)
        users_.set_password(conn, name, new)
        sessions.end_user_sessions(conn, name)
        audit(conn, name, "user.passwd", name, "self")
        return sessions.start_session(conn, name)


def update_own_profile(db: Database, name: str, *, fullname: str, email: str) -> User:
    """A member changes their full name and e-mail."""
    with db.write() as conn:
        user = users_.update_profile(conn, name, email=email.strip(), fullname=fullname.strip())
        audit(conn, name, "user.profile", name)
        return user
