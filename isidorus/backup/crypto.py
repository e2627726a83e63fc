"""Keys and the sealing of every object.

A store has one random master key, made at `init`: `enc` (AES-256-GCM), `mac` (the key of
the keyed BLAKE3 that names chunks, so a storage host cannot test whether a known file is
inside) and `chunker_seed` (alters the chunker's gear table, so chunk boundaries do not
leak file sizes either). The master key is kept in `keys/`, wrapped by a key derived from
the passphrase with Argon2id. A store made with `--encryption none` keeps `mac` in its
config and seals nothing; its objects are still checked by their names and chunk ids.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from isidorus.backup.errors import IntegrityError, KeyError_

NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. The defaults take about a quarter of a second on a small server."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 2

    def derive(self, passphrase: bytes, salt: bytes) -> bytes:
        return hash_secret_raw(
            passphrase, salt, self.time_cost, self.memory_kib, self.parallelism, 32, Type.ID
        )


@dataclass(frozen=True)
class MasterKey:
    enc: bytes
    mac: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> MasterKey:
        # the seed alters a 64-bit gear table; pyfastcdc takes a non-negative int
        return cls(secrets.token_bytes(32), secrets.token_bytes(32), secrets.randbits(63))

    def to_json(self) -> bytes:
        return json.dumps(
            {"enc": _b64(self.enc), "mac": _b64(self.mac), "chunker_seed": self.chunker_seed}
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MasterKey:
        d = json.loads(data)
        return cls(_unb64(d["enc"]), _unb64(d["mac"]), int(d["chunker_seed"]))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode())


class Crypto:
    """Chunk ids and authenticated encryption for one store. Thread-safe."""

    def __init__(self, key: MasterKey, *, encrypted: bool) -> None:
        self.key = key
        self.encrypted = encrypted
        self._aead = AESGCM(key.enc) if encrypted else None

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        return blake3.blake3(data, key=self.key.mac).digest()

    def seal(self, data: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        if self._aead is None:
            return bytes(data)
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def seal_parts(
        self, data: bytes | bytearray | memoryview, aad: bytes
    ) -> tuple[bytes, bytes | bytearray | memoryview]:
        """`seal` as (nonce, ciphertext), sparing a copy of large blobs."""
        if self._aead is None:
            return b"", data
        nonce = os.urandom(NONCE)
        return nonce, self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes | memoryview, aad: bytes, what: str) -> bytes:
        if self._aead is None:
            return bytes(blob)
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{what} is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], aad)
        except InvalidTag:
            raise IntegrityError(
                f"{what} failed authentication (damaged or tampered with)"
            ) from None


# -- key files: the master key wrapped by the passphrase


def wrap_key(master: MasterKey, passphrase: bytes, kdf: KdfParams) -> bytes:
    salt = secrets.token_bytes(16)
    kek = kdf.derive(passphrase, salt)
    nonce = os.urandom(NONCE)
    sealed = nonce + AESGCM(kek).encrypt(nonce, master.to_json(), b"isidorus key")
    doc = {
        "version": 1,
        "kdf": {
            "algorithm": "argon2id",
            "time_cost": kdf.time_cost,
            "memory_kib": kdf.memory_kib,
            "parallelism": kdf.parallelism,
            "salt": _b64(salt),
        },
        "cipher": "aes-256-gcm",
        "data": _b64(sealed),
    }
    return json.dumps(doc, indent=1).encode() + b"\n"


def unwrap_key(keyfile: bytes, passphrase: bytes) -> MasterKey:
    """Raise KeyError_ when the passphrase does not open this key file."""
    try:
        doc = json.loads(keyfile)
        k = doc["kdf"]
        if k["algorithm"] != "argon2id":
            raise KeyError_(f"unknown key derivation {k['algorithm']!r}")
        kdf = KdfParams(int(k["time_cost"]), int(k["memory_kib"]), int(k["parallelism"]))
        salt = _unb64(k["salt"])
        sealed = _unb64(doc["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"key file is damaged ({exc})") from None
    kek = kdf.derive(passphrase, salt)
    try:
        plain = AESGCM(kek).decrypt(sealed[:NONCE], sealed[NONCE:], b"isidorus key")
    except InvalidTag:
        raise KeyError_("wrong passphrase (or a damaged key file)") from None
    return MasterKey.from_json(plain)
