"""Putting a snapshot back on disk, metadata included.

Each directory is a job for a thread pool: it makes its subdirectories (owner-only while
they fill) and queues them as jobs, and writes its files (each to a temporary name, renamed
when complete, so a file that is there is whole). Hard links are made once their first link
exists, and directory metadata is set last, children before parents, so their mtimes stick.
Holes stay holes. Owners are restored by name when the name exists here, else by number,
and only as root.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import itertools
import os
import pwd
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from isidorus.backup.errors import BackupError, PathNotFound
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.repository import Repository
from isidorus.backup.tree import Node, decode_tree
from isidorus.backup.types import Snapshot
from isidorus.errors import UsageError


@dataclass(frozen=True)
class RestoreOptions:
    target: str
    include: tuple[str, ...] = ()  # snapshot paths to restore; empty = everything
    overwrite: bool = False
    threads: int = 0


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
        }


_TEMP_NAMES = itertools.count(int.from_bytes(os.urandom(4), "big"))  # next() is atomic
_FATAL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # no later file would fare better


@functools.lru_cache(maxsize=4096)
def _local_uid(name: str | None, uid: int) -> int:
    if name:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            pass
    return uid


@functools.lru_cache(maxsize=4096)
def _local_gid(name: str | None, gid: int) -> int:
    if name:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
    return gid


def _uid(node: Node) -> int:
    return _local_uid(node.get("user"), int(node["uid"]))


def _gid(node: Node) -> int:
    return _local_gid(node.get("group"), int(node["gid"]))


def _norm(p: str) -> str:
    return "/" + "/".join(c for c in p.split("/") if c)


class Restorer:
    def __init__(
        self, repo: Repository, options: RestoreOptions, progress: Progress | None = None
    ) -> None:
        self.repo = repo
        self.opts = options
        self.progress = progress or NullProgress()
        self.root = os.path.abspath(options.target).encode()
        self.as_root = os.geteuid() == 0
        self.include = [_norm(p).encode() for p in options.include]
        self.result = RestoreResult()
        self.lock = threading.Lock()
        self.dirs: list[tuple[bytes, Node]] = []
        self.links: list[tuple[bytes, Node]] = []
        self.tmpfile_ok = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self.cond = threading.Condition()
        self.outstanding = 0  # directory jobs queued or running
        self.failure: BaseException | None = None  # the first fatal error of a job
        threads = options.threads or max(2, os.cpu_count() or 2)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="restore")

    # -- selection
    def wanted(self, spath: bytes) -> tuple[bool, bool]:
        """(restore this entry, descend into it)."""
        if not self.include:
            return True, True
        for inc in self.include:
            if spath == inc or spath.startswith(inc + b"/"):
                return True, True
            if inc.startswith(spath + b"/") or spath == b"":
                return True, True  # an ancestor: made so the path below has a home
        return False, False

    def _error(self, path: bytes, exc: BaseException | str) -> None:
        msg = f"{os.fsdecode(path)}: {exc if isinstance(exc, str) else exc}"
        with self.lock:
            self.result.errors.append(msg)
        self.progress.warn(msg)

    # -- metadata
    def apply_meta(self, path: bytes, node: Node, *, fd: int | None = None) -> None:
        is_link = node["type"] == "symlink"
        target: int | bytes = fd if fd is not None else path
        follow = fd is not None
        uid, gid = _uid(node), _gid(node)
        if self.as_root and (fd is None or (uid, gid) != (0, 0)):  # new files are root's
            try:
                os.chown(target, uid, gid, follow_symlinks=follow or not is_link)
            except OSError as exc:
                self._error(path, f"cannot set owner: {exc.strerror}")
        if not is_link:
            os.chmod(target, node["mode"])
        for name, value in node.get("xattrs", ()):
            try:
                os.setxattr(target, name, value, follow_symlinks=follow or not is_link)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP) or self.as_root:
                    self._error(path, f"cannot set xattr {name!r}: {exc.strerror}")
        os.utime(target, ns=(node["mtime"], node["mtime"]), follow_symlinks=follow or not is_link)

    # -- files
    def write_content(self, fd: int, node: Node, *, device: bool = False) -> int:
        pos = written = 0
        zeros = b""
        for cid, n in node.get("content", ()):
            if cid is None:
                if device:  # a device keeps old bytes in holes: write the zeros
                    if len(zeros) < n:
                        zeros = bytes(min(n, 16 * 1024 * 1024))
                    left = n
                    while left:
                        k = min(left, len(zeros))
                        os.pwrite(fd, zeros[:k], pos + n - left)
                        left -= k
            else:
                data = self.repo.load_blob(cid)
                view = memoryview(data)
                off = 0
                while off < len(view):
                    off += os.pwrite(fd, view[off:], pos + off)
                written += n
                self.progress.advance(nbytes=n)
            pos += n
        if not device and (pos != written or node.get("size", pos) != pos):
            os.ftruncate(fd, node.get("size", pos))  # a trailing hole, or an empty file
        return written

    def _temp_name(self, path: bytes) -> tuple[bytes, int]:
        """Open a new, short temporary name beside `path` (never an existing file, and
        short enough for a name of the maximum length to still fit in the folder)."""
        folder = os.path.dirname(path)
        while True:
            tmp = os.path.join(folder, b".isidorus-%x" % next(_TEMP_NAMES))
            try:
                return tmp, os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
                )
            except FileExistsError:
                continue

    def _write_unnamed(self, path: bytes, node: Node) -> int | None:
        """Write the file as an unnamed inode (O_TMPFILE) and link it in once complete:
        whole-or-absent for one directory operation instead of two (create + rename).
        None where the file system cannot, or the name is taken (--overwrite)."""
        if not self.tmpfile_ok:
            return None
        try:
            fd = os.open(os.path.dirname(path), os.O_TMPFILE | os.O_WRONLY, 0o600)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self.tmpfile_ok = False
                return None
            raise
        try:
            n = self.write_content(fd, node)
            self.apply_meta(path, {**node, "type": "file"}, fd=fd)
            # a dir fd makes CPython call linkat(AT_SYMLINK_FOLLOW) rather than link(),
            # which would try to link the /proc symlink itself; the path is absolute, so
            # which fd is given does not matter
            proc = f"/proc/self/fd/{fd}"
            try:
                os.link(proc, path, src_dir_fd=fd, follow_symlinks=True)
            except FileExistsError:
                if not self.opts.overwrite:
                    raise
                tmp = os.path.join(os.path.dirname(path), b".isidorus-%x" % next(_TEMP_NAMES))
                os.link(proc, tmp, src_dir_fd=fd, follow_symlinks=True)
                os.rename(tmp, path)
            return n
        finally:
            os.close(fd)

    def _write_named(self, path: bytes, node: Node) -> int:
        """The portable way: a temporary name, renamed once complete."""
        tmp, fd = self._temp_name(path)
        try:
            try:
                n = self.write_content(fd, node)
                self.apply_meta(tmp, {**node, "type": "file"}, fd=fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            return n
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def restore_file(self, path: bytes, node: Node) -> None:
        # whole or absent: a file appears under its name only once complete
        try:
            n = self._write_unnamed(path, node)
            if n is None:
                n = self._write_named(path, node)
        except OSError as exc:
            if exc.errno in _FATAL:
                raise BackupError(
                    f"cannot write {os.fsdecode(path)}: {exc.strerror}; free "
                    "space (or choose another target), then restore again"
                ) from None
            self._error(path, exc.strerror or str(exc))
            return
        with self.lock:
            self.result.files += 1
            self.result.bytes_written += n
        self.progress.advance(items=1)

    def link(self, first: bytes, path: bytes) -> bool:
        """Make `path` a hard link to `first`, replacing what is there (--overwrite)."""
        try:
            os.link(first, path)
            return True
        except FileExistsError:
            if not self.opts.overwrite:
                raise
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, b".isidorus-%x" % next(_TEMP_NAMES))
        os.link(first, tmp)
        os.rename(tmp, path)
        return True

    def make_special(self, path: bytes, node: Node) -> None:
        t = node["type"]
        try:
            if self.opts.overwrite and os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)
            if t == "symlink":
                os.symlink(node["target"], path)
            elif t == "fifo":
                os.mkfifo(path, 0o600)
            elif t in ("chardev", "blockdev"):
                kind = stat.S_IFCHR if t == "chardev" else stat.S_IFBLK
                os.mknod(path, 0o600 | kind, node["rdev"])
            else:
                return  # a socket: it belongs to a running program, not to a backup
            self.apply_meta(path, node)
            with self.lock:
                self.result.files += 1
        except OSError as exc:
            self._error(path, exc.strerror or str(exc))

    # -- the walk: one pool job per directory
    def submit_dir(self, tid: bytes, dest: bytes, spath: bytes) -> None:
        with self.cond:
            self.outstanding += 1
        self.pool.submit(self.restore_dir, tid, dest, spath)

    def restore_dir(self, tid: bytes, dest: bytes, spath: bytes) -> None:
        """Make a directory's entries: subdirectories become jobs of their own, files are
        written right here (so each directory costs one job, not one per file)."""
        try:
            if self.failure is None:
                self._restore_entries(tid, dest, spath)
        except BaseException as exc:
            with self.cond:
                self.failure = self.failure or exc
        finally:
            with self.cond:
                self.outstanding -= 1
                self.cond.notify_all()

    def _restore_entries(self, tid: bytes, dest: bytes, spath: bytes) -> None:
        for node in decode_tree(self.repo.load_blob(tid)):
            if self.failure is not None:
                return
            name = node["name"]
            child_spath = spath + b"/" + name
            take, descend = self.wanted(child_spath)
            if not take:
                continue
            path = dest + b"/" + name
            t = node["type"]
            if t == "dir":
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    if not os.path.isdir(path) or not self.opts.overwrite:
                        self._error(path, "exists already (use --overwrite)")
                        continue
                with self.lock:
                    self.dirs.append((path, node))
                    self.result.dirs += 1
                if descend:
                    self.submit_dir(node["subtree"], path, child_spath)
            elif t == "file":
                # no existence check: the target was empty, or --overwrite replaces
                self.restore_file(path, node)
            elif t == "hardlink":
                with self.lock:
                    self.links.append((path, node))
            else:
                self.make_special(path, node)

    def run(self, snap: Snapshot) -> RestoreResult:
        t0 = time.monotonic()
        self.progress.start("restore", snap.summary.get("files"), snap.summary.get("bytes_total"))
        try:
            self.check_include(snap)
            os.makedirs(self.root, exist_ok=True)
            try:
                self.submit_dir(snap.tree, self.root, b"")
                with self.cond:
                    while self.outstanding:
                        self.cond.wait()
            finally:
                self.pool.shutdown(wait=True, cancel_futures=True)
            if self.failure is not None:
                raise self.failure
            for path, node in self.links:
                first = b"/" + node["target"]
                if self.wanted(first)[0] and os.path.exists(self.root + first):
                    try:
                        self.link(self.root + first, path)
                        continue
                    except OSError as exc:
                        self._error(path, f"cannot link: {exc.strerror}")
                self.restore_file(path, node)
            # children before parents, so a directory's mtime is the last thing set
            self.dirs.sort(key=lambda d: d[0].count(b"/"), reverse=True)
            for path, node in self.dirs:
                self.apply_meta(path, node)
        finally:
            self.progress.finish()
        self.result.seconds = time.monotonic() - t0
        return self.result

    def check_include(self, snap: Snapshot) -> None:
        for inc in self.include:
            if lookup_path(self.repo, snap, os.fsdecode(inc)) is None:
                raise PathNotFound(
                    f"{os.fsdecode(inc)} is not in snapshot {snap.short_id}: "
                    "see `isidorus backup ls`"
                )


def lookup_path(repo: Repository, snap: Snapshot, path: str) -> Node | None:
    """The node at a snapshot path (`/srv/data/x`), or None; `/` gives a root pseudo-node."""
    node: Node = {"name": b"", "type": "dir", "subtree": snap.tree}
    for part in [p for p in path.split("/") if p]:
        if node["type"] != "dir":
            return None
        name = os.fsencode(part)
        found = [n for n in decode_tree(repo.load_blob(node["subtree"])) if n["name"] == name]
        if not found:
            return None
        node = found[0]
    return node


def restore_snapshot(
    repo: Repository, snap: Snapshot, options: RestoreOptions, progress: Progress | None = None
) -> RestoreResult:
    """Restore a snapshot (or the --path parts of it) under options.target. Refuses a target
    that holds files unless options.overwrite. Image snapshots restore to a file."""
    if snap.kind == "image":
        return restore_image(repo, snap, options, progress)
    target = os.path.abspath(options.target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"{options.target} is not a directory: give a directory to restore into")
    if not options.overwrite and os.path.isdir(target) and os.listdir(target):
        raise UsageError(
            f"{options.target} is not empty: restore into an empty directory, or "
            "pass --overwrite to replace what is there"
        )
    return Restorer(repo, options, progress).run(snap)


def restore_image(
    repo: Repository, snap: Snapshot, options: RestoreOptions, progress: Progress | None = None
) -> RestoreResult:
    nodes = decode_tree(repo.load_blob(snap.tree))
    node = nodes[0]
    target = os.path.abspath(options.target)
    if os.path.isdir(target):
        target = os.path.join(target, os.fsdecode(node["name"]))
    device = os.path.exists(target) and stat.S_ISBLK(os.stat(target).st_mode)
    if os.path.exists(target) and not options.overwrite:
        raise UsageError(f"{target} exists: pass --overwrite to write the image over it")
    r = Restorer(repo, options, progress)
    r.progress.start("restore", 1, node.get("size"))
    t0 = time.monotonic()
    try:
        if device:
            fd = os.open(target, os.O_WRONLY)
            try:
                r.result.bytes_written = r.write_content(fd, node, device=True)
                os.fsync(fd)
            finally:
                os.close(fd)
            r.result.files = 1
        else:
            r.restore_file(os.fsencode(target), node)
            if r.result.errors:
                raise UsageError(f"cannot restore the image: {r.result.errors[0]}")
    finally:
        r.pool.shutdown(wait=True)
        r.progress.finish()
    r.result.seconds = time.monotonic() - t0
    return r.result
