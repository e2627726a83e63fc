"""Saving blobs: dedup, compress, seal, pack, upload, index — from many threads at once.

Workers call `reserve(id)`; only the one that gets True compresses and seals the blob and
hands it to `add`, which streams it into the current pack's upload. A full pack goes to an
uploader thread that makes it durable (fsync, link into place), and every few packs an
index object is written for them. Order matters for crash safety: a pack is durable before
any index names it, and an index is durable before any snapshot refers to its blobs. Blobs
not yet indexed stay in `pending` so this session still deduplicates against them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from isidorus.backup import objects
from isidorus.backup.errors import BackupError
from isidorus.backup.pack import COMPRESSED, BlobEntry, PackWriter
from isidorus.backup.repository import Repository

_INDEX_EVERY_PACKS = 8  # an index object every so many packs, or blobs: it bounds
_INDEX_EVERY_BLOBS = 20_000  # what `pending` holds
Buffer = bytes | bytearray | memoryview


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
        self._current: PackWriter | None = None
        self._uploads: queue.Queue[tuple[PackWriter, str] | None] = queue.Queue(maxsize=4)
        self._unindexed: list[tuple[str, list[BlobEntry]]] = []
        self._unindexed_blobs = 0
        self._error: BaseException | None = None
        self._done = threading.Condition()
        self._submitted = self._completed = 0
        self._uploader = threading.Thread(
            target=self._upload_loop, name="pack-uploader", daemon=True
        )
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

    def save(self, btype: int, bid: bytes, data: Buffer) -> int:
        """Compress (when it helps), seal and pack a reserved blob; returns stored bytes."""
        raw_length = len(data)
        packed = objects.compressor().compress(data)
        if len(packed) < raw_length:
            payload: Buffer = packed
            flags = COMPRESSED
        else:
            payload, flags = data, 0
        parts = self.crypto.seal_parts(payload, bid)
        self.add(btype, bid, parts, raw_length, flags)
        return len(parts[0]) + len(parts[1])

    def add(
        self, btype: int, bid: bytes, parts: Sequence[Buffer], raw_length: int, flags: int
    ) -> None:
        """Append a sealed blob (given in parts) to the current pack."""
        self._raise_upload_error()
        with self._pack_lock:
            if self._current is None:
                self._current = PackWriter(self.repo.backend.upload())
            self._current.add(btype, bid, parts, raw_length, flags)
            if self._current.pos >= self.repo.pack_size:
                self._close_pack()
        with self._lock:
            self.stats.blobs_new += 1
            self.stats.bytes_new += raw_length
            self.stats.bytes_stored += sum(len(p) for p in parts)

    def _close_pack(self) -> None:
        """With _pack_lock held: finish the current pack and queue it for the uploader."""
        writer, self._current = self._current, None
        if writer is None:
            return
        name = writer.finish(self.crypto)
        with self._done:
            self._submitted += 1
        self._uploads.put((writer, name))

    # -- the uploader: makes packs durable, then indexes them
    def _upload_loop(self) -> None:
        while True:
            item = self._uploads.get()
            if item is None:
                return
            writer, name = item
            try:
                if self._error is None:
                    writer.upload.commit("data", name)
                    with self._lock:
                        self.stats.packs += 1
                        self._unindexed.append((name, writer.entries))
                        self._unindexed_blobs += len(writer.entries)
                        flush = (
                            len(self._unindexed) >= _INDEX_EVERY_PACKS
                            or self._unindexed_blobs >= _INDEX_EVERY_BLOBS
                        )
                    if flush:
                        self._write_index()
                else:
                    writer.upload.abort()
            except BaseException as exc:  # handed to the workers, raised there
                self._error = exc
            finally:
                with self._done:
                    self._completed += 1
                    self._done.notify_all()

    def _write_index(self) -> None:
        with self._lock:
            packs, self._unindexed = self._unindexed, []
            self._unindexed_blobs = 0
        if not packs:
            return
        doc = {
            "v": 1,
            "packs": [[bytes.fromhex(p), [e.row() for e in entries]] for p, entries in packs],
        }
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
            self._close_pack()
        with self._done:
            while self._completed < self._submitted and self._error is None:
                self._done.wait(0.5)
        self._raise_upload_error()
        self._write_index()

    def close(self) -> None:
        """Stop the uploader; a pack still open (after an error) is thrown away."""
        with self._pack_lock:
            if self._current is not None:
                self._current.upload.abort()
                self._current = None
        self._uploads.put(None)
        self._uploader.join()
