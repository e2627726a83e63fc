"""`isidorus backup sync|scrub|remote`: copies of a store in other places."""

from __future__ import annotations

import click

from isidorus import settings
from isidorus.cli.ending import end_quickly
from isidorus.cli.options import json_option, resolve_store
from isidorus.cli.output import TerminalProgress, passphrase_source, print_json, warn
from isidorus.ops import remotes, stores
from isidorus.units import human_bytes, parse_size


@click.command()
@click.argument("source")
@click.argument("dest")
@click.option(
    "--snapshot",
    "snapshots",
    multiple=True,
    help="Copy only this snapshot and what it needs (repeatable; needs the passphrase).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False),
    help="The source's passphrase, for --snapshot (else ISIDORUS_PASSPHRASE, else a prompt).",
)
@click.option(
    "--limit-rate",
    metavar="RATE",
    help="Send at most this many bytes a second to an ssh store, e.g. 2M (else limit_rate).",
)
@json_option
def sync(
    source: str,
    dest: str,
    snapshots: tuple[str, ...],
    passphrase_file: str | None,
    limit_rate: str | None,
    as_json: bool,
) -> int:
    """Copy to DEST the snapshots it lacks, sending only the objects it lacks, then remove
    from DEST what SOURCE no longer has. Without --snapshot no passphrase is needed."""
    conf = settings.load()
    if limit_rate is not None:
        parse_size(limit_rate, "rate")  # a bad value stops here, before any connection
        conf["limit_rate"] = limit_rate
    where = resolve_store(dest)
    # a home is reached first: ssh's handshake and the home's start-up then overlap the
    # loading of the engine below, which a copy to a home would otherwise wait for
    early = stores.connect_early(where, conf)
    try:
        from isidorus.backup.sync import SyncOptions
        from isidorus.ops import offsite
        from isidorus.ops.store_refs import StoreRef

        ref = StoreRef(
            resolve_store(source),
            passphrase_source(passphrase_file) if snapshots else None,
            conf["cache_dir"],
            conf,
        )
    except BaseException:
        if early is not None:
            early.close()
        raise
    target = early or where
    r = offsite.sync(ref, target, SyncOptions(snapshots=snapshots), TerminalProgress())
    for name in r.damaged:
        warn(f"{name} of the source does not match its name (damaged): not copied")
    for why in (r.held_back, r.postponed):
        if why:
            warn(why)
    if as_json:
        print_json(r.to_json())
    else:
        made = "created the copy; " if r.created else ""
        click.echo(
            f"{made}{r.snapshots_copied} snapshots copied: {r.packs_sent} packs and "
            f"{r.objects_sent - r.packs_sent} other objects sent ({human_bytes(r.bytes_sent)}); "
            f"{r.snapshots_removed} snapshots and {r.objects_removed} objects removed"
            + (
                f" ({r.removals_queued} only queued by the append-only copy)"
                if r.removals_queued
                else ""
            )
        )
    if r.damaged:
        click.echo(
            f"isidorus: {len(r.damaged)} objects of the source are damaged: see "
            "`isidorus backup scrub SOURCE --repair-from DEST`",
            err=True,
        )
    end_quickly()  # the copy is closed and its memo written: nothing is left for the exit
    return 0 if r.ok else 1


@click.command()
@click.argument("store")
@click.option(
    "--repair-from",
    metavar="OTHER_STORE",
    help="Replace damaged or missing objects by the intact ones of this copy.",
)
@json_option
def scrub(store: str, repair_from: str | None, as_json: bool) -> int:
    """Check every object of STORE against its name, without the passphrase; exit 1 if
    any is damaged (and, with --repair-from, could not be repaired)."""
    from isidorus.ops import offsite

    report = offsite.scrub(
        resolve_store(store),
        resolve_store(repair_from) if repair_from is not None else None,
        TerminalProgress(),
        settings.load(),
    )
    if as_json:
        print_json(report.to_json())
        return 0 if report.ok else 1
    for line in report.lines():
        click.echo(line)
    click.echo(report.summary(damaged="DAMAGED"))
    return 0 if report.ok else 1


@click.group()
def remote() -> None:
    """Named places for stores: `remote:NAME` stands for the URL wherever a STORE goes."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
def remote_add(name: str, url: str) -> None:
    """Name the place URL (a path, ssh://…, ssh+isidorus://… or s3://…) NAME."""
    r = remotes.add_remote(settings.config_path(), name, url)
    click.echo(f"remote {r.name} is {r.url} (use remote:{r.name} as a STORE)")


@remote.command("list")
@json_option
def remote_list(as_json: bool) -> None:
    """List the remotes."""
    found = remotes.list_remotes(settings.config_path())
    if as_json:
        print_json([{"name": r.name, "url": r.url, "file": r.file} for r in found])
        return
    for r in found:
        click.echo(f"{r.name}  {r.url}")


@remote.command("remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Forget the remote NAME (the store there is left as it is)."""
    r = remotes.remove_remote(settings.config_path(), name)
    click.echo(f"remote {r.name} removed ({r.url} is left as it is)")
