"""The home's side of `ssh+isidorus://` stores: `isidorus backup serve --stdio ROOT`.

A person who lends a disk puts this program in the `command="…"` of the server's key in
authorized_keys. Whatever the server asks to run, sshd runs this instead, and it answers
the store protocol (`remote/wire.py`) on stdin and stdout:

* **Confined**: the client names its store by a path inside ROOT (`…/isidorus` is
  ROOT/isidorus); `..` and symbolic links that lead out are refused, and requests name
  objects by (kind, name) only, never by file path.
* **Append-only** (`--append-only`): objects can be added, never overwritten (names are
  content hashes: an existing name keeps its bytes; a repair may replace only an object
  whose bytes no longer match its name) nor removed at once. A removal of a
  pack, index object, snapshot or key file is queued (`removals.py`) and hidden from the
  client, which sees the mirror it asked for; the objects stay on the home's disk until
  the delay has passed, unless the home's owner cancels. Only the locks and gc markers
  that running commands leave come and go freely.
* **Quota** (`--quota`): a write that would take the files under ROOT past it is refused
  with an error that says so.

Requests are answered one at a time, in order; the client pipelines them. Nothing is
written to stdout but protocol frames; diagnostics go to stderr, which ssh shows the
client.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from isidorus.backup.errors import BackendError
from isidorus.backup.remote import wire
from isidorus.backup.remote.base import CONFIG, KINDS, MUTABLE_KINDS
from isidorus.backup.remote.local import LocalBackend, LocalUpload
from isidorus.backup.removals import RemovalQueue
from isidorus.units import DAY, human_bytes

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_HISTORY_KINDS = frozenset(k for k in KINDS if k not in MUTABLE_KINDS) | {"config"}


@dataclass(frozen=True)
class ServeOptions:
    root: str
    append_only: bool = False
    quota: int = 0  # bytes under root; 0: no quota
    removal_delay: float = 14 * DAY


class Refused(Exception):
    """A request this server does not carry out; sent back as a permanent error."""


def confine(root: str, requested: str) -> str:
    """The directory of the store the client names, inside root; raises Refused when the
    path would lead out of it."""
    parts = [p for p in requested.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise Refused(f"the path {requested!r} leads out of the served directory: '..' is refused")
    if not parts:
        raise Refused("name a store inside the served directory, e.g. ssh+isidorus://host/store")
    real_root = os.path.realpath(root)
    target = os.path.join(real_root, *parts)
    # the deepest part that exists must stay inside root once links are followed
    probe = target
    while not os.path.lexists(probe) and probe != real_root:
        probe = os.path.dirname(probe)
    real = os.path.realpath(probe)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise Refused(
            f"the path {requested!r} leads out of the served directory through a symbolic link"
        )
    return target


def _check_address(kind: str, name: str) -> None:
    if (kind, name) == CONFIG:
        return
    if kind not in KINDS or not isinstance(name, str) or not _NAME.fullmatch(name):
        raise Refused(f"bad object address {kind}/{name}")


def disk_usage(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
    return total


class StoreServer:
    """Answers the requests of one client for one store."""

    def __init__(self, options: ServeOptions, store_dir: str) -> None:
        self.options = options
        self.backend = LocalBackend(store_dir, write_behind=True)
        self.queue = RemovalQueue(store_dir) if options.append_only else None
        self.used = disk_usage(options.root) if options.quota else 0
        self.uploads: dict[int, tuple[LocalUpload, list[int]]] = {}
        self.hidden: set[tuple[str, str]] = set()
        if self.queue is not None:
            if os.path.exists(os.path.join(store_dir, "config")):
                self.queue.apply(self.backend, options.removal_delay)
            self.hidden = {(r.kind, r.name) for r in self.queue.pending()}

    def info(self) -> dict[str, Any]:
        return {
            "version": wire.VERSION,
            "append_only": self.options.append_only,
            "quota": self.options.quota,
            "used": self.used,
        }

    # -- quota
    def _charge(self, n: int) -> None:
        q = self.options.quota
        if q and self.used + n > q:
            raise BackendError(
                f"the home's quota of {human_bytes(q)} is reached ({human_bytes(self.used)} "
                "used): ask the home's owner to raise it, or prune and gc the source so the "
                "copy needs less"
            )
        self.used += n

    # -- operations
    def _visible(self, kind: str, name: str) -> bool:
        return (kind, name) not in self.hidden

    def op_exists(self, kind: str, name: str) -> bool:
        _check_address(kind, name)
        return self._visible(kind, name) and self.backend.exists(kind, name)

    def op_read(self, kind: str, name: str) -> bytes:
        _check_address(kind, name)
        if not self._visible(kind, name):
            raise FileNotFoundError(name)
        return self.backend.read(kind, name)

    def op_read_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        _check_address(kind, name)
        if not self._visible(kind, name):
            raise FileNotFoundError(name)
        if not (0 <= length <= wire.MAX_FRAME // 2):
            raise Refused(f"a read of {length} bytes is too large")
        return self.backend.read_range(kind, name, offset, length)

    def _wanted_again(self, kind: str, name: str) -> None:
        if (kind, name) in self.hidden:
            self.hidden.discard((kind, name))
            assert self.queue is not None
            self.queue.forget(kind, name)

    def op_write(self, tag: str, kind: str, name: str, data: bytes, exclusive: bool) -> None:
        _check_address(kind, name)
        if self.options.append_only and exclusive and not self._visible(kind, name):
            raise FileExistsError(name)  # still on disk: it keeps its place
        self._charge(len(data))
        self.backend.tmp_tag = tag
        self.backend.write(kind, name, data, exclusive=exclusive)
        self._wanted_again(kind, name)

    def _damaged(self, kind: str, name: str) -> bool:
        try:
            return hashlib.sha256(self.backend.read(kind, name)).hexdigest() != name
        except FileNotFoundError:
            return True

    def op_replace(self, tag: str, kind: str, name: str, data: bytes) -> None:
        _check_address(kind, name)
        if self.options.append_only and kind in _HISTORY_KINDS:
            # a repair may only put intact bytes where the object is damaged or gone:
            # both can be checked here without the key, so no history can be overwritten
            if kind == "config" or hashlib.sha256(data).hexdigest() != name:
                raise Refused(
                    "this copy is served append-only: only a damaged object can be "
                    "replaced, by bytes that match its name"
                )
            if not self._damaged(kind, name):
                raise Refused(
                    f"{kind}/{name} is intact at this append-only copy: it is not replaced"
                )
        self._charge(len(data))
        self.backend.tmp_tag = tag
        self.backend.replace(kind, name, data)

    def op_remove(self, kind: str, name: str) -> str:
        _check_address(kind, name)
        if self.queue is not None and kind in _HISTORY_KINDS:
            if kind == "config":
                raise Refused("this copy is served append-only: its config stays")
            if not self.backend.exists(kind, name) or (kind, name) in self.hidden:
                return "absent"
            self.queue.ask(kind, name)
            self.hidden.add((kind, name))
            return "queued"
        self.backend.remove(kind, name)
        return "removed"

    def op_list(self, kind: str) -> list[tuple[str, int]]:
        if kind not in KINDS:
            raise Refused(f"no kind of object is called {kind!r}")
        return [(n, s) for n, s in self.backend.list(kind) if (kind, n) not in self.hidden]

    def op_create(self) -> None:
        self.backend.create()

    def op_clean_tmp(self, alive: list[str]) -> None:
        self.backend.clean_tmp(set(alive))

    def op_upload_open(self, tag: str, handle: int) -> None:
        # the client numbers its uploads, so it can stream one without waiting for an answer
        if handle in self.uploads:
            raise Refused(f"upload {handle} is already open")
        self.backend.tmp_tag = tag
        self.uploads[handle] = (self.backend.upload(), [0])

    def _upload(self, handle: int) -> tuple[LocalUpload, list[int]]:
        try:
            return self.uploads[handle]
        except KeyError:
            raise Refused(f"no upload {handle} is open (it failed earlier)") from None

    def op_upload_write(self, handle: int, data: bytes) -> None:
        upload, size = self._upload(handle)
        try:
            self._charge(len(data))
            upload.write(data)
        except BaseException:
            self.uploads.pop(handle, None)
            upload.abort()
            raise
        size[0] += len(data)

    def op_upload_commit(self, handle: int, kind: str, name: str) -> None:
        _check_address(kind, name)
        upload, _written = self._upload(handle)
        del self.uploads[handle]
        upload.commit(kind, name)
        self._wanted_again(kind, name)

    def op_upload_abort(self, handle: int) -> None:
        entry = self.uploads.pop(handle, None)
        if entry is not None:
            entry[0].abort()
            self.used -= entry[1][0]  # a dropped upload (a head start not needed) is free

    def close(self) -> None:
        for upload, _size in self.uploads.values():
            upload.abort()
        self.uploads.clear()
        self.backend.close()
        if self.queue is not None:
            self.queue.close()

    def dispatch(self, op: str, args: list[Any]) -> Any:
        if op not in wire.OPS:
            raise Refused(f"unknown request {op!r}: is the client a newer isidorus?")
        method: Callable[..., Any] = getattr(self, "op_" + op)
        try:
            return method(*args)
        except TypeError as exc:
            raise Refused(f"malformed request {op}: {exc}") from None


def _error(exc: BaseException) -> list[Any]:
    if isinstance(exc, FileNotFoundError):
        return [1, "notfound", str(exc), True]
    if isinstance(exc, FileExistsError):
        return [1, "exists", str(exc), True]
    if isinstance(exc, BackendError):
        return [1, "backend", str(exc), exc.permanent]
    if isinstance(exc, Refused | ValueError):
        return [1, "backend", str(exc), True]
    if isinstance(exc, OSError):
        return [1, "backend", f"{exc.strerror or exc}", False]
    return [1, "backend", f"the home's isidorus failed: {type(exc).__name__}: {exc}", False]


def _read_frame(stream: BinaryIO) -> Any | None:
    header = stream.read(wire.HEADER)
    if not header:
        return None
    if len(header) < wire.HEADER:
        raise wire.ProtocolError("the client went away in the middle of a request")
    n = wire.frame_length(header)
    body = stream.read(n)
    if len(body) < n:
        raise wire.ProtocolError("the client went away in the middle of a request")
    return wire.decode(body)


class _Frames:
    """Writes whole frames to the client, from the serving loop and the ticker alike."""

    def __init__(self, wfile: BinaryIO) -> None:
        self.wfile = wfile
        self.lock = threading.Lock()

    def send(self, message: Any) -> None:
        frame = wire.encode(message)
        with self.lock:
            self.wfile.write(frame)
            self.wfile.flush()


def _tick(frames: _Frames, every: float, done: threading.Event) -> None:
    """A sign of life every `every` seconds, whatever the serving loop is busy with, so
    the client can tell a cut link from a slow request."""
    while not done.wait(every):
        try:
            frames.send([wire.TICK])
        except (OSError, ValueError):
            return  # the client is gone: the serving loop finds out too


def _ticks_asked(options: Any) -> float:
    every = options.get("ticks", 0) if isinstance(options, dict) else 0
    if not isinstance(every, int | float) or every <= 0:
        return 0.0
    return max(float(every), wire.MIN_TICK)


def serve(options: ServeOptions, rfile: BinaryIO, wfile: BinaryIO) -> None:
    """Serve one client until it closes the pipe. Raises ProtocolError on garbage."""
    hello = _read_frame(rfile)
    if hello is None:
        return
    if not (isinstance(hello, list) and len(hello) == 3 and hello[0] == "hello"):
        raise wire.ProtocolError("the client did not start with a hello")
    server: StoreServer | None = None
    ticks = _ticks_asked(hello[2])
    try:
        if hello[1] != wire.VERSION:
            raise Refused(
                f"the client speaks version {hello[1]} of the store protocol, this home "
                f"{wire.VERSION}: install the same isidorus on both sides"
            )
        path = hello[2].get("path", "") if isinstance(hello[2], dict) else ""
        server = StoreServer(options, confine(options.root, str(path)))
        answer: list[Any] = [0, 0, {**server.info(), "ticks": ticks}]
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
        answer = [0, *_error(exc)]
    frames = _Frames(wfile)
    frames.send(answer)
    if server is None:
        return
    done = threading.Event()
    ticker = threading.Thread(target=_tick, args=(frames, ticks, done), daemon=True)
    if ticks:
        ticker.start()
    try:
        while (request := _read_frame(rfile)) is not None:
            if not (isinstance(request, list) and len(request) >= 2):
                raise wire.ProtocolError("a request is not a list")
            rid, op, *args = request
            try:
                reply = [rid, 0, server.dispatch(str(op), args)]
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
                reply = [rid, *_error(exc)]
            frames.send(reply)
    finally:
        done.set()
        if ticker.ident is not None:
            ticker.join()  # gone before the process ends: it may then end at once
        server.close()


def serve_stdio(options: ServeOptions) -> None:
    # the protocol owns stdout: anything printed by accident would corrupt it
    rfile = os.fdopen(os.dup(0), "rb", buffering=1024 * 1024)
    wfile = os.fdopen(os.dup(1), "wb", buffering=1024 * 1024)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = sys.stderr
    try:
        serve(options, rfile, wfile)
    finally:
        rfile.close()
        with contextlib.suppress(BrokenPipeError, ValueError):
            wfile.close()
