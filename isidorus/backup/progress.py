"""How long work tells the frontend where it is. The engine never prints."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    live: bool  # someone watches: worth estimating totals for

    def start(self, what: str, total_items: int | None, total_bytes: int | None) -> None: ...

    def set_total(self, total_items: int | None, total_bytes: int | None) -> None: ...

    def advance(self, items: int = 0, nbytes: int = 0) -> None: ...

    def warn(self, message: str) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Reports nothing; keeps warnings so callers and tests can read them."""

    live = False

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def start(self, what: str, total_items: int | None, total_bytes: int | None) -> None:
        pass

    def set_total(self, total_items: int | None, total_bytes: int | None) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def finish(self) -> None:
        pass
