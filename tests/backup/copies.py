"""Helpers for the tests of copies of a store: trees to back up, backend wrappers that
record or fail, and comparisons of two stores."""

from __future__ import annotations

import os
import random
import threading

from isidorus.backup.archiver import BackupOptions, create_snapshot
from isidorus.backup.errors import BackendError
from isidorus.backup.remote.base import Backend
from isidorus.backup.restorer import RestoreOptions, restore_snapshot
from isidorus.backup.testing import make_repository
from isidorus.backup.verify import VerifyOptions, verify_store

KINDS = ("keys", "snapshots", "index", "data")


def make_files(root, sizes, seed=0):
    """Random files f0, f1, … of the given sizes under the new directory root."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (root / f"f{i}").write_bytes(rng.randbytes(size))
    return root


def backup(repo, path, **kw):
    kw.setdefault("threads", 2)
    return create_snapshot(repo, BackupOptions(paths=(os.fsdecode(path),), **kw)).snapshot


def contents(backend, kinds=KINDS):
    """Every immutable object of a store, and its config: {(kind, name): bytes}."""
    out = {(k, n): backend.read(k, n) for k in kinds for n, _s in backend.list(k)}
    if backend.exists("config", "config"):
        out[("config", "config")] = backend.read("config", "config")
    return out


def open_copy(backend, tmp_path):
    """The copy opened with the test passphrase (a copy shares the source's key)."""
    return make_repository(backend, cache_dir=str(tmp_path / f"cache-{os.urandom(4).hex()}"))


def assert_intact(repo):
    report = verify_store(repo, VerifyOptions(threads=2))
    assert report.ok, report.to_json()
    return report


def restore_files(repo, snap, target):
    """Restore a snapshot; returns {name: bytes} of the files under the backed-up path."""
    result = restore_snapshot(repo, snap, RestoreOptions(target=str(target), threads=2))
    assert result.errors == []
    [path] = snap.paths
    where = target / path.lstrip("/")
    return {p.name: p.read_bytes() for p in where.iterdir()}


class _Upload:
    def __init__(self, owner, inner):
        self.owner = owner
        self.inner = inner

    def write(self, data):
        self.inner.write(data)

    def commit(self, kind, name):
        self.owner._before_write(kind, name)
        self.inner.commit(kind, name)
        self.owner._after_write(kind, name)

    def abort(self):
        self.inner.abort()


class Recorder:
    """A backend that passes everything to `inner` and records the objects written and
    removed, in order; with `budget`, writing fails (BackendError) once that many objects
    were written, as a link that drops or a disk that fills would. Locks are not counted.
    It has no `replace`: repairs through it remove, then write."""

    def __init__(self, inner: Backend, budget: int | None = None) -> None:
        self.inner = inner
        self.budget = budget
        self.written: list[tuple[str, str]] = []
        self.removed: list[tuple[str, str]] = []
        self.reads = 0
        self._lock = threading.Lock()
        self.location = inner.location

    @property
    def tmp_tag(self):
        return self.inner.tmp_tag

    @tmp_tag.setter
    def tmp_tag(self, value):
        self.inner.tmp_tag = value

    def _before_write(self, kind, name):
        if kind in ("locks", "gc"):
            return
        with self._lock:
            if self.budget is not None and len(self.written) >= self.budget:
                raise BackendError("the connection dropped", permanent=False)

    def _after_write(self, kind, name):
        if kind not in ("locks", "gc"):
            with self._lock:
                self.written.append((kind, name))

    def exists(self, kind, name):
        return self.inner.exists(kind, name)

    def read(self, kind, name):
        with self._lock:
            self.reads += 1
        return self.inner.read(kind, name)

    def read_range(self, kind, name, offset, length):
        with self._lock:
            self.reads += 1
        return self.inner.read_range(kind, name, offset, length)

    def write(self, kind, name, data, *, exclusive=False):
        self._before_write(kind, name)
        self.inner.write(kind, name, data, exclusive=exclusive)
        self._after_write(kind, name)

    def upload(self):
        return _Upload(self, self.inner.upload())

    def remove(self, kind, name):
        if kind not in ("locks", "gc"):
            with self._lock:
                self.removed.append((kind, name))
        self.inner.remove(kind, name)

    def list(self, kind):
        return self.inner.list(kind)

    def create(self):
        self.inner.create()

    def clean_tmp(self, alive):
        self.inner.clean_tmp(alive)

    def close(self):
        self.inner.close()
