"""Making a snapshot of files: walk, read, chunk, save, and write the trees bottom up.

The main thread walks the tree and builds the nodes; reading a file's content is a job for
a thread pool, where chunking, hashing, compression and encryption all run in native code
that releases the GIL, so both cores work. A directory's tree can only be written once all
its files are read, so walked directories wait in a queue in post-order (children before
parents) and are finished from its head as their jobs complete; the queue is bounded, so
memory does not grow with the size of the tree.

A file whose size, mtime, ctime and inode match the parent snapshot is not read again: its
content list is reused if every chunk in it is still usable (not condemned by a running
gc). A file that changes while it is read is tried again, then reported and left out, never
stored torn. An unreadable file is reported and left out; the snapshot is then partial.
"""

from __future__ import annotations

import collections
import errno
import fnmatch
import getpass
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from pyfastcdc import FastCDC

from isidorus.backup.errors import SourceError
from isidorus.backup.gc import load_condemned
from isidorus.backup.pack import DATA, TREE
from isidorus.backup.progress import NullProgress, Progress
from isidorus.backup.repository import Repository
from isidorus.backup.saver import BlobSaver
from isidorus.backup.tree import Node, decode_tree, encode_tree, make_node, unchanged
from isidorus.backup.types import Snapshot

_BUFFER = 16 * 1024 * 1024  # each worker's reused read buffer: two maximal chunks
_MAX_JOBS = 512  # file jobs in flight before the walk waits
_ATTEMPTS = 3  # reads of a file that keeps changing before it is left out


@dataclass(frozen=True)
class BackupOptions:
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    one_file_system: bool = False
    time: datetime | None = None
    hostname: str | None = None
    parent: str | None = None  # a snapshot id; by default the latest of the same paths
    threads: int = 0  # 0: one per core


@dataclass(frozen=True)
class BackupResult:
    snapshot: Snapshot
    files: int
    dirs: int
    bytes_read: int
    bytes_total: int
    bytes_new: int
    bytes_stored: int
    seconds: float
    errors: tuple[str, ...]

    @property
    def partial(self) -> bool:
        return bool(self.errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.snapshot.id,
            "short_id": self.snapshot.short_id,
            "time": self.snapshot.to_json()["time"],
            "files": self.files,
            "dirs": self.dirs,
            "bytes_read": self.bytes_read,
            "bytes_total": self.bytes_total,
            "bytes_new": self.bytes_new,
            "bytes_stored": self.bytes_stored,
            "seconds": round(self.seconds, 3),
            "partial": self.partial,
            "errors": list(self.errors),
        }


class FileChanged(Exception):
    pass


@dataclass
class FileJob:
    node: Node
    path: bytes
    future: Future[tuple[list[list[Any]], os.stat_result]] | None = None


@dataclass
class PendingDir:
    node: Node | None  # None for the snapshot's root
    children: list[PendingDir | FileJob | Node] = field(default_factory=list)
    tree_id: bytes | None = None

    def ready(self) -> bool:
        return all(
            c.future is None or c.future.done() for c in self.children if isinstance(c, FileJob)
        )


def data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of a sparse file that hold data; holes are skipped."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # only a hole from here on
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def _exclude_matcher(patterns: tuple[str, ...]) -> Callable[[bytes], bool]:
    """GLOB patterns: with a '/', matched against the whole path; otherwise the name."""
    if not patterns:
        return lambda p: False
    full = [re.compile(fnmatch.translate(p)) for p in patterns if "/" in p]
    name = [re.compile(fnmatch.translate(p)) for p in patterns if "/" not in p]

    def excluded(path: bytes) -> bool:
        s = os.fsdecode(path)
        base = s.rsplit("/", 1)[-1]
        return any(r.match(s) for r in full) or any(r.match(base) for r in name)

    return excluded


class Archiver:
    def __init__(
        self, repo: Repository, options: BackupOptions, progress: Progress | None = None
    ) -> None:
        self.repo = repo
        self.opts = options
        self.progress = progress or NullProgress()
        load_condemned(repo)  # after our session exists: see gc.py
        self.saver = BlobSaver(repo)
        threads = options.threads or max(2, os.cpu_count() or 2)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="backup")
        self.local = threading.local()
        self.excluded = _exclude_matcher(options.excludes)
        self.errors: list[str] = []
        self.queue: collections.deque[PendingDir] = collections.deque()
        self.jobs = 0
        self.hardlinks: dict[tuple[int, int], tuple[bytes, FileJob]] = {}
        self.counts = {"files": 0, "dirs": 0, "bytes_read": 0, "bytes_total": 0}
        self._count_lock = threading.Lock()
        self.zero_ids: dict[int, bytes] = {}

    # -- per-thread tools
    def _buffer(self) -> memoryview:
        buf: memoryview | None = getattr(self.local, "buf", None)
        if buf is None:
            # two maximal chunks at least: chunk_region needs max_size beyond a cut
            size = max(_BUFFER, 2 * self.repo.chunker["max_size"])
            buf = self.local.buf = memoryview(bytearray(size))
        return buf

    def _chunker(self) -> FastCDC:
        c: FastCDC | None = getattr(self.local, "cdc", None)
        if c is None:
            ch = self.repo.chunker
            c = self.local.cdc = FastCDC(
                ch["avg_size"],
                min_size=ch["min_size"],
                max_size=ch["max_size"],
                seed=self.repo.crypto.key.chunker_seed,
            )
        return c

    def zero_id(self, n: int) -> bytes:
        """The id of n zero bytes: such chunks are holes, never stored."""
        zid = self.zero_ids.get(n)
        if zid is None:
            zid = self.zero_ids[n] = self.repo.crypto.chunk_id(bytes(n))
        return zid

    def _error(self, path: bytes, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else (getattr(exc, "strerror", None) or str(exc))
        msg = f"{os.fsdecode(path)}: {reason}"
        with self._count_lock:
            self.errors.append(msg)
        self.progress.warn(msg)

    def _count(self, key: str, n: int) -> None:
        with self._count_lock:
            self.counts[key] += n

    # -- content
    def save_chunk(self, data: memoryview | bytes, content: list[list[Any]]) -> None:
        cid = self.repo.crypto.chunk_id(data)
        if self.saver.reserve(cid):
            self.saver.save(DATA, cid, data)
        content.append([cid, len(data)])

    def chunk_region(self, fd: int, start: int, end: int, content: list[list[Any]]) -> int:
        """Chunk bytes [start, end) of a file through this thread's reused buffer. A cut is
        final once max_size bytes follow the chunk's start (FastCDC looks no further), so
        the unfinished tail moves to the front of the buffer and reading goes on."""
        buf = self._buffer()
        max_size = self.repo.chunker["max_size"]
        filled = 0  # bytes at the front of buf not yet chunked
        pos = start
        while True:
            want = min(len(buf) - filled, end - pos)
            if want:
                got = os.preadv(fd, [buf[filled : filled + want]], pos)
                if got != want:
                    raise FileChanged  # shrank while we read
                pos += got
                filled += got
            last = pos >= end
            view = buf[:filled]
            if last and filled <= self.repo.chunker["min_size"]:
                if filled:
                    self.save_chunk(view, content)
                return end - start
            done = 0
            for c in self._chunker().cut_buf(view):
                if not last and c.offset + max_size > filled:
                    break
                self.save_chunk(c.data, content)
                done = c.offset + c.length
            if last:
                return end - start
            buf[: filled - done] = buf[done:filled]
            filled -= done

    def read_content(self, fd: int, st: os.stat_result) -> list[list[Any]]:
        size = st.st_size
        content: list[list[Any]] = []
        sparse = st.st_blocks * 512 < size
        regions = data_regions(fd, size) if sparse else iter([(0, size)] if size else [])
        pos = 0
        for start, end in regions:
            if start > pos:
                content.append([None, start - pos])
            got = self.chunk_region(fd, start, end, content)
            self._count("bytes_read", got)
            self.progress.advance(nbytes=got)
            pos = end
        if pos < size:
            content.append([None, size - pos])
        return content

    def read_file(self, path: bytes) -> tuple[list[list[Any]], os.stat_result]:
        for _attempt in range(_ATTEMPTS):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # O_NOATIME: owner only
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise FileChanged
                try:
                    content = self.read_content(fd, before)
                except FileChanged:
                    continue
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
                    before.st_size,
                    before.st_mtime_ns,
                    before.st_ctime_ns,
                ):
                    holes = sum(n for cid, n in content if cid is None)
                    self.progress.advance(items=1, nbytes=holes)
                    return content, before
            finally:
                os.close(fd)
        raise FileChanged

    # -- the walk
    def file_job(
        self, path: bytes, name: bytes, st: os.stat_result, parent: Node | None, rel: bytes
    ) -> FileJob | Node:
        self._count("files", 1)
        self._count("bytes_total", st.st_size)
        if st.st_nlink > 1:
            first = self.hardlinks.get((st.st_dev, st.st_ino))
            if first is not None:
                node = make_node(name, st, path)
                node.update(type="hardlink", target=first[0], size=st.st_size)
                return (
                    FileJob(node, path, first[1].future)
                    if first[1].future
                    else {**node, "content": first[1].node.get("content", [])}
                )
        node = make_node(name, st, path)
        node["size"] = st.st_size
        job = FileJob(node, path)
        # a parent's chunks are indexed (snapshots are written after their index); only
        # a running gc may have condemned some of them since
        if (
            parent is not None
            and unchanged(parent, st)
            and not (
                self.repo.cache.has_condemned
                and any(
                    cid is not None and self.repo.cache.is_condemned(cid)
                    for cid, _n in parent["content"]
                )
            )
        ):
            node["content"] = parent["content"]
            self.progress.advance(items=1, nbytes=st.st_size)
        else:
            job.future = self.pool.submit(self.read_file, path)
            self.jobs += 1
        if st.st_nlink > 1:
            self.hardlinks[(st.st_dev, st.st_ino)] = (rel, job)
        return job

    def walk_dir(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        parent: Node | None,
        rel: bytes,
        root_dev: int,
    ) -> PendingDir:
        self._count("dirs", 1)
        pd = PendingDir(make_node(name, st, path))
        parent_nodes = self.parent_nodes(parent)
        descend = not (self.opts.one_file_system and st.st_dev != root_dev)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name) if descend else []
        except OSError as exc:
            self._error(path, exc)
            entries = []
        for e in entries:
            full = e.path
            if self.excluded(full):
                continue
            try:
                est = e.stat(follow_symlinks=False)
            except OSError as exc:
                self._error(full, exc)
                continue
            child_rel = rel + b"/" + e.name if rel else e.name
            prev = parent_nodes.get(e.name)
            pd.children.append(self.walk_entry(full, e.name, est, prev, child_rel, root_dev))
        self.queue.append(pd)
        self.drain()
        return pd

    def walk_entry(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        prev: Node | None,
        rel: bytes,
        root_dev: int,
    ) -> PendingDir | FileJob | Node:
        if stat.S_ISDIR(st.st_mode):
            return self.walk_dir(path, name, st, prev, rel, root_dev)
        if stat.S_ISREG(st.st_mode):
            return self.file_job(path, name, st, prev, rel)
        node = make_node(name, st, path)
        if stat.S_ISLNK(st.st_mode):
            try:
                node["target"] = os.readlink(path)
            except OSError as exc:
                self._error(path, exc)
        return node

    def parent_nodes(self, parent: Node | None) -> dict[bytes, Node]:
        if parent is None or parent.get("type") != "dir" or "subtree" not in parent:
            return {}
        try:
            return {n["name"]: n for n in decode_tree(self.repo.load_blob(parent["subtree"]))}
        except Exception:  # an unreadable parent only costs re-reading; verify reports it
            return {}

    # -- finishing directories
    def drain(self, block: bool = False) -> None:
        while self.queue and (block or self.jobs > _MAX_JOBS or self.queue[0].ready()):
            self.finish_dir(self.queue.popleft())
            block = False

    def finish_dir(self, pd: PendingDir) -> None:
        nodes: list[Node] = []
        for child in pd.children:
            if isinstance(child, PendingDir):
                assert child.node is not None and child.tree_id is not None
                nodes.append({**child.node, "subtree": child.tree_id})
            elif isinstance(child, FileJob):
                node = child.node
                if child.future is not None:
                    try:
                        content, st = child.future.result()
                    except FileChanged:
                        self._error(child.path, "changed while being read; left out")
                        self._count("files", -1)
                        continue
                    except OSError as exc:
                        self._error(child.path, exc)
                        self._count("files", -1)
                        continue
                    if node["type"] == "file":
                        self.jobs -= 1
                        node.update(
                            size=st.st_size,
                            mtime=st.st_mtime_ns,
                            ctime=st.st_ctime_ns,
                            ino=st.st_ino,
                        )
                    node["content"] = content
                nodes.append(node)
            else:
                nodes.append(child)
        pd.children = []
        pd.tree_id = self.save_tree(nodes)

    def save_tree(self, nodes: list[Node]) -> bytes:
        data = encode_tree(nodes)
        tid = self.repo.crypto.chunk_id(data)
        if self.saver.reserve(tid):
            self.saver.save(TREE, tid, data)
        return tid

    # -- the whole snapshot
    def run(
        self,
        kind: str,
        build: Callable[[Node | None], bytes],
        parent: Snapshot | None,
        paths: tuple[str, ...],
    ) -> BackupResult:
        t0 = time.monotonic()
        try:
            root_parent = {"type": "dir", "subtree": parent.tree} if parent else None
            tree_id = build(root_parent)
            self.saver.flush()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.saver.close()
        seconds = time.monotonic() - t0
        st = self.saver.stats
        summary = {
            **self.counts,
            "bytes_new": st.bytes_new,
            "bytes_stored": st.bytes_stored,
            "blobs_new": st.blobs_new,
            "seconds": round(seconds, 3),
        }
        snap = Snapshot(
            id="",
            time=self.opts.time or datetime.now(UTC),
            hostname=self.opts.hostname or socket.gethostname(),
            username=getpass.getuser(),
            paths=paths,
            tags=tuple(sorted(set(self.opts.tags))),
            kind=kind,
            tree=tree_id,
            partial=bool(self.errors),
            errors=tuple(self.errors),
            summary=summary,
            parent=parent.id if parent else None,
        )
        sid = self.repo.save_snapshot(snap)
        snap = Snapshot(**{**snap.__dict__, "id": sid})
        return BackupResult(
            snap,
            self.counts["files"],
            self.counts["dirs"],
            self.counts["bytes_read"],
            self.counts["bytes_total"],
            st.bytes_new,
            st.bytes_stored,
            seconds,
            tuple(self.errors),
        )

    def build_paths(self, paths: list[bytes]) -> Callable[[Node | None], bytes]:
        """The root tree holds each path under its full name: /srv/data is srv → data."""

        def build(root_parent: Node | None) -> bytes:
            root = PendingDir(None)
            tree: dict[bytes, Any] = {}
            for p in paths:
                parts = [c for c in p.split(b"/") if c]
                d = tree
                for c in parts[:-1]:
                    d = d.setdefault(c, {})
                    if d is None:
                        raise SourceError(f"{os.fsdecode(p)} is inside another path given")
                if parts[-1] in d:
                    raise SourceError(f"{os.fsdecode(p)} overlaps another path given")
                d[parts[-1]] = None  # a leaf: archived whole
            self._build_level(root, tree, b"", root_parent)
            self.drain(block=True)
            while self.queue:
                self.drain(block=True)
            assert root.tree_id is not None
            return root.tree_id

        return build

    def _build_level(
        self, pd: PendingDir, level: dict[bytes, Any], prefix: bytes, parent: Node | None
    ) -> None:
        parent_nodes = self.parent_nodes(parent)
        for name in sorted(level):
            path = prefix + b"/" + name
            st = os.lstat(path)
            prev = parent_nodes.get(name)
            sub = level[name]
            if sub is None:
                pd.children.append(self.walk_entry(path, name, st, prev, path[1:], st.st_dev))
            else:
                child = PendingDir(make_node(name, st, path))
                self._build_level(child, sub, path, prev)
                pd.children.append(child)
        self.queue.append(pd)


def normalize_sources(paths: tuple[str, ...]) -> list[bytes]:
    out = []
    for p in paths:
        ap = os.path.abspath(p)
        if not os.path.lexists(ap):
            raise SourceError(f"{p} does not exist: check the path to back up")
        out.append(os.fsencode(ap))
    if b"/" in out and len(out) > 1:
        raise SourceError("/ overlaps every other path given: back it up alone")
    return out


def _estimate(sources: list[bytes], options: BackupOptions, progress: Progress) -> None:
    """Count files and bytes ahead of a first backup, for the time-left estimate (only
    when someone watches; it ignores --one-file-system, an estimate is enough)."""
    excluded = _exclude_matcher(options.excludes)
    files = total = 0
    stack = list(sources)
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            files += 1
            total += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as it:
                    stack.extend(e.path for e in it if not excluded(e.path))
            except OSError:
                continue
    progress.set_total(files, total)


def find_parent(
    repo: Repository, paths: tuple[str, ...], kind: str, options: BackupOptions
) -> Snapshot | None:
    """The snapshot to compare with: --parent, else the latest of this host with the same
    paths (several machines may share a store)."""
    if options.parent:
        return repo.find_snapshot(options.parent)
    host = options.hostname or socket.gethostname()
    same = [
        s
        for s in repo.list_snapshots()
        if s.paths == paths and s.kind == kind and s.hostname == host
    ]
    return same[-1] if same else None


def create_snapshot(
    repo: Repository, options: BackupOptions, progress: Progress | None = None
) -> BackupResult:
    """Back up files and directories. Thread-safe against other sessions on the store (the
    caller holds a session); raises SourceError before writing anything when a path is
    missing."""
    sources = normalize_sources(options.paths)
    paths = tuple(os.fsdecode(p) for p in sources)
    parent = find_parent(repo, paths, "files", options)
    arch = Archiver(repo, options, progress)
    est = parent.summary if parent else {}
    arch.progress.start("backup", est.get("files"), est.get("bytes_total"))
    if parent is None and arch.progress.live:
        threading.Thread(
            target=_estimate, args=(sources, options, arch.progress), daemon=True, name="estimate"
        ).start()
    try:
        if sources == [b"/"]:

            def build(root_parent: Node | None) -> bytes:
                st = os.lstat("/")
                pd = arch.walk_dir(b"/", b"", st, root_parent, b"", st.st_dev)
                while arch.queue:
                    arch.drain(block=True)
                assert pd.tree_id is not None
                return pd.tree_id

            return arch.run("files", build, parent, paths)
        return arch.run("files", arch.build_paths(sources), parent, paths)
    finally:
        arch.progress.finish()


def create_image_snapshot(
    repo: Repository, path: str, options: BackupOptions, progress: Progress | None = None
) -> BackupResult:
    """Back up a disk image or block device with fixed-size chunks; zero chunks and holes
    are not stored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist: check the image path") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    arch = Archiver(repo, options, progress)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{path} is a directory: --image takes a file or block device")
        size = os.lseek(fd, 0, os.SEEK_END)
        cs = repo.image_chunk_size
        arch.progress.start("image", None, size)

        def chunks_of(start: int, end: int) -> list[list[Any]]:
            out: list[list[Any]] = []
            buf = arch._buffer()
            pos = start
            while pos < end:
                n = min(len(buf) - len(buf) % cs, end - pos)
                view = buf[:n]
                got = os.preadv(fd, [view], pos)
                if got != n:
                    raise SourceError(f"{path} got shorter while being read")
                for off in range(0, n, cs):
                    piece = view[off : off + cs]
                    cid = repo.crypto.chunk_id(piece)
                    if cid == arch.zero_id(len(piece)):
                        out.append([None, len(piece)])
                    else:
                        if arch.saver.reserve(cid):
                            arch.saver.save(DATA, cid, piece)
                        out.append([cid, len(piece)])
                arch._count("bytes_read", n)
                arch.progress.advance(nbytes=n)
                pos += n
            return out

        def build(root_parent: Node | None) -> bytes:
            regions: list[tuple[int, int]] = (
                list(data_regions(fd, size)) if stat.S_ISREG(st.st_mode) else [(0, size)]
            )
            # align to chunks so an unchanged region gives the same chunks next time
            jobs: list[tuple[int, Future[list[list[Any]]] | None]] = []
            pos = 0
            step = 16 * cs
            for start, end in regions:
                start -= start % cs
                start = max(start, pos)
                if start > pos:
                    jobs.append((start - pos, None))
                end = min(size, -(-end // cs) * cs)
                for s in range(start, end, step):
                    jobs.append((0, arch.pool.submit(chunks_of, s, min(s + step, end))))
                pos = max(pos, end)
            if pos < size:
                jobs.append((size - pos, None))
            content: list[list[Any]] = []
            for hole, fut in jobs:
                for item in [[None, hole]] if fut is None else fut.result():
                    if item[0] is None and content and content[-1][0] is None:
                        content[-1][1] += item[1]
                    else:
                        content.append(item)
            node = make_node(os.fsencode(os.path.basename(path)), st, None)
            node.update(type="file", size=size, content=content)
            arch.counts["files"] = 1
            arch.counts["bytes_total"] = size
            return arch.save_tree([node])

        return arch.run("image", build, None, (os.path.abspath(path),))
    finally:
        os.close(fd)
        arch.progress.finish()


def create_stream_snapshot(
    repo: Repository,
    name: str,
    stream: BinaryIO,
    options: BackupOptions,
    progress: Progress | None = None,
) -> BackupResult:
    """Back up a stream (a database dump on stdin) as one file NAME, with no temporary
    copy: chunks are cut as the bytes arrive and saved by the pool."""
    if not name or "/" in name or name in (".", ".."):
        raise SourceError(f"{name!r} is not a valid file name for --stdin")
    arch = Archiver(repo, options, progress)
    arch.progress.start("stdin", None, None)

    def save(data: bytes) -> list[list[Any]]:
        out: list[list[Any]] = []
        arch.save_chunk(data, out)
        return out

    def build(root_parent: Node | None) -> bytes:
        futures: collections.deque[Future[list[list[Any]]]] = collections.deque()
        content: list[list[Any]] = []
        size = 0
        for c in arch._chunker().cut_stream(stream):
            futures.append(arch.pool.submit(save, bytes(c.data)))
            size += c.length
            arch.progress.advance(nbytes=c.length)
            while len(futures) > 8:
                content.extend(futures.popleft().result())
        while futures:
            content.extend(futures.popleft().result())
        now = time.time_ns()
        node: Node = {
            "name": os.fsencode(name),
            "type": "file",
            "mode": 0o600,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "user": None,
            "group": None,
            "mtime": now,
            "ctime": now,
            "ino": 0,
            "size": size,
            "content": content,
        }
        arch.counts.update(files=1, bytes_read=size, bytes_total=size)
        return arch.save_tree([node])

    try:
        return arch.run("files", build, None, (name,))
    finally:
        arch.progress.finish()
