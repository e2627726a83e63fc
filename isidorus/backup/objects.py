"""Metadata objects (snapshots, indexes, gc state): msgpack, zstd, sealed, named by hash.

Stored bytes: the 4-byte magic `ISO1`, then the sealed (AES-256-GCM, associated data = the
object's kind) zstd-compressed msgpack document. The name of an immutable object is the
SHA-256 of its stored bytes, so anyone can check it without the key.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import msgpack
import zstandard

from isidorus.backup.crypto import Crypto
from isidorus.backup.errors import IntegrityError

MAGIC = b"ISO1"
_local = threading.local()


def compressor() -> zstandard.ZstdCompressor:
    """A zstd compressor for this thread (they are not thread-safe)."""
    c: zstandard.ZstdCompressor | None = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = zstandard.ZstdCompressor(level=3)
    return c


def decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    return d


def object_name(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(crypto: Crypto, kind: str, doc: Any) -> bytes:
    packed = msgpack.packb(doc, use_bin_type=True)
    return MAGIC + crypto.seal(compressor().compress(packed), kind.encode())


def decode(crypto: Crypto, kind: str, data: bytes, what: str) -> Any:
    if data[:4] != MAGIC:
        raise IntegrityError(f"{what} is not an isidorus object (damaged?)")
    plain = crypto.open(memoryview(data)[4:], kind.encode(), what)
    try:
        return msgpack.unpackb(decompressor().decompress(plain), raw=False, strict_map_key=False)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"{what} cannot be decoded ({exc})") from None


def check_name(name: str, data: bytes, what: str) -> None:
    if object_name(data) != name:
        raise IntegrityError(f"{what} does not match its name (damaged or tampered with)")
