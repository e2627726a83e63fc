"""`isidorus backup …`: the datastore from the command line."""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from isidorus import settings
from isidorus.backup.archiver import BackupOptions, BackupResult
from isidorus.backup.crypto import KdfParams
from isidorus.backup.gc import GcOptions
from isidorus.backup.prune import KeepPolicy
from isidorus.backup.restorer import RestoreOptions
from isidorus.backup.types import iso_time, parse_time
from isidorus.backup.verify import VerifyOptions, VerifyReport
from isidorus.cli.options import json_option, resolve_store
from isidorus.cli.output import (
    TerminalProgress,
    passphrase_source,
    print_json,
    warn,
)
from isidorus.errors import UsageError
from isidorus.ops import backups as ops
from isidorus.ops import offsite
from isidorus.ops.store_refs import StoreRef
from isidorus.units import human_bytes

F = TypeVar("F", bound=Callable[..., Any])


def store_options(f: F) -> F:
    @click.argument("store")
    @click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False),
        help="Read the passphrase from this file (else ISIDORUS_PASSPHRASE, else a prompt).",
    )
    @functools.wraps(f)
    def wrapper(store: str, passphrase_file: str | None, **kw: Any) -> Any:
        conf = settings.load()
        ref = StoreRef(
            resolve_store(store), passphrase_source(passphrase_file), conf["cache_dir"], conf
        )
        return f(ref, **kw)

    return wrapper  # type: ignore[return-value]


@click.command()
@click.argument("store")
@click.option(
    "--encryption",
    type=click.Choice(["aes256", "none"]),
    default="aes256",
    show_default=True,
    help="Encrypt every object (default), or not at all.",
)
@click.option(
    "--passphrase-file", type=click.Path(dir_okay=False), help="Read the passphrase from this file."
)
@click.option(
    "--kdf-memory",
    type=click.IntRange(8, 4096),
    default=64,
    show_default=True,
    help="MiB of memory for deriving the key (lower it on very small machines).",
)
@click.option(
    "--kdf-time",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Argon2id passes for deriving the key.",
)
def init(
    store: str, encryption: str, passphrase_file: str | None, kdf_memory: int, kdf_time: int
) -> None:
    """Create an empty store at STORE (a directory, or s3://BUCKET/PREFIX)."""
    encrypted = encryption == "aes256"
    source = passphrase_source(passphrase_file, confirm=True) if encrypted else None
    ops.init_store(
        resolve_store(store),
        source,
        encrypted=encrypted,
        kdf=KdfParams(time_cost=kdf_time, memory_kib=kdf_memory * 1024),
        settings=settings.load(),
    )
    click.echo(f"created {'an encrypted' if encrypted else 'an unencrypted'} store at {store}")
    if encrypted:
        click.echo(
            "keep the passphrase safe: without it the backups cannot be read. "
            "`isidorus backup key export` saves a copy of the key.",
            err=True,
        )


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise UsageError(
            f"--time {value!r} is not an ISO 8601 time, e.g. 2026-11-25T03:00:00Z"
        ) from None


@click.command()
@store_options
@click.argument("paths", nargs=-1)
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Leave out matching paths; a GLOB without '/' matches names (repeatable).",
)
@click.option("--one-file-system", is_flag=True, help="Do not cross into other file systems.")
@click.option("--time", "when", metavar="ISO8601", help="The snapshot's time (default: now).")
@click.option("--image", metavar="FILE_OR_DEVICE", help="Back up a disk image or block device.")
@click.option(
    "--stdin", "stdin_name", metavar="NAME", help="Back up standard input as one file NAME."
)
@click.option(
    "--parent",
    metavar="SNAPSHOT",
    help="Compare with this snapshot (default: the latest of the same paths).",
)
@json_option
def create(
    ref: StoreRef,
    paths: tuple[str, ...],
    tags: tuple[str, ...],
    excludes: tuple[str, ...],
    one_file_system: bool,
    when: str | None,
    image: str | None,
    stdin_name: str | None,
    parent: str | None,
    as_json: bool,
) -> int:
    """Make a snapshot of PATHS (or of --image, or of --stdin)."""
    sources = sum(1 for x in (paths, image, stdin_name) if x)
    if sources != 1:
        raise UsageError("give PATHS, --image FILE or --stdin NAME (exactly one of them)")
    conf = settings.load()
    options = BackupOptions(
        paths=paths,
        tags=tags,
        excludes=excludes,
        one_file_system=one_file_system,
        time=_parse_time(when),
        parent=parent,
        threads=int(conf["backup_threads"]),
    )
    progress = TerminalProgress()
    if image:
        result = ops.create_image_backup(ref, image, options, progress)
    elif stdin_name:
        if sys.stdin.isatty():
            raise UsageError(
                "--stdin reads a stream: pipe something in, e.g. "
                "`pg_dump db | isidorus backup create STORE --stdin db.sql`"
            )
        result = ops.create_stream_backup(ref, stdin_name, sys.stdin.buffer, options, progress)
    else:
        result = ops.create_backup(ref, options, progress)
    _print_backup(result, as_json)
    if result.partial:
        click.echo(
            f"isidorus: snapshot {result.snapshot.short_id} is partial: "
            f"{len(result.errors)} files could not be read (listed above)",
            err=True,
        )
        return 3
    return 0


def _print_backup(r: BackupResult, as_json: bool) -> None:
    if as_json:
        print_json(r.to_json())
        return
    click.echo(
        f"snapshot {r.snapshot.short_id} saved: {r.files} files, {r.dirs} dirs, "
        f"{human_bytes(r.bytes_total)}; read {human_bytes(r.bytes_read)}, "
        f"new {human_bytes(r.bytes_new)}, stored {human_bytes(r.bytes_stored)} "
        f"in {r.seconds:.1f} s"
    )


@click.command("list")
@store_options
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag.")
@json_option
def list_(ref: StoreRef, tags: tuple[str, ...], as_json: bool) -> None:
    """List the snapshots, oldest first."""
    snaps, damaged = ops.list_snapshots(ref, tags)
    for name in damaged:
        warn(
            f"snapshot {name[:8]} is damaged and cannot be read: see `isidorus backup "
            "verify`; `isidorus backup forget` removes it"
        )
    if as_json:
        print_json([s.to_json() for s in snaps])
        return
    for s in snaps:
        flag = " (partial)" if s.partial else ""
        click.echo(
            f"{s.short_id}  {iso_time(s.time)[:19].replace('T', ' ')}  {s.kind:5}  "
            f"{','.join(s.tags) or '-':12}  {' '.join(s.paths)}{flag}"
        )
    click.echo(f"{len(snaps)} snapshots", err=True)


def _mode_string(node: dict[str, Any]) -> str:
    kinds = {
        "dir": stat.S_IFDIR,
        "file": stat.S_IFREG,
        "hardlink": stat.S_IFREG,
        "symlink": stat.S_IFLNK,
        "fifo": stat.S_IFIFO,
        "chardev": stat.S_IFCHR,
        "blockdev": stat.S_IFBLK,
        "socket": stat.S_IFSOCK,
    }
    return stat.filemode(kinds.get(node["type"], 0) | node["mode"])


@click.command()
@store_options
@click.argument("snapshot")
@click.argument("path", default="/")
@click.option("-l", "--long", "long_", is_flag=True, help="Show mode, owner, size and time.")
@json_option
def ls(ref: StoreRef, snapshot: str, path: str, long_: bool, as_json: bool) -> None:
    """List the files of SNAPSHOT (below PATH)."""
    _snap, entries = ops.list_files(ref, snapshot, path)
    if as_json:
        print_json(
            [
                {
                    "path": p,
                    "type": n["type"],
                    "mode": n["mode"],
                    "uid": n["uid"],
                    "gid": n["gid"],
                    "size": n.get("size"),
                    "mtime": iso_time(datetime.fromtimestamp(int(n["mtime"]) / 1e9).astimezone()),
                }
                for p, n in entries
            ]
        )
        return
    for p, n in entries:
        if long_:
            owner = f"{n.get('user') or n['uid']}/{n.get('group') or n['gid']}"
            t = datetime.fromtimestamp(int(n["mtime"]) / 1e9).strftime("%Y-%m-%d %H:%M")
            click.echo(f"{_mode_string(n)} {owner:>17} {n.get('size') or 0:>12} {t}  {p}")
        else:
            click.echo(p)


@click.command()
@store_options
@click.argument("snapshot")
@click.argument("path")
def cat(ref: StoreRef, snapshot: str, path: str) -> None:
    """Print the content of file PATH of SNAPSHOT."""
    ops.cat_file(ref, snapshot, path, sys.stdout.buffer)
    sys.stdout.buffer.flush()


@click.command()
@store_options
@click.argument("snapshot_a")
@click.argument("snapshot_b")
@json_option
def diff(ref: StoreRef, snapshot_a: str, snapshot_b: str, as_json: bool) -> None:
    """What changed from SNAPSHOT_A to SNAPSHOT_B: + added, - removed, M modified,
    T type changed, U metadata only."""
    changes = ops.diff_snapshots(ref, snapshot_a, snapshot_b)
    if as_json:
        print_json([{"change": c, "path": p} for c, p in changes])
        return
    for c, p in changes:
        click.echo(f"{c}  {p}")


@click.command()
@store_options
@click.argument("snapshot")
@click.argument("target")
@click.option(
    "--path", "paths", multiple=True, help="Restore only this path of the snapshot (repeatable)."
)
@click.option("--overwrite", is_flag=True, help="Replace files that exist in TARGET.")
@json_option
def restore(
    ref: StoreRef,
    snapshot: str,
    target: str,
    paths: tuple[str, ...],
    overwrite: bool,
    as_json: bool,
) -> int:
    """Restore SNAPSHOT into TARGET (an image snapshot: to the file TARGET)."""
    conf = settings.load()
    snap, r = ops.restore(
        ref,
        snapshot,
        RestoreOptions(
            target=target, include=paths, overwrite=overwrite, threads=int(conf["backup_threads"])
        ),
        TerminalProgress(),
    )
    if as_json:
        print_json({"snapshot": snap.id, **r.to_json()})
    else:
        click.echo(
            f"restored snapshot {snap.short_id}: {r.files} files, {r.dirs} dirs, "
            f"{human_bytes(r.bytes_written)} in {r.seconds:.1f} s"
        )
    if r.errors:
        click.echo(
            f"isidorus: {len(r.errors)} entries could not be restored (listed above)", err=True
        )
        return 3
    return 0


@click.command()
@store_options
@click.option(
    "--snapshot", "snapshots", multiple=True, help="Check only this snapshot's files (repeatable)."
)
@click.option(
    "--sample",
    type=click.FloatRange(0, 100, min_open=True),
    default=100.0,
    metavar="PERCENT",
    help="Read only this share of the packs, chosen at random.",
)
@click.option(
    "--read-data/--no-read-data",
    default=True,
    help="Read every pack (the default), or check structure only.",
)
@click.option(
    "--repair-from",
    metavar="OTHER_STORE",
    help="Replace damaged or missing objects by those of this copy, then verify again.",
)
@json_option
def verify(
    ref: StoreRef,
    snapshots: tuple[str, ...],
    sample: float,
    read_data: bool,
    repair_from: str | None,
    as_json: bool,
) -> int:
    """Check the store; exit 1 and name every damaged snapshot and file if any."""
    options = VerifyOptions(snapshots=snapshots, read_data=read_data, sample_percent=sample)
    if repair_from is not None:
        result = offsite.verify_and_repair(
            ref, resolve_store(repair_from), options, TerminalProgress()
        )
        if as_json:
            print_json(result.to_json())
            return 0 if result.ok else 1
        if not result.before.ok:
            _print_verify(result.before, "before the repair: ")
        for obj in result.repaired:
            click.echo(f"repaired {obj}")
        for p in result.not_repaired:
            click.echo(f"not repaired {p['object']}: {p['problem']}")
        report = result.after
    else:
        report = ops.verify(ref, options, TerminalProgress())
        if as_json:
            print_json(report.to_json())
            return 0 if report.ok else 1
    _print_verify(report)
    return 0 if report.ok else 1


def _print_verify(report: VerifyReport, prefix: str = "") -> None:
    for e in report.errors:
        click.echo(f"error: {e}")
    for d in report.damaged:
        click.echo(f"damaged snapshot {d['snapshot'][:8]} ({d['time'] or '?'}): {d['reason']}")
        for f in d["files"]:
            click.echo(f"  {f}")
    state = "intact" if report.ok else "DAMAGED"
    click.echo(
        f"{prefix}{state}: {report.snapshots_checked} snapshots, {report.packs_checked} "
        f"packs ({human_bytes(report.bytes_checked)}) checked"
    )


@click.command()
@store_options
@click.option("--keep-last", type=click.IntRange(0), default=0, help="Keep the N newest.")
@click.option(
    "--keep-hourly",
    type=click.IntRange(0),
    default=0,
    help="Keep the newest of each of the last N hours that have one.",
)
@click.option("--keep-daily", type=click.IntRange(0), default=0, help="… of N days.")
@click.option("--keep-weekly", type=click.IntRange(0), default=0, help="… of N ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(0), default=0, help="… of N months.")
@click.option("--keep-yearly", type=click.IntRange(0), default=0, help="… of N years.")
@click.option("--tag", "tags", multiple=True, help="Only consider snapshots with this tag.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
def prune(
    ref: StoreRef,
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    tags: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove the snapshots no --keep-* rule keeps (run gc afterwards to free space)."""
    policy = KeepPolicy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    plan = ops.prune(ref, policy, tags=tags, dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, **plan.to_json()})
        return
    for (host, kind, paths), decisions in plan.groups:
        click.echo(f"{host} {kind} {' '.join(paths)}:")
        for d in decisions:
            verb = "keep  " if d.keep else ("would remove" if dry_run else "remove")
            click.echo(
                f"  {verb} {d.snapshot.short_id} {iso_time(d.snapshot.time)[:19]}  {d.reason}"
            )
    s = plan.stats()
    click.echo(f"{s['keep']} kept, {s['remove']} {'to remove' if dry_run else 'removed'}")


@click.command()
@store_options
@click.argument("snapshots", nargs=-1, required=True)
@json_option
def forget(ref: StoreRef, snapshots: tuple[str, ...], as_json: bool) -> None:
    """Remove SNAPSHOTS (ids or unique prefixes), even damaged ones; gc then frees what
    only they used."""
    removed = ops.forget(ref, snapshots)
    if as_json:
        print_json({"removed": removed})
        return
    for name in removed:
        click.echo(f"removed snapshot {name[:8]}")
    click.echo(f"{len(removed)} snapshots removed; run gc to free their space")


@click.command("repair-index")
@store_options
@json_option
def repair_index(ref: StoreRef, as_json: bool) -> int:
    """Rebuild the index from the packs' own headers (after damage to index/)."""
    r = ops.repair_index(ref, TerminalProgress())
    if as_json:
        print_json(r.to_json())
    else:
        for p in r.unreadable_packs:
            click.echo(f"unreadable pack {p}")
        click.echo(
            f"index rebuilt: {r.packs_indexed} packs, {r.blobs_indexed} blobs in "
            f"{r.index_written} index objects ({r.index_removed} old ones removed)"
        )
    return 1 if r.unreadable_packs else 0


@click.command()
@store_options
@click.option(
    "--no-wait",
    is_flag=True,
    help="Do not wait for running backups; run gc again later to carry on.",
)
@json_option
def gc(ref: StoreRef, no_wait: bool, as_json: bool) -> None:
    """Free the space of data no snapshot needs. Safe while backups run."""
    r = ops.gc(ref, GcOptions(wait=not no_wait), TerminalProgress())
    if as_json:
        print_json(r.to_json())
    elif not r.done:
        click.echo(
            "gc is half done: waiting for "
            + ", ".join(r.waiting_for)
            + "; run gc again once they end"
        )
    else:
        click.echo(
            f"gc done: {r.packs_deleted} packs deleted, {r.packs_repacked} repacked, "
            f"{human_bytes(r.bytes_freed)} freed"
        )


@click.command()
@store_options
@click.option(
    "--remove-all",
    is_flag=True,
    help="Also remove sessions of other hosts (only once you know they are gone).",
)
def unlock(ref: StoreRef, remove_all: bool) -> None:
    """Remove locks left by processes that are gone."""
    gone = ops.unlock_store(ref, remove_all)
    for s in gone:
        click.echo(f"removed {s.describe()}")
    click.echo(f"{len(gone)} locks removed")


@click.group()
def key() -> None:
    """The store's key: passphrase and backup copy."""


@key.command("change-passphrase")
@store_options
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False),
    help="Read the new passphrase from this file (else ISIDORUS_NEW_PASSPHRASE, else a prompt).",
)
def change_passphrase(ref: StoreRef, new_passphrase_file: str | None) -> None:
    """Protect the store's key with a new passphrase."""
    new = passphrase_source(
        new_passphrase_file, confirm=True, env="ISIDORUS_NEW_PASSPHRASE", what="new passphrase"
    )
    ops.change_passphrase(ref, new)
    click.echo("passphrase changed")


@key.command("export")
@store_options
@click.argument("file")
def export(ref: StoreRef, file: str) -> None:
    """Save a copy of the key (still protected by the passphrase) to FILE."""
    ops.export_key(ref, file)
    click.echo(f"key saved to {file}; keep it apart from the store")
    if not os.path.isabs(file):
        click.echo(f"({os.path.abspath(file)})", err=True)
