"""Sessions: who is using a store right now, and whether they are still alive.

Every command that reads or writes a store registers a session object in `locks/` for its
lifetime. Maintenance (prune, gc) also takes the exclusive lock `locks/exclusive`, so two of
them never run at once; backups and restores run beside them (see gc.py for why that is
safe). A session records its host, boot id, pid and the process's start time in clock
ticks since boot: on the same host, a session whose process is gone (or whose pid was
reused by another process, or from an earlier boot) is stale, with no clock or timeout
involved. Sessions of other hosts cannot be checked from here; `backup unlock
--remove-all` removes them once the operator knows they are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from isidorus.backup.errors import BackendError, LockedError
from isidorus.backup.remote.base import Backend

EXCLUSIVE = "exclusive"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


@dataclass(frozen=True)
class Session:
    name: str
    purpose: str
    host: str
    boot_id: str
    pid: int
    start_ticks: int | None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "purpose": self.purpose,
                "host": self.host,
                "boot_id": self.boot_id,
                "pid": self.pid,
                "start_ticks": self.start_ticks,
            }
        ).encode()

    @classmethod
    def from_json(cls, name: str, data: bytes) -> Session:
        d = json.loads(data)
        return cls(
            name,
            str(d.get("purpose", "?")),
            str(d.get("host", "?")),
            str(d.get("boot_id", "")),
            int(d.get("pid", 0)),
            d.get("start_ticks"),
        )

    def is_ours(self) -> bool:
        return self.host == socket.gethostname()

    def is_stale(self) -> bool:
        """True only when this host can prove the process is gone."""
        if not self.is_ours():
            return False
        if self.boot_id and self.boot_id != _boot_id():
            return True
        ticks = _start_ticks(self.pid)
        return ticks is None or (self.start_ticks is not None and ticks != self.start_ticks)

    def describe(self) -> str:
        return f"{self.purpose} (pid {self.pid} on {self.host})"


def _me(name: str, purpose: str) -> Session:
    pid = os.getpid()
    return Session(name, purpose, socket.gethostname(), _boot_id(), pid, _start_ticks(pid))


def list_sessions(backend: Backend, *, besides: Collection[str] = ()) -> list[Session]:
    """The sessions registered in the store, less those named in `besides` (the caller's
    own: not read, a request each saved on a far store)."""
    out = []
    for name, _size in backend.list("locks"):
        if name in besides:
            continue
        try:
            out.append(Session.from_json(name, backend.read("locks", name)))
        except FileNotFoundError:
            continue  # ended while we listed
        except (ValueError, TypeError):
            out.append(Session(name, "unreadable", "?", "", 0, None))
    return out


def remove_stale(backend: Backend, sessions: list[Session] | None = None) -> list[Session]:
    """Remove the sessions whose process is gone, of `sessions` (listed already by the
    caller) or of a new listing; returns them."""
    stale = [s for s in (list_sessions(backend) if sessions is None else sessions) if s.is_stale()]
    for s in stale:
        backend.remove("locks", s.name)
    return stale


def new_name() -> str:
    """A session's name, for a caller that must know it before the session starts."""
    return secrets.token_hex(16)


@contextlib.contextmanager
def session(
    backend: Backend,
    purpose: str,
    *,
    exclusive: bool = False,
    read_only: bool = False,
    name: str | None = None,
) -> Iterator[Session]:
    """Register this process as a user of the store; with `exclusive`, also take the
    maintenance lock or raise LockedError naming who holds it. A `read_only` user of a
    store it cannot write (a read-only mount, another user's store) goes on unregistered:
    nobody can delete anything there under it. `name` is the session's (new_name()), when
    the caller has used it already as its uploads' tag."""
    me = _me(name or new_name(), purpose)
    if exclusive:
        _take_exclusive(backend, purpose)
    registered = False
    try:
        try:
            backend.write("locks", me.name, me.to_json(), exclusive=True)
            registered = True
        except BackendError as exc:
            if not (read_only and exc.permanent):
                raise
        backend.tmp_tag = me.name
        try:
            yield me
        finally:
            if registered:
                backend.remove("locks", me.name)
    finally:
        if exclusive:
            backend.remove("locks", EXCLUSIVE)


def _take_exclusive(backend: Backend, purpose: str) -> None:
    me = _me(EXCLUSIVE, purpose)
    for _attempt in range(2):
        try:
            backend.write("locks", EXCLUSIVE, me.to_json(), exclusive=True)
            return
        except FileExistsError:
            try:
                holder = Session.from_json(EXCLUSIVE, backend.read("locks", EXCLUSIVE))
            except FileNotFoundError:
                continue
            if not holder.is_stale():
                hint = (
                    "wait for it to finish"
                    if holder.is_ours()
                    else "wait for it, or if that process is gone run "
                    "`isidorus backup unlock STORE --remove-all`"
                )
                raise LockedError(f"the store is locked by {holder.describe()}: {hint}") from None
            backend.remove("locks", EXCLUSIVE)  # its process is gone
    raise LockedError("the store's maintenance lock keeps changing hands: try again")
