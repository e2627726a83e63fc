"""`isidorus oidc client …`: the services that sign their users in through isidorus."""

from __future__ import annotations

import click

from isidorus.cli.accounts import _actor, with_state
from isidorus.cli.output import print_json
from isidorus.ops import oidc as ops
from isidorus.state.db import Database


@click.group()
def oidc() -> None:
    """OpenID Connect: isidorus signs members in to the services that speak it."""


@oidc.group()
def client() -> None:
    """The services (clients) registered with the OpenID provider."""


@client.command("add")
@with_state
@click.argument("name")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    required=True,
    metavar="URI",
    help="Where the service receives the sign-in (exact match; repeat for several).",
)
@click.option(
    "--allow",
    "groups",
    multiple=True,
    metavar="GROUP",
    help="Open the service to GROUP only (repeat for several; default: every member).",
)
@click.option(
    "--public", is_flag=True, help="A public client (an app that cannot keep a secret): PKCE only."
)
@click.option(
    "--no-pkce",
    is_flag=True,
    help="Let a confidential client sign in without PKCE (for a service that cannot send it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def client_add(
    db: Database,
    name: str,
    redirect_uris: tuple[str, ...],
    groups: tuple[str, ...],
    public: bool,
    no_pkce: bool,
    as_json: bool,
) -> None:
    """Register service NAME; prints its client id and secret (shown once)."""
    new = ops.add_client(
        db, _actor(), name, redirect_uris, groups, public=public, pkce_required=not no_pkce
    )
    if as_json:
        print_json({**new.client.to_json(), "client_secret": new.secret})
        return
    click.echo(f"added client {name}\nclient id: {new.client.client_id}")
    if new.secret:
        click.echo(f"client secret: {new.secret} (shown once)")
    else:
        click.echo("public client: no secret, it must use PKCE (S256)")


@client.command("list")
@with_state
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def client_list(db: Database, as_json: bool) -> None:
    """List the registered clients."""
    clients = ops.list_clients(db)
    if as_json:
        print_json([c.to_json() for c in clients])
        return
    for c in clients:
        kind = "public" if c.public else "confidential" if c.pkce_required else "no-pkce"
        groups = ",".join(c.allowed_groups) or "every member"
        click.echo(
            f"{c.name:20} {c.client_id:24} {kind:12} {groups:20} {' '.join(c.redirect_uris)}"
        )


@client.command("remove")
@with_state
@click.argument("name")
def client_remove(db: Database, name: str) -> None:
    """Remove client NAME: its sign-ins and tokens stop working at once."""
    ops.remove_client(db, _actor(), name)
    click.echo(f"removed client {name}")
