"""A store opened with its key: config, blobs by id, snapshots.

The config is the one object with a fixed name. It is plain JSON (a storage host can read
the format version, nothing secret) and carries a checksum of itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from typing import Any

import zstandard

from isidorus.backup import objects
from isidorus.backup.crypto import Crypto, KdfParams, MasterKey, unwrap_key, wrap_key
from isidorus.backup.errors import (
    IntegrityError,
    KeyError_,
    SnapshotNotFound,
    StoreExistsError,
)
from isidorus.backup.index import IndexCache, Location
from isidorus.backup.pack import COMPRESSED, BlobEntry
from isidorus.backup.remote.base import Backend
from isidorus.backup.store_config import FORMAT_VERSION, checksum, read_config
from isidorus.backup.types import Snapshot

Passphrase = Callable[[], bytes]

DEFAULT_CHUNKER = {
    "algorithm": "fastcdc2020",
    "min_size": 512 * 1024,
    "avg_size": 512 * 1024,
    "max_size": 8 * 1024 * 1024,
}
IMAGE_CHUNK_SIZE = 1024 * 1024
PACK_SIZE = 16 * 1024 * 1024


class Repository:
    def __init__(
        self, backend: Backend, config: dict[str, Any], crypto: Crypto, cache: IndexCache
    ) -> None:
        self.backend = backend
        self.config = config
        self.crypto = crypto
        self.cache = cache
        self.id: str = config["id"]
        self.chunker: dict[str, Any] = config["chunker"]
        self.image_chunk_size: int = config["image_chunk_size"]
        self.pack_size: int = config["pack_size"]
        self.session = ""  # the name of this process's session in locks/, once registered
        self.damaged_snapshots: list[str] = []  # found by the last list_snapshots()
        self.damaged_index: list[str] = []  # found by the last refresh_index()

    # -- making and opening
    @classmethod
    def init(
        cls,
        backend: Backend,
        passphrase: Passphrase | None,
        *,
        encrypted: bool = True,
        kdf: KdfParams | None = None,
        chunker: dict[str, Any] | None = None,
    ) -> None:
        """Create an empty store. Raises StoreExistsError if one is there. `chunker`
        overrides the chunk sizes (tests and benchmarks use tiny chunks for many of them)."""
        master = MasterKey.generate()
        config: dict[str, Any] = {
            "format": "isidorus-store",
            "version": FORMAT_VERSION,
            "id": secrets.token_hex(32),
            "encryption": "aes-256-gcm" if encrypted else "none",
            "compression": "zstd",
            "chunker": {**DEFAULT_CHUNKER, **(chunker or {})},
            "image_chunk_size": IMAGE_CHUNK_SIZE,
            "pack_size": PACK_SIZE,
        }
        if not encrypted:
            config["mac_key"] = master.mac.hex()
        config["checksum"] = checksum(config)
        keyfile = (
            wrap_key(master, passphrase(), kdf or KdfParams()) if encrypted and passphrase else None
        )
        if encrypted and keyfile is None:
            raise KeyError_("an encrypted store needs a passphrase")
        try:
            backend.create()
        except FileExistsError:
            raise StoreExistsError(
                f"a store already exists at {backend.location}: use it, or choose another path"
            ) from None
        if keyfile is not None:
            backend.write("keys", objects.object_name(keyfile), keyfile)
        # the config goes last: a store without one is not a store yet
        backend.write("config", "config", json.dumps(config, indent=1).encode() + b"\n")

    @classmethod
    def open(
        cls, backend: Backend, passphrase: Passphrase | None, cache_dir: str, *, index: bool = True
    ) -> Repository:
        """The store opened with its key. With `index=False` the index is not followed
        (its cache stays empty): enough to read snapshots, as a listing of a remote copy
        does, without fetching every index object first."""
        config = read_config(backend)
        if config["encryption"] == "none":
            mac = bytes.fromhex(config["mac_key"])
            crypto = Crypto(MasterKey(b"", mac, 0), encrypted=False)
        else:
            if passphrase is None:
                raise KeyError_("this store is encrypted: give its passphrase")
            crypto = Crypto(unlock(backend, passphrase()), encrypted=True)
        # one cache per copy: copies of a store share its id but not always its objects,
        # and a cache that followed another copy could offer blobs this one lacks
        place = hashlib.sha256(backend.location.encode()).hexdigest()[:16]
        path = (
            ":memory:"
            if cache_dir == ":memory:"
            else os.path.join(cache_dir, config["id"], place, "index.sqlite")
        )
        repo = cls(backend, config, crypto, IndexCache(path if index else ":memory:"))
        if index:
            repo.refresh_index()
        return repo

    def close(self) -> None:
        self.cache.close()
        self.backend.close()

    # -- the index
    def load_index_file(self, name: str) -> list[tuple[str, list[Any]]]:
        data = self.backend.read("index", name)
        objects.check_name(name, data, f"index/{name}")
        doc = objects.decode(self.crypto, "index", data, f"index/{name}")
        return [(p.hex(), [BlobEntry.from_row(r) for r in rows]) for p, rows in doc["packs"]]

    def refresh_index(self) -> None:
        """Follow the store's index objects. A damaged one is left out and named in
        `damaged_index`: the blobs it alone lists look missing until `repair_index`."""
        names = {n for n, _ in self.backend.list("index")}
        self.damaged_index = []

        def load(name: str) -> list[tuple[str, list[Any]]] | None:
            try:
                return self.load_index_file(name)
            except IntegrityError:
                self.damaged_index.append(name)
                return None

        self.cache.sync(names, load)

    # -- blobs
    def read_located(self, bid: bytes, loc: Location) -> bytes:
        """Read, authenticate, decompress and check one blob."""
        what = f"blob {bid.hex()[:16]} in pack {loc.pack[:16]}"
        try:
            sealed = self.backend.read_range("data", loc.pack, loc.offset, loc.length)
        except FileNotFoundError:
            raise IntegrityError(f"pack {loc.pack} is missing (needed for {what})") from None
        payload = self.crypto.open(sealed, bid, what)
        if loc.flags & COMPRESSED:
            try:
                data = objects.decompressor().decompress(payload, max_output_size=loc.raw_length)
            except zstandard.ZstdError:
                raise IntegrityError(f"{what} cannot be decompressed") from None
        else:
            data = payload
        if self.crypto.chunk_id(data) != bid:
            raise IntegrityError(f"{what} does not match its id (damaged or tampered with)")
        return data

    def load_blob(self, bid: bytes) -> bytes:
        loc = self.cache.lookup(bid)
        if loc is None:
            raise IntegrityError(f"blob {bid.hex()[:16]} is not in the index (missing data)")
        return self.read_located(bid, loc)

    # -- snapshots
    def save_snapshot(self, snap: Snapshot) -> str:
        data = objects.encode(self.crypto, "snapshot", snap.to_doc())
        name = objects.object_name(data)
        self.backend.write("snapshots", name, data)
        return name

    def load_snapshot(self, name: str) -> Snapshot:
        data = self.backend.read("snapshots", name)
        objects.check_name(name, data, f"snapshot {name[:8]}")
        return Snapshot.from_doc(
            name, objects.decode(self.crypto, "snapshot", data, f"snapshot {name[:8]}")
        )

    def snapshot_names(self) -> list[str]:
        return [n for n, _ in self.backend.list("snapshots")]

    def list_snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first. Damaged ones are left out and named in
        `damaged_snapshots` (verify reports them; `forget` removes them)."""
        snaps = []
        self.damaged_snapshots = []
        for name in self.snapshot_names():
            try:
                snaps.append(self.load_snapshot(name))
            except FileNotFoundError:
                continue  # pruned while we listed
            except IntegrityError:
                self.damaged_snapshots.append(name)
        snaps.sort(key=lambda s: (s.time, s.id))
        return snaps

    def find_snapshot(self, ref: str) -> Snapshot:
        """A snapshot by id, unique id prefix, or `latest`."""
        if ref == "latest":
            snaps = self.list_snapshots()
            if not snaps:
                raise SnapshotNotFound(f"{self.backend.location} has no snapshot yet")
            return snaps[-1]
        ref = ref.lower()
        matches = [n for n in self.snapshot_names() if n.startswith(ref)] if ref else []
        if not matches:
            raise SnapshotNotFound(
                f"no snapshot {ref!r} in {self.backend.location}: see `isidorus backup list`"
            )
        if len(matches) > 1:
            raise SnapshotNotFound(
                f"{ref!r} matches {len(matches)} snapshots: give more characters of the id"
            )
        return self.load_snapshot(matches[0])


def unlock(backend: Backend, passphrase: bytes) -> MasterKey:
    """The master key from the first key file the passphrase opens. Key files are named by
    their hash, so a damaged one is told apart from a wrong passphrase."""
    keyfiles = sorted(n for n, _ in backend.list("keys"))
    if not keyfiles:
        raise IntegrityError(
            f"{backend.location} has no key file: the store is damaged; "
            "restore keys/ from `isidorus backup key export`"
        )
    damaged = []
    for name in keyfiles:
        data = backend.read("keys", name)
        if objects.object_name(data) != name:
            damaged.append(name)
            continue
        try:
            return unwrap_key(data, passphrase)
        except KeyError_:
            continue
        except IntegrityError:
            damaged.append(name)
    if damaged and len(damaged) == len(keyfiles):
        raise IntegrityError(
            f"the key file keys/{damaged[0][:16]}… of {backend.location} is "
            "damaged: put back a copy saved with `isidorus backup key export`"
        )
    raise KeyError_(
        "wrong passphrase for this store: check ISIDORUS_PASSPHRASE or the passphrase file"
    )


def key_params(backend: Backend) -> KdfParams:
    """The key-derivation cost of the store's first key file (kept on passphrase change)."""
    for name in sorted(n for n, _ in backend.list("keys")):
        try:
            k = json.loads(backend.read("keys", name))["kdf"]
            return KdfParams(int(k["time_cost"]), int(k["memory_kib"]), int(k["parallelism"]))
        except (ValueError, KeyError, TypeError):
            continue
    return KdfParams()


def add_key(backend: Backend, master: MasterKey, passphrase: bytes, kdf: KdfParams) -> str:
    data = wrap_key(master, passphrase, kdf)
    name = objects.object_name(data)
    backend.write("keys", name, data)
    return name
