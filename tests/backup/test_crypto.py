import json
import os

import blake3
import pytest

from isidorus.backup import objects
from isidorus.backup.crypto import (
    OVERHEAD,
    Crypto,
    KdfParams,
    MasterKey,
    unwrap_key,
    wrap_key,
)
from isidorus.backup.errors import IntegrityError, KeyError_, StoreError
from isidorus.backup.remote.memory import MemoryBackend
from isidorus.backup.repository import Repository, add_key, unlock
from isidorus.backup.testing import CHEAP_KDF, PASSPHRASE, make_repository


def _flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


@pytest.fixture
def crypto():
    return Crypto(MasterKey.generate(), encrypted=True)


def test_master_key_json_round_trip():
    key = MasterKey.generate()
    assert MasterKey.from_json(key.to_json()) == key
    assert len(key.enc) == len(key.mac) == 32
    assert 0 <= key.chunker_seed < 2**63
    assert MasterKey.generate() != key


def test_wrap_unwrap_round_trip():
    key = MasterKey.generate()
    keyfile = wrap_key(key, b"s3cret", CHEAP_KDF)
    assert unwrap_key(keyfile, b"s3cret") == key
    doc = json.loads(keyfile)
    assert doc["kdf"]["algorithm"] == "argon2id"
    assert (doc["kdf"]["time_cost"], doc["kdf"]["memory_kib"], doc["kdf"]["parallelism"]) == (
        CHEAP_KDF.time_cost,
        CHEAP_KDF.memory_kib,
        CHEAP_KDF.parallelism,
    )
    # nothing of the key is in the file in the clear
    assert key.enc.hex() not in keyfile.decode() and key.mac.hex() not in keyfile.decode()
    # a fresh salt and nonce each time
    assert wrap_key(key, b"s3cret", CHEAP_KDF) != keyfile


def test_wrong_passphrase():
    keyfile = wrap_key(MasterKey.generate(), b"right", CHEAP_KDF)
    with pytest.raises(KeyError_):
        unwrap_key(keyfile, b"wrong")
    with pytest.raises(KeyError_):
        unwrap_key(keyfile, b"")


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: b"not json at all",
        lambda d: json.dumps({**json.loads(d), "kdf": None}).encode(),
        lambda d: json.dumps({k: v for k, v in json.loads(d).items() if k != "data"}).encode(),
        lambda d: json.dumps({**json.loads(d), "data": "!!not base64!!"}).encode(),
    ],
)
def test_damaged_key_file_is_an_integrity_error(damage):
    keyfile = wrap_key(MasterKey.generate(), b"pw", CHEAP_KDF)
    with pytest.raises(IntegrityError, match="key file is damaged"):
        unwrap_key(damage(keyfile), b"pw")


def test_unknown_kdf_is_refused():
    doc = json.loads(wrap_key(MasterKey.generate(), b"pw", CHEAP_KDF))
    doc["kdf"]["algorithm"] = "scrypt"
    with pytest.raises(KeyError_, match="scrypt"):
        unwrap_key(json.dumps(doc).encode(), b"pw")


def test_kdf_depends_on_passphrase_salt_and_cost():
    salt = bytes(16)
    k = CHEAP_KDF.derive(b"pw", salt)
    assert len(k) == 32
    assert CHEAP_KDF.derive(b"pw", salt) == k
    assert CHEAP_KDF.derive(b"pw2", salt) != k
    assert CHEAP_KDF.derive(b"pw", b"\x01" * 16) != k
    assert KdfParams(time_cost=2, memory_kib=8 * 1024, parallelism=1).derive(b"pw", salt) != k


def test_seal_open_round_trip(crypto):
    for data in (b"", b"x", bytes(range(256)) * 100):
        sealed = crypto.seal(data, b"aad")
        assert len(sealed) == len(data) + OVERHEAD
        assert crypto.open(sealed, b"aad", "blob") == data
        assert crypto.open(memoryview(sealed), b"aad", "blob") == data
        assert len(data) < 16 or data not in sealed  # shorter ones may occur by chance
    # a fresh nonce each time: equal plaintexts do not give equal ciphertexts
    assert crypto.seal(b"same", b"a") != crypto.seal(b"same", b"a")


def test_tampered_ciphertext_is_an_integrity_error(crypto):
    sealed = crypto.seal(b"some plaintext that matters", b"id")
    for i in (0, 11, 12, len(sealed) // 2, len(sealed) - 1):  # nonce, body, tag
        with pytest.raises(IntegrityError, match="failed authentication"):
            crypto.open(_flip(sealed, i), b"id", "blob")
    with pytest.raises(IntegrityError, match="failed authentication"):
        crypto.open(sealed, b"another id", "blob")  # moved under another name
    with pytest.raises(IntegrityError, match="truncated"):
        crypto.open(sealed[: OVERHEAD - 1], b"id", "blob")
    with pytest.raises(IntegrityError):
        crypto.open(sealed[:-1], b"id", "blob")


def test_another_key_cannot_open(crypto):
    other = Crypto(MasterKey.generate(), encrypted=True)
    with pytest.raises(IntegrityError):
        other.open(crypto.seal(b"secret", b"id"), b"id", "blob")


def test_chunk_ids_are_keyed():
    a = Crypto(MasterKey.generate(), encrypted=True)
    b = Crypto(MasterKey.generate(), encrypted=True)
    data = b"the same chunk" * 1000
    assert a.chunk_id(data) == a.chunk_id(bytearray(data)) == a.chunk_id(memoryview(data))
    assert len(a.chunk_id(data)) == 32
    assert a.chunk_id(data) != b.chunk_id(data)
    assert a.chunk_id(data) != blake3.blake3(data).digest()  # not the unkeyed hash
    assert a.chunk_id(data) == blake3.blake3(data, key=a.key.mac).digest()
    assert a.chunk_id(data) != a.chunk_id(data + b"!")
    # an unencrypted store still keys its ids
    plain = Crypto(a.key, encrypted=False)
    assert plain.chunk_id(data) == a.chunk_id(data)


def test_unencrypted_crypto_seals_nothing():
    plain = Crypto(MasterKey(b"", b"m" * 32, 0), encrypted=False)
    assert plain.seal(b"data", b"aad") == b"data"
    assert plain.open(b"data", b"other aad", "x") == b"data"


def test_metadata_objects_are_bound_to_their_kind(crypto):
    data = objects.encode(crypto, "snapshot", {"a": [1, b"\xff"]})
    assert data[:4] == objects.MAGIC
    assert objects.decode(crypto, "snapshot", data, "s") == {"a": [1, b"\xff"]}
    with pytest.raises(IntegrityError):
        objects.decode(crypto, "index", data, "s")  # a snapshot passed off as an index
    with pytest.raises(IntegrityError, match="not an isidorus object"):
        objects.decode(crypto, "snapshot", b"XXXX" + data[4:], "s")
    with pytest.raises(IntegrityError):
        objects.decode(crypto, "snapshot", _flip(data, 20), "s")
    with pytest.raises(IntegrityError, match="does not match its name"):
        objects.check_name(objects.object_name(data), _flip(data, 20), "s")
    objects.check_name(objects.object_name(data), data, "s")


# -- keys of a store


def test_store_opens_only_with_its_passphrase():
    backend = MemoryBackend()
    make_repository(backend, passphrase=b"pw one")
    with pytest.raises(KeyError_, match="wrong passphrase"):
        Repository.open(backend, lambda: b"pw two", ":memory:")
    with pytest.raises(KeyError_, match="passphrase"):
        Repository.open(backend, None, ":memory:")
    assert make_repository(backend, passphrase=b"pw one").crypto.encrypted


def test_init_refuses_an_encrypted_store_without_passphrase():
    backend = MemoryBackend()
    with pytest.raises(KeyError_):
        Repository.init(backend, None, kdf=CHEAP_KDF)
    assert backend.objects == {}


def test_added_key_opens_the_same_store():
    backend = MemoryBackend()
    repo = make_repository(backend)
    add_key(backend, repo.crypto.key, b"second", CHEAP_KDF)
    assert len(list(backend.list("keys"))) == 2
    assert unlock(backend, b"second") == repo.crypto.key
    assert unlock(backend, PASSPHRASE) == repo.crypto.key
    with pytest.raises(KeyError_):
        unlock(backend, b"third")


def test_store_without_key_files_is_damaged():
    backend = MemoryBackend()
    make_repository(backend)
    for name, _ in list(backend.list("keys")):
        backend.remove("keys", name)
    with pytest.raises(IntegrityError, match="no key file"):
        unlock(backend, PASSPHRASE)


def test_two_stores_have_different_keys():
    a, b = make_repository(), make_repository()
    assert a.crypto.key != b.crypto.key
    assert a.id != b.id
    assert a.crypto.chunk_id(b"x") != b.crypto.chunk_id(b"x")


def test_config_is_checked(repo):
    backend = repo.backend
    doc = json.loads(backend.objects[("config", "config")])
    assert doc["encryption"] == "aes-256-gcm"
    assert "mac_key" not in doc  # the id key of an encrypted store is in its key file
    backend.objects[("config", "config")] = json.dumps({**doc, "pack_size": 1}).encode()
    with pytest.raises(IntegrityError, match="checksum"):
        make_repository(backend)
    backend.objects[("config", "config")] = b"{not json"
    with pytest.raises(IntegrityError, match="not JSON"):
        make_repository(backend)
    del backend.objects[("config", "config")]
    with pytest.raises(StoreError, match="no config"):
        Repository.open(backend, lambda: PASSPHRASE, ":memory:")


def test_blob_sealed_in_an_encrypted_store(repo):
    from isidorus.backup.pack import DATA
    from isidorus.backup.saver import BlobSaver

    data = b"a recognisable plaintext " * 100
    saver = BlobSaver(repo)
    try:
        cid = repo.crypto.chunk_id(data)
        assert saver.reserve(cid)
        saver.save(DATA, cid, data)
        saver.flush()
    finally:
        saver.close()
    loc = repo.cache.lookup(cid)
    assert loc is not None
    assert repo.load_blob(cid) == data
    stored = b"".join(v for (k, _), v in repo.backend.objects.items() if k == "data")
    assert b"recognisable" not in stored
    pack = repo.backend.objects[("data", loc.pack)]
    repo.backend.objects[("data", loc.pack)] = _flip(pack, loc.offset + loc.length // 2)
    with pytest.raises(IntegrityError, match="failed authentication"):
        repo.load_blob(cid)


def test_unencrypted_store_still_checks_blobs():
    from isidorus.backup.pack import DATA
    from isidorus.backup.saver import BlobSaver

    repo = make_repository(encrypted=False)
    assert not repo.crypto.encrypted
    assert list(repo.backend.list("keys")) == []
    data = os.urandom(4096)  # does not shrink with zstd: stored as is
    saver = BlobSaver(repo)
    try:
        cid = repo.crypto.chunk_id(data)
        assert saver.reserve(cid)
        saver.save(DATA, cid, data)
        saver.flush()
    finally:
        saver.close()
    loc = repo.cache.lookup(cid)
    pack = repo.backend.objects[("data", loc.pack)]
    assert loc.flags == 0
    assert pack[loc.offset : loc.offset + loc.length] == data  # in the clear
    repo.backend.objects[("data", loc.pack)] = _flip(pack, loc.offset + 3)
    with pytest.raises(IntegrityError, match="does not match its id"):
        repo.load_blob(cid)
