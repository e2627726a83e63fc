"""The contract of `base.Backend`, as checks every backend must pass.

Modelled on restic's `internal/backend/test/suite.go`: each check is a plain function that
takes a freshly created, empty backend and raises AssertionError when the backend breaks
the contract written in `base.py`. `run_conformance` runs them all, each on a new backend
from a factory; a test suite may instead run `CHECKS` one by one to see each result.

    from isidorus.backup.remote import conformance
    conformance.run_conformance(lambda: MyBackend(...))

Nothing here imports a test framework, so a backend living outside isidorus can run it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from isidorus.backup.errors import BackendError
from isidorus.backup.remote.base import CONFIG, KINDS, MUTABLE_KINDS, Backend, Replacing

IMMUTABLE_KINDS = tuple(k for k in KINDS if k not in MUTABLE_KINDS)

Check = Callable[[Backend], None]


def content_name(data: bytes) -> str:
    """The name an immutable object with these bytes has: their SHA-256 in hex."""
    return hashlib.sha256(data).hexdigest()


def _data(tag: str, size: int = 1000) -> bytes:
    # distinct, reproducible content for each tag (not all zeros: some stores dedup those)
    out = bytearray()
    block = hashlib.sha256(tag.encode()).digest()
    while len(out) < size:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:size])


def _listing(backend: Backend, kind: str) -> dict[str, int]:
    names: dict[str, int] = {}
    for name, size in backend.list(kind):
        if name in names:
            raise AssertionError(f"list({kind!r}) yields {name} twice")
        names[name] = size
    return names


def _raises(
    exc: type[BaseException], what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> BaseException:
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    except Exception as e:
        raise AssertionError(f"{what}: expected {exc.__name__}, got {e!r}") from e
    raise AssertionError(f"{what}: expected {exc.__name__}, nothing was raised")


def _eq(got: object, want: object, what: str) -> None:
    if got != want:
        g, w = repr(got), repr(want)
        raise AssertionError(f"{what}: got {g[:200]}, want {w[:200]}")


# -- the checks


def check_empty(backend: Backend) -> None:
    """A new store lists nothing and has no config."""
    for kind in KINDS:
        _eq(_listing(backend, kind), {}, f"list({kind!r}) of a new store")
    _eq(backend.exists(*CONFIG), False, "exists(config) of a new store")


def check_create_twice(backend: Backend) -> None:
    """create() again before any config exists starts an unfinished init over: it
    succeeds and drops the key files that init had written (a store exists once its
    config does)."""
    backend.write("keys", content_name(b"stale key"), b"stale key")
    backend.create()
    _eq([n for n, _ in backend.list("keys")], [], "key files after create() again")


def check_create_over_store(backend: Backend) -> None:
    """create() where a store with a config exists raises FileExistsError, losing nothing."""
    config = b'{"format": "test"}\n'
    backend.write(*CONFIG, config)
    data = _data("create-over")
    backend.write("data", content_name(data), data)
    _raises(FileExistsError, "create() over a store", backend.create)
    _eq(backend.read(*CONFIG), config, "config after a second create()")
    _eq(backend.read("data", content_name(data)), data, "object after a second create()")


def check_write_read(backend: Backend) -> None:
    """Every kind: what is written reads back whole, from bytes, bytearray or memoryview."""
    wrappers: tuple[Callable[[bytes], bytes | bytearray | memoryview], ...] = (
        bytes,
        bytearray,
        memoryview,
    )
    for i, kind in enumerate(KINDS):
        for j, wrap in enumerate(wrappers):
            data = _data(f"{kind}-{j}", 100 + 977 * i + j)
            name = content_name(data) if kind not in MUTABLE_KINDS else f"{kind}{j}"
            _eq(backend.exists(kind, name), False, f"exists({kind}/{name}) before write")
            backend.write(kind, name, wrap(data))
            _eq(backend.exists(kind, name), True, f"exists({kind}/{name}) after write")
            got = backend.read(kind, name)
            _eq(type(got), bytes, f"type of read({kind}/{name})")
            _eq(got, data, f"read({kind}/{name})")
    config = b'{"format": "test"}\n'
    backend.write(*CONFIG, config)
    _eq(backend.read(*CONFIG), config, "read(config)")


def check_empty_object(backend: Backend) -> None:
    """An object of zero bytes is an object: it exists, lists with size 0, reads as b""."""
    name = content_name(b"")
    backend.write("index", name, b"")
    _eq(backend.exists("index", name), True, "exists of an empty object")
    _eq(backend.read("index", name), b"", "read of an empty object")
    _eq(_listing(backend, "index"), {name: 0}, "list of an empty object")


def check_large_object(backend: Backend) -> None:
    """A pack-sized object (several MiB) reads back whole and by ranges."""
    data = os.urandom(5 * 1024 * 1024 + 13)
    name = content_name(data)
    backend.write("data", name, memoryview(data))
    _eq(backend.read("data", name) == data, True, "read of a large object is whole")
    _eq(
        backend.read_range("data", name, len(data) - 100, 100),
        data[-100:],
        "read_range at the end of a large object",
    )
    _eq(_listing(backend, "data"), {name: len(data)}, "list of a large object")


def check_read_range(backend: Backend) -> None:
    """read_range returns exactly the bytes asked for; past the end is an error."""
    data = _data("range", 4096 + 7)
    name = content_name(data)
    backend.write("data", name, data)
    n = len(data)
    for offset, length in (
        (0, n),
        (0, 1),
        (1, 10),
        (4000, 103),
        (n - 1, 1),
        (n, 0),
        (17, 0),
        (1234, 2000),
    ):
        _eq(
            backend.read_range("data", name, offset, length),
            data[offset : offset + length],
            f"read_range(offset={offset}, length={length})",
        )
    for offset, length in ((n - 10, 11), (n, 1), (n + 100, 5)):
        _raises(
            BackendError,
            f"read_range(offset={offset}, length={length}) past the end of {n} bytes",
            backend.read_range,
            "data",
            name,
            offset,
            length,
        )


def check_read_missing(backend: Backend) -> None:
    """read and read_range of a missing object raise FileNotFoundError."""
    for kind in KINDS:
        name = content_name(kind.encode())
        _eq(backend.exists(kind, name), False, f"exists({kind}/missing)")
        _raises(FileNotFoundError, f"read({kind}/missing)", backend.read, kind, name)
        _raises(
            FileNotFoundError, f"read_range({kind}/missing)", backend.read_range, kind, name, 0, 1
        )
    _raises(FileNotFoundError, "read(config) of a store without one", backend.read, *CONFIG)


def check_list(backend: Backend) -> None:
    """list yields every object of one kind with its size, each once, and nothing else."""
    want: dict[str, dict[str, int]] = {k: {} for k in KINDS}
    for kind in KINDS:
        for i in range(5 if kind != "data" else 40):  # data: spread over many folders
            data = _data(f"list-{kind}-{i}", 10 * i + (kind == "data"))
            name = content_name(data) if kind not in MUTABLE_KINDS else f"{kind}-{i}"
            backend.write(kind, name, data)
            want[kind][name] = len(data)
    backend.write(*CONFIG, b"{}")
    for kind in KINDS:
        _eq(_listing(backend, kind), want[kind], f"list({kind!r})")


def check_immutable_kinds(backend: Backend) -> None:
    """An immutable object is never replaced: writing its name again is a no-op, and with
    exclusive=True raises FileExistsError."""
    for kind in IMMUTABLE_KINDS:
        data = _data(f"immutable-{kind}")
        name = content_name(data)
        backend.write(kind, name, data, exclusive=True)
        backend.write(kind, name, data)  # the same again: fine, nothing changes
        _raises(
            FileExistsError,
            f"exclusive write of existing {kind}/{name}",
            backend.write,
            kind,
            name,
            data,
            exclusive=True,
        )
        # names are content hashes, so other bytes under the same name can only be damage
        backend.write(kind, name, b"something else")
        _eq(backend.read(kind, name), data, f"{kind}/{name} after writing it again")
        _eq(_listing(backend, kind), {name: len(data)}, f"list({kind!r}) after rewrites")


def check_mutable_kinds(backend: Backend) -> None:
    """locks and gc objects may be replaced; exclusive=True still refuses an existing one."""
    for kind in sorted(MUTABLE_KINDS):
        name = "state"
        first, second = _data(f"{kind}-1", 300), _data(f"{kind}-2", 200)
        backend.write(kind, name, first, exclusive=True)
        _eq(backend.read(kind, name), first, f"{kind}/{name} after the first write")
        backend.write(kind, name, second)
        _eq(backend.read(kind, name), second, f"{kind}/{name} after being replaced")
        _raises(
            FileExistsError,
            f"exclusive write of existing {kind}/{name}",
            backend.write,
            kind,
            name,
            first,
            exclusive=True,
        )
        _eq(backend.read(kind, name), second, f"{kind}/{name} after a refused write")
        _eq(_listing(backend, kind), {name: len(second)}, f"list({kind!r})")


def check_read_range_after_replace(backend: Backend) -> None:
    """read_range of a replaced mutable object returns the new bytes, even when the old
    object was read before."""
    for kind in sorted(MUTABLE_KINDS):
        first, second = _data(f"{kind}-old", 300), _data(f"{kind}-new", 300)
        backend.write(kind, "state", first)
        _eq(backend.read_range(kind, "state", 0, 32), first[:32], f"read_range of {kind}")
        backend.write(kind, "state", second)
        _eq(
            backend.read_range(kind, "state", 0, 32),
            second[:32],
            f"read_range of {kind}/state after it was replaced",
        )


def check_remove(backend: Backend) -> None:
    """remove deletes one object; removing a missing object is not an error."""
    for kind in KINDS:
        keep, drop = _data(f"keep-{kind}"), _data(f"drop-{kind}")
        kname = content_name(keep) if kind not in MUTABLE_KINDS else "keep"
        dname = content_name(drop) if kind not in MUTABLE_KINDS else "drop"
        backend.write(kind, kname, keep)
        backend.write(kind, dname, drop)
        backend.read_range(kind, dname, 0, 5)  # a backend may keep it open: must not matter
        backend.remove(kind, dname)
        _eq(backend.exists(kind, dname), False, f"exists({kind}) after remove")
        _raises(FileNotFoundError, f"read({kind}) after remove", backend.read, kind, dname)
        _raises(
            FileNotFoundError,
            f"read_range({kind}) after remove",
            backend.read_range,
            kind,
            dname,
            0,
            5,
        )
        _eq(_listing(backend, kind), {kname: len(keep)}, f"list({kind!r}) after remove")
        backend.remove(kind, dname)  # again: idempotent
        backend.remove(kind, content_name(b"never written"))
        _eq(backend.read(kind, kname), keep, f"the other {kind} object after remove")


def check_write_after_remove(backend: Backend) -> None:
    """A removed name can be written again, and reads give the new object."""
    data = _data("again", 5000)
    name = content_name(data)
    backend.write("data", name, data)
    _eq(backend.read_range("data", name, 0, 100), data[:100], "read_range before remove")
    backend.remove("data", name)
    backend.write("data", name, data)
    _eq(
        backend.read_range("data", name, 100, 100),
        data[100:200],
        "read_range after remove and write",
    )
    backend.write("locks", "x", b"one")
    backend.remove("locks", "x")
    backend.write("locks", "x", b"two", exclusive=True)
    _eq(backend.read("locks", "x"), b"two", "a lock written after its removal")


def check_upload(backend: Backend) -> None:
    """An upload is written in pieces, invisible until committed under its name; an
    aborted one leaves nothing."""
    parts = [_data("up-1", 70000), b"", _data("up-2", 3), _data("up-3", 100000)]
    whole = b"".join(parts)
    name = content_name(whole)
    up = backend.upload()
    for i, part in enumerate(parts):
        up.write(memoryview(part) if i % 2 else part)
    _eq(_listing(backend, "data"), {}, "list(data) before the upload is committed")
    up.commit("data", name)
    _eq(backend.read("data", name) == whole, True, "read of a committed upload")
    _eq(_listing(backend, "data"), {name: len(whole)}, "list(data) after commit")
    _eq(
        backend.read_range("data", name, 69990, 20),
        whole[69990:70010],
        "read_range across the parts of an upload",
    )

    gone = backend.upload()
    gone.write(_data("aborted", 5000))
    gone.abort()
    _eq(_listing(backend, "data"), {name: len(whole)}, "list(data) after an abort")

    again = backend.upload()  # the same object again: a no-op, like write
    again.write(whole)
    again.commit("data", name)
    _eq(backend.read("data", name) == whole, True, "an upload committed twice")
    _eq(_listing(backend, "data"), {name: len(whole)}, "list(data) after a second commit")

    empty = backend.upload()
    empty.commit("index", content_name(b""))
    _eq(backend.read("index", content_name(b"")), b"", "an empty upload")


def check_upload_mutable(backend: Backend) -> None:
    """Committing an upload under an existing mutable name replaces it, as write does."""
    backend.write("gc", "state", b"old")
    up = backend.upload()
    up.write(b"new")
    up.commit("gc", "state")
    _eq(backend.read("gc", "state"), b"new", "gc/state after an upload replaced it")


def check_replace(backend: Backend) -> None:
    """A backend that offers `replace` (optional) swaps a damaged immutable object for
    intact bytes, new readers and ranges see them, and a missing one is simply written."""
    if not isinstance(backend, Replacing):
        return  # repairs then remove and write: nothing more to check
    good = _data("replace", 5000)
    name = content_name(good)
    backend.write("data", name, b"damaged bytes")
    _eq(backend.read_range("data", name, 0, 7), b"damaged", "read_range before replace")
    backend.replace("data", name, good)
    _eq(backend.read("data", name), good, "read after replace")
    _eq(backend.read_range("data", name, 4000, 10), good[4000:4010], "read_range after replace")
    _eq(_listing(backend, "data"), {name: len(good)}, "list(data) after replace")
    other = _data("replace-missing", 300)
    backend.replace("index", content_name(other), other)
    _eq(backend.read("index", content_name(other)), other, "replace of a missing object")
    backend.write(*CONFIG, b"{damaged")
    backend.replace(*CONFIG, b"{}")
    _eq(backend.read(*CONFIG), b"{}", "config after replace")


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:  # reported in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"{len(errors)} of {n} threads failed: {errors[0]!r}") from errors[0]


def check_concurrent_writes(backend: Backend) -> None:
    """Threads writing distinct objects, and the same object, all at once."""
    n, per_thread = 8, 12
    shared = _data("shared", 70000)
    shared_name = content_name(shared)
    written: list[dict[str, bytes]] = [{} for _ in range(n)]

    def work(i: int) -> None:
        for j in range(per_thread):
            data = _data(f"concurrent-{i}-{j}", 1000 + 4096 * j)
            name = content_name(data)
            backend.write("data", name, data)
            written[i][name] = data
            backend.write("data", shared_name, shared)
            backend.write("locks", f"t{i}", data)

    _run_threads(n, work)
    want = {name: len(d) for w in written for name, d in w.items()}
    want[shared_name] = len(shared)
    _eq(_listing(backend, "data"), want, "list after concurrent writes")
    for w in written:
        for name, data in w.items():
            _eq(backend.read("data", name) == data, True, f"data/{name} written concurrently")
    _eq(backend.read("data", shared_name) == shared, True, "an object all threads wrote")
    _eq(
        sorted(_listing(backend, "locks")),
        sorted(f"t{i}" for i in range(n)),
        "locks written concurrently",
    )


def check_concurrent_exclusive(backend: Backend) -> None:
    """Of threads racing for one name with exclusive=True, exactly one wins."""
    n = 8
    for round_ in range(5):
        name = f"race{round_}"
        won: list[int] = []
        lost: list[int] = []

        def race(i: int, name: str = name, won: list[int] = won, lost: list[int] = lost) -> None:
            try:
                backend.write("locks", name, str(i).encode(), exclusive=True)
            except FileExistsError:
                lost.append(i)
            else:
                won.append(i)

        _run_threads(n, race)
        _eq(len(won), 1, f"winners of an exclusive write race (round {round_})")
        _eq(len(lost), n - 1, f"losers of an exclusive write race (round {round_})")
        _eq(backend.read("locks", name), str(won[0]).encode(), "the winner's lock")


def check_concurrent_reads(backend: Backend) -> None:
    """Threads reading ranges of many objects at once each get the bytes they asked for
    (more objects than a backend would reasonably keep open)."""
    objs = [_data(f"read-{i}", 2048 + i) for i in range(150)]
    names = [content_name(d) for d in objs]
    for name, data in zip(names, objs, strict=True):
        backend.write("data", name, data)

    def work(i: int) -> None:
        for rounds in range(2):  # twice over every object: cached and evicted handles
            for k in range(len(objs)):
                j = (k * 7 + i * 31 + rounds) % len(objs)
                off = (i * 97 + k) % 2000
                got = backend.read_range("data", names[j], off, 48)
                if got != objs[j][off : off + 48]:
                    raise AssertionError(
                        f"read_range of data/{names[j]} at {off} returned other bytes"
                    )

    _run_threads(6, work)


def check_concurrent_uploads(backend: Backend) -> None:
    """Uploads from several threads at once, interleaved, each committed whole."""
    n = 6
    wholes: list[bytes] = [b""] * n

    def work(i: int) -> None:
        up = backend.upload()
        pieces = [_data(f"cu-{i}-{j}", 3000 + 1000 * i + j) for j in range(20)]
        for piece in pieces:
            up.write(piece)
        wholes[i] = b"".join(pieces)
        up.commit("data", content_name(wholes[i]))

    _run_threads(n, work)
    _eq(
        _listing(backend, "data"),
        {content_name(w): len(w) for w in wholes},
        "list after concurrent uploads",
    )
    for w in wholes:
        _eq(backend.read("data", content_name(w)) == w, True, "a concurrent upload")


def check_concurrent_remove(backend: Backend) -> None:
    """Threads removing the same objects at once: no errors, nothing left."""
    objs = [_data(f"rm-{i}") for i in range(30)]
    for d in objs:
        backend.write("index", content_name(d), d)

    def work(i: int) -> None:
        for d in objs:
            backend.remove("index", content_name(d))

    _run_threads(4, work)
    _eq(_listing(backend, "index"), {}, "list after concurrent removes")


CHECKS: tuple[Check, ...] = (
    check_empty,
    check_create_twice,
    check_create_over_store,
    check_write_read,
    check_empty_object,
    check_large_object,
    check_read_range,
    check_read_missing,
    check_list,
    check_immutable_kinds,
    check_mutable_kinds,
    check_read_range_after_replace,
    check_remove,
    check_write_after_remove,
    check_upload,
    check_upload_mutable,
    check_replace,
    check_concurrent_writes,
    check_concurrent_exclusive,
    check_concurrent_reads,
    check_concurrent_uploads,
    check_concurrent_remove,
)


def run_check(factory: Callable[[], Backend], check: Check) -> None:
    """Run one check on a new backend from `factory` (one not created yet)."""
    backend = factory()
    backend.create()
    try:
        check(backend)
    finally:
        backend.close()


def run_conformance(factory: Callable[[], Backend], checks: Iterable[Check] = CHECKS) -> None:
    """Run every check, each on a new backend; raises AssertionError naming the first
    check that fails."""
    for check in checks:
        try:
            run_check(factory, check)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
