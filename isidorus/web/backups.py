"""The admin area's Backups and Jobs pages: the host's store and its snapshots, the copies
at the homes, the store's growth (an SVG drawn here, no script), a file taken back from a
snapshot, and the history of the nightly job and the updates. Refused to members (403),
like the rest of the admin area. Nothing here changes anything: every page is a GET.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qsl, quote

from babel.numbers import format_decimal
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from isidorus import settings
from isidorus.accounts.sessions import Session
from isidorus.backup.errors import PathNotFound, SnapshotNotFound
from isidorus.errors import IsidorusError, NotFoundError, UsageError
from isidorus.ops import monitoring, runs
from isidorus.ops.monitoring import Entry, GrowthPoint, StoreWatch
from isidorus.ops.store_refs import StoreRef
from isidorus.state.db import Database
from isidorus.web.base import Host, Views, human_size, utc_time
from isidorus.web.i18n import gettext, language, pgettext

log = logging.getLogger(__name__)

SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
RUNS_SHOWN = 100
LIVE_TIMEOUT = 10.0  # seconds a home's copy may take to list its snapshots


def step_word(step: str) -> str:
    words = {
        "store": pgettext("job step", "store"),
        "state": pgettext("job step", "state database"),
        "dump": pgettext("job step", "database dumps"),
        "backup": pgettext("job step", "backup"),
        "prune": pgettext("job step", "prune"),
        "gc": pgettext("job step", "free space"),
        "sync": pgettext("job step", "copy off site"),
        "verify": pgettext("job step", "verify"),
        "notify": pgettext("job step", "notify"),
        "certificates": pgettext("job step", "certificates"),
        "snapshot": pgettext("job step", "snapshot"),
        "apt": pgettext("job step", "packages"),
        "upgrade": pgettext("job step", "upgrade"),
        "health": pgettext("job step", "health check"),
        "rollback": pgettext("job step", "way back"),
    }
    return words.get(step, step)


def status_word(status: str) -> str:
    words = {
        "ok": pgettext("job", "ok"),
        "failed": pgettext("job", "failed"),
        "skipped": pgettext("job", "skipped"),
        "running": pgettext("job", "running"),
        "interrupted": pgettext("job", "interrupted"),
    }
    return words.get(status, status)


def kind_word(kind: str) -> str:
    words = {
        "nightly": pgettext("job", "nightly"),
        "update": pgettext("job", "update"),
        "copy": pgettext("job", "copy"),
    }
    return words.get(kind, kind)


def entry_word(kind: str) -> str:
    words = {
        "file": pgettext("file kind", "file"),
        "hardlink": pgettext("file kind", "file (hard link)"),
        "dir": pgettext("file kind", "folder"),
        "symlink": pgettext("file kind", "symbolic link"),
        "fifo": pgettext("file kind", "pipe"),
        "socket": pgettext("file kind", "socket"),
        "chardev": pgettext("file kind", "device"),
        "blockdev": pgettext("file kind", "device"),
    }
    return words.get(kind, kind)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return gettext("%(s)d s") % {"s": seconds}
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return gettext("%(m)d min %(s)02d s") % {"m": minutes, "s": s}
    hours, m = divmod(minutes, 60)
    return gettext("%(h)d h %(m)02d min") % {"h": hours, "m": m}


def shown(text: str) -> str:
    """A file name as a page can show it: bytes that are not UTF-8 become �."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def query_path(request: Request) -> str:
    """The `path` of the query, its bytes kept as the file system's names are (a name
    that is not UTF-8 comes back as it was listed)."""
    raw = bytes(request.scope.get("query_string", b"")).decode("latin-1")
    for key, value in parse_qsl(raw, encoding="utf-8", errors="surrogateescape"):
        if key == "path":
            return value
    return "/"


def path_query(path: str) -> str:
    return "path=" + str(quote(os.fsencode(path), safe="/"))


def attachment(name: str) -> str:
    """A Content-Disposition that saves the file under its own name, with a plain ASCII
    one for old browsers."""
    plain = re.sub(r"[^A-Za-z0-9._ -]", "_", shown(name)).strip() or "file"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(os.fsencode(name), safe='')}"


# -- the growth chart


@dataclass(frozen=True)
class Chart:
    """The store's size over time, laid out for an inline SVG."""

    width: int
    height: int
    left: int
    bottom: int
    line: str  # the polyline's points
    dots: list[tuple[float, float, str]]  # x, y, and what the point says
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    summary: str


def growth_chart(points: list[GrowthPoint]) -> Chart | None:
    if not points:
        return None
    width, height, left, right, top, bottom = 640, 240, 72, 16, 12, 28
    inner_w, inner_h = width - left - right, height - top - bottom
    t0 = points[0].when.timestamp()
    t1 = points[-1].when.timestamp()
    span = max(t1 - t0, 1.0)
    top_value = _nice(max(p.stored for p in points))

    def x(p: GrowthPoint) -> float:
        if len(points) == 1:
            return left + inner_w / 2
        return left + (p.when.timestamp() - t0) / span * inner_w

    def y(value: float) -> float:
        return top + inner_h - value / top_value * inner_h

    dots = [
        (round(x(p), 1), round(y(p.stored), 1), f"{utc_time(p.when)}: {human_size(p.stored)}")
        for p in points
    ]
    y_ticks = [(round(y(top_value * i / 4), 1), human_size(top_value * i / 4)) for i in range(5)]
    x_ticks = [(dots[0][0], points[0].when.strftime("%Y-%m-%d"))]
    if len(points) > 1:
        x_ticks.append((dots[-1][0], points[-1].when.strftime("%Y-%m-%d")))
    summary = gettext("From %(first)s on %(start)s to %(last)s on %(end)s") % {
        "first": human_size(points[0].stored),
        "start": utc_time(points[0].when),
        "last": human_size(points[-1].stored),
        "end": utc_time(points[-1].when),
    }
    return Chart(
        width,
        height,
        left,
        height - bottom,
        " ".join(f"{dx},{dy}" for dx, dy, _ in dots),
        dots,
        y_ticks,
        x_ticks,
        summary,
    )


def _nice(value: float) -> float:
    """A round top for the size axis, at or above `value`: 1, 2, 4 or 8 times a power of
    1024 times a power of ten, so that the ticks read 0, 1.0 MiB, 2.0 MiB…"""
    if value <= 0:
        return 1024.0
    unit = 1.0
    while value >= unit * 1024 and unit < 1024**4:
        unit *= 1024
    mantissa = value / unit
    power = 1.0
    while power * 10 <= mantissa:
        power *= 10
    for step in (1, 2, 4, 8, 10):
        if step * power >= mantissa:
            return step * power * unit
    return 10 * power * unit


# -- a file streamed out of a snapshot


class _Gone(Exception):
    """The browser went away: the reading stops."""


class _Channel:
    """What the thread that reads a snapshot hands to the response that sends it: a few
    chunks at most, so memory stays flat however large the file."""

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        self.gone = threading.Event()

    # a response that never takes what is read (a HEAD, a stalled browser) lets go of
    # the store after this long
    STALLED = 120.0

    def put(self, kind: str, value: Any) -> None:
        give_up = time.monotonic() + self.STALLED
        while True:
            if self.gone.is_set() or time.monotonic() > give_up:
                self.gone.set()
                raise _Gone
            try:
                self.items.put((kind, value), timeout=1.0)
                return
            except queue.Full:
                continue

    def write(self, data: bytes) -> int:
        self.put("data", bytes(data))
        return len(data)


async def file_response(
    ref: StoreRef,
    snapshot: str,
    path: str,
    refused: Callable[[IsidorusError], IsidorusError] = lambda exc: exc,
) -> Response:
    """A file of a snapshot as a download, sent while it is read (memory stays flat
    however large it is): the admin area's, and the API's. What stops it before its first
    byte (no such snapshot or path, not a file, a bad path) is raised as `refused` makes
    it; a failure later cuts the download (the headers are sent)."""
    channel = _Channel()

    def work() -> None:
        try:
            out = cast(BinaryIO, channel)  # it has the one method cat calls
            monitoring.read_file(ref, snapshot, path, out, lambda i: channel.put("info", i))
            channel.put("end", None)
        except _Gone:
            pass
        except Exception as exc:  # handed to the response, which shows or logs it
            with contextlib.suppress(_Gone):
                channel.put("error", exc)

    threading.Thread(target=work, name="isidorus-download", daemon=True).start()
    kind, value = await run_in_threadpool(channel.items.get)
    if kind == "error":
        channel.gone.set()
        if isinstance(value, IsidorusError):
            raise refused(value) from None
        raise value
    info: monitoring.FileInfo = value

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                kind, value = await run_in_threadpool(channel.items.get)
                if kind == "data":
                    yield value
                elif kind == "end":
                    return
                elif kind == "error":
                    # the headers are sent: the browser sees a cut download
                    log.warning("download of %s from %s stopped: %s", path, snapshot, value)
                    raise value
        finally:
            channel.gone.set()

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": attachment(info.name),
            "Content-Length": str(info.size),
            "Cache-Control": "no-store",
        },
    )


class BackupsAdmin(Views):
    def __init__(self, host: Host, db: Database, watch: StoreWatch) -> None:
        super().__init__(host, db)
        self.watch = watch

    def routes(self) -> list[Route]:
        return [
            Route("/admin/backups", self.index),
            Route("/admin/backups/{snapshot}", self.folder),
            Route("/admin/backups/{snapshot}/file", self.download),
            Route("/admin/jobs", self.jobs),
            Route("/admin/jobs/{run:int}", self.run),
        ]

    def admin_page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        return self.page(
            request,
            template,
            status=status,
            session=session,
            step_word=step_word,
            status_word=status_word,
            kind_word=kind_word,
            duration=duration,
            details=details,
            entry_word=entry_word,
            **context,
        )

    # -- Backups
    async def index(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        conf = settings.load()
        ref, key_problem = monitoring.host_store(conf)
        try:
            remotes = settings.load_remotes(settings.config_path())
            remotes_error = ""
        except IsidorusError as exc:  # a broken configuration file: say which
            remotes, remotes_error = {}, str(exc)

        def gather() -> tuple[Any, ...]:
            store = self.watch.view(ref, key_problem)
            live = monitoring.live_lister(self.watch, None if key_problem else ref, conf)
            copies = monitoring.remote_views(self.db, remotes, live=live, timeout=LIVE_TIMEOUT)
            last, good = monitoring.last_backups(self.db)
            points = monitoring.growth(self.db, store.stored_bytes if store.readable else None)
            return store, copies, last, good, points

        store, copies, last, good, points = await run_in_threadpool(gather)
        return self.admin_page(
            request,
            "admin/backups.html",
            store=store,
            snapshots=list(reversed(store.snapshots)),
            remotes=copies,
            remotes_error=remotes_error,
            backups=[(t, last[t], good.get(t)) for t in sorted(last)],
            chart=growth_chart(points),
            ratio=(
                format_decimal(store.dedup_ratio, "#,##0.0", locale=language())
                if store.dedup_ratio is not None
                else ""
            ),
        )

    def _store(self) -> Any:
        ref, key_problem = monitoring.host_store(settings.load())
        if key_problem:
            raise UsageError(key_problem)
        return ref

    @staticmethod
    def _snapshot(request: Request) -> str:
        snapshot = str(request.path_params["snapshot"])
        if not SNAPSHOT_ID.fullmatch(snapshot):
            raise NotFoundError(gettext("there is no snapshot %(id)s") % {"id": snapshot})
        return snapshot

    @staticmethod
    def _not_found(exc: IsidorusError, snapshot: str, path: str) -> IsidorusError:
        """The engine's error about a snapshot or a path, in the visitor's language."""
        if isinstance(exc, SnapshotNotFound):
            return NotFoundError(gettext("there is no snapshot %(id)s") % {"id": snapshot[:8]})
        if isinstance(exc, PathNotFound):
            return NotFoundError(
                gettext("%(path)s is not in snapshot %(id)s")
                % {"path": shown(path), "id": snapshot[:8]}
            )
        if isinstance(exc, monitoring.NotAFolder):
            return NotFoundError(
                gettext("%(path)s is not a folder of snapshot %(id)s")
                % {"path": shown(path), "id": snapshot[:8]}
            )
        if isinstance(exc, monitoring.NotAFile):
            return NotFoundError(
                gettext("%(path)s is not a file of snapshot %(id)s")
                % {"path": shown(path), "id": snapshot[:8]}
            )
        if isinstance(exc, monitoring.BadPath):
            return UsageError(
                gettext("%(path)s is not a path in a snapshot: give one that starts with /")
                % {"path": shown(path)}
            )
        return exc

    async def folder(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        snapshot, path = self._snapshot(request), query_path(request)
        ref = self._store()
        try:
            found = await run_in_threadpool(monitoring.list_folder, ref, snapshot, path)
        except IsidorusError as exc:
            raise self._not_found(exc, snapshot, path) from None
        base = f"/admin/backups/{found.snapshot.id}"

        def link(entry: Entry) -> str:
            where = "" if entry.is_dir else "/file"
            return f"{base}{where}?{path_query(entry.path)}"

        crumbs = [("/", f"{base}?{path_query('/')}")]
        so_far = ""
        for part in [p for p in found.path.split("/") if p]:
            so_far += "/" + part
            crumbs.append((shown(part), f"{base}?{path_query(so_far)}"))
        return self.admin_page(
            request,
            "admin/snapshot.html",
            snap=found.snapshot,
            path=shown(found.path),
            crumbs=crumbs,
            entries=[
                (e, shown(e.name), link(e) if e.is_dir or e.is_file else "") for e in found.entries
            ],
        )

    async def download(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        snapshot, path = self._snapshot(request), query_path(request)
        ref = self._store()
        return await file_response(
            ref, snapshot, path, lambda exc: self._not_found(exc, snapshot, path)
        )

    # -- Jobs
    async def jobs(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        kind = request.query_params.get("kind") or None
        if kind is not None and kind not in runs.KINDS:
            kind = None
        found = await run_in_threadpool(runs.list_runs, self.db, kind=kind, limit=RUNS_SHOWN)
        return self.admin_page(
            request, "admin/jobs.html", found=found, kind=kind, kinds=runs.KINDS, limit=RUNS_SHOWN
        )

    async def run(self, request: Request) -> Response:
        session = self.admin(request)
        if not isinstance(session, Session):
            return session
        number = int(request.path_params["run"])
        try:
            found = await run_in_threadpool(runs.get_run, self.db, number)
        except NotFoundError:
            raise NotFoundError(gettext("there is no run %(id)s") % {"id": number}) from None
        return self.admin_page(
            request, "admin/run.html", run=found, refresh=found.status == "running"
        )


def details(step: runs.Step) -> list[tuple[str, str]]:
    """A step's own figures, as the run's page lists them."""
    out = []
    for key, value in sorted(step.detail.items()):
        if isinstance(value, int) and not isinstance(value, bool) and key.startswith("bytes"):
            out.append((key, human_size(value)))
        else:
            out.append((key, str(value)))
    return out
