"""The layout of a store as a tree of folders and files, shared by the backends that keep
one (a local directory, a folder on an SFTP host), so that a store copied between them with
rsync or scp stays a store.

    config                  the one object with a fixed name
    keys/ snapshots/ index/ locks/ gc/ <name>
    data/<xx>/<name>        packs, spread over 256 folders by their first two hex digits
    tmp/<session>-<random>.tmp   writes in progress

Paths here are relative to the store's folder and always use "/".
"""

from __future__ import annotations

import secrets

from isidorus.backup.remote.base import KINDS

TMP = "tmp"
DATA_FOLDERS = tuple(f"data/{i:02x}" for i in range(256))


def object_path(kind: str, name: str) -> str:
    """Where (kind, name) lives; ValueError for an address that could leave its folder."""
    if kind == "config":
        return "config"
    if kind not in KINDS or not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad object address {kind}/{name}")
    if kind == "data":
        return f"data/{name[:2]}/{name}"
    return f"{kind}/{name}"


def folders_of(kind: str) -> tuple[str, ...]:
    """The folders that hold the objects of a kind."""
    if kind == "data":
        return DATA_FOLDERS
    if kind not in KINDS:
        raise ValueError(f"bad kind {kind}")
    return (kind,)


def all_folders() -> tuple[str, ...]:
    """Every folder of an empty store, each after its parent."""
    return (*KINDS, TMP, *DATA_FOLDERS)


def tmp_path(tag: str) -> str:
    """A fresh name for a write in progress by the session `tag`."""
    return f"{TMP}/{tag}-{secrets.token_hex(8)}.tmp"


def tmp_owner(filename: str) -> str:
    """The session that wrote a file of tmp/ (what clean_tmp compares with the living)."""
    return filename.split("-", 1)[0]
