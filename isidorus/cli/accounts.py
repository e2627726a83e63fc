"""`isidorus init`, `isidorus user …`, `isidorus group …`: the host's accounts."""

from __future__ import annotations

import functools
import getpass
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from isidorus import settings
from isidorus.cli.output import print_json, warn
from isidorus.errors import UsageError
from isidorus.ops import accounts as ops
from isidorus.state.db import Database

F = TypeVar("F", bound=Callable[..., Any])


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _data_dir(value: str | None) -> str:
    return value or str(settings.load()["data_dir"])


def with_state(f: F) -> F:
    """Adds --data-dir and hands the command the host's migrated state database."""

    @click.option(
        "--data-dir",
        metavar="DIR",
        help="The host's data directory (default: ISIDORUS_HOME, else /var/lib/isidorus as root).",
    )
    @functools.wraps(f)
    def wrapper(data_dir: str | None, **kw: Any) -> Any:
        db = ops.open_state(_data_dir(data_dir), warn=warn)
        try:
            return f(db, **kw)
        finally:
            db.close()

    return wrapper  # type: ignore[return-value]


def _read_password(from_stdin: bool, what: str = "password") -> str | None:
    if not from_stdin:
        return None
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise UsageError(f"no {what} on standard input")
    return value


@click.command("init")
@click.option("--data-dir", metavar="DIR", help="Where the host's state lives.")
@click.option(
    "--domain",
    default="localhost",
    show_default=True,
    help="The host's domain; services get subdomains of it.",
)
@click.option("--admin", default="admin", show_default=True, help="The first admin's name.")
@click.option("--email", default=None, help="The admin's e-mail (default: admin@DOMAIN).")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the admin's password from standard input instead of making one.",
)
@click.option(
    "--database",
    metavar="URL",
    help="Keep the state in this PostgreSQL database, e.g. postgresql://isidorus@localhost/"
    "isidorus (default: a SQLite file in the data directory).",
)
@click.option(
    "--database-password-file",
    metavar="FILE",
    help="Read the database user's password from FILE (else libpq's ~/.pgpass or PGPASSWORD).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def init(
    data_dir: str | None,
    domain: str,
    admin: str,
    email: str | None,
    password_stdin: bool,
    database: str | None,
    database_password_file: str | None,
    as_json: bool,
) -> None:
    """Create the host's configuration and state database, with a first admin."""
    if database_password_file and not database:
        raise UsageError("--database-password-file goes with --database URL")
    r = ops.init_host(
        _data_dir(data_dir),
        domain=domain,
        admin=admin,
        email=email or f"{admin}@{domain}",
        password=_read_password(password_stdin),
        database=database,
        database_password_file=database_password_file,
    )
    if as_json:
        print_json(
            {
                "data_dir": r.data_dir,
                "config": r.config_path,
                "admin": r.admin,
                "password": r.password,
                "created": r.created,
            }
        )
    elif not r.created:
        click.echo(f"{r.data_dir} is already initialised (admin {r.admin}); nothing changed")
    else:
        click.echo(f"initialised {r.data_dir}; config in {r.config_path}")
        if r.password:
            click.echo(
                f"admin: {r.admin}\npassword: {r.password}\n"
                "(shown once: write it down, then change it in the portal)"
            )


@click.group()
def user() -> None:
    """Users: one login for every service."""


@user.command("add")
@with_state
@click.argument("name")
@click.option("--email", required=True, help="The user's e-mail address.")
@click.option("--fullname", default="", help="The user's full name.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input (else one is made and shown).",
)
@click.option("--admin", "is_admin", is_flag=True, help="Make the user an admin of the host.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_add(
    db: Database,
    name: str,
    email: str,
    fullname: str,
    password_stdin: bool,
    is_admin: bool,
    as_json: bool,
) -> None:
    """Add user NAME."""
    given = _read_password(password_stdin)
    password = given or ops.new_password()
    u = ops.add_user(db, _actor(), name, email, password, fullname=fullname, is_admin=is_admin)
    if as_json:
        print_json({**u.to_json(), **({} if given else {"password": password})})
    else:
        click.echo(f"added {'admin ' if is_admin else ''}user {u.name}")
        if not given:
            click.echo(f"password: {password} (shown once)")


@user.command("list")
@with_state
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_list(db: Database, as_json: bool) -> None:
    """List the users."""
    users = ops.list_users(db)
    if as_json:
        print_json([u.to_json() for u in users])
        return
    for u in users:
        flags = ",".join(f for f, on in (("admin", u.is_admin), ("disabled", u.disabled)) if on)
        click.echo(f"{u.name:20} {u.email:30} {','.join(u.groups) or '-':20} {flags}")


@user.command("remove")
@with_state
@click.argument("name")
def user_remove(db: Database, name: str) -> None:
    """Remove user NAME and their access everywhere."""
    ops.remove_user(db, _actor(), name)
    click.echo(f"removed user {name}")


@user.command("passwd")
@with_state
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    required=True,
    help="Read the new password from standard input.",
)
def user_passwd(db: Database, name: str, password_stdin: bool) -> None:
    """Set the password of user NAME."""
    password = _read_password(password_stdin)
    assert password is not None
    ops.set_password(db, _actor(), name, password)
    click.echo(f"password of {name} changed")


@user.command("disable")
@with_state
@click.argument("name")
def user_disable(db: Database, name: str) -> None:
    """Stop NAME from logging in anywhere (their data stays)."""
    ops.set_disabled(db, _actor(), name, True)
    click.echo(f"disabled {name}")


@user.command("enable")
@with_state
@click.argument("name")
def user_enable(db: Database, name: str) -> None:
    """Let NAME log in again."""
    ops.set_disabled(db, _actor(), name, False)
    click.echo(f"enabled {name}")


@user.command("edit")
@with_state
@click.argument("name")
@click.option("--email", help="The new e-mail address.")
@click.option("--fullname", help="The new full name.")
def user_edit(db: Database, name: str, email: str | None, fullname: str | None) -> None:
    """Change the e-mail or full name of NAME."""
    ops.update_profile(db, _actor(), name, email=email, fullname=fullname)
    click.echo(f"saved the profile of {name}")


@user.command("totp-off")
@with_state
@click.argument("name")
def user_totp_off(db: Database, name: str) -> None:
    """Turn off the second factor of NAME (who lost their phone)."""
    ops.turn_off_totp(db, _actor(), name)
    click.echo(f"second factor of {name} turned off")


@user.command("promote")
@with_state
@click.argument("name")
def user_promote(db: Database, name: str) -> None:
    """Make NAME an admin of the host."""
    ops.set_admin(db, _actor(), name, True)
    click.echo(f"{name} is an admin")


@user.command("demote")
@with_state
@click.argument("name")
def user_demote(db: Database, name: str) -> None:
    """Make NAME a member again (the last enabled admin cannot be)."""
    ops.set_admin(db, _actor(), name, False)
    click.echo(f"{name} is a member")


@click.group()
def group() -> None:
    """Groups: services are opened to groups."""


@group.command("add")
@with_state
@click.argument("name")
@click.option("--description", default="", help="What the group is for.")
def group_add(db: Database, name: str, description: str) -> None:
    """Add group NAME."""
    ops.add_group(db, _actor(), name, description)
    click.echo(f"added group {name}")


@group.command("remove")
@with_state
@click.argument("name")
def group_remove(db: Database, name: str) -> None:
    """Remove group NAME (its members stay)."""
    ops.remove_group(db, _actor(), name)
    click.echo(f"removed group {name}")


@group.command("add-member")
@with_state
@click.argument("group_name", metavar="GROUP")
@click.argument("user_name", metavar="USER")
def group_add_member(db: Database, group_name: str, user_name: str) -> None:
    """Add USER to GROUP."""
    ops.add_member(db, _actor(), group_name, user_name)
    click.echo(f"{user_name} is in {group_name}")


@group.command("remove-member")
@with_state
@click.argument("group_name", metavar="GROUP")
@click.argument("user_name", metavar="USER")
def group_remove_member(db: Database, group_name: str, user_name: str) -> None:
    """Take USER out of GROUP."""
    ops.remove_member(db, _actor(), group_name, user_name)
    click.echo(f"{user_name} left {group_name}")


@group.command("list")
@with_state
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def group_list(db: Database, as_json: bool) -> None:
    """List the groups and their members."""
    groups = ops.list_groups(db)
    if as_json:
        print_json([g.to_json() for g in groups])
        return
    for g in groups:
        click.echo(f"{g.name:20} {' '.join(g.members) or '-'}")


@click.command("audit")
@with_state
@click.option(
    "--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="Entries shown."
)
@click.option("--before", type=int, metavar="ID", help="Only entries older than entry ID.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit(db: Database, limit: int, before: int | None, as_json: bool) -> None:
    """Show the audit log, newest first: who changed what in the accounts, and when."""
    page = ops.list_audit(db, limit=limit, before=before)
    if as_json:
        print_json(
            {"entries": [e.to_json() for e in page.entries], "next_before": page.next_before}
        )
        return
    for e in page.entries:
        line = f"{e.id:>6} {e.at:%Y-%m-%d %H:%M:%S} {e.actor:16} {e.action:20} {e.target}"
        click.echo(f"{line} {e.detail}".rstrip())
    if page.next_before:
        click.echo(f"(older: --before {page.next_before})")
