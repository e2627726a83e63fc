"""Values passed between the parts of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ChunkId = bytes  # 32 bytes: keyed BLAKE3 of the plaintext
TreeId = bytes


@dataclass(frozen=True)
class Snapshot:
    id: str  # hex SHA-256 of the stored snapshot object
    time: datetime  # aware, UTC
    hostname: str
    username: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    kind: str  # "files" or "image"
    tree: TreeId
    partial: bool = False
    errors: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_doc(self) -> dict[str, Any]:
        return {
            "v": 1,
            "time": iso_time(self.time),
            "hostname": self.hostname,
            "username": self.username,
            "paths": list(self.paths),
            "tags": list(self.tags),
            "kind": self.kind,
            "tree": self.tree,
            "partial": self.partial,
            "errors": list(self.errors),
            "summary": self.summary,
            "parent": self.parent,
        }

    @classmethod
    def from_doc(cls, sid: str, d: dict[str, Any]) -> Snapshot:
        return cls(
            sid,
            parse_time(d["time"]),
            d["hostname"],
            d["username"],
            tuple(d["paths"]),
            tuple(d["tags"]),
            d["kind"],
            d["tree"],
            bool(d.get("partial")),
            tuple(d.get("errors", ())),
            dict(d.get("summary", {})),
            d.get("parent"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "short_id": self.short_id,
            "time": iso_time(self.time),
            "hostname": self.hostname,
            "username": self.username,
            "paths": list(self.paths),
            "tags": list(self.tags),
            "kind": self.kind,
            "partial": self.partial,
            "errors": list(self.errors),
            "summary": self.summary,
            "parent": self.parent,
        }


def iso_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)
