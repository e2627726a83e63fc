"""A store as the user names it, and opening it: its backend once it is known to hold a
store, or the store itself with its key. Apart from the use cases, so that one that needs
no key (a sync, a scrub) does not load what only the key opens."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from isidorus.backup import locks
from isidorus.backup.errors import StoreError
from isidorus.backup.remote.local import LocalBackend
from isidorus.backup.store_config import read_config
from isidorus.ops.stores import backend_for

if TYPE_CHECKING:
    from isidorus.backup.remote.base import Backend
    from isidorus.backup.repository import Passphrase, Repository


@dataclass(frozen=True)
class StoreRef:
    """Where a store is and how to open it."""

    location: str
    passphrase: Passphrase | None
    cache_dir: str
    settings: Mapping[str, Any] = field(default_factory=dict)  # s3_* for s3:// stores


READ_ONLY = frozenset({"list", "ls", "cat", "diff", "restore", "verify"})


def open_backend(ref: StoreRef) -> Backend:
    """The store's backend, once it is known to hold a store (else one clear error)."""
    backend = backend_for(ref.location, ref.settings)
    try:
        if isinstance(backend, LocalBackend):
            if not os.path.lexists(backend.root):
                raise StoreError(
                    f"{ref.location} does not exist: check the path, or create a store "
                    "with `isidorus backup init`"
                )
            if not os.path.isdir(backend.root):
                raise StoreError(
                    f"{ref.location} is not a directory, so not a store: give the store's directory"
                )
        read_config(backend)
    except BaseException:
        backend.close()  # a remote store's connection, when it has one
        raise
    return backend


@contextlib.contextmanager
def opened(ref: StoreRef, purpose: str, *, exclusive: bool = False) -> Iterator[Repository]:
    """The store opened with its key, under a session of `purpose` (exclusive: with the
    maintenance lock)."""
    from isidorus.backup.repository import Repository  # the engine: crypto, index, packs

    backend = open_backend(ref)
    repo = Repository.open(backend, ref.passphrase, ref.cache_dir)
    try:
        with locks.session(
            backend, purpose, exclusive=exclusive, read_only=purpose in READ_ONLY
        ) as me:
            repo.session = me.name
            yield repo
    finally:
        repo.close()
