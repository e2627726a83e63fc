"""A store in a local directory.

Layout: `config`, `keys/`, `snapshots/`, `index/`, `locks/`, `gc/`, and `data/00/…/ff/`
(pack files spread over 256 folders so no folder grows huge), plus `tmp/` for writes in
progress. Every write goes to `tmp/`, is fsynced, then linked (immutable kinds, so an
existing name is never replaced) or renamed (mutable kinds) into place, and the folder is
fsynced: a crash leaves either the old state or the new one, never a torn object.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import threading
from collections.abc import Iterator

from isidorus.backup.errors import BackendError, StoreError
from isidorus.backup.remote.base import KINDS, MUTABLE_KINDS
from isidorus.backup.remote.layout import object_path, tmp_path

_FD_CACHE_SIZE = 32  # open packs kept per thread
_WRITE_BEHIND = 1 << 20  # an upload asks the kernel to start writing out every MiB it got


def _translate(exc: OSError, what: str) -> BackendError:
    if exc.errno == errno.ENOSPC:
        return BackendError(
            f"disk full while writing {what}: free some space, then run the "
            "command again (nothing was lost)"
        )
    if exc.errno == errno.EDQUOT:
        return BackendError(f"quota exceeded while writing {what}: raise the quota or free space")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BackendError(f"permission denied on {what}: run as a user that can write there")
    if exc.errno == errno.EROFS:
        return BackendError(f"read-only file system at {what}")
    return BackendError(f"{what}: {exc.strerror or exc}", permanent=False)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalUpload:
    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.tmp = os.path.join(backend.root, tmp_path(backend.tmp_tag))
        self.written = 0
        self.flushed = 0  # where the last write-behind stopped
        try:
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _translate(exc, f"{backend.root}/tmp") from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
            if self.backend.write_behind and self.written - self.flushed >= _WRITE_BEHIND:
                # The kernel starts writing the pages out now, without waiting (PostgreSQL's
                # flush-after does the same): the fsync at the commit then has little left.
                os.posix_fadvise(
                    self.fd, self.flushed, self.written - self.flushed, os.POSIX_FADV_DONTNEED
                )
                self.flushed = self.written
        except OSError as exc:
            self.abort()
            raise _translate(exc, f"{self.backend.root}/data") from exc

    def commit(self, kind: str, name: str) -> None:
        assert self.fd is not None
        final = self.backend._path(kind, name)
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            if kind in MUTABLE_KINDS:
                os.rename(self.tmp, final)
            else:
                with contextlib.suppress(FileExistsError):  # same name, same content
                    os.link(self.tmp, final)
                os.unlink(self.tmp)
            fsync_dir(os.path.dirname(final))
        except OSError as exc:
            self.abort()
            raise _translate(exc, f"{self.backend.root}/{kind}") from exc

    def abort(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class LocalBackend:
    """A store in a directory of the local file system. Thread-safe.

    With `write_behind`, uploads start writing their data to disk as it comes: for objects
    that arrive slowly (a home's link), so that making one durable at its end is quick."""

    def __init__(self, path: str, *, write_behind: bool = False) -> None:
        self.root = os.path.abspath(path)
        self.write_behind = write_behind
        self.location = self.root
        self.tmp_tag = "nosession"
        self._tls = threading.local()
        self._caches: list[collections.OrderedDict[tuple[str, str], int]] = []
        self._fd_lock = threading.Lock()

    # -- paths
    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.root, object_path(kind, name))

    # -- protocol
    def create(self) -> None:
        if os.path.exists(os.path.join(self.root, "config")):
            raise FileExistsError(self.root)
        if os.path.isdir(self.root) and os.listdir(self.root):
            if not self._is_unfinished_init():
                raise StoreError(
                    f"{self.root} is not empty and holds no store: choose an empty or new directory"
                )
            # an init killed before its config was written: start it again from scratch
            for name, _size in list(self.list("keys")):
                self.remove("keys", name)
        try:
            os.makedirs(self.root, exist_ok=True)
            for kind in (*KINDS, "tmp"):
                os.makedirs(os.path.join(self.root, kind), exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.root, "data", f"{i:02x}"), exist_ok=True)
            for kind in (*KINDS, "tmp"):
                fsync_dir(os.path.join(self.root, kind))
            fsync_dir(self.root)
        except OSError as exc:
            raise _translate(exc, self.root) from exc

    def _is_unfinished_init(self) -> bool:
        """The layout of a store with nothing in it but key files."""
        if set(os.listdir(self.root)) - {*KINDS, "tmp"}:
            return False
        return not any(True for kind in KINDS if kind != "keys" for _ in self.list(kind))

    def exists(self, kind: str, name: str) -> bool:
        return os.path.exists(self._path(kind, name))

    def read(self, kind: str, name: str) -> bytes:
        try:
            with open(self._path(kind, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _translate(exc, f"{kind}/{name}") from exc

    def _fd(self, kind: str, name: str) -> int:
        """A descriptor of an immutable object from this thread's own cache: no other
        thread can close it under us, and the object never changes while it is open."""
        cache: collections.OrderedDict[tuple[str, str], int] | None = getattr(
            self._tls, "fds", None
        )
        if cache is None:
            cache = self._tls.fds = collections.OrderedDict()
            with self._fd_lock:
                self._caches.append(cache)
        key = (kind, name)
        fd = cache.get(key)
        if fd is None:
            fd = os.open(self._path(kind, name), os.O_RDONLY)
            if len(cache) >= _FD_CACHE_SIZE:
                os.close(cache.popitem(last=False)[1])
            cache[key] = fd
        else:
            cache.move_to_end(key)
        return fd

    def read_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        try:
            if kind in MUTABLE_KINDS:
                fd = os.open(self._path(kind, name), os.O_RDONLY)
                try:
                    data = os.pread(fd, length, offset)
                finally:
                    os.close(fd)
            else:
                data = os.pread(self._fd(kind, name), length, offset)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _translate(exc, f"{kind}/{name}") from exc
        if len(data) != length:
            raise BackendError(f"{kind}/{name} is shorter than expected (truncated?)")
        return data

    def write(
        self, kind: str, name: str, data: bytes | bytearray | memoryview, *, exclusive: bool = False
    ) -> None:
        final = self._path(kind, name)
        tmp = os.path.join(self.root, tmp_path(self.tmp_tag))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if kind in MUTABLE_KINDS and not exclusive:
                os.rename(tmp, final)
            else:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    if exclusive:
                        raise
                    # same name, same content: the object is already there
                finally:
                    os.unlink(tmp)
            fsync_dir(os.path.dirname(final))
        except FileExistsError:
            raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _translate(exc, f"{self.root}/{kind}") from exc

    def replace(self, kind: str, name: str, data: bytes | bytearray | memoryview) -> None:
        # rename(2) swaps the name to the new file in one step, even over an existing one
        final = self._path(kind, name)
        tmp = os.path.join(self.root, tmp_path(self.tmp_tag))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._forget_fd(kind, name)
            os.rename(tmp, final)
            fsync_dir(os.path.dirname(final))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _translate(exc, f"{self.root}/{kind}") from exc

    def upload(self) -> LocalUpload:
        return LocalUpload(self)

    def remove(self, kind: str, name: str) -> None:
        self._forget_fd(kind, name)
        try:
            os.unlink(self._path(kind, name))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _translate(exc, f"{kind}/{name}") from exc

    def _forget_fd(self, kind: str, name: str) -> None:
        cache = getattr(self._tls, "fds", None)
        fd = cache.pop((kind, name), None) if cache is not None else None
        if fd is not None:
            os.close(fd)

    def list(self, kind: str) -> Iterator[tuple[str, int]]:
        dirs = (
            [os.path.join(self.root, "data", f"{i:02x}") for i in range(256)]
            if kind == "data"
            else [os.path.join(self.root, kind)]
        )
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _translate(exc, d) from exc
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    size = e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed since the folder was read (a prune, a gc): as if before
                except OSError as exc:
                    raise _translate(exc, f"{kind}/{e.name}") from exc
                yield e.name, size

    def close(self) -> None:
        with self._fd_lock:
            for cache in self._caches:
                for fd in cache.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
                cache.clear()

    def clean_tmp(self, alive: set[str]) -> None:
        tmpdir = os.path.join(self.root, "tmp")
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(tmpdir):
                if e.name.split("-", 1)[0] not in alive:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
