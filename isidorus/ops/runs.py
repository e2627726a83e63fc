"""The history of the host's jobs: each run of the nightly job or of an update, its steps
with their figures and errors, and what it said.

A run is written as it goes (its steps and log when each step ends), so a run cut short
(power lost, killed) leaves what it had done; the next run of its kind finds it still
"running" and marks it "interrupted".
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from isidorus.errors import IsidorusError, NotFoundError, UsageError, one_line
from isidorus.state.db import Database
from isidorus.state.schema import run_steps, runs

KINDS = ("nightly", "update", "copy")  # copy: a copy to a remote asked for by hand
RUN_STATES = ("running", "ok", "failed", "interrupted")
STEP_STATES = ("ok", "failed", "skipped")


@dataclass
class Step:
    step: str  # dump, backup, sync, verify, prune, gc, upgrade…
    target: str  # what it worked on: a service, a remote, a store; "" for the whole host
    status: str  # one of STEP_STATES
    started_at: datetime
    seconds: float = 0.0
    bytes: int = 0  # new bytes stored, or sent
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "target": self.target,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "error": self.error,
            "detail": self.detail,
        }


@dataclass
class Run:
    id: int
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    bytes: int
    errors: int
    log: str = ""
    steps: list[Step] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self, *, with_log: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "bytes": self.bytes,
            "errors": self.errors,
            "steps": [s.to_json() for s in self.steps],
        }
        if with_log:
            doc["log"] = self.log.splitlines()
        return doc


class StepFailed(Exception):
    """Raised inside a step to mark it failed with this message."""


class Recorder:
    """A run being written: what it says (to `say`, and to its log with the time) and its
    steps, each recorded as it ends with the log so far. The night and the updates are
    recorders; `run_id` is set once `begin` made the run."""

    db: Database
    say: Callable[[str], None]
    run_id: int
    lines: list[str]

    def __init__(self, db: Database, say: Callable[[str], None]) -> None:
        self.db, self.say, self.run_id, self.lines = db, say, 0, []

    def note(self, line: str) -> None:
        """Into the log only."""
        self.lines.append(f"{datetime.now(UTC):%H:%M:%S} {line}")

    def tell(self, line: str) -> None:
        self.note(line)
        self.say(line)

    @property
    def log(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    @contextlib.contextmanager
    def step(self, step: str, target: str = "", *, reraise: bool = False) -> Iterator[Step]:
        """Time a step and record it. The body fills the step's figures (and may set its
        status to "skipped" or "failed"); an expected error (IsidorusError, OSError,
        StepFailed) marks it failed, is told, and goes no further, the run going on, or,
        with `reraise`, is raised again once the step is recorded."""
        record = Step(step=step, target=target, status="ok", started_at=datetime.now(UTC))
        began = time.monotonic()
        failure: BaseException | None = None
        try:
            yield record
        except (IsidorusError, OSError, StepFailed) as exc:
            record.status = "failed"
            record.error = one_line(exc)
            self.tell(f"{step} {target}: failed: {record.error}".replace("  ", " "))
            failure = exc
        record.seconds = time.monotonic() - began
        add_step(self.db, self.run_id, record, self.log)
        if reraise and failure is not None:
            raise failure


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def begin(db: Database, kind: str) -> int:
    """Record a new run of `kind`; earlier runs of that kind still marked running are
    marked interrupted. The caller holds the lock that lets one run of a kind at a time."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind of run {kind!r}: one of {', '.join(KINDS)}")
    now = datetime.now(UTC)
    with db.write() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.kind == kind, runs.c.status == "running")
            .values(status="interrupted")
        )
        result = conn.execute(
            runs.insert().values(
                kind=kind, status="running", started_at=now, pid=os.getpid(), bytes=0, errors=0
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def add_step(db: Database, run_id: int, step: Step, log: str) -> None:
    """Record a finished step, and the run's log so far."""
    if step.status not in STEP_STATES:
        raise ValueError(step.status)
    with db.write() as conn:
        conn.execute(
            run_steps.insert().values(
                run_id=run_id,
                step=step.step,
                target=step.target,
                status=step.status,
                started_at=step.started_at,
                seconds=step.seconds,
                bytes=step.bytes,
                error=step.error,
                detail=json.dumps(step.detail, sort_keys=True),
            )
        )
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                log=log,
                bytes=runs.c.bytes + step.bytes,
                errors=runs.c.errors + (1 if step.status == "failed" else 0),
            )
        )


def finish(db: Database, run_id: int, status: str, log: str) -> Run:
    if status not in RUN_STATES or status == "running":
        raise ValueError(status)
    with db.write() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status=status, finished_at=datetime.now(UTC), log=log)
        )
        return _get(conn, run_id)


def list_runs(db: Database, *, kind: str | None = None, limit: int = 50) -> list[Run]:
    """The latest runs first, with their steps."""
    if not 1 <= limit <= 1000:
        raise UsageError(f"--limit {limit}: give 1 to 1000")
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown kind of run {kind!r}: one of {', '.join(KINDS)}")
    with db.read() as conn:
        query = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(runs.c.kind == kind)
        found = [_run(r) for r in conn.execute(query).mappings()]
        _attach_steps(conn, found)
        return found


def get_run(db: Database, run_id: int) -> Run:
    with db.read() as conn:
        return _get(conn, run_id)


def last_ok(db: Database, step: str, target: str | None = None) -> datetime | None:
    """When the latest successful `step` (on `target`) started."""
    with db.read() as conn:
        query = select(func.max(run_steps.c.started_at)).where(
            run_steps.c.step == step, run_steps.c.status == "ok"
        )
        if target is not None:
            query = query.where(run_steps.c.target == target)
        found = conn.execute(query).scalar()
        return found.replace(tzinfo=UTC) if found is not None and found.tzinfo is None else found


def latest_steps(db: Database, step: str) -> dict[str, Step]:
    """The latest recorded `step` per target (a failure included)."""
    with db.read() as conn:
        newest = (
            select(func.max(run_steps.c.id))
            .where(run_steps.c.step == step)
            .group_by(run_steps.c.target)
            .scalar_subquery()
        )
        rows = conn.execute(select(run_steps).where(run_steps.c.id.in_(newest))).mappings()
        return {r["target"]: _step(r) for r in rows}


def _get(conn: Connection, run_id: int) -> Run:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"no run {run_id}: `isidorus jobs` lists them")
    found = _run(row)
    _attach_steps(conn, [found])
    return found


def _attach_steps(conn: Connection, found: list[Run]) -> None:
    by_id = {r.id: r for r in found}
    if not by_id:
        return
    query = select(run_steps).where(run_steps.c.run_id.in_(by_id)).order_by(run_steps.c.id)
    for row in conn.execute(query).mappings():
        by_id[row["run_id"]].steps.append(_step(row))


def _run(row: Any) -> Run:
    return Run(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        bytes=row["bytes"],
        errors=row["errors"],
        log=row["log"],
    )


def _step(row: Any) -> Step:
    return Step(
        step=row["step"],
        target=row["target"],
        status=row["status"],
        started_at=row["started_at"],
        seconds=row["seconds"],
        bytes=row["bytes"],
        error=row["error"],
        detail=json.loads(row["detail"] or "{}"),
    )
