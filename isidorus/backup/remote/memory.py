"""A store in memory, for tests: the same contract as the local one, no disk."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from isidorus.backup.remote.base import MUTABLE_KINDS


class MemoryUpload:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data

    def commit(self, kind: str, name: str) -> None:
        self.backend.write(kind, name, self.buf)

    def abort(self) -> None:
        self.buf = bytearray()


class MemoryBackend:
    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self.tmp_tag = "nosession"
        self.objects: dict[tuple[str, str], bytes] = {}
        self.created = False
        self._lock = threading.Lock()

    def create(self) -> None:
        if ("config", "config") in self.objects:
            raise FileExistsError(self.location)
        with self._lock:  # an init that stopped before its config: start again
            for key in [k for k in self.objects if k[0] == "keys"]:
                del self.objects[key]
        self.created = True

    def exists(self, kind: str, name: str) -> bool:
        return (kind, name) in self.objects

    def read(self, kind: str, name: str) -> bytes:
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise FileNotFoundError(f"{kind}/{name}") from None

    def read_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        data = self.read(kind, name)[offset : offset + length]
        if len(data) != length:
            from isidorus.backup.errors import BackendError

            raise BackendError(f"{kind}/{name} is shorter than expected (truncated?)")
        return data

    def write(
        self, kind: str, name: str, data: bytes | bytearray | memoryview, *, exclusive: bool = False
    ) -> None:
        with self._lock:
            key = (kind, name)
            if key in self.objects and (exclusive or kind not in MUTABLE_KINDS):
                if exclusive:
                    raise FileExistsError(f"{kind}/{name}")
                return
            self.objects[key] = bytes(data)

    def replace(self, kind: str, name: str, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self.objects[(kind, name)] = bytes(data)

    def upload(self) -> MemoryUpload:
        return MemoryUpload(self)

    def remove(self, kind: str, name: str) -> None:
        with self._lock:
            self.objects.pop((kind, name), None)

    def list(self, kind: str) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(n, len(d)) for (k, n), d in self.objects.items() if k == kind]
        yield from items

    def clean_tmp(self, alive: set[str]) -> None:
        pass  # nothing is ever half-written here

    def close(self) -> None:
        pass
