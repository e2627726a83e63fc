"""The commands of `isidorus`: each parses its input, calls one ops function and renders
the result.

Errors are caught once, here (`run`): an IsidorusError becomes one line on stderr and its exit
code; anything unexpected becomes one line too (ISIDORUS_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from isidorus import __version__
from isidorus.cli.ending import leave
from isidorus.cli.lazy import LazyGroup
from isidorus.errors import IsidorusError

# Commands load their module when they run: a home's forced command or a nightly backup
# does not pay for the web and database libraries it never uses.
_COMMANDS = {
    "init": "isidorus.cli.accounts:init",
    "user": "isidorus.cli.accounts:user",
    "group": "isidorus.cli.accounts:group",
    "audit": "isidorus.cli.accounts:audit",
    "token": "isidorus.cli.tokens:token",
    "serve": "isidorus.cli.server:serve",
    "service": "isidorus.cli.services:service",
    "oidc": "isidorus.cli.oidc:oidc",
    "directory": "isidorus.cli.directory:directory",
    "update": "isidorus.cli.updates:update",
    "nightly": "isidorus.cli.nightly:nightly",
    "jobs": "isidorus.cli.nightly:jobs",
    "doctor": "isidorus.cli.nightly:doctor",
    "notify": "isidorus.cli.nightly:notify",
    "schedule": "isidorus.cli.nightly:schedule",
}


# `isidorus backup …`: each command in the module of its kind, loaded when named
_BACKUP = {
    **{
        name: f"isidorus.cli.backup:{attr}"
        for name, attr in (
            ("init", "init"),
            ("create", "create"),
            ("list", "list_"),
            ("ls", "ls"),
            ("cat", "cat"),
            ("diff", "diff"),
            ("restore", "restore"),
            ("verify", "verify"),
            ("prune", "prune"),
            ("forget", "forget"),
            ("repair-index", "repair_index"),
            ("gc", "gc"),
            ("unlock", "unlock"),
            ("key", "key"),
        )
    },
    "sync": "isidorus.cli.offsite:sync",
    "scrub": "isidorus.cli.offsite:scrub",
    "remote": "isidorus.cli.offsite:remote",
    "serve": "isidorus.cli.home:serve",
    "removals": "isidorus.cli.home:removals",
    "home-setup": "isidorus.cli.home:home_setup",
}


@click.group(
    cls=LazyGroup, lazy=_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="isidorus")
def cli() -> None:
    """isidorus: host libre services for your people on one server, and keep them safe."""


cli.add_command(
    LazyGroup(
        name="backup",
        lazy=_BACKUP,
        help="The datastore: deduplicated, compressed, encrypted snapshots.",
    )
)


def run(argv: list[str] | None = None) -> None:
    # The heavy work runs in native code that releases the GIL around every syscall and
    # buffer; a short switch interval keeps threads from queueing 5 ms for it each time.
    sys.setswitchinterval(0.0005)
    try:
        code = cli.main(args=argv, prog_name="isidorus", standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("isidorus: aborted\n")
        code = 130
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "isidorus"
        sys.stderr.write(f"isidorus: error: {exc.format_message()} (see `{where} --help`)\n")
        code = exc.exit_code
    except click.ClickException as exc:
        sys.stderr.write(f"isidorus: error: {exc.format_message()}\n")
        code = exc.exit_code
    except IsidorusError as exc:
        sys.stderr.write(f"isidorus: error: {exc}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("isidorus: interrupted; run the command again to carry on\n")
        code = 130
    except BrokenPipeError:
        code = 141
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"isidorus: error: {exc.strerror or exc}{where}\n")
        code = 1
    except Exception as exc:  # a bug: still one line, and a way to see more
        if os.environ.get("ISIDORUS_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(
            f"isidorus: internal error: {type(exc).__name__}: {exc} "
            "(set ISIDORUS_DEBUG=1 for details, and please report it)\n"
        )
        code = 70
    leave(code if isinstance(code, int) else 0)
