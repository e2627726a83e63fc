"""`/metrics`: the host's health in Prometheus's text format, read from the state
database, the local store and the services' status when Prometheus asks (nothing is
counted in memory between scrapes).

Only for an admin's API token (`Authorization: Bearer isi_…`) or a request made on this
machine's loopback that no proxy forwarded.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from isidorus import settings
from isidorus.accounts.errors import AccountError
from isidorus.errors import IsidorusError
from isidorus.ops import monitoring, runs
from isidorus.ops import service_access as access
from isidorus.ops import tokens as ops_tokens
from isidorus.ops.monitoring import StoreWatch
from isidorus.state.db import Database
from isidorus.web.base import Host, Views
from isidorus.web.status import StatusBoard

log = logging.getLogger(__name__)

# headers a proxy in front of isidorus adds: such a request came from elsewhere
PROXY_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


class HostCollector(Collector):
    """Everything /metrics tells, gathered at each scrape."""

    def __init__(self, db: Database, board: StatusBoard, watch: StoreWatch) -> None:
        self.db = db
        self.board = board
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        conf = settings.load()
        try:
            remotes = settings.load_remotes(settings.config_path())
        except IsidorusError as exc:  # a broken file: the history still tells the copies
            log.warning("/metrics: %s", exc)
            remotes = {}
        seen = monitoring.overview(self.db, conf, remotes, self.watch)
        yield from self._backups(seen)
        yield from self._copies(seen)
        yield from self._runs(seen)
        yield from self._store(seen.store)
        yield from self._services()

    def _backups(self, seen: monitoring.Overview) -> Iterator[Metric]:
        last_ok = _gauge(
            "isidorus_backup_last_success_timestamp_seconds",
            "When the latest successful backup of each target started (Unix time).",
            ["target"],
        )
        for target, step in sorted(seen.backups_ok.items()):
            last_ok.add_metric([target], step.started_at.timestamp())
        status = _gauge(
            "isidorus_backup_last_ok",
            "1 when the latest backup of each target succeeded, 0 when it failed.",
            ["target"],
        )
        for target, step in sorted(seen.backups.items()):
            status.add_metric([target], 1.0 if step.status == "ok" else 0.0)
        yield last_ok
        yield status

    def _copies(self, seen: monitoring.Overview) -> Iterator[Metric]:
        when = _gauge(
            "isidorus_sync_last_success_timestamp_seconds",
            "When the latest successful copy to each remote started (Unix time).",
            ["remote"],
        )
        sent = _gauge(
            "isidorus_sync_last_success_bytes",
            "What the latest successful copy to each remote sent, in bytes.",
            ["remote"],
        )
        status = _gauge(
            "isidorus_sync_last_ok",
            "1 when the latest copy to each remote succeeded, 0 when it failed.",
            ["remote"],
        )
        for remote in seen.remotes:
            if remote.last_ok is not None:
                when.add_metric([remote.name], remote.last_ok.started_at.timestamp())
                sent.add_metric([remote.name], float(remote.last_ok.bytes))
            if remote.last is not None:
                status.add_metric([remote.name], 1.0 if remote.last.status == "ok" else 0.0)
        yield when
        yield sent
        yield status
        offsite = _gauge(
            "isidorus_offsite_last_success_timestamp_seconds",
            "When the latest successful copy to any remote started (Unix time).",
        )
        if seen.last_offsite is not None:
            offsite.add_metric([], seen.last_offsite.timestamp())
        yield offsite

    def _runs(self, seen: monitoring.Overview) -> Iterator[Metric]:
        started = _gauge(
            "isidorus_run_last_start_timestamp_seconds",
            "When the latest finished run of each kind started (Unix time).",
            ["kind"],
        )
        duration = _gauge(
            "isidorus_run_last_duration_seconds",
            "How long the latest finished run of each kind took.",
            ["kind"],
        )
        status = _gauge(
            "isidorus_run_last_status",
            "The state of the latest finished run of each kind: 1 for its status, 0 for "
            "the others.",
            ["kind", "status"],
        )
        errors = _gauge(
            "isidorus_run_last_errors",
            "The steps that failed in the latest finished run of each kind.",
            ["kind"],
        )
        stored = _gauge(
            "isidorus_run_last_bytes",
            "The bytes the latest finished run of each kind stored or sent.",
            ["kind"],
        )
        running = _gauge(
            "isidorus_run_running", "1 while a run of each kind is under way.", ["kind"]
        )
        for last in seen.runs:
            running.add_metric([last.kind], 1.0 if last.running else 0.0)
            run = last.run
            if run is None:
                continue
            started.add_metric([last.kind], run.started_at.timestamp())
            if run.seconds is not None:
                duration.add_metric([last.kind], run.seconds)
            for state in runs.RUN_STATES:
                if state != "running":
                    status.add_metric([last.kind, state], 1.0 if run.status == state else 0.0)
            errors.add_metric([last.kind], float(run.errors))
            stored.add_metric([last.kind], float(run.bytes))
        yield from (started, duration, status, errors, stored, running)

    def _store(self, store: monitoring.StoreView) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "isidorus_store_up",
            "1 when the host's store could be read, 0 when not.",
            value=1.0 if store.readable else 0.0,
        )
        if not store.readable:
            return
        yield GaugeMetricFamily(
            "isidorus_store_snapshots",
            "The snapshots in the host's store.",
            value=float(store.snapshot_count),
        )
        yield GaugeMetricFamily(
            "isidorus_store_stored_bytes",
            "What the host's store takes on disk: its objects, compressed and deduplicated.",
            value=float(store.stored_bytes),
        )
        if not store.listed:
            return
        yield GaugeMetricFamily(
            "isidorus_store_logical_bytes",
            "What the snapshots of the host's store hold, added up (without deduplication).",
            value=float(store.logical_bytes),
        )
        yield GaugeMetricFamily(
            "isidorus_store_damaged_snapshots",
            "Snapshot objects of the host's store that cannot be read.",
            value=float(len(store.damaged)),
        )
        ratio = store.dedup_ratio
        if ratio is not None:
            yield GaugeMetricFamily(
                "isidorus_store_dedup_ratio",
                "Logical bytes / stored bytes of the host's store.",
                value=ratio,
            )

    def _services(self) -> Iterator[Metric]:
        rows = [s for s in access.installed_services(self.db) if s.state == "installed"]
        statuses = self.board.cached(rows)
        up = _gauge(
            "isidorus_service_up",
            "1 when each installed service runs and passes its health check, 0 when not "
            "(checked at most every 30 s).",
            ["service"],
        )
        known = _gauge(
            "isidorus_service_status_known",
            "1 when the process manager told each service's state, 0 when it did not answer.",
            ["service"],
        )
        for row in rows:
            status = statuses.get(row.id)
            up.add_metric([row.id], 1.0 if status is not None and status.up else 0.0)
            known.add_metric(
                [row.id], 0.0 if status is None or status.process == "unknown" else 1.0
            )
        yield up
        yield known


def from_loopback(request: Request) -> bool:
    """A request made on this machine, not forwarded by a proxy on it."""
    if request.client is None or any(h in request.headers for h in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def refused(message: str, status: int) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


class Metrics(Views):
    def __init__(self, host: Host, db: Database, board: StatusBoard, watch: StoreWatch) -> None:
        super().__init__(host, db)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HostCollector(db, board, watch))

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.metrics)]

    def check(self, request: Request) -> Response | None:
        """None when the request may read the metrics, else the refusal."""
        auth = request.headers.get("authorization")
        if auth is None:
            if from_loopback(request):
                return None
            return refused(
                "/metrics needs an admin's API token: send `Authorization: Bearer <token>` "
                "(see `isidorus token add`)",
                401,
            )
        scheme, _, secret = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return refused("send the token as `Authorization: Bearer <token>`", 401)
        try:
            ops_tokens.authenticate(self.db, secret.strip())
        except AccountError as exc:
            return refused(str(exc), exc.http_status)
        return None

    async def metrics(self, request: Request) -> Response:
        refusal = await run_in_threadpool(self.check, request)
        if refusal is not None:
            return refusal
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, self.registry)
        return Response(
            body,
            media_type=None,
            headers={"Content-Type": content_type, "Cache-Control": "no-store"},
        )
