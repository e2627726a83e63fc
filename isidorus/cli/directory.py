"""`isidorus directory sync`: the LDAP directory, brought in step with the accounts."""

from __future__ import annotations

import click

from isidorus.cli.accounts import _data_dir
from isidorus.cli.output import print_json, warn
from isidorus.directory.errors import SyncIncomplete
from isidorus.ops import accounts as ops
from isidorus.ops import directory as directory_ops


@click.group()
def directory() -> None:
    """The LDAP directory that services check logins against."""


@directory.command("sync")
@click.option(
    "--data-dir",
    metavar="DIR",
    help="The host's data directory (default: ISIDORUS_HOME, else /var/lib/isidorus as root).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change, and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def directory_sync(data_dir: str | None, dry_run: bool, as_json: bool) -> None:
    """Make the directory match the accounts: add, update and delete its entries."""
    d = _data_dir(data_dir)
    db = ops.open_state(d, warn=warn)
    try:
        report = directory_ops.sync_host_directory(db, d, dry_run=dry_run)
    finally:
        db.close()
    if as_json:
        print_json(report.to_json())
    else:
        for change in report.changes:
            click.echo(f"would {change}" if dry_run else change)
        click.echo(
            f"{report.base_dn} at {report.url}: "
            + (
                f"{report.added} to add, {report.updated} to update, {report.deleted} to "
                f"delete, {report.unchanged} unchanged (dry run: nothing was changed)"
                if dry_run
                else f"{report.added} added, {report.updated} updated, {report.deleted} "
                f"deleted, {report.unchanged} unchanged"
            )
        )
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise SyncIncomplete(f"the directory refused a change: {report.problems[0]}{more}")
