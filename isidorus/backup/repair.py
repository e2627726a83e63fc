"""Rebuilding the index from the packs themselves.

Every pack ends with a sealed list of its blobs, so the index objects can always be made
again: read each pack's header (two small reads, not the blobs), write new index objects
for every pack, then remove the old ones. New objects are durable before old ones go, so a
crash leaves a store that works (with some entries listed twice, which is harmless). Packs
whose header cannot be read are reported: their blobs can only come back from another copy
of the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from isidorus.backup import objects
from isidorus.backup.errors import IntegrityError
from isidorus.backup.pack import BlobEntry, read_header_of
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.repository import Repository

_PACKS_PER_INDEX = 64


@dataclass
class RepairResult:
    packs_indexed: int = 0
    blobs_indexed: int = 0
    index_written: int = 0
    index_removed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _write(repo: Repository, packs: list[tuple[str, list[BlobEntry]]]) -> str:
    doc = {"v": 1, "packs": [[bytes.fromhex(p), [e.row() for e in es]] for p, es in packs]}
    data = objects.encode(repo.crypto, "index", doc)
    name = objects.object_name(data)
    repo.backend.write("index", name, data)
    return name


def repair_index(repo: Repository, progress: Progress | None = None) -> RepairResult:
    """Rewrite every index object from the pack headers. The caller holds the exclusive
    lock. Idempotent: running it twice gives the same index."""
    progress = progress or NullProgress()
    result = RepairResult()
    old = [n for n, _ in repo.backend.list("index")]
    stored = sorted(repo.backend.list("data"))
    progress.start("repair-index", len(stored), None)
    batch: list[tuple[str, list[BlobEntry]]] = []
    written: set[str] = set()
    for name, size in stored:
        try:
            entries = read_header_of(repo.backend, repo.crypto, name, size)
        except IntegrityError as exc:
            result.unreadable_packs.append(f"{name}: {exc}")
            continue
        batch.append((name, entries))
        result.packs_indexed += 1
        result.blobs_indexed += len(entries)
        progress.advance(items=1)
        if len(batch) >= _PACKS_PER_INDEX:
            written.add(_write(repo, batch))
            batch = []
    if batch:
        written.add(_write(repo, batch))
    result.index_written = len(written)
    # an old object may have the very name of a new one (same content, unencrypted store)
    for name in old:
        if name not in written:
            repo.backend.remove("index", name)
            result.index_removed += 1
    repo.refresh_index()
    progress.finish()
    return result
