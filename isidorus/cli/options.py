"""Options and arguments that several command modules share, kept light to import."""

from __future__ import annotations

import functools
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


def with_host(f: F) -> F:
    """Adds --data-dir and hands the command the host's data directory and state."""

    @click.option("--data-dir", metavar="DIR", help="The host's data directory.")
    @functools.wraps(f)
    def wrapper(data_dir: str | None, **kw: Any) -> Any:
        where = data_dir or str(settings.load()["data_dir"])
        from isidorus.cli.output import warn
        from isidorus.ops.accounts import open_state  # the state's libraries, when used

        db = open_state(where, warn=warn)
        try:
            return f(db, where, **kw)
        finally:
            db.close()

    return wrapper  # type: ignore[return-value]
