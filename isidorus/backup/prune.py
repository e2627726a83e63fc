"""Which snapshots to keep: the retention rules of Proxmox Backup Server (and borg).

Snapshots are grouped by host, kind and paths (a service's backups never crowd out the
system's), and within a group sorted newest first. The rules run in this order: last,
hourly, daily, weekly, monthly, yearly. `last N` keeps the N newest. `daily N` keeps the
newest snapshot of each of the N most recent days that have one; days without a
snapshot do not count, and a day (or hour, week, …) already covered by a snapshot that an
earlier rule kept does not count again. Whatever no rule keeps is removed. Periods are
calendar periods in local time; weeks are ISO weeks.

`apply_policy` is pure and says why each snapshot is kept; `plan_prune` turns that into a
PrunePlan whose `execute` removes the snapshot objects (idempotent, so an interrupted prune
just runs again). Prune frees no space by itself: `gc` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from isidorus.backup.repository import Repository
from isidorus.backup.types import Snapshot, iso_time
from isidorus.errors import UsageError

RULES: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", lambda t: t.strftime("%Y-%m-%d %H")),
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2])),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
)


@dataclass(frozen=True)
class KeepPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def is_empty(self) -> bool:
        return not any((self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly))

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass(frozen=True)
class Decision:
    snapshot: Snapshot
    keep: bool
    reason: str  # the rule that kept it, e.g. "daily 2026-11-24", or "" when removed


def apply_policy(snapshots: Iterable[Snapshot], policy: KeepPolicy) -> list[Decision]:
    """Decide for one group of snapshots; returns decisions newest first."""
    snaps = sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)
    marks: dict[str, str | None] = {}  # id -> reason kept, or None for removed

    def mark(count: int, rule: str, period: Callable[[Snapshot], str]) -> None:
        covered = {period(s) for s in snaps if marks.get(s.id)}
        chosen: set[str] = set()
        for s in snaps:
            if s.id in marks:
                continue
            p = period(s)
            if p in covered:
                continue
            if p not in chosen:
                if len(chosen) >= count:
                    break
                chosen.add(p)
                marks[s.id] = f"{rule} {p}" if rule != "last" else "last"
            else:
                marks[s.id] = None

    if policy.last:
        mark(policy.last, "last", lambda s: s.id)
    for rule, fmt in RULES:
        n = getattr(policy, rule)
        if n:
            mark(n, rule, lambda s, f=fmt: f(s.time.astimezone()))  # type: ignore[misc]
    return [Decision(s, bool(marks.get(s.id)), marks.get(s.id) or "") for s in snaps]


def group_key(s: Snapshot) -> tuple[str, str, tuple[str, ...]]:
    return (s.hostname, s.kind, s.paths)


@dataclass
class PrunePlan:
    policy: KeepPolicy
    groups: list[tuple[tuple[str, str, tuple[str, ...]], list[Decision]]] = field(
        default_factory=list
    )
    removed: int = 0  # done by execute

    @property
    def to_remove(self) -> list[Snapshot]:
        return [d.snapshot for _g, ds in self.groups for d in ds if not d.keep]

    @property
    def to_keep(self) -> list[Snapshot]:
        return [d.snapshot for _g, ds in self.groups for d in ds if d.keep]

    def stats(self) -> dict[str, int]:
        return {"keep": len(self.to_keep), "remove": len(self.to_remove)}

    def execute(self, repo: Repository) -> None:
        """Remove the snapshots not kept. Idempotent: running it again removes nothing
        more and counts nothing twice."""
        for s in self.to_remove[self.removed :]:
            repo.backend.remove("snapshots", s.id)
            self.removed += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_json(),
            **self.stats(),
            "removed": self.removed,
            "groups": [
                {
                    "hostname": g[0],
                    "kind": g[1],
                    "paths": list(g[2]),
                    "snapshots": [
                        {
                            "id": d.snapshot.id,
                            "time": iso_time(d.snapshot.time),
                            "keep": d.keep,
                            "reason": d.reason,
                        }
                        for d in ds
                    ],
                }
                for g, ds in self.groups
            ],
        }


def plan_prune(
    snapshots: Iterable[Snapshot], policy: KeepPolicy, tags: tuple[str, ...] = ()
) -> PrunePlan:
    """Plan a prune. Only snapshots carrying every tag in `tags` are considered. Raises
    UsageError for an empty policy rather than planning to remove everything."""
    if policy.is_empty():
        raise UsageError(
            "no --keep-* rule given, so every snapshot would be removed: pass at "
            "least one, e.g. --keep-daily 7"
        )
    groups: dict[tuple[str, str, tuple[str, ...]], list[Snapshot]] = {}
    for s in snapshots:
        if all(t in s.tags for t in tags):
            groups.setdefault(group_key(s), []).append(s)
    plan = PrunePlan(policy)
    for key in sorted(groups):
        plan.groups.append((key, apply_policy(groups[key], policy)))
    return plan
