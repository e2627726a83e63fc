"""A store on another host reached over SFTP: `ssh://[user@]host[:port]/path`.

The host needs only an SSH account that may use SFTP (OpenSSH's sftp-server, as on any
Debian with openssh-server and most NAS). isidorus runs the operator's own ssh (`ssh.py`),
so ~/.ssh/config, keys, the agent and known_hosts apply; paramiko only speaks SFTP over it
(`sftp_session.py`). Under /path the store is the same tree as a directory store
(`layout.py`), so rsync or scp can copy a store either way. How base.py's contract holds:

* A write goes to tmp/<session>-<random>.tmp and is flushed with fsync@openssh.com. An
  immutable object is then put in place with a plain RENAME, which OpenSSH makes with
  link() and unlink(): it never replaces a name that exists, it fails, and the name is then
  checked (same name, same bytes: nothing to do). A mutable one takes its name with
  posix-rename@openssh.com, atomically. The folder is then fsynced too (opened as a file,
  which OpenSSH allows). Without those extensions the same steps run without the fsyncs,
  and a mutable object is replaced by a removal, then a rename.
* An upload (a pack) is sent in pieces of UPLOAD_PIECE as it is written, each on whichever
  session is free, so an upload holds no connection between its writes.
* Sessions (each its own ssh process) are opened as threads need them, up to `connections`,
  and each is used by one thread at a time. A broken one is thrown away; a call whose
  session broke after it had worked (a link dropped while idle) is tried once more on a new
  one, except exclusive writes, whose first try may have taken the name.
* A missing object is FileNotFoundError; the rest is BackendError naming the cause (a full
  disk, rights, a read-only file system, a lost connection) and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import stat
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from paramiko import SFTPAttributes
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_MKDIR,
    CMD_OPEN,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_STAT,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
)

from isidorus.backup.errors import BackendError, StoreError
from isidorus.backup.remote.base import KINDS, MUTABLE_KINDS
from isidorus.backup.remote.layout import TMP, all_folders, folders_of, object_path, tmp_owner
from isidorus.backup.remote.layout import tmp_path as new_tmp_path
from isidorus.backup.remote.sftp_session import (
    FAILURE,
    FILE_ALREADY_EXISTS,
    NO_SUCH_FILE,
    OP_UNSUPPORTED,
    PERMISSION_DENIED,
    ST_RDONLY,
    Request,
    SftpSession,
    SftpStatus,
    attrs,
)
from isidorus.backup.remote.ssh import RateLimit, SshTarget, ssh_argv
from isidorus.errors import UsageError

T = TypeVar("T")

UPLOAD_PIECE = 4 * 1024 * 1024  # an upload buffers this much before sending it
_HANDLES_KEPT = 16  # open packs kept per session, for restores that read many ranges
_FULL_SLACK = 1024 * 1024  # a failed write with less than its size + this free: disk full


def _new_file() -> SFTPAttributes:
    mode = SFTPAttributes()
    mode.st_mode = 0o600  # as a directory store's files
    return mode


class _Pool:
    """Sessions opened on demand, at most `size`, lent to one thread at a time."""

    def __init__(self, make: Callable[[], SftpSession], size: int) -> None:
        self._make = make
        self._size = max(1, size)
        self._idle: list[SftpSession] = []
        self._born: dict[SftpSession, int] = {}  # session -> generation
        self._opening = 0  # sessions being opened (ssh starting)
        self._generation = 0
        self._cond = threading.Condition()

    def get(self) -> SftpSession:
        with self._cond:
            while not self._idle and len(self._born) + self._opening >= self._size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()  # the last returned: its kept handles are warm
            self._opening += 1
            generation = self._generation
        try:
            session = self._make()
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._opening -= 1
            self._born[session] = generation
        return session

    def put(self, session: SftpSession) -> None:
        with self._cond:
            stale = session.broken or self._born.get(session) != self._generation
            if stale:
                self._born.pop(session, None)
            else:
                self._idle.append(session)
            self._cond.notify()
        if stale:
            session.close()

    def close(self) -> None:
        """Close the idle sessions; those lent out are closed when they come back."""
        with self._cond:
            idle, self._idle = self._idle, []
            for session in idle:
                del self._born[session]
            self._generation += 1
            self._cond.notify_all()
        for session in idle:
            session.close()


class SftpUpload:
    """A pack on its way: sent to its temporary file in pieces, named on commit."""

    def __init__(self, backend: SftpBackend) -> None:
        self.backend = backend
        self.tmp = backend._abs(new_tmp_path(backend.tmp_tag))
        self.buf = bytearray()
        self.sent = 0  # bytes already in the temporary file
        self.touched = False  # the temporary file may exist

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data
        if len(self.buf) >= UPLOAD_PIECE:
            try:
                self._send(None)
            except BaseException:
                self.abort()
                raise

    def _send(self, name: tuple[str, str] | None) -> None:
        """Append the buffer to the temporary file; with `name`, make it durable and
        give it that name."""
        b, piece, offset, create = self.backend, self.buf, self.sent, not self.touched

        def send(s: SftpSession) -> None:
            if name is None:
                b._append(s, self.tmp, offset, piece, create=create)
                return
            try:
                b._store(s, self.tmp, name[0], name[1], piece, offset=offset, create=create)
            except SftpStatus as exc:
                # a try that broke after the rename: the object is in place already
                if (
                    exc.code == NO_SUCH_FILE
                    and name[0] not in MUTABLE_KINDS
                    and s.stat(b._abs(object_path(*name))) is not None
                ):
                    return
                raise

        self.touched = True
        what = f"{name[0]}/{name[1]}" if name else "an upload"
        b._run(send, what, writing=len(piece))
        self.sent += len(piece)
        self.buf = bytearray()

    def commit(self, kind: str, name: str) -> None:
        object_path(kind, name)  # a bad address fails before anything is sent
        try:
            if self.touched:
                self._send((kind, name))
            else:
                self.backend.write(kind, name, self.buf)  # small: one write
        except BaseException:
            self.abort()
            raise
        self.buf = bytearray()

    def abort(self) -> None:
        """Drop the upload; a temporary file that cannot be removed now goes with the next
        gc (clean_tmp)."""
        self.buf = bytearray()
        if self.touched:
            self.touched = False
            with contextlib.suppress(BackendError, OSError):
                self.backend._run(lambda s: s.call(CMD_REMOVE, self.tmp), "an upload")


class SftpBackend:
    """A store in a folder of an SFTP host. Thread-safe."""

    def __init__(
        self,
        url: str,
        ssh_command: str = "ssh",
        *,
        rate_limit: RateLimit | None = None,
        connections: int = 4,
        argv: list[str] | None = None,
    ) -> None:
        self.target = SshTarget.parse(url)
        if self.target.scheme != "ssh":
            raise UsageError(f"{url} is not an SFTP store: write ssh://[user@]host[:port]/path")
        self.root = posixpath.normpath(self.target.path)
        self.location = url.rstrip("/")
        self.tmp_tag = "nosession"
        self._argv = argv or ssh_argv(self.target, ssh_command, ["sftp"], subsystem=True)
        self._rate_limit = rate_limit
        self._pool = _Pool(self._connect, connections)
        self._removals = 0  # bumped by each removal: handles opened before are not reused
        self._lock = threading.Lock()
        self._sync_folders = True  # until the server refuses to open a folder

    # -- sessions and errors
    def _connect(self) -> SftpSession:
        return SftpSession(self.target, self._argv, self._rate_limit)

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _run(
        self,
        op: Callable[[SftpSession], T],
        what: str,
        *,
        writing: int | None = None,
        retry: bool = True,
    ) -> T:
        """Run `op` on a session of the pool, translating its errors. `writing`: the bytes
        it writes (0 for other changes, None when it only reads)."""
        for attempt in range(2):
            s = self._pool.get()
            worked = s.uses > 0
            try:
                return op(s)
            except SftpStatus as exc:
                raise self._error(s, exc, what, writing) from None
            except BackendError:
                if not (s.broken and worked and retry and attempt == 0):
                    raise
            finally:
                self._pool.put(s)
        raise AssertionError("unreachable")

    def _error(self, s: SftpSession, exc: SftpStatus, what: str, writing: int | None) -> Exception:
        """One line naming the cause and the fix, for an error status of the server."""
        where = f"{self.target.display}:{self.root}"
        if exc.code == NO_SUCH_FILE:
            if writing is None:
                return FileNotFoundError(errno.ENOENT, f"{self.location}/{what} does not exist")
            return BackendError(
                f"{where} lacks a folder of the store (writing {what}): check the store's "
                "path, or create a store there with `isidorus backup init`"
            )
        if exc.code == PERMISSION_DENIED:
            verb = "read" if writing is None else "write"
            return BackendError(
                f"permission denied on {what} at {where}: the account must be able to {verb} "
                "there (check the owner and mode of the store's folders on that host)"
            )
        if exc.code == OP_UNSUPPORTED:
            return BackendError(f"the SFTP server of {self.target.host} cannot do this ({what})")
        if exc.code in (FAILURE, FILE_ALREADY_EXISTS) and writing is not None:
            fs = None if s.broken else s.statvfs(self.root)
            if fs is not None and fs[1] & ST_RDONLY:
                return BackendError(
                    f"the file system of {where} is read-only: mount it read-write on that host"
                )
            if fs is not None and writing and fs[0] < writing + _FULL_SLACK:
                return BackendError(
                    f"the home's disk is full ({where}, {fs[0] // 1024} KiB free, writing "
                    f"{what}): free some space there, then run the command again "
                    "(nothing was lost)"
                )
            return BackendError(
                f"{where} could not write {what} ({exc.text}): its disk may be full or over "
                "quota, or failing; look on that host, then run the command again",
                permanent=False,
            )
        return BackendError(f"SFTP error on {what} at {where}: {exc.text}", permanent=False)

    # -- the steps of a write
    def _append(
        self,
        s: SftpSession,
        tmp: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        create: bool,
    ) -> None:
        """Write `data` at `offset` of a temporary file (made anew with `create`)."""
        flags = SFTP_FLAG_WRITE | (SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC if create else 0)
        handle = s.check(s.call(CMD_OPEN, tmp, flags, _new_file()), CMD_HANDLE).get_binary()
        try:
            s.write_at(handle, offset, data)
        finally:
            if not s.broken:
                s.close_later(handle)

    def _store(
        self,
        s: SftpSession,
        tmp: str,
        kind: str,
        name: str,
        data: bytes | bytearray | memoryview,
        *,
        offset: int = 0,
        create: bool = True,
        exclusive: bool = False,
        swap: bool = False,
    ) -> None:
        """Write `data` at `offset` of a temporary file (a new one with `create`), make it
        durable, give it its name, make the name durable: three round trips. An object of
        a mutable kind, or any with `swap`, replaces what has the name."""
        final = self._abs(object_path(kind, name))
        flags = SFTP_FLAG_WRITE | (SFTP_FLAG_CREATE | SFTP_FLAG_EXCL if create else 0)
        reqs: list[Request] = [(CMD_OPEN, (tmp, flags, _new_file()))]
        sync = "fsync@openssh.com" in s.extensions
        if sync and self._sync_folders:  # the folder too, to sync it once the name is in
            reqs.append((CMD_OPEN, (posixpath.dirname(final), SFTP_FLAG_READ, SFTPAttributes())))
        replies = s.batch(reqs)
        folder = None
        if len(replies) > 1:
            try:
                folder = s.check(replies[1], CMD_HANDLE).get_binary()
            except SftpStatus:
                self._sync_folders = False  # this server cannot open a folder: no fsync
        try:
            handle = s.check(replies[0], CMD_HANDLE).get_binary()
            try:
                # the fsync goes with the writes: a server handles one handle's requests in order
                s.write_at(handle, offset, data, fsync=sync)
            except SftpStatus:
                with contextlib.suppress(SftpStatus):
                    s.check(s.call(CMD_REMOVE, tmp))
                raise
            finally:
                if not s.broken:
                    s.close_later(handle)
            replace = swap or (kind in MUTABLE_KINDS and not exclusive)
            self._publish(s, tmp, final, folder, replace=replace, exclusive=exclusive)
        finally:
            if folder is not None and not s.broken:
                s.close_later(folder)

    def _publish(
        self,
        s: SftpSession,
        tmp: str,
        final: str,
        folder: bytes | None,
        *,
        replace: bool,
        exclusive: bool,
    ) -> None:
        """Give a durable temporary file its name, then sync its open `folder`."""
        reqs: list[Request] = []
        if replace and "posix-rename@openssh.com" in s.extensions:
            reqs.append((CMD_EXTENDED, ("posix-rename@openssh.com", tmp, final)))
        else:
            if replace:  # not atomic: only for servers without posix-rename
                with contextlib.suppress(SftpStatus):
                    s.check(s.call(CMD_REMOVE, final))
            reqs.append((CMD_RENAME, (tmp, final)))  # refuses a name that exists
        if folder is not None:
            reqs.append((CMD_EXTENDED, ("fsync@openssh.com", folder)))
        replies = s.batch(reqs)
        try:
            s.check(replies[0])
        except SftpStatus:
            if replace:
                raise
            there, _removed = s.batch([(CMD_STAT, (final,)), (CMD_REMOVE, (tmp,))])
            if there[0] != CMD_ATTRS:
                raise
            if exclusive:
                raise FileExistsError(errno.EEXIST, f"{final} exists") from None
            return  # same name, same content: the object is already there
        if folder is not None:
            s.check(replies[1])

    def _handle(self, s: SftpSession, kind: str, name: str) -> tuple[bytes, bool]:
        """An open handle on an object, and whether it stays open (kept by the session)."""
        path = self._abs(object_path(kind, name))
        if kind in MUTABLE_KINDS or kind == "config":  # replaced in place: open anew
            return s.open_read(path), False
        kept = s.kept.get((kind, name))
        if kept is not None and kept[1] == self._removals:
            s.kept.move_to_end((kind, name))
            return kept[0], True
        if kept is not None:
            del s.kept[(kind, name)]
            s.close_later(kept[0])  # opened before a removal: maybe not this object now
        epoch = self._removals
        handle = s.open_read(path)
        while s.kept and len(s.kept) >= _HANDLES_KEPT:
            s.close_later(s.kept.popitem(last=False)[1][0])
        s.kept[(kind, name)] = (handle, epoch)
        return handle, True

    def _removed(self) -> None:
        with self._lock:
            self._removals += 1

    # -- protocol
    def create(self) -> None:
        root = self.root

        def create(s: SftpSession) -> None:
            if s.stat(self._abs("config")) is not None:
                raise FileExistsError(errno.EEXIST, f"{self.location} holds a store")
            entries = s.list_folders([root]).get(root, [])
            names = {n for n, _ in entries} - {".", ".."}
            if names:
                self._start_over(s, names)
            parts = root.strip("/").split("/")
            parents = ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]
            folders = [*parents, root, *(self._abs(f) for f in all_folders())]
            replies = s.batch([(CMD_MKDIR, (f, SFTPAttributes())) for f in folders])
            for folder, reply in zip(folders, replies, strict=True):
                try:
                    s.check(reply)
                    continue
                except SftpStatus:
                    there = s.stat(folder)  # made before, or out of order: once more
                if there is None:
                    s.check(s.call(CMD_MKDIR, folder, SFTPAttributes()))
                elif there[1] is not None and not stat.S_ISDIR(there[1]):
                    raise StoreError(f"{self.target.display}:{folder} is a file, not a folder")
            if self._sync_folders and "fsync@openssh.com" in s.extensions:
                self._fsync_folders(s, [*(self._abs(k) for k in (*KINDS, TMP)), root])

        self._run(create, "the store's folders", writing=0)

    def _start_over(self, s: SftpSession, names: set[str]) -> None:
        """The folder holds something: go on only with an init that stopped before its
        config was written (key files and nothing else), whose keys are dropped."""
        objects = s.list_folders(
            [self._abs(f) for k in KINDS if k != "keys" for f in folders_of(k)]
        )
        if names - {*KINDS, TMP} or any(
            not n.startswith(".") for entries in objects.values() for n, _ in entries
        ):
            raise StoreError(
                f"{self.location} is not empty and holds no store: choose an empty or new folder"
            )
        keys = s.list_folders([self._abs("keys")]).get(self._abs("keys"), [])
        for reply in s.batch(
            [(CMD_REMOVE, (self._abs(f"keys/{n}"),)) for n, _ in keys if not n.startswith(".")]
        ):
            s.check(reply)

    def _fsync_folders(self, s: SftpSession, folders: list[str]) -> None:
        replies = s.batch([(CMD_OPEN, (f, SFTP_FLAG_READ, SFTPAttributes())) for f in folders])
        handles = []
        for reply in replies:
            with contextlib.suppress(SftpStatus):
                handles.append(s.check(reply, CMD_HANDLE).get_binary())
        try:
            for reply in s.batch([(CMD_EXTENDED, ("fsync@openssh.com", h)) for h in handles]):
                s.check(reply)
        finally:
            for h in handles:
                if not s.broken:
                    s.close_later(h)

    def exists(self, kind: str, name: str) -> bool:
        path = self._abs(object_path(kind, name))
        return self._run(lambda s: s.stat(path) is not None, f"{kind}/{name}")

    def read(self, kind: str, name: str) -> bytes:
        path = self._abs(object_path(kind, name))

        def read(s: SftpSession) -> bytes:
            opened, size = s.batch(
                [(CMD_OPEN, (path, SFTP_FLAG_READ, SFTPAttributes())), (CMD_STAT, (path,))]
            )
            handle = s.check(opened, CMD_HANDLE).get_binary()
            try:
                hint = (attrs(s.check(size, CMD_ATTRS))[0] or 0) if size[0] == CMD_ATTRS else 0
                return s.read_whole(handle, hint)
            finally:
                if not s.broken:
                    s.close_later(handle)

        return self._run(read, f"{kind}/{name}")

    def read_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        object_path(kind, name)

        def read_range(s: SftpSession) -> bytes:
            handle, kept = self._handle(s, kind, name)
            try:
                return s.read_at(handle, offset, length) if length else b""
            finally:
                if not kept and not s.broken:
                    s.close_later(handle)

        data = self._run(read_range, f"{kind}/{name}")
        if len(data) != length:
            raise BackendError(f"{kind}/{name} is shorter than expected (truncated?)")
        return data

    def write(
        self, kind: str, name: str, data: bytes | bytearray | memoryview, *, exclusive: bool = False
    ) -> None:
        object_path(kind, name)

        def write(s: SftpSession) -> None:
            self._store(
                s, self._abs(new_tmp_path(self.tmp_tag)), kind, name, data, exclusive=exclusive
            )

        # an exclusive write is not tried twice: the first may have taken the name
        self._run(write, f"{kind}/{name}", writing=memoryview(data).nbytes, retry=not exclusive)

    def replace(self, kind: str, name: str, data: bytes | bytearray | memoryview) -> None:
        object_path(kind, name)

        def replace(s: SftpSession) -> None:
            # posix-rename: a reader finds the old object or the new one, never none
            self._store(s, self._abs(new_tmp_path(self.tmp_tag)), kind, name, data, swap=True)

        try:
            self._run(replace, f"{kind}/{name}", writing=memoryview(data).nbytes)
        finally:
            self._removed()

    def upload(self) -> SftpUpload:
        return SftpUpload(self)

    def remove(self, kind: str, name: str) -> None:
        path = self._abs(object_path(kind, name))

        def remove(s: SftpSession) -> None:
            try:
                s.check(s.call(CMD_REMOVE, path))
            except SftpStatus as exc:
                if exc.code != NO_SUCH_FILE:
                    raise

        try:
            self._run(remove, f"{kind}/{name}", writing=0)
        finally:
            self._removed()

    def list(self, kind: str) -> Iterator[tuple[str, int]]:
        folders = [self._abs(f) for f in folders_of(kind)]
        listing = self._run(lambda s: s.list_folders(folders), f"the list of {kind}/")
        for folder in folders:
            for name, size in listing.get(folder, []):
                if not name.startswith("."):
                    yield name, size

    def clean_tmp(self, alive: set[str]) -> None:
        folder = self._abs(TMP)

        def clean(s: SftpSession) -> None:
            entries = s.list_folders([folder]).get(folder, [])
            dead = [n for n, _ in entries if n not in (".", "..") and tmp_owner(n) not in alive]
            s.batch([(CMD_REMOVE, (f"{folder}/{n}",)) for n in dead])  # what fails stays

        self._run(clean, "tmp/")

    def close(self) -> None:
        self._pool.close()
