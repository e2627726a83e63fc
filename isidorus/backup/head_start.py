"""A head start for a sync to a slow place: the packs the copy most likely lacks start
leaving at once, while the other end starts up (a home's isidorus takes a few tenths of a
second, longer on a small board) and the sync takes its lock and lists the copy, so that
the link carries data from its first moment until the sync's own uploads take over.

The guess      `CopyMemo` keeps, in the cache directory, the names of the packs a copy is
               known to hold (after the last sync, complete or not); the packs of SOURCE
               not among them are most likely new. No memo (a first sync, another
               cache), no head start.
Safety         the head start only opens uploads, which land in the copy's temporary
               folder under the sync's own session: nothing appears in the copy until
               the sync, holding the copy's lock, has listed it and found the pack
               missing; an upload the listing does not need is dropped at the other end.
               A wrong guess costs at most BUDGET bytes on the wire, never a wrong copy.
Its end        the sync `stop`s it once it has listed the copy (nothing is guessed any
               more), and `take`s the uploads it needs; either way the head start ends
               at the next piece, so the sync waits for one piece at most.
The sync's own requests (its lock, the listings) queue behind whatever was sent before
them: while it waits for those, the head start keeps no more than WINDOW unanswered on a
pipelined link (EARLY_WINDOW until the other end first answers), so each of them waits a
fraction of a second, not the whole queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from isidorus.backup.errors import BackendError
from isidorus.backup.remote.base import Backend, Pipelined
from isidorus.backup.transfer import Started

BUDGET = 64 * 1024 * 1024  # sent ahead at most, should the sync be slow to list the copy
# sent ahead and not answered yet: what each request of the sync waits behind (a tenth of
# a second at 50 Mbit/s), and still more than a home link holds in flight
WINDOW = 512 * 1024
# until the other end answers at all: as much as ssh lets cross before it reads (its
# channel window), so a home slow to start (a small board) receives that much meanwhile
EARLY_WINDOW = 2 * 1024 * 1024
PIECE = 256 * 1024  # read and sent at a time: what a `take` may have to wait for


class HeadStart:
    """Sends the packs of `guess` (names and sizes, in the order the sync copies them) to
    DEST in a thread, up to `budget` bytes, until the sync `stop`s it or `take`s one; the
    sync then carries on each upload it needs, and `close` drops the rest."""

    def __init__(
        self, source: Backend, dest: Backend, guess: list[tuple[str, int]], budget: int = BUDGET
    ) -> None:
        self.source = source
        self.dest = dest
        self.guess = guess
        self.budget = budget
        self.started: dict[str, Started] = {}
        self._lock = threading.Condition()
        self._sending: str | None = None  # the pack the thread writes now
        self._stopped = False
        # a link that streams without answers: the head start keeps a window open on it
        self._pipelined = dest if isinstance(dest, Pipelined) else None
        self._thread = threading.Thread(target=self._run, name="head-start", daemon=True)

    def start(self) -> HeadStart:
        if self.guess:
            self._sending = self.guess[0][0]  # from now: a take() of it waits for it
            self._thread.start()
        return self

    def stop(self) -> None:
        """The sync knows what the copy lacks: send nothing more (the piece on its way
        ends first)."""
        with self._lock:
            self._stopped = True

    def _run(self) -> None:
        try:
            self._send()
        finally:
            with self._lock:
                self._sending = None
                self._lock.notify_all()

    def _send(self) -> None:
        left = self.budget
        for name, size in self.guess:
            with self._lock:
                if left <= 0 or self._stopped:
                    return
                self._sending = name
            try:
                upload = self.dest.upload()
            except (BackendError, OSError):
                return  # the sync meets the same failure and says it
            started = Started(upload, hashlib.sha256(), 0)
            try:
                while started.offset < size and left > 0 and self._window_open():
                    n = min(PIECE, size - started.offset, left)
                    piece = self.source.read_range("data", name, started.offset, n)
                    started.upload.write(piece)
                    started.hasher.update(piece)
                    started.offset += n
                    left -= n
            except (BackendError, OSError):
                # gone from SOURCE, or the link failed: the sync sees to it on its own
                with contextlib.suppress(BackendError, OSError):
                    upload.abort()
                return
            with self._lock:
                self.started[name] = started
                self._sending = None
                self._lock.notify_all()

    def _window_open(self) -> bool:
        """Wait until another piece fits in WINDOW; False once the head start is over
        (the sync's own uploads, which count too, do not keep it waiting then)."""
        while True:
            with self._lock:
                if self._stopped:
                    return False
            link = self._pipelined
            if link is None:
                return True
            window = WINDOW if link.answering else EARLY_WINDOW
            if link.wait_unanswered(window - PIECE, 0.05):
                return True

    def take(self, name: str) -> Started | None:
        """The upload begun for `name`, to be carried on from its offset; None when there
        is none (or it failed: the sync then sends the pack from its start). The head
        start ends there; this waits only while it sends a piece of `name` itself."""
        with self._lock:
            self._stopped = True
            while self._sending == name:
                self._lock.wait()
            return self.started.pop(name, None)

    def close(self) -> None:
        """Drop the uploads nobody took (the copy had them, or the sync stopped)."""
        if self._thread.ident is not None:
            self._thread.join()
        with self._lock:
            left, self.started = list(self.started.values()), {}
        for started in left:
            with contextlib.suppress(BackendError, OSError):
                started.upload.abort()


class CopyMemo:
    """The packs a copy is known to hold, kept in the cache directory by the copy's
    location. Only ever a guess: a lost or stale memo costs time, not data."""

    def __init__(self, cache_dir: str, location: str) -> None:
        key = hashlib.sha256(location.encode()).hexdigest()[:32]
        self.path = Path(cache_dir) / "copies" / f"{key}.json"
        self.location = location

    def load(self, store_id: str) -> set[str] | None:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict) or found.get("store") != store_id:
            return None
        packs = found.get("packs")
        return set(packs) if isinstance(packs, list) else None

    def save(self, store_id: str, packs: set[str]) -> None:
        """Written whole or not at all; a cache that cannot be written is no error."""
        body = json.dumps({"location": self.location, "store": store_id, "packs": sorted(packs)})
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
