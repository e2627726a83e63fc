"""Users: create, read, change, delete, and log in."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import IntegrityError

from isidorus.accounts import passwords
from isidorus.accounts.errors import AlreadyExists, InvalidInput, LoginFailed, NoSuchAccount
from isidorus.state.schema import groups, memberships, users

# a login usable everywhere: Unix accounts, LDAP uids, e-mail local parts, URLs
NAME_PATTERN = r"^[a-z][a-z0-9._-]{0,31}$"
# one '@', no space or control character (user@localhost is an address too). Spelled out
# rather than \s, which means other characters in Python, in Rust (pydantic) and in the
# JavaScript regexes of the API's OpenAPI document, which carries these patterns
_NOT_IN_EMAIL = r"@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
EMAIL_PATTERN = rf"^[^{_NOT_IN_EMAIL}]+@[^.{_NOT_IN_EMAIL}][^{_NOT_IN_EMAIL}]*$"
NAME_RE = re.compile(NAME_PATTERN)
EMAIL_RE = re.compile(EMAIL_PATTERN)


@functools.cache
def _dummy_hash() -> str:
    """A real hash of nothing, checked when the name is unknown, so that a login takes as
    long for a name that does not exist as for a wrong password (made on first need: every
    command would otherwise pay for it at start)."""
    return passwords.hash_password("isidorus: no such user, still take the time")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    email: str
    fullname: str
    is_admin: bool
    disabled: bool
    has_totp: bool
    created_at: datetime
    groups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "email": self.email,
            "fullname": self.fullname,
            "is_admin": self.is_admin,
            "disabled": self.disabled,
            "totp": self.has_totp,
            "groups": list(self.groups),
            "created_at": self.created_at.isoformat(),
        }


def check_name(name: str, what: str = "user") -> None:
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"{name!r} is not a valid {what} name: use 1 to 32 lowercase "
            "letters, digits, '.', '_' or '-', starting with a letter"
        )


def check_email(email: str) -> None:
    if not EMAIL_RE.fullmatch(email) or len(email) > 254:
        raise InvalidInput(f"{email!r} is not an e-mail address")


def _user(conn: Connection, row: Any) -> User:
    names = tuple(
        r[0]
        for r in conn.execute(
            select(groups.c.name)
            .join(memberships, memberships.c.group_id == groups.c.id)
            .where(memberships.c.user_id == row.id)
            .order_by(groups.c.name)
        )
    )
    return User(
        row.id,
        row.name,
        row.email,
        row.fullname,
        bool(row.is_admin),
        bool(row.disabled),
        row.totp_secret is not None,
        row.created_at,
        names,
    )


def find_row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(users).where(users.c.name == name)).first()
    if row is None:
        raise NoSuchAccount(f"there is no user {name!r}: see `isidorus user list`")
    return row


def create_user(
    conn: Connection,
    name: str,
    email: str,
    password: str,
    *,
    fullname: str = "",
    is_admin: bool = False,
) -> User:
    check_name(name)
    check_email(email)
    passwords.check_rules(password, name=name, email=email)
    try:
        with conn.begin_nested():
            conn.execute(
                users.insert().values(
                    name=name,
                    email=email,
                    fullname=fullname,
                    password_hash=passwords.hash_password(password),
                    is_admin=is_admin,
                    disabled=False,
                    created_at=datetime.now(UTC),
                )
            )
    except IntegrityError:
        raise AlreadyExists(f"a user {name!r} exists already") from None
    return get_user(conn, name)


def get_user(conn: Connection, name: str) -> User:
    return _user(conn, find_row(conn, name))


def list_users(conn: Connection) -> list[User]:
    return [_user(conn, r) for r in conn.execute(select(users).order_by(users.c.name))]


def delete_user(conn: Connection, name: str) -> None:
    """Delete a user and their group memberships (the caller removes their access
    elsewhere: sessions, LDAP)."""
    row = find_row(conn, name)
    conn.execute(delete(memberships).where(memberships.c.user_id == row.id))
    conn.execute(delete(users).where(users.c.id == row.id))


def set_password(conn: Connection, name: str, password: str) -> None:
    row = find_row(conn, name)
    passwords.check_rules(password, name=name, email=row.email)
    conn.execute(
        update(users)
        .where(users.c.id == row.id)
        .values(password_hash=passwords.hash_password(password))
    )


def set_disabled(conn: Connection, name: str, disabled: bool) -> None:
    row = find_row(conn, name)
    conn.execute(update(users).where(users.c.id == row.id).values(disabled=disabled))


def set_admin(conn: Connection, name: str, is_admin: bool) -> None:
    row = find_row(conn, name)
    conn.execute(update(users).where(users.c.id == row.id).values(is_admin=is_admin))


def enabled_admins(conn: Connection) -> list[str]:
    """The admins who can log in: a host must always keep one."""
    rows = conn.execute(
        select(users.c.name).where(users.c.is_admin.is_(True), users.c.disabled.is_(False))
    )
    return [r.name for r in rows]


def update_profile(
    conn: Connection, name: str, *, email: str | None = None, fullname: str | None = None
) -> User:
    row = find_row(conn, name)
    values: dict[str, Any] = {}
    if email is not None:
        check_email(email)
        values["email"] = email
    if fullname is not None:
        if len(fullname) > 200:
            raise InvalidInput("the full name is longer than 200 characters")
        values["fullname"] = fullname
    if values:
        conn.execute(update(users).where(users.c.id == row.id).values(**values))
    return get_user(conn, name)


def authenticate(conn: Connection, name: str, password: str) -> User:
    """The user, if the name and password match and the account is enabled; otherwise
    LoginFailed, with the same message and about the same time whatever was wrong."""
    row = conn.execute(select(users).where(users.c.name == name)).first()
    ok = passwords.verify_password(row.password_hash if row else _dummy_hash(), password)
    if row is None or not ok or row.disabled:
        raise LoginFailed("wrong user name or password")
    if passwords.needs_rehash(row.password_hash):
        conn.execute(
            update(users)
            .where(users.c.id == row.id)
            .values(password_hash=passwords.hash_password(password))
        )
    return _user(conn, row)


def password_hashes(conn: Connection) -> dict[str, str]:
    """Every user's password hash (Argon2id, encoded), by name: for the systems that check
    passwords themselves, like the LDAP directory."""
    return {
        r.name: r.password_hash for r in conn.execute(select(users.c.name, users.c.password_hash))
    }
