"""Changes of services that take minutes (install, remove, restart; upgrade, backup,
restore), and the host's long work (the nightly job, the store's checks and copies,
updates, every service's upgrade, the certificates' renewal), run from the admin area or
the REST API in a thread of the server process that got the form or the request.

The server runs several processes, so a job's progress is kept in a file every process
reads: `DATA_DIR/jobs/<service>.json`, replaced whole at each line. A job holds an
exclusive lock on `<service>.lock` while it runs: a second job on the same service is
refused, whichever process gets it, and a file that says "running" while nobody holds the
lock is a job its process did not finish (stopped, or killed). A job's work ends with a
note, and may end with a result too: what the command's `--json` prints (a verify's
report), kept with the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from isidorus.errors import IsidorusError
from isidorus.services.manifest import ID_RE
from isidorus.web.i18n import gettext

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Done:
    """How a job's work ended, when it has more to say than a note: `result` is what the
    command's `--json` prints; `ok` False makes the job failed (the command would exit 1,
    a verify that found damage), the note then being its one-line error."""

    note: str
    result: dict[str, Any] | None = None
    ok: bool = True


# does the work, saying each step; returns a note for the end ("" for none) or a Done,
# raises on failure
Work = Callable[[Say], str | Done]

MAX_LINES = 300


class Busy(IsidorusError):
    http_status = 409


@dataclass(frozen=True)
class Job:
    service: str
    action: str  # install, remove, restart, upgrade, backup, restore; the host's: see Jobs
    actor: str
    state: str  # running, done, failed, interrupted
    lines: tuple[str, ...]
    note: str  # done: what the work said at the end; failed: the one-line error
    started: float
    finished: float | None
    result: dict[str, Any] | None = None  # see Done

    @property
    def running(self) -> bool:
        return self.state == "running"


class Jobs:
    """The jobs kept in `DATA_DIR/<folder>`, one per name: the services' in `jobs`, each
    under its service's id; the host's (started from the API: the nightly job, the store's
    work, updates…) in `host-jobs`, so that no service's id can name one of them."""

    def __init__(self, data_dir: str, folder: str = "jobs") -> None:
        self.dir = os.path.join(data_dir, folder)

    def _path(self, service: str, ext: str) -> str:
        if not re.fullmatch(ID_RE, service):  # it comes from a URL: no path of its own
            raise ValueError(f"{service!r} is not a service id")
        return os.path.join(self.dir, f"{service}.{ext}")

    def start(self, service: str, action: str, actor: str, work: Work) -> None:
        """Run `work` in a new thread of this process; Busy when a job on `service` runs
        (here or in another process). The server waits for running jobs when it stops: a
        half-done install is worse than a slow stop."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self._path(service, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(
                gettext("%(service)s is being changed: wait for it") % {"service": service}
            ) from None
        try:
            job = Job(service, action, actor, "running", (), "", time.time(), None)
            self._write(job)
            thread = threading.Thread(
                target=self._run, args=(job, work, fd), name=f"isidorus-{action}-{service}"
            )
            thread.start()
        except BaseException:
            os.close(fd)  # releases the lock
            raise

    def _run(self, job: Job, work: Work, fd: int) -> None:
        lines: list[str] = []

        def say(message: str) -> None:
            lines.extend(message.splitlines() or [""])
            del lines[:-MAX_LINES]
            self._write(dataclasses.replace(job, lines=tuple(lines)))

        state, note, result = "failed", "interrupted", None
        try:
            out = work(say)
            if isinstance(out, Done):
                note, result = out.note, out.result
                state = "done" if out.ok else "failed"
            else:
                note, state = out, "done"
        except Exception as exc:
            if not isinstance(exc, IsidorusError):
                log.exception("%s of %s failed", job.action, job.service)
            note = _one_line(exc)
        finally:
            try:
                self._write(
                    dataclasses.replace(
                        job,
                        state=state,
                        note=note,
                        lines=tuple(lines),
                        finished=time.time(),
                        result=result,
                    )
                )
            finally:
                os.close(fd)

    def _write(self, job: Job) -> None:
        doc = {
            "service": job.service,
            "action": job.action,
            "actor": job.actor,
            "state": job.state,
            "lines": list(job.lines),
            "note": job.note,
            "started": job.started,
            "finished": job.finished,
            "result": job.result,
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{job.service}.", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, self._path(job.service, "json"))
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def get(self, service: str) -> Job | None:
        """The last job on `service`, None when there is none (or it was cleared)."""
        job = self._read(service)
        if self._orphan(job):
            # it may have written its end and let go of its lock since the read: its file
            # is final now, and a job still "running" there was cut short
            job = self._read(service)
            if job is not None and self._orphan(job):
                return dataclasses.replace(job, state="interrupted")
        return job

    def _orphan(self, job: Job | None) -> bool:
        """A job said to run that nobody holds the lock of."""
        return job is not None and job.running and not self._locked(job.service)

    def _read(self, service: str) -> Job | None:
        path = self._path(service, "json")
        try:
            with open(path, encoding="utf-8") as f:
                doc: dict[str, Any] = json.load(f)
        except (FileNotFoundError, ValueError):
            return None
        return Job(
            service=str(doc["service"]),
            action=str(doc["action"]),
            actor=str(doc.get("actor", "")),
            state=str(doc["state"]),
            lines=tuple(str(x) for x in doc.get("lines", [])),
            note=str(doc.get("note", "")),
            started=float(doc["started"]),
            finished=None if doc.get("finished") is None else float(doc["finished"]),
            result=doc["result"] if isinstance(doc.get("result"), dict) else None,
        )

    def all(self) -> list[Job]:
        """The last job on each service, by service."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        found = (self.get(n[: -len(".json")]) for n in names if re.match(r"[a-z].*\.json$", n))
        return [j for j in found if j is not None]

    def idle(self, service: str) -> None:
        """Busy when a job on `service` runs (a change of it waits for the job's end)."""
        job = self.get(service)
        if job is not None and job.running:
            raise Busy(gettext("%(service)s is being changed: wait for it") % {"service": service})

    def clear(self, service: str) -> None:
        """Forget the last job on `service` (Busy while it runs)."""
        self.idle(service)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(service, "json"))

    def _locked(self, service: str) -> bool:
        try:
            fd = os.open(self._path(service, "lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            # shared and at once: never waits for, nor keeps out, anyone for long
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, IsidorusError) else f"{type(exc).__name__}: {text}"
