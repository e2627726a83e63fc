"""The `isidorus` command: parses input, calls one ops function, renders the result.

Errors are caught once, here: an IsidorusError becomes one line on stderr and its exit
code; anything unexpected becomes one line too (ISIDORUS_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from isidorus import __version__
from isidorus.cli.accounts import audit, group, init, user
from isidorus.cli.backup import backup
from isidorus.cli.directory import directory
from isidorus.cli.offsite import remote, scrub, sync
from isidorus.cli.oidc import oidc
from isidorus.cli.server import serve
from isidorus.cli.services import service
from isidorus.cli.tokens import token
from isidorus.errors import IsidorusError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="isidorus")
def cli() -> None:
    """isidorus: host libre services for your people on one server, and keep them safe."""


cli.add_command(init)
cli.add_command(user)
cli.add_command(group)
cli.add_command(audit)
cli.add_command(token)
cli.add_command(serve)
cli.add_command(service)
cli.add_command(backup)
backup.add_command(sync)
backup.add_command(scrub)
backup.add_command(remote)
cli.add_command(oidc)
cli.add_command(directory)


def main(argv: list[str] | None = None) -> None:
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
    sys.exit(code if isinstance(code, int) else 0)
