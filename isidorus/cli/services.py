"""`isidorus service …`: the catalog of libre services, and the installed ones."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any, TypeVar

import click

from isidorus.cli.options import with_host
from isidorus.cli.output import print_json, warn
from isidorus.errors import UsageError
from isidorus.ops import certificates as certs
from isidorus.ops import service_backups as backups
from isidorus.ops import services as ops
from isidorus.units import human_bytes

F = TypeVar("F", bound=Callable[..., Any])


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def service() -> None:
    """Libre services: the catalog, install, upgrade, backup, removal, who may use each."""


@service.command("catalog")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def service_catalog(as_json: bool) -> None:
    """List every service isidorus can install, and what each replaces."""
    manifests = ops.catalog()
    if as_json:
        print_json([m.to_json() for m in manifests])
        return
    for m in manifests:
        click.echo(f"{m.id:12} {m.name:16} {m.version:12} {m.sso.kind:7} {', '.join(m.replaces)}")


@service.command("install")
@click.argument("service_id", metavar="ID")
@click.option("--domain", help="Where members reach it (default: ID.<the host's domain>).")
@click.option("--path", default="/", show_default=True, help="Under this path of the domain.")
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="GROUP",
    help="Open it to this group only (repeatable; default: every member).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_host
def service_install(
    db: Any,
    data_dir: str,
    service_id: str,
    domain: str | None,
    path: str,
    allow: tuple[str, ...],
    as_json: bool,
) -> None:
    """Install the service ID from the catalog, start it and publish it behind nginx."""
    options = ops.InstallOptions(service_id, domain, path, tuple(allow))
    s = ops.install(db, data_dir, options, _actor(), _say)
    if as_json:
        print_json(ops.ServiceStatus(s, "running", "ok").to_json())
        return
    who = ", ".join(s.allow) or "every member"
    click.echo(f"{s.id} {s.version} installed at {s.url} (open to {who})")


@service.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_host
def service_list(db: Any, data_dir: str, as_json: bool) -> None:
    """List the installed services, with their URL, state and health."""
    found = ops.list_installed(db, data_dir)
    if as_json:
        print_json([s.to_json() for s in found])
        return
    for st in found:
        doc = st.to_json()
        click.echo(f"{doc['id']:12} {doc['state']:9} {doc['health']:24} {doc['url']}")
    if not found:
        click.echo("no service is installed: see `isidorus service catalog`", err=True)


@service.command("remove")
@click.argument("service_id", metavar="ID")
@click.option(
    "--purge",
    is_flag=True,
    help="Also delete its data, configuration, user and the packages its install added.",
)
@with_host
def service_remove(db: Any, data_dir: str, service_id: str, purge: bool) -> int:
    """Stop and unpublish the service ID; its data stays unless --purge."""
    problems = ops.remove(db, data_dir, service_id, purge, _actor(), _say)
    for p in problems:
        warn(f"could not remove {p}")
    kept = "" if purge else " (its data is kept: --purge deletes it)"
    click.echo(f"{service_id} removed{kept}")
    return 1 if problems else 0


@service.command("allow")
@click.argument("service_id", metavar="ID")
@click.argument("group")
@with_host
def service_allow(db: Any, data_dir: str, service_id: str, group: str) -> None:
    """Open the service ID to the members of GROUP."""
    s = ops.allow(db, data_dir, service_id, group, _actor())
    click.echo(f"{s.id} is open to {', '.join(s.allow)}")


@service.command("deny")
@click.argument("service_id", metavar="ID")
@click.argument("group")
@with_host
def service_deny(db: Any, data_dir: str, service_id: str, group: str) -> None:
    """Close the service ID to the members of GROUP."""
    s = ops.deny(db, data_dir, service_id, group, _actor())
    click.echo(f"{s.id} is open to {', '.join(s.allow)}")


@service.command("logs")
@click.argument("service_id", metavar="ID")
@click.option(
    "--lines",
    "-n",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="How many of the last lines.",
)
@with_host
def service_logs(db: Any, data_dir: str, service_id: str, lines: int) -> None:
    """Print the last lines the service ID wrote."""
    for line in ops.logs(db, data_dir, service_id, lines):
        click.echo(line)


@service.command("restart")
@click.argument("service_id", metavar="ID")
@with_host
def service_restart(db: Any, data_dir: str, service_id: str) -> int:
    """Restart the service ID and wait until it is healthy again."""
    problem = ops.restart(db, data_dir, service_id, _actor())
    if problem:
        click.echo(
            f"isidorus: error: {service_id} restarted but is not healthy: {problem}", err=True
        )
        return 1
    click.echo(f"{service_id} restarted and healthy")
    return 0


@service.command("certificates")
@click.option("--renew", is_flag=True, help="First renew those that are due, and reload nginx.")
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=click.IntRange(1, 365),
    help="With --renew: renew a certificate from the ACME CA that ends within N days.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_host
def service_certificates(db: Any, data_dir: str, renew: bool, days: int, as_json: bool) -> int:
    """List the certificate of each domain the services are on: its issuer and end."""
    if renew:
        found = certs.renew(db, data_dir, _actor(), _say, days)
    else:
        found = certs.certificates(db, data_dir)
    if as_json:
        print_json([c.to_json() for c in found])
    else:
        for c in found:
            ends = f"{c.not_after:%Y-%m-%d} ({c.days_left()} days)" if c.not_after else "-"
            done = "  renewed" if c.renewed else ""
            click.echo(f"{c.domain:32} {c.issuer:11} {ends:20} {', '.join(c.services)}{done}")
        if not found:
            click.echo("no service is published with a certificate", err=True)
    for c in found:
        if c.problem:
            warn(c.problem)
    return 1 if any(c.problem for c in found) else 0


@service.command("backup")
@click.argument("service_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_host
def service_backup(db: Any, data_dir: str, service_id: str, as_json: bool) -> None:
    """Snapshot the data and databases of the service ID into the host's store."""
    done = backups.backup_service(db, data_dir, service_id, _actor(), _say)
    if as_json:
        print_json(done.to_json())
        return
    r = done.result
    click.echo(
        f"{service_id} {done.version}: snapshot {r.snapshot.short_id} ({r.files} files, "
        f"{human_bytes(r.bytes_total)}, {human_bytes(r.bytes_new)} new)"
    )


@service.command("restore")
@click.argument("service_id", metavar="ID")
@click.argument("snapshot")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_host
def service_restore(db: Any, data_dir: str, service_id: str, snapshot: str, as_json: bool) -> int:
    """Put the service ID back as it was in SNAPSHOT (an id, a prefix, or latest)."""
    done = backups.restore_service(db, data_dir, service_id, snapshot, _actor(), _say)
    if as_json:
        print_json(done.to_json())
    if done.problem:
        warn(f"{service_id} was restored but is not healthy: {done.problem}")
        return 1
    if not as_json:
        click.echo(f"{service_id} restored from {done.snapshot.short_id}, and healthy")
    return 0


@service.command("upgrade")
@click.argument("service_id", metavar="ID", required=False)
@click.option("--all", "every", is_flag=True, help="Upgrade every service the catalog has anew.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_host
def service_upgrade(
    db: Any, data_dir: str, service_id: str | None, every: bool, as_json: bool
) -> int:
    """Upgrade the service ID (or --all) to the catalog's version, backed up first."""
    if every == (service_id is not None):
        raise UsageError("name one service to upgrade, or give --all")
    failed: tuple[tuple[str, str], ...] = ()
    if every:
        found = ops.upgrade_all(db, data_dir, _actor(), _say)
        done, failed = list(found.done), found.failed
        for _sid, error in failed:
            warn(error)
    else:
        done = [ops.upgrade(db, data_dir, service_id or "", _actor(), _say)]
    if as_json:
        print_json([r.to_json() for r in done] if every else done[0].to_json())
        return 1 if failed else 0
    for result in done:
        if result.upgraded:
            click.echo(f"{result.service} upgraded from {result.old_version} to {result.version}")
        else:
            click.echo(f"{result.service} is already at {result.version}")
    if every and not done and not failed:
        click.echo("every installed service is at its catalog's version")
    return 1 if failed else 0
