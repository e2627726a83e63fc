"""The live status of the installed services, for the pages: each process checks them at
most once per TTL and serves what it found meanwhile, so a visitor never waits for a
process manager or a health check. (The checks only reach this server: the process
manager, and each service's own loopback port.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from isidorus.ops import services
from isidorus.services.installed import Installed
from isidorus.state.db import Database

log = logging.getLogger(__name__)

# what the pages call to check the services; tests hand the app one without supervisord
ListServices = Callable[[Database, str], list[services.ServiceStatus]]


@dataclass(frozen=True)
class Status:
    process: str  # running, starting, stopped, failed, absent; "unknown" when not checked
    health: str  # "ok", or what is wrong

    @property
    def up(self) -> bool:
        return self.process == "running" and self.health == "ok"


@dataclass(frozen=True)
class _Snapshot:
    at: float
    statuses: dict[str, Status]
    covered: frozenset[str]  # the services it answers for, even with "unknown"


class StatusBoard:
    TTL = 30.0

    def __init__(self, db: Database, data_dir: str, list_services: ListServices) -> None:
        self.db = db
        self.data_dir = data_dir
        self.list_services = list_services
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()  # guards _snapshot and _refreshing
        self._probing = threading.Lock()  # one check at a time per process
        self._refreshing = False

    def fresh(self, rows: list[Installed]) -> dict[str, Status]:
        """Check now (blocks: the process manager, then a health check per service with a
        short timeout), and keep the answer for the pages."""
        with self._probing:
            return self._probe(rows)

    def warm(self) -> bool:
        """Whether cached() answers at once (a check has been made)."""
        return self._snapshot is not None

    def cached(self, rows: list[Installed]) -> dict[str, Status]:
        """What the last check found; a stale one starts a check in the background. Only
        the very first call of a process waits for a check."""
        if not rows:
            return {}
        with self._lock:
            snap = self._snapshot
            stale = snap is None or (
                time.monotonic() - snap.at > self.TTL
                or any(r.id not in snap.covered for r in rows if r.state == "installed")
            )
            start = snap is not None and stale and not self._refreshing
            if start:
                self._refreshing = True
        if snap is None:
            with self._probing:
                snap = self._snapshot  # another request may have checked meanwhile
                return snap.statuses if snap is not None else self._probe(rows)
        if start:
            threading.Thread(target=self._refresh, args=(rows,), daemon=True).start()
        return snap.statuses

    def _refresh(self, rows: list[Installed]) -> None:
        try:
            with self._probing:
                self._probe(rows)
        finally:
            with self._lock:
                self._refreshing = False

    def _probe(self, rows: list[Installed]) -> dict[str, Status]:
        try:
            found = self.list_services(self.db, self.data_dir)
        except Exception as exc:  # supervisord down, a setting wrong: the pages still show
            log.warning("cannot check the services: %s", exc)
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            statuses = {r.id: Status("unknown", why) for r in rows}
        else:
            statuses = {s.service.id: Status(s.process, s.health) for s in found}
        covered = frozenset(statuses) | {r.id for r in rows}
        with self._lock:
            self._snapshot = _Snapshot(time.monotonic(), statuses, covered)
        return statuses
