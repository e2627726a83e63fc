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
from dataclasses import dataclass

import msgpack

from isidorus.backup.crypto import Crypto
from isidorus.backup.errors import IntegrityError

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


class PackBuffer:
    """A pack being filled in a reused, fixed-size buffer (fresh memory is slow)."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray(capacity)
        self.pos = 0
        self.entries: list[BlobEntry] = []

    def reset(self) -> None:
        self.pos = 0
        self.entries = []

    def fits(self, n: int) -> bool:
        return self.pos + n + 65536 <= len(self.buf)

    def add(self, btype: int, bid: bytes, sealed: bytes, raw_length: int, flags: int) -> None:
        n = len(sealed)
        self.buf[self.pos:self.pos + n] = sealed
        self.entries.append(BlobEntry(btype, bid, self.pos, n, raw_length, flags))
        self.pos += n

    def finish(self, crypto: Crypto) -> tuple[str, memoryview]:
        header = crypto.seal(msgpack.packb([e.row() for e in self.entries]), HEADER_AAD)
        end = self.pos + len(header) + TRAILER.size
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[self.pos:self.pos + len(header)] = header
        TRAILER.pack_into(self.buf, self.pos + len(header), len(header), MAGIC)
        view = memoryview(self.buf)[:end]
        return hashlib.sha256(view).hexdigest(), view


def read_header(crypto: Crypto, pack: bytes | memoryview, what: str) -> list[BlobEntry]:
    if len(pack) < TRAILER.size:
        raise IntegrityError(f"{what} is truncated")
    hlen, magic = TRAILER.unpack_from(pack, len(pack) - TRAILER.size)
    if magic != MAGIC or hlen > len(pack) - TRAILER.size:
        raise IntegrityError(f"{what} has no valid pack trailer")
    start = len(pack) - TRAILER.size - hlen
    plain = crypto.open(memoryview(pack)[start:start + hlen], HEADER_AAD, f"{what} header")
    try:
        return [BlobEntry.from_row(r) for r in msgpack.unpackb(plain)]
    except (ValueError, TypeError, AssertionError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"{what} header cannot be decoded ({exc})") from None
