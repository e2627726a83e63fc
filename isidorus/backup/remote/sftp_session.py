"""One SFTP session over one ssh process: the requests a store needs, sent in batches.

paramiko's SFTPClient speaks the protocol (handshake, framing, request numbers) over any
object with `send` and `recv`: here the stdin and stdout of the operator's own ssh
(`ssh.SshPipe`); paramiko never opens a connection itself. Its file objects are not used:
their pipelined writes drop the errors of the last requests (a full disk would go unseen).
Instead every operation is a *batch*: its requests go out, up to WINDOW at a time, before
their answers are read, so the 256 folders of data/ list in a few round trips and a pack
crosses without a wait for each piece.

A session is used by one thread at a time. A status other than OK raises `SftpStatus` and
leaves the session usable; anything else (the pipe broke, ssh ended, garbage on the pipe)
marks the session `broken`, closes it, and raises BackendError saying why (`ssh.explain`).
"""

from __future__ import annotations

import collections
import contextlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any, cast

import paramiko
from paramiko import SFTPAttributes
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_INIT,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_STAT,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_FLAG_READ,
    SFTPError,
    int64,
)

from isidorus.backup.errors import BackendError
from isidorus.backup.remote.ssh import RateLimit, SshPipe, SshTarget

# status codes (draft-ietf-secsh-filexfer-02, which OpenSSH speaks)
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE = 0, 1, 2, 3, 4, 5
OP_UNSUPPORTED = 8
FILE_ALREADY_EXISTS = 11  # later drafts; OpenSSH says FAILURE
ST_RDONLY = 0x1  # statvfs@openssh.com's flag of a read-only file system

WINDOW = 256  # requests in flight per batch: keeps a far link busy; far below the ~2000
# small requests or answers that fill a 64 KiB pipe, so neither side can block the other
_CHUNK = 32 * 1024  # what every server takes in one READ or WRITE
_MAX_CHUNK = 255 * 1024  # OpenSSH's limit, taken when the server states it

Request = tuple[int, tuple[Any, ...]]
Reply = tuple[int, Message]

_SIZE, _UIDGID, _PERMISSIONS, _ACMODTIME, _EXTENDED = 1, 2, 4, 8, 0x80000000


class SftpStatus(Exception):
    """The server answered a request with an error status."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{text} (SFTP status {code})")
        self.code = code
        self.text = text


class _Client(paramiko.SFTPClient):
    """paramiko's client, keeping what the server's version message offers (it drops it),
    and logging without a paramiko Channel under it."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        raw: Any = self
        m = Message()
        m.add_int(3)
        raw._send_packet(CMD_INIT, m)
        t, data = raw._read_packet()
        if t != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        msg = Message(data)
        version = msg.get_int()
        self.extensions = {}
        while msg.get_remainder():
            name = msg.get_string().decode(errors="replace")
            self.extensions[name] = msg.get_string()
        return version

    def _log(self, level: int, msg: str, *args: Any) -> None:
        self.logger.log(level, msg, *args)


class _Replies:
    """Collects the answers to one batch: paramiko hands each to `_async_response`."""

    def __init__(self) -> None:
        self.got: dict[int, Reply] = {}

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        self.got[num] = (t, msg)


def attrs(msg: Message) -> tuple[int | None, int | None]:
    """(size, mode) out of an ATTRS structure; the other fields are skipped."""
    flags = msg.get_int()
    size = mode = None
    if flags & _SIZE:
        size = msg.get_int64()
    if flags & _UIDGID:
        msg.get_int()
        msg.get_int()
    if flags & _PERMISSIONS:
        mode = msg.get_int()
    if flags & _ACMODTIME:
        msg.get_int()
        msg.get_int()
    if flags & _EXTENDED:
        for _ in range(msg.get_int()):
            msg.get_string()
            msg.get_string()
    return size, mode


class SftpSession:
    """An SFTP session with a host, over one ssh process of its own."""

    def __init__(
        self, target: SshTarget, argv: list[str], rate_limit: RateLimit | None = None
    ) -> None:
        self.target = target
        self.broken = False
        self.uses = 0  # batches answered: a session that never worked is not retried
        self.pipe = SshPipe(target, argv, rate_limit)
        try:
            self._client = _Client(cast(Any, self.pipe))
        except BaseException as exc:
            self.broken = True
            err = self._explain(exc)
            self.pipe.close()
            if isinstance(exc, Exception):
                raise err from exc
            raise
        self._raw: Any = self._client
        self.extensions = self._client.extensions
        # handles a backend keeps open on this session: key -> (handle, its own tag)
        self.kept: collections.OrderedDict[Any, tuple[bytes, int]] = collections.OrderedDict()
        self.chunk = _CHUNK
        if "limits@openssh.com" in self.extensions:
            with contextlib.suppress(SftpStatus):  # then the small pieces every server takes
                reply = self.call(CMD_EXTENDED, "limits@openssh.com")
                msg = self.check(reply, CMD_EXTENDED_REPLY)
                _packet, max_read, max_write = msg.get_int64(), msg.get_int64(), msg.get_int64()
                if max_read and max_write:
                    self.chunk = min(max_read, max_write, _MAX_CHUNK)
        self.uses = 0

    # -- the failure of the session itself
    def _explain(self, exc: BaseException) -> BackendError:
        if isinstance(exc, BackendError):
            return exc  # the pipe broke: ssh's own words, already explained
        if isinstance(exc, SFTPError):
            self.pipe.close()
            return BackendError(
                f"{self.target.display} does not speak SFTP ({exc}): check that its sshd offers "
                "the sftp subsystem, and that the account's shell startup files print nothing"
            )
        return self.pipe.failure()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if self.broken:
            raise BackendError(f"the SFTP session with {self.target.display} is closed")
        try:
            yield
        except BaseException as exc:
            # a request half sent or an answer half read: the session cannot go on
            self.broken = True
            if not isinstance(exc, Exception):
                self.close()
                raise
            err = self._explain(exc)
            self.close()
            raise err from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()  # closes the pipe: ssh ends with its stdin
        self.pipe.close()

    # -- requests
    def batch(self, requests: Sequence[Request]) -> list[Reply]:
        """Send every request (at most WINDOW unanswered), then return their answers in
        order. Status answers are returned as they are, for `check`."""
        with self._guard():
            out: list[Reply | None] = [None] * len(requests)
            replies = _Replies()
            index: dict[int, int] = {}
            sent = done = 0
            while done < len(requests):
                while sent < len(requests) and sent - done < WINDOW:
                    t, args = requests[sent]
                    args = tuple(bytes(a) if isinstance(a, memoryview) else a for a in args)
                    index[self._raw._async_request(replies, t, *args)] = sent
                    sent += 1
                self._raw._read_response()  # one answer, handed to `replies`
                for num, reply in replies.got.items():
                    out[index.pop(num)] = reply
                    done += 1
                replies.got.clear()
            self.uses += 1
            return cast(list[Reply], out)

    def call(self, t: int, *args: Any) -> Reply:
        return self.batch([(t, args)])[0]

    def check(self, reply: Reply, want: int = CMD_STATUS) -> Message:
        """The body of an answer of type `want`; SftpStatus for an error status."""
        t, msg = reply
        if t == CMD_STATUS:
            code = msg.get_int()
            text = msg.get_string().decode(errors="replace")
            if code == OK and want == CMD_STATUS:
                return msg
            raise SftpStatus(code, text)
        if t != want:
            self.broken = True
            self.close()
            raise BackendError(
                f"{self.target.display} answered an SFTP request out of protocol "
                f"(message type {t} for {want})",
                permanent=False,
            )
        return msg

    def close_later(self, handle: bytes) -> None:
        """Close a handle without waiting: its answer is skipped by a later batch."""
        with self._guard():
            self._raw._async_request(type(None), CMD_CLOSE, handle)

    def stat(self, path: str) -> tuple[int | None, int | None] | None:
        """(size, mode) of a path, or None when there is nothing there."""
        try:
            return attrs(self.check(self.call(CMD_STAT, path), CMD_ATTRS))
        except SftpStatus as exc:
            if exc.code == NO_SUCH_FILE:
                return None
            raise

    def write_at(
        self,
        handle: bytes,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        fsync: bool = False,
    ) -> None:
        """Write all of `data` at `offset`; with `fsync`, then flush the file to disk."""
        view = memoryview(data).cast("B")
        step = self.chunk
        reqs: list[Request] = [
            (CMD_WRITE, (handle, int64(offset + o), view[o : o + step]))
            for o in range(0, len(view), step)
        ]
        if fsync:
            reqs.append((CMD_EXTENDED, ("fsync@openssh.com", handle)))
        for reply in self.batch(reqs):
            self.check(reply)

    def open_read(self, path: str) -> bytes:
        return self.check(
            self.call(CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes()), CMD_HANDLE
        ).get_binary()

    def read_at(self, handle: bytes, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`: fewer only when the file ends before."""
        end = offset + length
        pieces: dict[int, bytes] = {}
        todo = [(o, min(self.chunk, end - o)) for o in range(offset, end, self.chunk)]
        while todo:
            replies = self.batch([(CMD_READ, (handle, int64(o), n)) for o, n in todo])
            again = []
            for (o, n), reply in zip(todo, replies, strict=True):
                if reply[0] == CMD_STATUS:
                    try:
                        self.check(reply, CMD_DATA)
                    except SftpStatus as exc:
                        if exc.code != EOF:
                            raise
                        end = min(end, o)
                        continue
                data = self.check(reply, CMD_DATA).get_binary()
                if not data:
                    end = min(end, o)
                    continue
                pieces[o] = data
                if len(data) < n:  # a server may answer short: ask for the rest
                    again.append((o + len(data), n - len(data)))
            todo = [(o, n) for o, n in again if o < end]
        out = bytearray()
        pos = offset
        while pos < end and pos in pieces:
            out += pieces[pos]
            pos += len(pieces[pos])
        return bytes(out[: max(0, end - offset)])

    def read_whole(self, handle: bytes, hint: int) -> bytes:
        """All of an open file whose size is likely `hint`, in one batch when it is: the
        reads of `hint` bytes go out with one more past them, which must find the end."""
        step = self.chunk
        ranges = [(o, min(step, hint - o)) for o in range(0, hint, step)] + [(hint, step)]
        replies = self.batch([(CMD_READ, (handle, int64(o), n)) for o, n in ranges])
        out = bytearray()
        for (o, n), reply in zip(ranges, replies, strict=True):
            if reply[0] == CMD_STATUS:
                try:
                    self.check(reply, CMD_DATA)
                except SftpStatus as exc:
                    if exc.code != EOF:
                        raise
                if o == hint == len(out):
                    return bytes(out)  # the end, where it was expected
                break
            data = self.check(reply, CMD_DATA).get_binary()
            if o != len(out) or (len(data) < n and o < hint):
                break  # a short answer on the way
            out += data
        # not as expected (the file was replaced, or a server answers short): its own size
        size = attrs(self.check(self.call(CMD_FSTAT, handle), CMD_ATTRS))[0] or 0
        return self.read_at(handle, 0, size)

    def list_folders(self, paths: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        """(name, size) of the entries of each folder that exists, all read together."""
        handles: dict[str, bytes] = {}
        error: SftpStatus | None = None
        for path, reply in zip(
            paths, self.batch([(CMD_OPENDIR, (p,)) for p in paths]), strict=True
        ):
            try:
                handles[path] = self.check(reply, CMD_HANDLE).get_binary()
            except SftpStatus as exc:
                if exc.code != NO_SUCH_FILE:
                    error = error or exc
        out: dict[str, list[tuple[str, int]]] = {p: [] for p in handles}
        live = dict(handles)
        while live and error is None:
            replies = self.batch([(CMD_READDIR, (h,)) for h in live.values()])
            for (path, handle), reply in zip(list(live.items()), replies, strict=True):
                try:
                    msg = self.check(reply, CMD_NAME)
                except SftpStatus as exc:
                    if exc.code != EOF:
                        error = error or exc
                    self.close_later(handle)
                    del live[path]
                    continue
                for _ in range(msg.get_int()):
                    name = msg.get_string().decode(errors="surrogateescape")
                    msg.get_string()  # the long name, as `ls -l` would show it
                    size, _mode = attrs(msg)
                    out[path].append((name, size or 0))
        for handle in live.values():
            self.close_later(handle)
        if error is not None:
            raise error
        return out

    def fsync(self, handle: bytes) -> None:
        self.check(self.call(CMD_EXTENDED, "fsync@openssh.com", handle))

    def statvfs(self, path: str) -> tuple[int, int] | None:
        """(bytes free for this account, flags) of the file system holding a path, or None
        when the server cannot tell."""
        if "statvfs@openssh.com" not in self.extensions:
            return None
        try:
            msg = self.check(
                self.call(CMD_EXTENDED, "statvfs@openssh.com", path), CMD_EXTENDED_REPLY
            )
            fields = struct.unpack(">11Q", msg.get_bytes(88))
        except (SftpStatus, struct.error):
            return None
        _bsize, frsize, _blocks, _bfree, bavail = fields[:5]
        return bavail * frsize, fields[9]
