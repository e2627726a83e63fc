"""Moving objects between copies of a store as they are: sealed, and checked by name.

Every immutable object is named by the SHA-256 of its bytes, so it can be checked, copied
and repaired without the key. Objects cross here without being decrypted: a copy receives
exactly the bytes of the original, or nothing when they no longer match their name (bit rot,
tampering, a bad transfer). Large objects (packs) stream through in pieces, so memory stays
bounded however large packs are; small ones move whole, in one request each.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from isidorus.backup.errors import IntegrityError
from isidorus.backup.remote.base import Backend, Replacing, Upload

PIECE = 4 * 1024 * 1024  # bytes read in one request when streaming
OBJECT_KINDS = ("keys", "snapshots", "index", "data")  # immutable, named by their hash
_HASH_NAME = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")
R = TypeVar("R")


def is_hash_name(name: str) -> bool:
    return _HASH_NAME.fullmatch(name) is not None


def _mismatch(kind: str, name: str) -> IntegrityError:
    return IntegrityError(f"{kind}/{name} does not match its name (damaged or tampered with)")


def read_checked(backend: Backend, kind: str, name: str) -> bytes:
    """The whole object, once its bytes match its name. Raises FileNotFoundError when
    it is absent and IntegrityError when it is damaged."""
    data = backend.read(kind, name)
    if hashlib.sha256(data).hexdigest() != name:
        raise _mismatch(kind, name)
    return data


def check_object(backend: Backend, kind: str, name: str, size: int) -> bool:
    """Whether the object's bytes match its name, read in pieces. Raises
    FileNotFoundError when it is gone."""
    if size <= PIECE:
        return hashlib.sha256(backend.read(kind, name)).hexdigest() == name
    h = hashlib.sha256()
    for offset in range(0, size, PIECE):
        h.update(backend.read_range(kind, name, offset, min(PIECE, size - offset)))
    return h.hexdigest() == name


@dataclass
class Started:
    """An upload to a copy begun ahead (backup/head_start.py): its first `offset` bytes
    are sent, and hashed by `hasher`."""

    upload: Upload
    hasher: Any
    offset: int


def copy_object(
    src: Backend, dst: Backend, kind: str, name: str, size: int, started: Started | None = None
) -> int:
    """Copy one immutable object as it is and return its size, carrying on from `started`
    when given. Nothing is written when its bytes in `src` do not match its name
    (IntegrityError) or it is gone from `src` (FileNotFoundError). The write is atomic, so
    an interrupted copy leaves nothing under the name. Thread-safe."""
    if started is None and size <= PIECE:
        data = read_checked(src, kind, name)
        dst.write(kind, name, data)
        return len(data)
    upload, h, begin = (
        (started.upload, started.hasher, started.offset)
        if started is not None
        else (dst.upload(), hashlib.sha256(), 0)
    )
    try:
        for offset in range(begin, size, PIECE):
            piece = src.read_range(kind, name, offset, min(PIECE, size - offset))
            h.update(piece)
            upload.write(piece)
        if h.hexdigest() != name:
            raise _mismatch(kind, name)
        upload.commit(kind, name)
    except BaseException:
        upload.abort()
        raise
    return size


def replace_object(backend: Backend, kind: str, name: str, data: bytes) -> None:
    """Put intact bytes in place of a damaged or missing object: in one atomic step when
    the backend can (`Replacing`), else by removing the damaged object, then writing."""
    if isinstance(backend, Replacing):
        backend.replace(kind, name, data)
        return
    if backend.exists(kind, name):
        backend.remove(kind, name)
    backend.write(kind, name, data)


def run_parallel(
    items: Iterable[T],
    work: Callable[[T], R],
    done: Callable[[T, Future[R]], None],
    threads: int,
) -> None:
    """Run `work` on every item with `threads` workers and a bounded queue (so memory
    stays flat for millions of items), calling `done` in this thread as each ends. The
    first exception that `done` lets through stops new work; the work already running
    finishes, then the exception is raised."""
    pending: list[tuple[T, Future[R]]] = []
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="transfer") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                while len(pending) > 2 * threads:
                    done(*pending.pop(0))
            while pending:
                done(*pending.pop(0))
        except BaseException:
            for _item, f in pending:
                f.cancel()
            raise
