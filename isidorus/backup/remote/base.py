"""The Backend protocol: a flat object store with a few kinds of objects.

Contract shared by every backend (checked by `conformance.py`):

* Objects are addressed by (kind, name). Names are lowercase hex or short ascii words.
* `write` is atomic: a reader sees the whole object or nothing, even after a crash.
  Objects of the immutable kinds are never overwritten: writing a name that exists is a
  no-op when the content is the same (names are content hashes) and `exclusive=True`
  raises FileExistsError. The mutable kinds (`locks`, `gc`) may be replaced.
* `write` returns only when the object is durable (fsync of the file and its directory).
* `remove` of a missing object is not an error (idempotent), so interrupted work resumes.
* Errors are translated to `BackendError`, whose `permanent` flag says whether retrying
  can help; `read` of a missing object raises FileNotFoundError so callers can tell
  "absent" from "broken".
* Methods may be called from several threads at once.

A backend may also offer `replace` (the `Replacing` protocol): put intact bytes in place of
a damaged immutable object in one atomic step. Repairs use it when it is there; without
it they remove the damaged object, then write the good one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

KINDS = ("data", "index", "snapshots", "keys", "locks", "gc")
MUTABLE_KINDS = frozenset({"locks", "gc"})
CONFIG = ("config", "config")  # the one object with a fixed name
GC_STATE = "state"  # gc/state: a gc is under way (gc.py), and no copy may be synced to


class Upload(Protocol):
    """An object being written piece by piece (a pack), invisible until committed."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self, kind: str, name: str) -> None:
        """Make it durable and visible as (kind, name), with `write`'s guarantees."""
        ...

    def abort(self) -> None: ...


class Backend(Protocol):
    """A place that stores a datastore's objects."""

    location: str
    tmp_tag: str  # the session writing: its writes in progress carry this name

    def exists(self, kind: str, name: str) -> bool: ...

    def read(self, kind: str, name: str) -> bytes: ...

    def read_range(self, kind: str, name: str, offset: int, length: int) -> bytes: ...

    def write(
        self, kind: str, name: str, data: bytes | bytearray | memoryview, *, exclusive: bool = False
    ) -> None: ...

    def upload(self) -> Upload:
        """Start writing an object whose name is known only at the end."""
        ...

    def remove(self, kind: str, name: str) -> None: ...

    def list(self, kind: str) -> Iterator[tuple[str, int]]:
        """Yield (name, size) of every object of a kind, in no particular order."""
        ...

    def create(self) -> None:
        """Make the empty layout; raises FileExistsError when a store is already there
        (a store is there once its config is)."""
        ...

    def clean_tmp(self, alive: set[str]) -> None:
        """Remove writes in progress left by sessions not in `alive` (they died)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Replacing(Protocol):
    """A backend that can swap an object for other bytes atomically."""

    def replace(self, kind: str, name: str, data: bytes | bytearray | memoryview) -> None:
        """Put `data` under (kind, name) whether or not an object is there, durably and
        atomically: a reader sees the old object or the new one, never neither. Only for
        repairs, whose caller has checked that `data` matches the name."""
        ...


@runtime_checkable
class Pipelined(Protocol):
    """A backend whose uploads stream without waiting for answers (a home over ssh), so
    what it was sent may still be on the way, queued ahead of any later request."""

    @property
    def answering(self) -> bool:
        """Whether the other end has started answering (a home: its isidorus is up)."""
        ...

    def wait_unanswered(self, limit: int, timeout: float) -> bool:
        """Whether at most `limit` bytes of uploads are on their way unanswered (or the
        connection is gone: the next request says why), waiting up to `timeout` seconds."""
        ...


@runtime_checkable
class QueuingRemovals(Protocol):
    """A backend whose host may only queue removals (a copy served append-only): it
    counts the removals it was asked for that wait there instead of taking effect."""

    removals_queued: int
