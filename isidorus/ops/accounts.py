"""Account use cases: the host's state, users and groups, each change in the audit log.

The CLI, the web and the API call these; `actor` names who acts (`cli:root`, a user name,
`api:<token name>`), and every change is recorded with it in the same transaction.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from isidorus.accounts import app_passwords, sessions, throttle, tokens, totp
from isidorus.accounts import audit as audit_
from isidorus.accounts import groups as groups_
from isidorus.accounts import users as users_
from isidorus.accounts.app_passwords import AppPassword
from isidorus.accounts.audit import AuditPage
from isidorus.accounts.errors import AlreadyExists, LoginFailed, Refused
from isidorus.accounts.groups import Group
from isidorus.accounts.users import User
from isidorus.ops import directory

# (the host's file names, re-exported: the frontends find them here)
from isidorus.ops.database import CONFIG_NAME as CONFIG_NAME
from isidorus.ops.database import STATE_NAME as STATE_NAME
from isidorus.ops.database import open_database, read_config
from isidorus.state.db import Database
from isidorus.state.migrations import migrate
from isidorus.state.schema import audit_log


def audit(conn: Connection, actor: str, action: str, target: str = "", detail: str = "") -> None:
    conn.execute(
        audit_log.insert().values(
            at=datetime.now(UTC), actor=actor, action=action, target=target, detail=detail
        )
    )


def list_audit(db: Database, *, limit: int = 50, before: int | None = None) -> AuditPage:
    """The audit log, newest first: up to `limit` entries older than entry `before`.
    Raises InvalidInput for a limit out of 1 to 500."""
    with db.read() as conn:
        return audit_.list_entries(conn, limit=limit, before=before)


def new_password() -> str:
    """A strong password a person can type: 4 groups of 5 letters and digits."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # no look-alikes (l/1, o/0)
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4))


def open_state(data_dir: str, *, warn: Callable[[str], None] | None = None) -> Database:
    """The host's state database (SQLite, or PostgreSQL when the config names one),
    migrated to this version of isidorus, and followed by the LDAP directory when the
    config has an `[ldap]` table (`warn` hears, in one line, when the directory could not
    be updated; see ops/directory.py)."""
    db = open_database(data_dir, read_config(data_dir))
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
    data_dir: str,
    *,
    domain: str,
    admin: str,
    email: str,
    password: str | None = None,
    database: str | None = None,
    database_password_file: str | None = None,
) -> InitResult:
    """Make the config file and the state database, with a first admin. The state goes in
    the PostgreSQL `database` (a URL) when given, else in a SQLite file. Running it again
    on an initialised host changes nothing and says so."""
    config_path = os.path.join(data_dir, CONFIG_NAME)
    if os.path.exists(config_path):
        with open(config_path, "rb") as f:
            existing = tomllib.load(f)
        return InitResult(data_dir, config_path, existing.get("admin", admin), None, False)
    users_.check_name(admin)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    db_lines = {"state": STATE_NAME}  # the config's lines that choose the database
    if database:
        db_lines = {"database": database}
        if database_password_file:
            db_lines["database_password_file"] = os.path.abspath(database_password_file)
    db = open_database(data_dir, db_lines if database else {})
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
            f'admin = "{admin}"\n'
            # (json's strings are TOML strings too)
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in db_lines.items())
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
    with db.read() as conn:
        return users_.list_users(conn)


def _keep_an_admin(conn: Connection, name: str) -> None:
    """Refuse a change that would leave no admin able to log in."""
    if users_.enabled_admins(conn) == [name]:
        raise Refused(f"{name} is the host's only enabled admin: make another admin first")


def remove_user(db: Database, actor: str, name: str) -> None:
    """Remove a user with their sessions and API tokens."""
    with db.write() as conn:
        _keep_an_admin(conn, name)
        sessions.end_user_sessions(conn, name)
        tokens.delete_user_tokens(conn, name)
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
        if disabled:
            _keep_an_admin(conn, name)
        users_.set_disabled(conn, name, disabled)
        if disabled:
            sessions.end_user_sessions(conn, name)
        audit(conn, actor, "user.disable" if disabled else "user.enable", name)


def set_admin(db: Database, actor: str, name: str, is_admin: bool) -> None:
    """Make a user an admin, or a member again (sessions read the user at every request,
    so the change holds at once)."""
    with db.write() as conn:
        if not is_admin:
            _keep_an_admin(conn, name)
        users_.set_admin(conn, name, is_admin)
        audit(conn, actor, "user.admin" if is_admin else "user.member", name)


def update_profile(
    db: Database, actor: str, name: str, *, fullname: str | None = None, email: str | None = None
) -> User:
    """Change a user's full name and e-mail (an admin, or the member themself); one that
    is None stays as it is."""
    with db.write() as conn:
        user = users_.update_profile(
            conn,
            name,
            email=None if email is None else email.strip(),
            fullname=None if fullname is None else fullname.strip(),
        )
        audit(conn, actor, "user.profile", name)
        return user


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


def set_groups(db: Database, actor: str, user: str, groups: list[str]) -> User:
    """Make `groups` exactly the groups of `user` (the admin's checkboxes)."""
    with db.write() as conn:
        current = set(users_.get_user(conn, user).groups)
        for g in sorted(set(groups) - current):
            groups_.add_member(conn, g, user)
            audit(conn, actor, "group.add-member", g, user)
        for g in sorted(current - set(groups)):
            groups_.remove_member(conn, g, user)
            audit(conn, actor, "group.remove-member", g, user)
        return users_.get_user(conn, user)


def get_user(db: Database, name: str) -> User:
    with db.read() as conn:
        return users_.get_user(conn, name)


def get_group(db: Database, name: str) -> Group:
    with db.read() as conn:
        return groups_.get_group(conn, name)


def list_groups(db: Database) -> list[Group]:
    with db.read() as conn:
        return groups_.list_groups(conn)


# -- logins (the web calls these)


@dataclass(frozen=True)
class Login:
    """A login whose password was right: a session (`token`, `csrf`), or, for a user with
    a second factor, a pending login (`token` of the pending login, `csrf` empty)."""

    user: User
    token: str
    csrf: str
    needs_code: bool = False


def login_blocked(db: Database, name: str, address: str) -> bool:
    """Whether logins are refused for a while for this name or from this address."""
    with db.read() as conn:
        return throttle.blocked(conn, name, address)


def login_failed(db: Database, name: str, address: str) -> None:
    with db.write() as conn:
        throttle.failed(conn, name, address)


def login_succeeded(db: Database, name: str) -> None:
    with db.write() as conn:
        throttle.succeeded(conn, name)


def login(db: Database, name: str, password: str) -> Login:
    """Check a login; raises LoginFailed with one message whatever was wrong."""
    with db.write() as conn:
        user = users_.authenticate(conn, name, password)
        if user.has_totp:
            return Login(user, totp.start_pending(conn, user), "", needs_code=True)
        token, csrf = sessions.start_session(conn, name)
        audit(conn, name, "login", name)
        return Login(user, token, csrf)


def password_session(db: Database, name: str, password: str, address: str) -> str | None:
    """A session for a client that signs in with its member's name and password on each
    request (HTTP Basic: calendar and contacts apps), throttled as logins are: its token,
    or None when the name or password is wrong, logins are refused for a while, or the
    member has a second factor (whose code such a client cannot send: an app password of
    theirs is accepted, as for anyone)."""
    if login_blocked(db, name, address):
        return None
    try:
        with db.write() as conn:
            # an app password first: a SHA-256, and a member's way past a second factor
            app = app_passwords.check(conn, name, password)
            if app is not None:
                token, _csrf = sessions.start_session(conn, name, app_password=app)
                audit(conn, name, "login", name, "app password")
                return token
            user = users_.authenticate(conn, name, password)
            if user.has_totp:
                raise LoginFailed("a member with a second factor signs apps in by app password")
            token, _csrf = sessions.start_session(conn, name)
            audit(conn, name, "login", name, "basic")
    except LoginFailed:
        login_failed(db, name, address)
        return None
    login_succeeded(db, name)
    return token


def add_app_password(
    db: Database, name: str, label: str, *, actor: str | None = None
) -> tuple[AppPassword, str]:
    """A new app password of the member `name`, made by them (the portal) or by `actor`
    (an admin); its secret is returned this once."""
    with db.write() as conn:
        made, secret = app_passwords.create(conn, name, label)
        audit(conn, actor or name, "user.app-password.add", name, made.label)
        return made, secret


def list_app_passwords(db: Database, name: str) -> list[AppPassword]:
    """The member's app passwords (never their secrets); NoSuchAccount for an unknown
    user."""
    with db.read() as conn:
        users_.get_user(conn, name)
        return app_passwords.list_for(conn, name)


def remove_app_password(
    db: Database, name: str, password_id: int, *, actor: str | None = None
) -> AppPassword:
    """Revoke one of the member's app passwords, by them or by `actor` (an admin): the
    sessions it opened end with it."""
    with db.write() as conn:
        gone = app_passwords.revoke(conn, name, password_id)
        audit(conn, actor or name, "user.app-password.remove", name, gone.label)
        return gone


def login_code(db: Database, name: str, pending: str, code: str) -> Login:
    """The second step of a login: the code of the user's authenticator app."""
    with db.write() as conn:
        result = totp.finish_pending(conn, pending, name, code)
        if isinstance(result, User):
            token, csrf = sessions.start_session(conn, result.name)
            audit(conn, result.name, "login", result.name, "totp")
            return Login(result, token, csrf)
    raise result  # after the commit: the failed attempt is counted


def turn_on_totp(db: Database, name: str, secret: str, code: str) -> None:
    """A member turns on their second factor, proving their app has the secret."""
    with db.write() as conn:
        totp.turn_on(conn, name, secret, code)
        audit(conn, name, "user.totp-on", name)


def turn_off_totp(db: Database, actor: str, name: str, password: str | None = None) -> None:
    """Turn off a user's second factor: the member themself (with their password), or an
    admin for a member who lost their phone."""
    with db.write() as conn:
        if password is not None:
            users_.authenticate(conn, name, password)
        totp.turn_off(conn, name)
        audit(conn, actor, "user.totp-off", name)


def session_of(db: Database, token: str) -> sessions.Session | None:
    with db.read() as conn:
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
