"""How the process ends once a command is done.

Python tears its interpreter down at exit, freeing every module and object: 15 to 30 ms
for a command that loaded the engine. A command whose work is all on disk and closed (a
sync, a home's `serve`) may skip it: a home's ssh session only ends once its process does,
and the sync's client waits for that, while the server's nightly job waits for the client.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

_quick = False


def end_quickly() -> None:
    """Let the process end without the teardown once the command returns: call it only when
    every file the command wrote is closed (exit handlers still run)."""
    global _quick
    _quick = True


def leave(code: int) -> NoReturn:
    """Exit with `code`; at once if the command asked to and nothing else still runs."""
    if _quick and threading.active_count() == 1:
        atexit._run_exitfuncs()  # what atexit and weakref.finalize still had to do
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)  # the usual exit says what went wrong with the output
        os._exit(code)
    sys.exit(code)
