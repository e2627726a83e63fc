"""`isidorus nightly`, `jobs`, `doctor`, `notify` and `schedule`: the host's operations."""

from __future__ import annotations

import getpass
from typing import Any

import click

from isidorus import settings
from isidorus.cli.options import json_option, with_host
from isidorus.cli.output import print_json
from isidorus.errors import UsageError
from isidorus.ops import doctor as doctor_
from isidorus.ops import jobs_config, runs
from isidorus.ops import notify as notify_
from isidorus.ops import schedule as schedule_
from isidorus.ops.runs import Run
from isidorus.units import human_bytes


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _say(line: str) -> None:
    click.echo(line, err=True)


def _config() -> tuple[dict[str, Any], jobs_config.JobsConfig, dict[str, settings.Remote]]:
    return jobs_config.host_config()


@click.command()
@json_option
@with_host
def nightly(db: Any, data_dir: str, as_json: bool) -> None:
    """Run the nightly job now: back up every service and the system into the host's
    store, prune and gc it, copy it to every remote, verify a sample, notify. Exit 1 when
    a step failed; the night goes on after a failed step."""
    from isidorus.ops.nightly import nightly as run_nightly

    done = run_nightly(db, data_dir, _say)
    if as_json:
        print_json(done.to_json())
    else:
        _print_run(done)
    if done.status != "ok":
        raise SystemExit(1)


@click.command()
@click.argument("run_id", required=False, type=int)
@click.option("--kind", type=click.Choice(runs.KINDS), help="Only runs of this kind.")
@click.option("--limit", default=20, show_default=True, help="How many runs, latest first.")
@json_option
@with_host
def jobs(
    db: Any, data_dir: str, run_id: int | None, kind: str | None, limit: int, as_json: bool
) -> None:
    """The history of the nightly job and updates; with RUN_ID, that run's steps and log."""
    if run_id is not None:
        found = runs.get_run(db, run_id)
        if as_json:
            print_json(found.to_json())
        else:
            _print_run(found)
            click.echo(found.log, nl=False)
        return
    listed = runs.list_runs(db, kind=kind, limit=limit)
    if as_json:
        print_json([r.to_json(with_log=False) for r in listed])
        return
    if not listed:
        click.echo("no runs yet: `isidorus nightly` runs the nightly job")
        return
    for r in listed:
        took = "-" if r.seconds is None else f"{r.seconds:.0f} s"
        failed = ", ".join(f"{s.step} {s.target}".strip() for s in r.steps if s.status == "failed")
        click.echo(
            f"{r.id:5} {r.kind:8} {r.started_at:%Y-%m-%d %H:%M} {r.status:11} {took:>7} "
            f"{human_bytes(r.bytes):>10}" + (f"  failed: {failed}" if failed else "")
        )


def _print_run(r: Run) -> None:
    took = "" if r.seconds is None else f" in {r.seconds:.0f} s"
    click.echo(f"run {r.id} ({r.kind}) {r.status}{took}, {human_bytes(r.bytes)} new")
    for s in r.steps:
        line = (
            f"  {s.status:7} {s.step:8} {s.target:20} {s.seconds:6.1f} s {human_bytes(s.bytes):>10}"
        )
        click.echo(line + (f"  {s.error}" if s.error else ""))


@click.command()
@json_option
@with_host
def doctor(db: Any, data_dir: str, as_json: bool) -> None:
    """Diagnose the host: disks, certificates, services, backups, remotes, clock, DNS,
    updates, notifications. Exit 1 when a finding is a warning or critical."""
    conf, jobs, remotes = _config()
    findings = doctor_.diagnose(db, data_dir, conf, jobs, remotes)
    worst = doctor_.worst(findings)
    if as_json:
        print_json({"worst": worst, "findings": [f.to_json() for f in findings]})
    else:
        for f in findings:
            click.echo(f"{f.severity:8} {f.check:11} {f.message}")
            if f.fix and f.severity != "ok":
                click.echo(f"{'':20} → {f.fix}")
    if worst in ("warning", "critical"):
        raise SystemExit(1)


@click.group()
def notify() -> None:
    """Notifications to the host's admin ([notify] in the configuration file)."""


@notify.command("test")
@with_host
def notify_test(db: Any, data_dir: str) -> None:
    """Send a test message to every target; exit 1 naming those that failed."""
    sent = notify_.send_test(data_dir)
    if sent.failed:
        raise UsageError(f"these targets did not take the message: {', '.join(sent.failed)}")
    click.echo(f"sent to {sent.targets} target(s)")


@click.group()
def schedule() -> None:
    """When the nightly job runs: a systemd timer, or isidorus's own scheduler."""


@schedule.command("install")
@with_host
def schedule_install(db: Any, data_dir: str) -> None:
    """Set up the nightly job at [nightly] time (again after a change of it)."""
    conf, jobs, _remotes = _config()
    unkept = schedule_.unkept()
    if unkept:
        _say(
            f"note: {', '.join(unkept)} of this shell will not apply to the scheduled nights: "
            f"put those settings in {settings.config_path()}"
        )
    click.echo(schedule_.install(db, _actor(), data_dir, conf, jobs.nightly))


@schedule.command("remove")
@with_host
def schedule_remove(db: Any, data_dir: str) -> None:
    """Stop running the nightly job on its own."""
    conf, _jobs, _remotes = _config()
    schedule_.remove(db, _actor(), conf)
    click.echo("the nightly job is no longer scheduled")


@schedule.command("status")
@json_option
@with_host
def schedule_status(db: Any, data_dir: str, as_json: bool) -> None:
    """How the nightly job is scheduled, when it runs next, and how its last run went."""
    conf, jobs, _remotes = _config()
    found = schedule_.status(db, data_dir, conf, jobs.nightly)
    if as_json:
        print_json(found.to_json())
        return
    if found.kind == "none":
        click.echo("not scheduled: `isidorus schedule install`")
    else:
        nxt = f"{found.next_due:%Y-%m-%d %H:%M}" if found.next_due else "?"
        click.echo(
            f"{found.kind} ({found.state}): next at {nxt}, up to {found.random_delay:.0f} s later"
        )
    if found.last_run is not None:
        r = found.last_run
        click.echo(f"last run {r.id}: {r.status}, started {r.started_at:%Y-%m-%d %H:%M} UTC")


@schedule.command("run")
@with_host
def schedule_run(db: Any, data_dir: str) -> None:
    """isidorus's own scheduler (for a process manager to keep running): run the nightly
    job every day at [nightly] time, and at once when a night was missed."""
    path = settings.config_path()
    jobs_config.load(path)  # a broken file is told now, not at night
    schedule_.serve(db, data_dir, lambda: jobs_config.load(path).nightly, _say)
