"""What the command line shows: progress bars on a terminal, one-line warnings, JSON."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from isidorus.errors import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


class TerminalProgress:
    """A live bar (files, bytes, rate, time left) when stderr is a terminal; silent when
    piped, except for warnings, which always go to stderr. Called from many threads."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if enabled is None else enabled
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.items = 0
        self.total_items: int | None = None

    def start(self, what: str, total_items: int | None, total_bytes: int | None) -> None:
        if not self.live:
            return
        # rich loads only for a bar on a terminal: piped and scripted commands start faster
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.items, self.total_items = 0, total_items
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True, highlight=False),
            transient=True,
        )
        self.task = self.bar.add_task(what, total=total_bytes, files=self._files())
        self.bar.start()

    def _files(self) -> str:
        return f"{self.items:,}" + (
            f"/{self.total_items:,} files" if self.total_items else " files"
        )

    def set_total(self, total_items: int | None, total_bytes: int | None) -> None:
        if self.bar is not None and self.task is not None:
            self.total_items = total_items
            self.bar.update(self.task, total=total_bytes, files=self._files())

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        if self.bar is not None and self.task is not None:
            self.items += items
            self.bar.update(self.task, advance=nbytes, files=self._files())

    def warn(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(f"warning: {message}", markup=False)
        else:
            warn(message)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def passphrase_source(
    passphrase_file: str | None,
    *,
    confirm: bool = False,
    env: str = "ISIDORUS_PASSPHRASE",
    what: str = "passphrase",
) -> Callable[[], bytes]:
    """Where the passphrase comes from, asked only when the store needs it: a file, the
    environment, or a prompt on a terminal."""

    def get() -> bytes:
        if passphrase_file:
            try:
                with open(passphrase_file, "rb") as f:
                    value = f.read().rstrip(b"\r\n")
            except OSError as exc:
                raise UsageError(
                    f"cannot read the {what} file {passphrase_file}: {exc.strerror}"
                ) from None
        elif os.environ.get(env) is not None:
            value = os.environ[env].encode()
        elif sys.stdin.isatty():
            value = getpass.getpass(f"{what.capitalize()}: ").encode()
            if confirm and getpass.getpass(f"Repeat the {what}: ").encode() != value:
                raise UsageError(f"the two {what}s differ: try again")
        else:
            raise UsageError(f"no {what}: set {env}, pass --passphrase-file, or run in a terminal")
        if not value:
            raise UsageError(f"the {what} is empty: choose a non-empty one")
        return value

    return get
