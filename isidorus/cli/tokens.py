"""`isidorus token …`: the API tokens that scripts and programs use with the REST API."""

from __future__ import annotations

from datetime import datetime

import click

from isidorus.accounts.tokens import MAX_DAYS, ApiToken
from isidorus.cli.accounts import _actor, with_state
from isidorus.cli.output import print_json
from isidorus.ops import tokens as ops
from isidorus.state.db import Database


@click.group()
def token() -> None:
    """API tokens: an admin's key to the REST API, for scripts and programs."""


@token.command("add")
@with_state
@click.argument("name")
@click.option("--user", required=True, metavar="ADMIN", help="The admin the token acts for.")
@click.option(
    "--expires",
    type=click.IntRange(1, MAX_DAYS),
    metavar="DAYS",
    help="Refuse the token after DAYS days (default: never).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_add(db: Database, name: str, user: str, expires: int | None, as_json: bool) -> None:
    """Make token NAME for ADMIN; its secret is shown once."""
    new = ops.add_token(db, _actor(), name, user, expires_days=expires)
    if as_json:
        print_json({**new.token.to_json(), "token": new.secret})
        return
    until = f", expires {_when(new.token.expires_at)}" if new.token.expires_at else ""
    click.echo(f"added token {name} for {user}{until}")
    click.echo(f"token: {new.secret}\n(shown once: only its hash is kept)")


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _state(t: ApiToken) -> str:
    if t.expired():
        return "expired"
    return f"expires {_when(t.expires_at)}" if t.expires_at else "no expiry"


@token.command("list")
@with_state
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_list(db: Database, as_json: bool) -> None:
    """List the API tokens (never their secrets)."""
    tokens = ops.list_tokens(db)
    if as_json:
        print_json([t.to_json() for t in tokens])
        return
    for t in tokens:
        used = _when(t.last_used_at) if t.last_used_at else "never used"
        click.echo(f"{t.name:20} {t.user:20} {used:22} {_state(t)}")


@token.command("remove")
@with_state
@click.argument("name")
def token_remove(db: Database, name: str) -> None:
    """Remove token NAME: it is refused from then on."""
    ops.remove_token(db, _actor(), name)
    click.echo(f"removed token {name}")
