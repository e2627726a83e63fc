"""Options and arguments that several command modules share, kept light to import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from isidorus import settings
from isidorus.ops import remotes

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def resolve_store(location: str) -> str:
    """A STORE argument: `remote:NAME` is that remote's URL; anything else is a place."""
    if not location.startswith(remotes.PREFIX):
        return location
    return remotes.resolve(location, settings.load_remotes(settings.config_path()))
