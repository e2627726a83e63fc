"""`isidorus backup serve|removals|home-setup`: the commands of a home that lends a disk."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import TextIO

import click

from isidorus.backup.serve import ServeOptions
from isidorus.cli.ending import end_quickly
from isidorus.cli.options import json_option
from isidorus.cli.output import print_json
from isidorus.errors import UsageError
from isidorus.ops import homes
from isidorus.units import parse_delay, parse_size

_DELAY_HELP = "How long a removal the server asks for waits before it is carried out."


@click.command("serve")
@click.option("--stdio", is_flag=True, help="Answer on stdin and stdout (as ssh runs it).")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--append-only", is_flag=True, help="Add objects, never overwrite or remove one.")
@click.option("--quota", metavar="SIZE", help="Refuse writes past this size under PATH (500G).")
@click.option(
    "--removal-delay", default="14d", show_default=True, metavar="DELAY", help=_DELAY_HELP
)
def serve(stdio: bool, path: str, append_only: bool, quota: str | None, removal_delay: str) -> None:
    """Serve the stores under PATH to one client over stdin and stdout: the forced command
    of a server's key in a home's authorized_keys."""
    if not stdio:
        raise UsageError("serve speaks only over stdin and stdout: add --stdio")
    if sys.stdin.isatty():
        raise UsageError(
            "serve --stdio is run by sshd for a client, not by hand: see "
            "`isidorus backup home-setup`"
        )
    homes.serve(
        ServeOptions(
            root=os.path.abspath(path),
            append_only=append_only,
            quota=parse_size(quota, "quota") if quota else 0,
            removal_delay=parse_delay(removal_delay),
        )
    )
    end_quickly()  # the copy is closed: ssh ends the session as soon as this process does


@click.group()
def removals() -> None:
    """The removals an append-only copy keeps waiting (see `serve --append-only`)."""


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


@removals.command("list")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--removal-delay", default="14d", show_default=True, metavar="DELAY", help=_DELAY_HELP
)
@json_option
def removals_list(store: str, removal_delay: str, as_json: bool) -> None:
    """List the removals waiting in the copy at STORE, and when each will be carried out."""
    delay = parse_delay(removal_delay)
    found = homes.list_removals(store)
    if as_json:
        print_json(
            {
                "held": found.held_since is not None,
                "pending": [r.to_json(delay) for r in found.pending],
            }
        )
        return
    if found.held_since is not None:
        click.echo(
            f"removals are held since {_when(found.held_since)}: none is carried out until "
            "`isidorus backup removals release`"
        )
    for r in found.pending:
        click.echo(f"{r.kind}/{r.name}  asked {_when(r.asked_at)}  due {_when(r.due_at(delay))}")
    click.echo(f"{len(found.pending)} removals waiting")


@removals.command("cancel")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
def removals_cancel(store: str) -> None:
    """Cancel every waiting removal and hold the ones asked later, until `release`: what
    to do when the server may have been broken into."""
    n = homes.cancel_removals(store)
    click.echo(
        f"{n} removals cancelled; later ones are held until `isidorus backup removals release "
        f"{store}`"
    )


@removals.command("release")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
def removals_release(store: str) -> None:
    """Let removals be carried out again once they are due."""
    held = homes.release_removals(store)
    click.echo("removals released" if held else "removals were not held")


@removals.command("apply")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--removal-delay", default="14d", show_default=True, metavar="DELAY", help=_DELAY_HELP
)
@json_option
def removals_apply(store: str, removal_delay: str, as_json: bool) -> None:
    """Carry out the removals that are due (serve does it at each connection too)."""
    r = homes.apply_removals(store, parse_delay(removal_delay))
    if as_json:
        print_json(r.__dict__)
        return
    state = "held: nothing removed" if r.held else f"{r.removed} objects removed"
    click.echo(f"{state}; {r.waiting} removals still waiting")


@click.command("home-setup")
@click.option("--user", "user", required=True, help="The account to make, e.g. isidorus-alice.")
@click.option("--key", help="The server's public key line (ssh-ed25519 AAAA… comment).")
@click.option(
    "--key-file", type=click.File("r"), help="Read the server's public key from this file."
)
@click.option(
    "--dir",
    "directory",
    metavar="DIR",
    help="Where its stores live (default /srv/isidorus/USER).",
)
@click.option("--quota", metavar="SIZE", help="The most the server may store here (500G).")
@click.option(
    "--removal-delay", default="14d", show_default=True, metavar="DELAY", help=_DELAY_HELP
)
@click.option(
    "--not-append-only",
    is_flag=True,
    help="Let the server remove and replace objects at once (not recommended).",
)
@json_option
def home_setup(
    user: str,
    key: str | None,
    key_file: TextIO | None,
    directory: str | None,
    quota: str | None,
    removal_delay: str,
    not_append_only: bool,
    as_json: bool,
) -> None:
    """Give a server an account at this home for its copies: a user with no password and
    no shell access, its directory, and one authorized_keys line whose forced command
    serves that directory append-only."""
    if (key is None) == (key_file is None):
        raise UsageError("give the server's public key with --key or --key-file (one of them)")
    text = key if key is not None else key_file.read()  # type: ignore[union-attr]
    parse_delay(removal_delay)
    isidorus = os.path.realpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else "isidorus"
    result = homes.setup_home(
        homes.HomeSetup(
            user=user,
            key=text,
            directory=directory or f"/srv/isidorus/{user}",
            isidorus=isidorus,
            quota=parse_size(quota, "quota") if quota else 0,
            removal_delay=removal_delay,
            append_only=not not_append_only,
        ),
        socket.getfqdn(),
    )
    if as_json:
        print_json(result.__dict__)
        return
    made = "made" if result.created_user else "updated"
    click.echo(f"{made} {result.user}: stores in {result.directory}")
    click.echo(f"its key, in {result.authorized_keys}:\n  {result.line}")
    click.echo(
        f"give the server's admin this URL (the host name as they reach it):\n  {result.url}"
    )
    if result.host_keys:
        click.echo("and this host's key fingerprints, to check when they first connect:")
        for fp in result.host_keys:
            click.echo(f"  {fp}")
