"""`isidorus service …`: the catalog of libre services."""

from __future__ import annotations

import click

from isidorus.cli.output import print_json
from isidorus.ops import services as ops


@click.group()
def service() -> None:
    """Libre services: the catalog, and (soon) install, upgrade and removal."""


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
