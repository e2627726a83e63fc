"""Saving blobs: dedup, compress, seal, pack, upload, index — from many threads at once.

Workers call `reserve(id)`; only the one that gets True compresses and seals the blob and
hands it to `add`. Full packs go to an uploader thread (bounded queue, recycled buffers),
and every few packs an index object is written for them. Order matters for crash safety:
a pack is durable before any index names it, and an index is durable before any snapshot
refers to its blobs. Blobs not yet indexed stay in `pending` so this session still
deduplicates against them.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from isidorus.backup import objects
from isidorus.backup.errors import BackupError
from isidorus.backup.pack import COMPRESSED, BlobEntry, PackBuffer
from isidorus.backup.repository import Repository

_INDEX_EVERY_PACKS = 8
_STOP = None


@dataclass
class SaverStats:
    blobs_new: int = 0
    bytes_new: int = 0  # raw bytes of new blobs
    bytes_stored: int = 0  # what they take in the store
    packs: int = 0


class BlobSaver:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.crypto = repo.crypto
        self.stats = SaverStats()
        self._lock = threading.Lock()  # pending, stats, unindexed: never held while waiting
        self._pack_lock = threading.Lock()  # the pack being filled
        self._pending: set[bytes] = set()
        capacity = repo.pack_size + repo.chunker["max_size"] + 1024 * 1024
        self._free: queue.Queue[PackBuffer] = queue.Queue()
        for _ in range(3):
            self._free.put(PackBuffer(capacity))
        self._current = self._free.get()
        self._uploads: queue.Queue[PackBuffer | None] = queue.Queue(maxsize=2)
        self._unindexed: list[tuple[str, list[BlobEntry]]] = []
        self._error: BaseException | None = None
        self._done = threading.Condition()
        self._submitted = self._completed = 0
        self._uploader = threading.Thread(target=self._upload_loop, name="pack-uploader",
                                          daemon=True)
        self._uploader.start()

    # -- called by workers
    def reserve(self, bid: bytes) -> bool:
        """True when the caller must store this blob; False when it is already stored,
        or being stored by another thread of this session."""
        if self.repo.cache.usable(bid):
            return False
        with self._lock:
            if bid in self._pending:
                return False
            self._pending.add(bid)
            return True

    def is_known(self, bid: bytes) -> bool:
        with self._lock:
            if bid in self._pending:
                return True
        return self.repo.cache.usable(bid)

    def save(self, btype: int, bid: bytes, data: bytes | bytearray | memoryview) -> int:
        """Compress (when it helps), seal and pack a reserved blob; returns stored bytes."""
        raw_length = len(data)
        packed = objects.compressor().compress(data)
        if len(packed) < raw_length:
            payload: bytes | bytearray | memoryview = packed
            flags = COMPRESSED
        else:
            payload, flags = data, 0
        sealed = self.crypto.seal(payload, bid)
        self.add(btype, bid, sealed, raw_length, flags)
        return len(sealed)

    def add(self, btype: int, bid: bytes, sealed: bytes, raw_length: int, flags: int) -> None:
        self._raise_upload_error()
        # _pack_lock may be held while waiting for a free buffer; the uploader never takes
        # it, so it always gets to hand buffers back
        with self._pack_lock:
            if not self._current.fits(len(sealed)):
                self._submit(self._current)
                self._current = self._free.get()
            self._current.add(btype, bid, sealed, raw_length, flags)
            if self._current.pos >= self.repo.pack_size:
                self._submit(self._current)
                self._current = self._free.get()
        with self._lock:
            self.stats.blobs_new += 1
            self.stats.bytes_new += raw_length
            self.stats.bytes_stored += len(sealed)

    def _submit(self, buf: PackBuffer) -> None:
        with self._done:
            self._submitted += 1
        self._uploads.put(buf)

    # -- the uploader
    def _upload_loop(self) -> None:
        while True:
            buf = self._uploads.get()
            if buf is _STOP:
                return
            try:
                if self._error is None:
                    self._upload(buf)
            except BaseException as exc:  # handed to the workers, raised there
                self._error = exc
            finally:
                buf.reset()
                self._free.put(buf)
                with self._done:
                    self._completed += 1
                    self._done.notify_all()

    def _upload(self, buf: PackBuffer) -> None:
        name, view = buf.finish(self.crypto)
        self.repo.backend.write("data", name, view)
        with self._lock:
            self.stats.packs += 1
            self._unindexed.append((name, buf.entries))
            flush = len(self._unindexed) >= _INDEX_EVERY_PACKS
        if flush:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            packs, self._unindexed = self._unindexed, []
        if not packs:
            return
        doc = {"v": 1, "packs": [[bytes.fromhex(p), [e.row() for e in entries]]
                                 for p, entries in packs]}
        data = objects.encode(self.crypto, "index", doc)
        name = objects.object_name(data)
        self.repo.backend.write("index", name, data)
        self.repo.cache.add(name, packs)
        with self._lock:
            for _p, entries in packs:
                for e in entries:
                    self._pending.discard(e.id)

    def _raise_upload_error(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, BackupError):
                raise err
            raise BackupError(f"writing to the store failed: {err}") from err

    # -- the end
    def flush(self) -> None:
        """Write out everything saved so far: packs, then their index. After this returns,
        a snapshot may refer to every blob saved."""
        with self._pack_lock:
            if self._current.entries:
                self._submit(self._current)
                self._current = self._free.get()
        with self._done:
            while self._completed < self._submitted and self._error is None:
                self._done.wait(0.5)
        self._raise_upload_error()
        self._write_index()

    def close(self) -> None:
        self._uploads.put(_STOP)
        self._uploader.join()
