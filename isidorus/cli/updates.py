"""`isidorus update …`: the pending Debian and service upgrades, and applying them with a
way back."""

from __future__ import annotations

import getpass
from typing import Any

import click

from isidorus import settings
from isidorus.cli.options import json_option
from isidorus.cli.output import print_json, warn
from isidorus.ops import accounts
from isidorus.ops import updates as ops
from isidorus.ops.runs import Step
from isidorus.state.db import Database

_DATA_DIR = click.option("--data-dir", metavar="DIR", help="The host's data directory.")


def _open(data_dir: str | None) -> tuple[Database, str]:
    where = data_dir or str(settings.load()["data_dir"])
    return accounts.open_state(where, warn=warn), where


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def update() -> None:
    """Updates of the host: Debian packages and services, with a way back."""


@update.command("check")
@json_option
@_DATA_DIR
def update_check(as_json: bool, data_dir: str | None) -> None:
    """List the pending Debian and service upgrades, security ones marked."""
    db, _where = _open(data_dir)
    try:
        report = ops.check_updates(db, say=_say)
    finally:
        db.close()
    if as_json:
        print_json(report.to_json())
        return
    for u in report.packages:
        mark = "  security" if u.security else ""
        click.echo(f"{u.name:32} {u.installed:>24} -> {u.candidate}{mark}")
    for s in report.services:
        click.echo(f"{'service ' + s.id:32} {s.version:>24} -> {s.catalog_version}")
    if report.empty:
        click.echo("nothing to update")


@update.command("apply")
@click.option(
    "--security-only",
    is_flag=True,
    help="Only the Debian security upgrades; no other package, and no service, is upgraded.",
)
@json_option
@_DATA_DIR
def update_apply(security_only: bool, as_json: bool, data_dir: str | None) -> int:
    """Apply the pending updates, with a snapshot first and a way back."""
    ops.require_root()  # before the state is opened: its files are root's
    db, where = _open(data_dir)
    try:
        actor = f"cli:{getpass.getuser()}"
        run = ops.apply_updates(db, where, security_only=security_only, actor=actor, say=_say)
    finally:
        db.close()
    if as_json:
        print_json(run.to_json())
    else:
        for step in run.steps:
            click.echo(f"{step.step:9} {step.target or '-':20} {step.status:8} {_told(step)}")
    verdict = ops.summary(run)
    if run.status != "ok":
        click.echo(f"isidorus: error: {verdict} (run {run.id})", err=True)
        return 1
    if not as_json:
        click.echo(verdict)
    return 0


def _told(step: Step) -> str:
    """What a step did, in a few words."""
    if step.status != "ok":
        return step.error  # what failed, or why it was skipped
    d: dict[str, Any] = step.detail
    if step.step == "snapshot" and step.target == "packages":
        found = d.get("packages", {})
        return ", ".join(
            f"{n} {v['installed'] or '(new)'} -> {v['candidate']}" for n, v in found.items()
        )
    if step.step == "snapshot":
        return f"snapshot {str(d.get('snapshot', ''))[:8]} of {d.get('version', '')}"
    if step.step == "apt":
        done = d.get("upgraded", {})
        return ", ".join(f"{n} {old} -> {new}" for n, (old, new) in done.items()) or "nothing"
    if step.step == "upgrade":
        return f"{d.get('from')} -> {d.get('to')}"
    if step.step == "rollback":
        back = ", ".join(f"{n} back at {v}" for n, v in d.get("packages", {}).items())
        return f"{back}; healthy again"
    return "healthy" + (" (restarted)" if d.get("restarted") else "")
