"""Helpers for tests of the backup engine: fast stores and hand-made snapshots.

A store made here lives in memory (unless a backend is given) and its key is wrapped with
the cheapest Argon2id parameters, so opening it costs milliseconds, as restic's
`internal/repository/testing.go` does. The index cache is an SQLite file in a temporary
directory removed with the repository, not `:memory:`: an in-memory cache is one database
shared by the connections of all threads, where a thread's open read transaction locks
the tables against the others' writes, so a backup (pool threads reading, the uploader
writing) fails with "database table is locked".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime

from isidorus.backup.crypto import KdfParams
from isidorus.backup.remote.base import Backend
from isidorus.backup.remote.memory import MemoryBackend
from isidorus.backup.repository import Repository
from isidorus.backup.types import Snapshot

CHEAP_KDF = KdfParams(time_cost=1, memory_kib=8 * 1024, parallelism=1)
PASSPHRASE = b"correct horse battery staple"


def make_backend() -> MemoryBackend:
    """A fresh, empty store in memory (not created yet)."""
    return MemoryBackend()


def make_repository(
    backend: Backend | None = None,
    *,
    encrypted: bool = True,
    passphrase: bytes = PASSPHRASE,
    cache_dir: str | None = None,
) -> Repository:
    """An opened store on `backend` (a new MemoryBackend by default), made first if the
    backend holds none. Without `cache_dir`, the index cache goes to a temporary directory
    that is removed once the repository is garbage collected; pass one to share a cache
    between two openings of a store. Safe to use from several threads, like any store."""
    if backend is None:
        backend = make_backend()
    if not backend.exists("config", "config"):
        Repository.init(
            backend, (lambda: passphrase) if encrypted else None, encrypted=encrypted, kdf=CHEAP_KDF
        )
    own_dir = cache_dir is None
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="isidorus-cache-")
    repo = Repository.open(backend, lambda: passphrase, cache_dir)
    if own_dir:
        weakref.finalize(repo, shutil.rmtree, cache_dir, True)
    return repo


def make_snapshot(
    when: str | datetime,
    *,
    hostname: str = "host",
    kind: str = "files",
    paths: Iterable[str] = ("/srv",),
    tags: Iterable[str] = (),
    sid: str | None = None,
) -> Snapshot:
    """A snapshot record for policy tests; nothing is stored. `when` is an ISO time (UTC
    when it has no offset). The id is derived from the other fields unless given."""
    t = datetime.fromisoformat(when) if isinstance(when, str) else when
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    paths, tags = tuple(paths), tuple(tags)
    if sid is None:
        seed = repr((t.isoformat(), hostname, kind, paths, tags)).encode()
        sid = hashlib.sha256(seed).hexdigest()
    return Snapshot(
        id=sid,
        time=t.astimezone(UTC),
        hostname=hostname,
        username="root",
        paths=paths,
        tags=tags,
        kind=kind,
        tree=bytes(32),
    )


def make_sparse_file(
    path: str | bytes, size: int, regions: Iterable[tuple[int, bytes]] = ()
) -> None:
    """A file of `size` bytes that is a hole except for `regions` (offset, data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.truncate(fd, size)
        for offset, data in regions:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
