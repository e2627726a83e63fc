"""Looking inside snapshots without restoring them: ls, cat, diff."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from isidorus.backup.errors import PathNotFound
from isidorus.backup.repository import Repository
from isidorus.backup.restorer import lookup_path
from isidorus.backup.tree import Node, decode_tree
from isidorus.backup.types import Snapshot
from isidorus.errors import UsageError


def walk(repo: Repository, tid: bytes, prefix: str) -> Iterator[tuple[str, Node]]:
    """Every entry below a tree, depth first, with its snapshot path."""
    for node in decode_tree(repo.load_blob(tid)):
        path = f"{prefix}/{os.fsdecode(node['name'])}"
        yield path, node
        if node["type"] == "dir":
            yield from walk(repo, node["subtree"], path)


def list_path(
    repo: Repository, snap: Snapshot, path: str = "/", recursive: bool = True
) -> Iterator[tuple[str, Node]]:
    node = lookup_path(repo, snap, path)
    if node is None:
        raise PathNotFound(f"{path} is not in snapshot {snap.short_id}")
    base = "/" + "/".join(p for p in path.split("/") if p)
    base = "" if base == "/" else base
    if node["type"] != "dir":
        yield base, node
        return
    if recursive:
        yield from walk(repo, node["subtree"], base)
    else:
        for n in decode_tree(repo.load_blob(node["subtree"])):
            yield f"{base}/{os.fsdecode(n['name'])}", n


def cat(repo: Repository, snap: Snapshot, path: str, out: BinaryIO) -> int:
    """Write a file's content to `out`; returns the bytes written."""
    node = lookup_path(repo, snap, path)
    if node is None:
        raise PathNotFound(f"{path} is not in snapshot {snap.short_id}")
    if node["type"] not in ("file", "hardlink"):
        raise UsageError(f"{path} is a {node['type']}, not a file: `cat` prints files")
    n = 0
    zeros = b""
    for cid, length in node.get("content", ()):
        if cid is None:
            if len(zeros) < length:
                zeros = bytes(min(length, 1 << 20))
            left = length
            while left:
                k = min(left, len(zeros))
                out.write(zeros[:k])
                left -= k
        else:
            out.write(repo.load_blob(cid))
        n += length
    return n


def _same_content(a: Node, b: Node) -> bool:
    return bool(
        a.get("content") == b.get("content")
        and a.get("target") == b.get("target")
        and a.get("subtree") == b.get("subtree")
    )


def _same_meta(a: Node, b: Node) -> bool:
    keys = ("mode", "uid", "gid", "mtime", "xattrs", "rdev")
    return all(a.get(k) == b.get(k) for k in keys)


def diff(repo: Repository, a: Snapshot, b: Snapshot) -> Iterator[tuple[str, str]]:
    """(change, path) for every difference: `+` added, `-` removed, `M` content changed,
    `T` type changed, `U` metadata only. Identical subtrees are skipped without reading."""
    yield from _diff_trees(repo, a.tree, b.tree, "")


def _diff_trees(
    repo: Repository, ta: bytes | None, tb: bytes | None, prefix: str
) -> Iterator[tuple[str, str]]:
    if ta == tb:
        return
    na = {n["name"]: n for n in decode_tree(repo.load_blob(ta))} if ta else {}
    nb = {n["name"]: n for n in decode_tree(repo.load_blob(tb))} if tb else {}
    for name in sorted(na.keys() | nb.keys()):
        path = f"{prefix}/{os.fsdecode(name)}"
        x, y = na.get(name), nb.get(name)
        if x is None:
            assert y is not None
            yield "+", path
            if y["type"] == "dir":
                yield from (("+", p) for p, _ in walk(repo, y["subtree"], path))
        elif y is None:
            yield "-", path
            if x["type"] == "dir":
                yield from (("-", p) for p, _ in walk(repo, x["subtree"], path))
        elif x["type"] != y["type"]:
            yield "T", path
        elif x["type"] == "dir":
            if not _same_meta(x, y):
                yield "U", path
            yield from _diff_trees(repo, x["subtree"], y["subtree"], path)
        elif not _same_content(x, y):
            yield "M", path
        elif not _same_meta(x, y):
            yield "U", path
