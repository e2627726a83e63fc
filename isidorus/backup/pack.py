"""Pack files: many sealed blobs in one object, with their list at the end.

    blob 0 | blob 1 | … | header | header length (u32, little endian) | b"ISP1"

A blob is the sealed payload of one chunk or tree (associated data: its id), the payload
being zstd-compressed when that shrinks it. The header is sealed too (associated data
`pack header`) and lists every blob as [type, id, offset, length, raw_length, flags], so
an index can be rebuilt from the packs alone. The pack is named by the SHA-256 of all
its bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from isidorus.backup.crypto import Crypto
from isidorus.backup.errors import IntegrityError
from isidorus.backup.remote.base import Backend, Upload

MAGIC = b"ISP1"
TRAILER = struct.Struct("<I4s")
DATA, TREE = 0, 1
COMPRESSED = 1
HEADER_AAD = b"pack header"


@dataclass(frozen=True, slots=True)
class BlobEntry:
    type: int
    id: bytes
    offset: int
    length: int
    raw_length: int
    flags: int

    def row(self) -> list[object]:
        return [self.type, self.id, self.offset, self.length, self.raw_length, self.flags]

    @classmethod
    def from_row(cls, row: list[object]) -> BlobEntry:
        t, i, o, n, r, f = row
        assert isinstance(i, bytes)
        return cls(int(t), i, int(o), int(n), int(r), int(f))  # type: ignore[call-overload]


class PackWriter:
    """A pack streamed straight to the store's temporary upload, hashed as it goes, so
    packs cost no memory however large they are."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.hash = hashlib.sha256()
        self.pos = 0
        self.entries: list[BlobEntry] = []

    def add(
        self,
        btype: int,
        bid: bytes,
        parts: Sequence[bytes | bytearray | memoryview],
        raw_length: int,
        flags: int,
    ) -> None:
        n = 0
        for part in parts:
            if part:
                self.upload.write(part)
                self.hash.update(part)
                n += len(part)
        self.entries.append(BlobEntry(btype, bid, self.pos, n, raw_length, flags))
        self.pos += n

    def finish(self, crypto: Crypto) -> str:
        """Append the header and trailer; returns the pack's name. Commit the upload next."""
        header = crypto.seal(msgpack.packb([e.row() for e in self.entries]), HEADER_AAD)
        tail = header + TRAILER.pack(len(header), MAGIC)
        self.upload.write(tail)
        self.hash.update(tail)
        return self.hash.hexdigest()


def read_header(crypto: Crypto, pack: bytes | memoryview, what: str) -> list[BlobEntry]:
    if len(pack) < TRAILER.size:
        raise IntegrityError(f"{what} is truncated")
    hlen, magic = TRAILER.unpack_from(pack, len(pack) - TRAILER.size)
    if magic != MAGIC or hlen > len(pack) - TRAILER.size:
        raise IntegrityError(f"{what} has no valid pack trailer")
    start = len(pack) - TRAILER.size - hlen
    plain = crypto.open(memoryview(pack)[start : start + hlen], HEADER_AAD, f"{what} header")
    try:
        return [BlobEntry.from_row(r) for r in msgpack.unpackb(plain)]
    except (ValueError, TypeError, AssertionError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"{what} header cannot be decoded ({exc})") from None


def read_header_of(backend: Backend, crypto: Crypto, name: str, size: int) -> list[BlobEntry]:
    """A pack's blob list, read from its end without reading the blobs."""
    what = f"pack {name}"
    if size < TRAILER.size:
        raise IntegrityError(f"{what} is truncated")
    hlen, magic = TRAILER.unpack(
        backend.read_range("data", name, size - TRAILER.size, TRAILER.size)
    )
    if magic != MAGIC or hlen > size - TRAILER.size:
        raise IntegrityError(f"{what} has no valid pack trailer")
    header = backend.read_range("data", name, size - TRAILER.size - hlen, hlen)
    plain = crypto.open(header, HEADER_AAD, f"{what} header")
    try:
        return [BlobEntry.from_row(r) for r in msgpack.unpackb(plain)]
    except (ValueError, TypeError, AssertionError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"{what} header cannot be decoded ({exc})") from None
