"""A store served by isidorus on another host: `ssh+isidorus://[user@]host[:port]/path`.

The operator's ssh runs `isidorus backup serve --stdio /` on the host (or, at a home that
lends a disk, sshd runs the forced command of the key, which may confine the store to a
folder and make it append-only: see `serve.py`). Both ends then speak the store protocol of
`wire.py` over the one connection. Requests are pipelined: each thread sends its request
and waits for its own answer while others are in flight, and a pack streams as a run of
writes with no wait at all until it is committed, so a home's slow, far link stays busy.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from isidorus.backup.errors import BackendError
from isidorus.backup.remote import wire
from isidorus.backup.remote.ssh import RateLimit, SshPipe, SshTarget, serve_argv, take_ahead

PIECE = 1024 * 1024  # an upload's bytes cross in pieces of this size
HELLO = 0  # the number of the hello's answer (requests count from 1)
TICKS = 15.0  # seconds between the home's signs of life
SILENCE = 4  # signs of life missed in a row: the link (or the home) is gone


class ServedUpload:
    def __init__(self, backend: ServedBackend) -> None:
        self.backend = backend
        self.handle = next(backend._handles)
        self.sent: list[Future[Any]] = [backend._send("upload_open", backend.tmp_tag, self.handle)]

    def _check_early(self) -> None:
        # fail fast (disk full, quota) instead of streaming the rest of a pack for nothing
        while self.sent and self.sent[0].done():
            self.backend._result(self.sent.pop(0))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), PIECE):
            piece = bytes(view[offset : offset + PIECE])
            sent = self.backend._send("upload_write", self.handle, piece)
            self.sent.append(self.backend._on_the_way(len(piece), sent))
        self._check_early()

    def commit(self, kind: str, name: str) -> None:
        done = self.backend._send("upload_commit", self.handle, kind, name)
        try:
            for f in self.sent:
                self.backend._result(f)
        finally:
            self.sent = []
        self.backend._result(done)

    def abort(self) -> None:
        self.sent = []
        # when the connection is gone, the home throws the piece away with it
        with contextlib.suppress(BackendError):
            self.backend._send("upload_abort", self.handle)


class ServedBackend:
    """The client of `isidorus backup serve`. Thread-safe; one ssh connection."""

    def __init__(
        self,
        url: str,
        ssh_command: str = "ssh",
        *,
        rate_limit: RateLimit | None = None,
        remote_command: str = "isidorus",
        argv: list[str] | None = None,
    ) -> None:
        self.target = SshTarget.parse(url)
        self.location = url
        self.tmp_tag = "nosession"
        self.info: dict[str, Any] = {}
        self.removals_queued = 0  # removals the home only queued (append-only)
        self._argv = argv or serve_argv(self.target, ssh_command, remote_command)
        self._rate_limit = rate_limit
        self._pipe: SshPipe | None = None
        self._broken: BackendError | None = None
        self._connect_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._handles = itertools.count(1)
        self._reader: threading.Thread | None = None
        self._early: threading.Thread | None = None
        self._early_error: Exception | None = None
        self._watchdog: threading.Thread | None = None
        self._unanswered = 0  # bytes of uploads sent and not answered yet
        self._answered = threading.Condition()

    # -- connection
    def connect_soon(self) -> None:
        """Start connecting now, in the background: ssh's handshake and the remote
        isidorus's start-up (a few tenths of a second) then overlap the caller's own work
        before its first request. A failure is met again, and raised, by that request."""
        if self._early is None and self._pipe is None:
            self._early = threading.Thread(target=self._connect_quietly, daemon=True)
            self._early.start()

    def _connect_quietly(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001 - the first request raises it
            self._early_error = exc

    def _connect(self) -> SshPipe:
        with self._connect_lock:
            if self._broken is not None:
                raise self._broken
            if self._early_error is not None:
                early, self._early_error = self._early_error, None
                raise early
            if self._pipe is not None:
                return self._pipe
            # ssh may be on its way already (cli/early.py): the same command line takes it
            pipe = take_ahead(self._argv) or SshPipe(self.target, self._argv)
            pipe.rate_limit = self._rate_limit
            # requests follow the hello without waiting for its answer (the home's isidorus
            # starting): that answer, the first one read, says whether they were served
            try:
                hello = {"path": self.target.path, "ticks": TICKS}
                pipe.sendall(wire.encode(["hello", wire.VERSION, hello]))
            except BackendError:
                pipe.close()
                raise
            self._pipe = pipe
            self._reader = threading.Thread(target=self._read_loop, args=(pipe,), daemon=True)
            self._reader.start()
            return pipe

    def _read_message(self, pipe: SshPipe) -> Any:
        header = pipe.recv(wire.HEADER)
        if not header:
            raise pipe.failure()
        if len(header) < wire.HEADER:
            header += pipe.recv_exactly(wire.HEADER - len(header))
        return wire.decode(pipe.recv_exactly(wire.frame_length(header)))

    def _greeting(self, pipe: SshPipe) -> None:
        """Read the hello's answer: INFO, or why the home serves nothing (raised)."""
        try:
            answer = self._read_message(pipe)
        except wire.ProtocolError as exc:
            raise BackendError(
                f"{self.target.display} does not answer as `isidorus backup serve`: {exc} "
                "(is isidorus installed there, and the forced command right?)"
            ) from None
        if not (isinstance(answer, list) and len(answer) >= 3 and answer[0] == HELLO):
            raise BackendError(f"{self.target.display} answered the hello with garbage")
        if answer[1] != 0:
            kind, message, permanent = (list(answer[2:]) + ["backend", "", True])[:3]
            raise BackendError(f"{self.target.display}: {message}", permanent=bool(permanent))
        self.info = dict(answer[2])

    @property
    def answering(self) -> bool:
        """Whether the home's isidorus has answered the hello (its INFO is known)."""
        return bool(self.info)

    def _watch(self, pipe: SshPipe, every: float) -> None:
        """End the connection once the home has sent nothing, not even its signs of life,
        for SILENCE of them: a cut link is then reported in about a minute instead of
        hanging for as long as TCP keeps trying (ssh's own keepalives, when the operator
        set some up, may well end it sooner)."""
        while not pipe.wait_closed(every):
            quiet = time.monotonic() - pipe.last_heard
            if quiet > every * SILENCE:
                with self._send_lock:
                    self._broken = self._broken or BackendError(
                        f"{self.target.display} has sent nothing for {quiet:.0f} s: the link "
                        "or the home is down (run the command again once it is back)",
                        permanent=False,
                    )
                pipe.kill()  # the reader then fails what waits with that error
                return

    def _read_loop(self, pipe: SshPipe) -> None:
        error: BackendError
        try:
            self._greeting(pipe)
            every = self.info.get("ticks")
            if isinstance(every, int | float) and every > 0:
                self._watchdog = threading.Thread(
                    target=self._watch, args=(pipe, every), daemon=True
                )
                self._watchdog.start()
            while True:
                message = self._read_message(pipe)
                future = self._pending.pop(message[0], None)
                if future is not None:
                    future.set_result(message)
        except BackendError as exc:
            error = exc
        except (wire.ProtocolError, IndexError, TypeError) as exc:
            error = BackendError(f"{self.target.display} broke the store protocol: {exc}")
        with self._send_lock:
            # a verdict given before (closed here, a silent home) says more than the EOF
            error = self._broken = self._broken or error
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(error)
        pipe.close()  # the connection is over: ssh and its pipes go now, not at close()

    def _send(self, op: str, *args: Any) -> Future[Any]:
        pipe = self._connect()
        future: Future[Any] = Future()
        with self._send_lock:
            if self._broken is not None:
                raise self._broken
            rid = next(self._ids)
            self._pending[rid] = future
            try:
                pipe.sendall(wire.encode([rid, op, *args]))
                return future
            except BackendError as exc:
                self._pending.pop(rid, None)
                failed = exc
        # the reader knows better why the pipe broke: the home may have refused the hello
        if self._reader is not None:
            self._reader.join(timeout=5)
        with self._send_lock:
            self._broken = self._broken or failed
            raise self._broken

    def _on_the_way(self, n: int, future: Future[Any]) -> Future[Any]:
        """Count `n` bytes of an upload as unanswered until `future` is (or fails)."""
        with self._answered:
            self._unanswered += n

        def answered(_f: Future[Any]) -> None:
            with self._answered:
                self._unanswered -= n
                self._answered.notify_all()

        future.add_done_callback(answered)
        return future

    def wait_unanswered(self, limit: int, timeout: float) -> bool:
        # a broken connection fails every pending future: their bytes count no more
        with self._answered:
            return self._answered.wait_for(lambda: self._unanswered <= limit, timeout)

    def _error(self, fields: list[Any], what: str) -> Exception:
        kind, message, permanent = (list(fields) + ["backend", "", True])[:3]
        if kind == "notfound":
            return FileNotFoundError(what)
        if kind == "exists":
            return FileExistsError(what)
        return BackendError(f"{self.target.display}: {message}", permanent=bool(permanent))

    def _result(self, future: Future[Any], what: str = "") -> Any:
        message = future.result()
        if message[1] == 0:
            return message[2]
        raise self._error(message[2:], what)

    def _call(self, op: str, *args: Any, what: str = "") -> Any:
        return self._result(self._send(op, *args), what)

    # -- the Backend protocol
    def exists(self, kind: str, name: str) -> bool:
        return bool(self._call("exists", kind, name))

    def read(self, kind: str, name: str) -> bytes:
        return bytes(self._call("read", kind, name, what=f"{kind}/{name}"))

    def read_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        data = bytes(self._call("read_range", kind, name, offset, length, what=f"{kind}/{name}"))
        if len(data) != length:
            raise BackendError(f"{kind}/{name} is shorter than expected (truncated?)")
        return data

    def write(
        self, kind: str, name: str, data: bytes | bytearray | memoryview, *, exclusive: bool = False
    ) -> None:
        if len(data) > PIECE:
            if exclusive and self.exists(kind, name):
                raise FileExistsError(f"{kind}/{name}")
            upload = self.upload()
            try:
                upload.write(data)
                upload.commit(kind, name)
            except BaseException:
                upload.abort()
                raise
            return
        self._call("write", self.tmp_tag, kind, name, bytes(data), exclusive, what=f"{kind}/{name}")

    def replace(self, kind: str, name: str, data: bytes | bytearray | memoryview) -> None:
        self._call("replace", self.tmp_tag, kind, name, bytes(data), what=f"{kind}/{name}")

    def upload(self) -> ServedUpload:
        return ServedUpload(self)

    def remove(self, kind: str, name: str) -> None:
        if self._call("remove", kind, name) == "queued":
            self.removals_queued += 1

    def list(self, kind: str) -> Iterator[tuple[str, int]]:
        for name, size in self._call("list", kind):
            yield str(name), int(size)

    def create(self) -> None:
        self._call("create", what=self.target.path)

    def clean_tmp(self, alive: set[str]) -> None:
        self._call("clean_tmp", sorted(alive))

    def close(self) -> None:
        with self._connect_lock:
            pipe, self._pipe = self._pipe, None
            if self._broken is None:
                self._broken = BackendError("the connection to the store is closed")
        if pipe is not None:
            pipe.close()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._watchdog is not None:  # started by the reader: known once it is over
            self._watchdog.join(timeout=10)
