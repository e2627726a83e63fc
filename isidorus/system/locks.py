"""One process at a time: a lock file held with flock for as long as a job runs.

The kernel lets go of the lock when the process ends, however it ends: a job killed
midway never leaves a stale lock behind. The holder's pid is written in the file, so the
one refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def only_one(path: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold the lock `path` (made 0600 when absent) for the block; when another process
    holds it, raise `busy(its pid)` at once instead of waiting."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise busy(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
