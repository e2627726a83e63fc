"""The nightly job: the whole server into the host's store, then copies to the homes.

Its steps, in order, each recorded as it ends (see runs.py); a step that fails is told
and the night goes on with the next, since each saves something on its own:

1. state   a consistent copy of isidorus's state database (SQLite's backup, or pg_dump);
2. dump    each installed service's databases, dumped while it runs;
   backup  each service's data and dumps, one snapshot per service (`isidorus service
           restore` takes it back alone);
3. backup  the system: the configured paths and isidorus's data directory, without the
           services' data (already saved), the store itself, and the live state files;
   updates with `security_updates`, Debian's security updates (`isidorus update apply
           --security-only`: its own run, health checks and way back);
4. prune   the nightly snapshots the retention does not keep;
5. gc      the data no snapshot needs any more (skipped when another process uses the
           store: the next night does it);
6. sync    every configured remote: after prune and gc, so each home receives the night's
           final state once;
7. verify  a sample of the local store, read back and checked;
8. certificates  the services' certificates that are due, renewed (ACME, or self-signed);
9. notify  the failures, and what the checks of `doctor` find serious.

Only one nightly job runs at a time (a lock in the data directory). A night cut short
leaves its run "running" in the history: the next one marks it interrupted and does
everything again, at the cost of what changed since (the store deduplicates, and a sync
carries on where it stopped).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from isidorus.backup.archiver import BackupOptions
from isidorus.backup.gc import GcOptions
from isidorus.backup.progress import NullProgress
from isidorus.backup.sync import SyncOptions, SyncResult
from isidorus.backup.verify import VerifyOptions
from isidorus.errors import IsidorusError
from isidorus.ops import runs
from isidorus.ops.backups import create_backup, gc, prune, verify
from isidorus.ops.jobs_config import JobsConfig
from isidorus.ops.offsite import sync
from isidorus.ops.runs import Recorder, Run, Step, StepFailed
from isidorus.ops.store_refs import StoreRef
from isidorus.services import installed
from isidorus.services.errors import NothingToSave, ServiceError
from isidorus.settings import Remote
from isidorus.state.db import Database
from isidorus.system.errors import HostError
from isidorus.system.locks import only_one

Say = Callable[[str], None]
LOCK_FILE = "nightly.lock"
STATE_DIR = "nightly"  # in the data directory: the state copy of the night
TAG = "nightly"


class NightlyBusy(IsidorusError):
    """Another nightly job runs."""

    http_status = 409


@dataclass
class Night(Recorder):
    """What a running night needs; a recorder of its run."""

    db: Database
    data_dir: str
    conf: Mapping[str, Any]
    jobs: JobsConfig
    remotes: Mapping[str, Remote]
    say: Say
    run_id: int = 0
    lines: list[str] = field(default_factory=list)


def _only_one(data_dir: str) -> contextlib.AbstractContextManager[None]:
    os.makedirs(data_dir, exist_ok=True)

    def busy(pid: str) -> NightlyBusy:
        return NightlyBusy(
            f"a nightly job is already running (pid {pid}): let it finish; `isidorus jobs` shows it"
        )

    return only_one(os.path.join(data_dir, LOCK_FILE), busy)


def check_idle(data_dir: str) -> None:
    """NightlyBusy when a nightly job runs now (the timer's, the command line's or one the
    web started): told at once to the one who asks for another, before it is started."""
    with _only_one(data_dir):
        pass


def nightly(db: Database, data_dir: str, say: Say) -> Run:
    """The nightly job as `isidorus nightly` runs it: the configuration file read (the
    notification targets checked first: UsageError), every step run (see run_nightly),
    then what went wrong, and what `doctor` finds serious, told to the targets (a target
    that fails is said, not raised)."""
    from isidorus.ops import doctor, jobs_config, notify

    conf, jobs, remotes = jobs_config.host_config()
    if jobs.notify.urls:
        notify.check_urls(jobs.notify.urls)
    host = notify.host_name(data_dir)

    def tell(run: Run) -> None:
        findings = doctor.diagnose(db, data_dir, conf, jobs, remotes)
        message = notify.night_message(run, findings, host, digest=jobs.notify.digest)
        if message is None or not jobs.notify.urls:
            return
        for target in notify.send(jobs.notify.urls, message):
            say(f"warning: the notification to {target} failed")

    return run_nightly(db, data_dir, conf, jobs, remotes, say, notify=tell)


def run_nightly(
    db: Database,
    data_dir: str,
    conf: Mapping[str, Any],
    jobs: JobsConfig,
    remotes: Mapping[str, Remote],
    say: Say,
    *,
    notify: Callable[[Run], None] | None = None,
) -> Run:
    """Run every step (see the module's docstring); the finished run, "ok" when every
    step was, else "failed". NightlyBusy when another one runs."""
    with _only_one(data_dir):
        night = Night(db, data_dir, conf, jobs, remotes, say)
        earlier = [r for r in runs.list_runs(db, kind="nightly", limit=1) if r.status == "running"]
        night.run_id = runs.begin(db, "nightly")
        if earlier:
            night.tell(f"run {earlier[0].id} was cut short: this one does everything again")
        ref = _store(night)
        if ref is not None:
            _save_state(night)
            _save_services(night, ref)
            _save_system(night, ref)
            _security_updates(night)
            _prune_and_gc(night, ref)
            _sync(night, ref)
            _verify(night, ref)
        _certificates(night)
        result = runs.get_run(db, night.run_id)
        failed = [s for s in result.steps if s.status == "failed"]
        status = "failed" if failed else "ok"
        night.tell(
            f"night {status}: {len(result.steps)} steps, {len(failed)} failed"
            if failed
            else f"night ok: {len(result.steps)} steps"
        )
        done = runs.finish(db, night.run_id, status, night.log)
        if notify is not None:
            notify(done)
        return done


def _store(night: Night) -> StoreRef | None:
    """The host's store, made at the first night; None (a failed step) when it cannot be."""
    from isidorus.ops.service_backups import store_ref

    ref: StoreRef | None = None
    with night.step("store", str(night.conf["backup_store"])):
        ref = store_ref(night.conf, create=True)
    return ref


def _save_state(night: Night) -> None:
    with night.step("state") as step:
        path = dump_state(night.db, os.path.join(night.data_dir, STATE_DIR))
        step.bytes = os.path.getsize(path)
        step.detail = {"file": path}
        night.tell(f"state copied to {path}")


def dump_state(db: Database, folder: str) -> str:
    """A consistent copy of the state database in `folder` (replacing the previous one):
    SQLite's online backup, or pg_dump's custom format. Its path."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if db.dialect == "sqlite":
        path = os.path.join(folder, "state.sqlite")
        tmp = path + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raw = db.engine.raw_connection()
        try:
            import sqlite3

            copy = sqlite3.connect(tmp)
            try:
                raw.driver_connection.backup(copy)  # type: ignore[union-attr]
            finally:
                copy.close()
        finally:
            raw.close()
        os.replace(tmp, path)
        return path
    path = os.path.join(folder, "state.pgdump")
    url = db.engine.url
    if shutil.which("pg_dump") is None:
        raise HostError("pg_dump is missing: apt-get install postgresql-client")
    env = {**os.environ, "PGPASSWORD": url.password or ""} if url.password else dict(os.environ)
    target = url.set(drivername="postgresql", password=None)
    result = subprocess.run(
        ["pg_dump", "--format=custom", "--file", path + ".tmp",
         target.render_as_string(hide_password=False)],
        env=env, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["it said nothing"])[-1]
        raise HostError(f"pg_dump of the state failed: {last}")
    os.replace(path + ".tmp", path)
    return path


def _save_services(night: Night, ref: StoreRef) -> None:
    from isidorus.ops.service_backups import (
        changing,
        dump_databases,
        dump_dir,
        snapshot_service,
        tools_for,
    )

    with night.db.read() as conn:
        found = [s for s in installed.all_installed(conn) if s.state == "installed"]
    if not found:
        return
    tools = tools_for(night.conf, night.data_dir)
    for service in found:
        manifest = service.manifest
        dumps: str | None = None
        try:
            with changing(service.id):
                if manifest.data.databases:
                    with night.step("dump", service.id) as step:
                        dumps = dump_dir(tools, service.id)
                        dump_databases(tools, service, dumps, night.tell)
                        step.bytes = _size(dumps)
                    if step.status == "failed":
                        continue  # a snapshot without its dumps would not restore
                with night.step("backup", service.id) as step:
                    try:
                        done = snapshot_service(ref, tools, service, dumps, night.tell, tags=(TAG,))
                    except NothingToSave as exc:
                        step.status, step.error = "skipped", str(exc)
                        continue
                    _figures(step, done.result)
                    if done.result.partial:
                        raise StepFailed(_partial(done.result))
        except ServiceError as exc:  # busy: an upgrade or a restore runs
            with night.step("backup", service.id):
                raise StepFailed(str(exc)) from None
        finally:
            if dumps is not None:
                shutil.rmtree(dumps, ignore_errors=True)


def _save_system(night: Night, ref: StoreRef) -> None:
    nightly = night.jobs.nightly
    with night.step("backup", "system") as step:
        paths = [p for p in (*nightly.paths, night.data_dir) if os.path.lexists(p)]
        missing = [p for p in nightly.paths if not os.path.lexists(p)]
        if missing:
            night.tell(f"not on this host, left out: {', '.join(missing)}")
        live = os.path.join(night.data_dir, "state.sqlite")
        mine = [
            str(night.conf["service_data_root"]),  # each service has its own snapshot
            ref.location,
            str(night.conf["cache_dir"]),
            live,
            live + "-wal",
            live + "-shm",
            os.path.join(night.data_dir, LOCK_FILE),
        ]
        excludes = (*nightly.excludes, *(glob.escape(os.path.abspath(p)) for p in mine))
        night.tell(f"backing up {', '.join(paths)}")
        result = create_backup(
            ref,
            BackupOptions(paths=tuple(paths), tags=("system", TAG), excludes=excludes),
            NullProgress(),
        )
        _figures(step, result)
        if result.partial:
            raise StepFailed(_partial(result))


def _security_updates(night: Night) -> None:
    """With `security_updates`, Debian's security updates, the night's snapshots being
    the backup before them; an update run of its own (its steps, its way back)."""
    if not night.jobs.nightly.security_updates:
        return
    from isidorus.ops.updates import apply_updates

    with night.step("updates") as step:
        done = apply_updates(
            night.db, night.data_dir, security_only=True, actor="nightly", say=night.tell
        )
        step.detail = {"run": done.id, "status": done.status}
        if done.status != "ok":
            failed = [f"{s.step} {s.target}".strip() for s in done.steps if s.status == "failed"]
            raise StepFailed(
                f"the security updates (run {done.id}) failed at: {', '.join(failed)}; "
                f"`isidorus jobs {done.id}` tells more"
            )


def _prune_and_gc(night: Night, ref: StoreRef) -> None:
    keep = night.jobs.nightly.keep
    with night.step("prune", "local") as step:
        plan = prune(ref, keep, tags=(TAG,))
        step.detail = {"kept": len(plan.to_keep), "removed": plan.removed}
        night.tell(f"prune kept {len(plan.to_keep)} snapshots, removed {plan.removed}")
    with night.step("gc", "local") as step:
        result = gc(ref, GcOptions(wait=False), NullProgress())
        if result.waiting_for:
            step.status = "skipped"
            step.error = f"the store is in use by {', '.join(result.waiting_for)}"
            night.tell(f"gc left for the next night: {step.error}")
        else:
            step.detail = result.to_json() if hasattr(result, "to_json") else {}


def _sync(night: Night, ref: StoreRef) -> None:
    wanted = night.jobs.nightly.remotes
    names = list(night.remotes) if wanted is None else list(wanted)
    for name in names:
        with night.step("sync", name) as step:
            remote = night.remotes.get(name)
            if remote is None:
                raise StepFailed(
                    f"no remote {name!r} is defined: `isidorus backup remote add {name} URL`, "
                    "or take it out of [nightly] remotes"
                )
            night.tell(f"copying to {name} ({remote.url})")
            result = sync(ref, remote.url, SyncOptions(), NullProgress())
            step.bytes = result.bytes_sent
            step.detail = sync_detail(remote.url, result)
            if not result.ok:
                raise StepFailed(sync_failure(result))


def sync_detail(url: str, result: SyncResult) -> dict[str, Any]:
    """The figures a sync step keeps in the history."""
    return {
        "url": url,
        "snapshots_copied": result.snapshots_copied,
        "packs_sent": result.packs_sent,
        "bytes_sent": result.bytes_sent,
        "removals_queued": result.removals_queued,
    }


def sync_failure(result: SyncResult) -> str:
    """Why a sync that ended is a failure (not `result.ok`)."""
    return result.held_back or f"{len(result.damaged)} damaged objects were not copied"


def _verify(night: Night, ref: StoreRef) -> None:
    percent = night.jobs.nightly.verify_percent
    if percent <= 0:
        return
    with night.step("verify", "local") as step:
        report = verify(ref, VerifyOptions(sample_percent=percent), NullProgress())
        step.detail = {
            "sample_percent": percent,
            "snapshots": report.snapshots_checked,
            "damaged": len(report.objects),
        }
        if report.errors or report.damaged:
            first = (report.errors or [str(report.damaged[0])])[0]
            raise StepFailed(
                f"the store is damaged ({first}): `isidorus backup verify` and docs/backup.md "
                "say how to repair it from a home's copy"
            )


def _certificates(night: Night) -> None:
    """Renew the services' certificates that are due (ACME's within 30 days)."""
    from isidorus.ops.certificates import renew

    if str(night.conf["services_tls"]) == "none":
        return
    with night.db.read() as conn:
        if not installed.all_installed(conn):
            return
    with night.step("certificates") as step:
        done = renew(night.db, night.data_dir, "nightly", night.tell)
        step.detail = {"renewed": [c.domain for c in done if c.renewed]}
        problems = [c.problem for c in done if c.problem]
        if problems:
            raise StepFailed("; ".join(problems))


def _figures(step: Step, result: Any) -> None:
    step.bytes = result.bytes_new
    step.detail = {
        "snapshot": result.snapshot.short_id,
        "files": result.files,
        "bytes_total": result.bytes_total,
        "bytes_new": result.bytes_new,
        "bytes_stored": result.bytes_stored,
    }


def _partial(result: Any) -> str:
    return (
        f"snapshot {result.snapshot.short_id} is partial, {len(result.errors)} file(s) "
        f"left out: {result.errors[0]}"
    )


def _size(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total
