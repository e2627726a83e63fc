"""A store's `config`: the one object with a fixed name, readable without the key. It
says the store's format and id, and carries a checksum of itself, since it cannot be named
by its hash like the others. Apart from the engine, so that copying a store (sync, scrub)
does not load what only the key opens."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from isidorus.backup.errors import IntegrityError, StoreError

if TYPE_CHECKING:
    from isidorus.backup.remote.base import Backend

FORMAT_VERSION = 1


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_config(backend: Backend) -> dict[str, Any]:
    try:
        raw = backend.read("config", "config")
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(
            f"{backend.location} is not an isidorus store (no config): check the "
            "path, or create one with `isidorus backup init`"
        ) from None
    try:
        doc: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"{backend.location}/config is damaged (not JSON)") from None
    if doc.get("format") != "isidorus-store":
        raise StoreError(f"{backend.location} is not an isidorus store")
    if doc.get("checksum") != checksum(doc):
        raise IntegrityError(f"{backend.location}/config is damaged (checksum mismatch)")
    if doc.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{backend.location} has store format {doc.get('version')}, this "
            f"isidorus reads format {FORMAT_VERSION}: upgrade isidorus"
        )
    return doc
