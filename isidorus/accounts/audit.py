"""Reading the audit log: who changed what, when; the most recent first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from isidorus.accounts.errors import InvalidInput
from isidorus.state.schema import audit_log

MAX_LIMIT = 500


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next_before: int | None  # where the next page starts; None on the last page


def list_entries(conn: Connection, *, limit: int = 50, before: int | None = None) -> AuditPage:
    """Up to `limit` entries, newest first; with `before`, only those older than the entry
    of that id, so that pages stay put while new entries arrive."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"the limit is 1 to {MAX_LIMIT} entries, not {limit}")
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(audit_log.c.id < before)
    entries = [
        AuditEntry(
            r.id,
            r.at if r.at.tzinfo else r.at.replace(tzinfo=UTC),
            r.actor,
            r.action,
            r.target,
            r.detail,
        )
        for r in conn.execute(query)
    ]
    more = len(entries) > limit
    return AuditPage(entries[:limit], entries[limit - 1].id if more else None)
