"""The `isidorus` program. Its commands (cli/commands.py) load with click once they are
needed; a sync to a home starts reaching the home before that (cli/early.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    from isidorus.cli.early import reach_home

    reach_home(args)
    from isidorus.cli.commands import run

    run(args)
