import hashlib
import itertools
import os
import struct

import msgpack
import pytest

from isidorus.backup.crypto import NONCE, OVERHEAD, Crypto, MasterKey
from isidorus.backup.errors import IntegrityError
from isidorus.backup.pack import (
    COMPRESSED,
    DATA,
    HEADER_AAD,
    MAGIC,
    TRAILER,
    TREE,
    BlobEntry,
    PackWriter,
    read_header,
)
from isidorus.backup.remote.memory import MemoryBackend


@pytest.fixture(params=[True, False], ids=["encrypted", "plain"])
def crypto(request):
    return Crypto(MasterKey.generate(), encrypted=request.param)


def _blobs(n=5):
    return [(DATA if i % 2 else TREE, os.urandom(100 * i + 1)) for i in range(n)]


def _write_pack(crypto, blobs, backend=None):
    """(name, stored bytes, entries) of a pack of `blobs` written through an upload."""
    backend = backend or MemoryBackend()
    writer = PackWriter(backend.upload())
    for btype, data in blobs:
        bid = crypto.chunk_id(data)
        writer.add(btype, bid, crypto.seal_parts(data, bid), len(data), 0)
    name = writer.finish(crypto)
    writer.upload.commit("data", name)
    return name, backend.read("data", name), writer.entries


def test_round_trip(crypto):
    blobs = _blobs()
    name, pack, written = _write_pack(crypto, blobs)
    assert name == hashlib.sha256(pack).hexdigest()
    assert pack.endswith(MAGIC)
    entries = read_header(crypto, pack, "pack")
    assert entries == written
    assert [(e.type, e.raw_length) for e in entries] == [(t, len(d)) for t, d in blobs]
    for e, (_t, data) in zip(entries, blobs, strict=True):
        assert e.id == crypto.chunk_id(data)
        assert e.length == len(data) + (OVERHEAD if crypto.encrypted else 0)
        sealed = pack[e.offset : e.offset + e.length]
        assert crypto.open(sealed, e.id, "blob") == data
    # blobs are laid out back to back from the start
    assert entries[0].offset == 0
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(entries))


def test_parts_are_joined(crypto):
    backend = MemoryBackend()
    writer = PackWriter(backend.upload())
    data = os.urandom(1000)
    bid = crypto.chunk_id(data)
    sealed = crypto.seal(data, bid)
    writer.add(DATA, bid, [sealed[:7], b"", memoryview(sealed)[7:500], sealed[500:]], len(data), 0)
    assert writer.pos == len(sealed)
    name = writer.finish(crypto)
    writer.upload.commit("data", name)
    pack = backend.read("data", name)
    [e] = read_header(crypto, pack, "pack")
    assert (e.offset, e.length) == (0, len(sealed))
    assert crypto.open(pack[: e.length], bid, "blob") == data


def test_seal_parts_is_seal_in_two(crypto):
    nonce, body = crypto.seal_parts(b"hello", b"aad")
    assert crypto.open(bytes(nonce) + bytes(body), b"aad", "x") == b"hello"
    assert len(nonce) == (NONCE if crypto.encrypted else 0)


def test_empty_pack(crypto):
    _name, pack, _entries = _write_pack(crypto, [])
    assert read_header(crypto, pack, "pack") == []


def test_packs_of_the_same_blobs_differ_when_encrypted():
    crypto = Crypto(MasterKey.generate(), encrypted=True)
    blobs = _blobs(2)
    assert _write_pack(crypto, blobs)[0] != _write_pack(crypto, blobs)[0]  # fresh nonces


def test_blob_entry_rows():
    e = BlobEntry(DATA, b"i" * 32, 10, 20, 30, COMPRESSED)
    assert BlobEntry.from_row(e.row()) == e
    assert BlobEntry.from_row(msgpack.unpackb(msgpack.packb(e.row()))) == e


@pytest.fixture
def pack(crypto):
    return _write_pack(crypto, _blobs())[1]


@pytest.mark.parametrize("cut", [1, 4, TRAILER.size, TRAILER.size + 1, 200])
def test_truncated_pack(crypto, pack, cut):
    with pytest.raises(IntegrityError, match="pack x"):
        read_header(crypto, pack[:-cut], "pack x")


@pytest.mark.parametrize("size", [0, 3, TRAILER.size - 1])
def test_tiny_pack(crypto, size):
    with pytest.raises(IntegrityError, match="truncated"):
        read_header(crypto, b"\0" * size, "pack")


def test_bad_trailer(crypto, pack):
    with pytest.raises(IntegrityError, match="trailer"):
        read_header(crypto, pack[:-4] + b"ISP9", "pack")
    hlen = len(pack) + 1
    with pytest.raises(IntegrityError, match="trailer"):
        read_header(crypto, pack[: -TRAILER.size] + TRAILER.pack(hlen, MAGIC), "pack")


def test_tampered_header_is_detected():
    crypto = Crypto(MasterKey.generate(), encrypted=True)
    pack = bytearray(_write_pack(crypto, _blobs())[1])
    hlen = struct.unpack_from("<I", pack, len(pack) - TRAILER.size)[0]
    header_at = len(pack) - TRAILER.size - hlen
    for i in (header_at, header_at + hlen // 2, header_at + hlen - 1):
        damaged = bytearray(pack)
        damaged[i] ^= 0x40
        with pytest.raises(IntegrityError, match="failed authentication"):
            read_header(crypto, bytes(damaged), "pack")
    # a blob's bytes are not covered by the header: the header still reads, the blob fails
    damaged = bytearray(pack)
    damaged[5] ^= 0x40
    entries = read_header(crypto, bytes(damaged), "pack")
    e = entries[0]
    with pytest.raises(IntegrityError):
        crypto.open(bytes(damaged[e.offset : e.offset + e.length]), e.id, "blob")
    # the pack's name no longer matches
    assert hashlib.sha256(damaged).hexdigest() != hashlib.sha256(pack).hexdigest()


@pytest.mark.parametrize(
    "header",
    [
        b"\xc1",  # never valid msgpack
        msgpack.packb(7),  # not a list
        msgpack.packb([[1, 2]]),  # too few fields
        msgpack.packb([[0, "not bytes", 0, 1, 1, 0]]),
        msgpack.packb([[0, b"i" * 32, 0, 1, 1, 0]]) + b"trailing",
    ],
)
def test_undecodable_header_is_an_integrity_error(header):
    crypto = Crypto(MasterKey.generate(), encrypted=False)
    sealed = crypto.seal(header, HEADER_AAD)
    pack = b"blobdata" + sealed + TRAILER.pack(len(sealed), MAGIC)
    with pytest.raises(IntegrityError, match="cannot be decoded"):
        read_header(crypto, pack, "pack")
