"""Trees: one blob per directory, listing its entries (nodes) sorted by name.

A node is a msgpack map. Keys always present: `name` (bytes: any byte string is a valid
file name), `type`, `mode` (permission bits incl. setuid/setgid/sticky), `uid`, `gid`,
`user`, `group` (names, or nil), `mtime`, `ctime` (nanoseconds), `ino`. The access time
is not kept: it changes whenever a file is read, and would make every tree new each night.
By type:

    file      size, content: [[chunk id or nil, length], …] (nil = a hole or zeros)
    hardlink  size, content, target (the snapshot path of the first link)
    dir       subtree (tree id)
    symlink   target (bytes)
    chardev, blockdev   rdev
    fifo, socket        nothing more

`xattrs` ([[name, value], …], POSIX ACLs included as system.posix_acl_*) when any.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from functools import lru_cache
from typing import Any

import msgpack

Node = dict[str, Any]


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def node_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    return "socket"


def read_xattrs(path: bytes) -> list[list[bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        try:
            out.append([name.encode(), os.getxattr(path, name, follow_symlinks=False)])
        except OSError:
            continue
    return out


def make_node(name: bytes, st: os.stat_result, path: bytes | None) -> Node:
    node: Node = {
        "name": name,
        "type": node_type(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": user_name(st.st_uid),
        "group": group_name(st.st_gid),
        "mtime": st.st_mtime_ns,
        "ctime": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    if node["type"] in ("chardev", "blockdev"):
        node["rdev"] = st.st_rdev
    if path is not None:
        xattrs = read_xattrs(path)
        if xattrs:
            node["xattrs"] = xattrs
    return node


def encode_tree(nodes: list[Node]) -> bytes:
    data: bytes = msgpack.packb({"nodes": nodes}, use_bin_type=True)
    return data


def decode_tree(data: bytes) -> list[Node]:
    nodes: list[Node] = msgpack.unpackb(data, raw=False)["nodes"]
    return nodes


def unchanged(node: Node | None, st: os.stat_result) -> bool:
    """Whether a file is the same as in the parent snapshot without reading it."""
    return (
        node is not None
        and node["type"] == "file"
        and "content" in node
        and node.get("size") == st.st_size
        and node["mtime"] == st.st_mtime_ns
        and node["ctime"] == st.st_ctime_ns
        and node["ino"] == st.st_ino
    )
