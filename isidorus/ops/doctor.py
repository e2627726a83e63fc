"""`isidorus doctor`: what is wrong with this host, or about to be, each finding with its
severity and what to do about it.

Severities: ok, info (worth knowing), warning (act soon), critical (act now: members or
backups are affected). The nightly job notifies the warnings and critical findings of the
checks that watch over time (disk, certificates, backups, remotes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from isidorus.errors import IsidorusError
from isidorus.ops import runs
from isidorus.ops.database import read_config
from isidorus.ops.jobs_config import JobsConfig
from isidorus.settings import Remote
from isidorus.state.db import Database

SEVERITIES = ("ok", "info", "warning", "critical")
BACKUP_LATE = timedelta(hours=36)  # a nightly backup older than this was missed
TIME_DAEMONS = ("chronyd", "ntpd", "systemd-timesyncd", "openntpd", "ntpsec")


@dataclass(frozen=True)
class Finding:
    check: str  # disk, certificate, service, backup, remote, clock, dns, updates, notify…
    severity: str  # one of SEVERITIES
    message: str
    fix: str = ""  # what to do; "" when nothing is to be done

    def to_json(self) -> dict[str, str]:
        return {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
        }


def worst(findings: list[Finding]) -> str:
    return max((f.severity for f in findings), key=SEVERITIES.index, default="ok")


def diagnose(
    db: Database,
    data_dir: str,
    conf: Mapping[str, Any],
    jobs: JobsConfig,
    remotes: Mapping[str, Remote],
    *,
    now: datetime | None = None,
) -> list[Finding]:
    """Every check, in a fixed order; a check that cannot run is itself a finding."""
    now = now or datetime.now(UTC)
    findings: list[Finding] = []
    checks: tuple[Callable[[], list[Finding]], ...] = (
        lambda: disks(data_dir, conf, jobs),
        lambda: certificates(db, data_dir, jobs, now),
        lambda: services(db, data_dir),
        lambda: backups(db, now),
        lambda: offsite(db, jobs, remotes, now),
        lambda: clock(db, now),
        lambda: dns(db, data_dir),
        lambda: updates(db),
        lambda: notifications(jobs),
    )
    for check in checks:
        try:
            findings += check()
        except IsidorusError as exc:
            findings.append(Finding("doctor", "warning", f"a check could not run: {exc}"))
    return findings


def disks(data_dir: str, conf: Mapping[str, Any], jobs: JobsConfig) -> list[Finding]:
    """Each filesystem holding isidorus's data, the services' or the store, once."""
    limit = jobs.notify.disk_percent
    places = [data_dir, str(conf["service_data_root"]), "/"]
    store = str(conf.get("backup_store", ""))
    if store and "://" not in store:
        places.append(store)
    seen: set[int] = set()
    out = []
    for place in places:
        path = _existing_parent(place)
        dev = os.stat(path).st_dev
        if dev in seen:
            continue
        seen.add(dev)
        usage = shutil.disk_usage(path)
        used = 100.0 * (usage.total - usage.free) / usage.total if usage.total else 0.0
        text = f"{path}: {used:.0f}% used, {_gib(usage.free)} free"
        if used >= max(limit, 98.0):
            out.append(Finding("disk", "critical", text, _DISK_FIX))
        elif used >= limit:
            out.append(Finding("disk", "warning", text, _DISK_FIX))
        else:
            out.append(Finding("disk", "ok", text))
    return out


_DISK_FIX = (
    "free space (`isidorus backup prune` with a shorter retention, then `isidorus backup gc`; "
    "old logs) or grow the disk"
)


def certificates(db: Database, data_dir: str, jobs: JobsConfig, now: datetime) -> list[Finding]:
    from isidorus.ops.certificates import certificates as listed

    out = []
    soon = timedelta(days=jobs.notify.certificate_days)
    for cert in listed(db, data_dir):
        if cert.not_after is None:
            out.append(
                Finding(
                    "certificate",
                    "critical",
                    f"{cert.domain} has no readable certificate",
                    "`isidorus service certificates --renew`",
                )
            )
        elif cert.not_after <= now:
            out.append(
                Finding(
                    "certificate",
                    "critical",
                    f"the certificate of {cert.domain} ended on {cert.not_after:%Y-%m-%d}",
                    "`isidorus service certificates --renew`",
                )
            )
        elif cert.not_after - now <= soon:
            out.append(
                Finding(
                    "certificate",
                    "warning",
                    f"the certificate of {cert.domain} ends on {cert.not_after:%Y-%m-%d}",
                    "`isidorus service certificates --renew` (the nightly job renews them)",
                )
            )
        else:
            out.append(
                Finding(
                    "certificate",
                    "ok",
                    f"{cert.domain}: {cert.issuer}, until {cert.not_after:%Y-%m-%d}",
                )
            )
    return out


def services(db: Database, data_dir: str) -> list[Finding]:
    from isidorus.ops.services import list_installed

    out = []
    for status in list_installed(db, data_dir):
        sid = status.service.id
        if status.service.state != "installed":
            out.append(
                Finding(
                    "service",
                    "warning",
                    f"{sid}: its install or removal did not finish",
                    f"`isidorus service remove {sid} --purge`, then install it again",
                )
            )
        elif status.health != "ok":
            out.append(
                Finding(
                    "service",
                    "critical",
                    f"{sid} is not healthy: {status.health}",
                    f"`isidorus service logs {sid}`, then `isidorus service restart {sid}`",
                )
            )
        else:
            out.append(Finding("service", "ok", f"{sid} {status.service.version} answers"))
    return out


def backups(db: Database, now: datetime) -> list[Finding]:
    last = runs.last_ok(db, "backup", "system")
    latest = runs.list_runs(db, kind="nightly", limit=1)
    out = []
    if last is None:
        out.append(
            Finding(
                "backup",
                "warning",
                "the server has never been backed up by the nightly job",
                "`isidorus nightly`, and `isidorus schedule install` to run it every night",
            )
        )
    elif now - last > BACKUP_LATE:
        out.append(
            Finding(
                "backup",
                "warning",
                f"the last nightly backup is of {_ago(now - last)} ago",
                "`isidorus jobs` tells why; `isidorus schedule status` whether it is scheduled",
            )
        )
    else:
        out.append(Finding("backup", "ok", f"last nightly backup {_ago(now - last)} ago"))
    if latest and latest[0].status == "failed":
        failed = [f"{s.step} {s.target}".strip() for s in latest[0].steps if s.status == "failed"]
        out.append(
            Finding(
                "backup",
                "warning",
                f"the last nightly run ({latest[0].id}) failed at: {', '.join(failed)}",
                f"`isidorus jobs {latest[0].id}` shows its errors and log",
            )
        )
    return out


def offsite(
    db: Database, jobs: JobsConfig, remotes: Mapping[str, Remote], now: datetime
) -> list[Finding]:
    names = list(remotes) if jobs.nightly.remotes is None else list(jobs.nightly.remotes)
    if not names:
        return [
            Finding(
                "remote",
                "warning",
                "no off-site copy is configured: the backups stay on this host",
                "`isidorus backup remote add NAME ssh+isidorus://…` (docs/offsite.md)",
            )
        ]
    out = []
    stale = timedelta(days=jobs.notify.remote_days)
    for name in names:
        last = runs.last_ok(db, "sync", name)
        if last is None:
            out.append(
                Finding(
                    "remote",
                    "warning",
                    f"{name} has never received a copy",
                    f"`isidorus nightly`; check that {name} is reachable "
                    f"(`isidorus backup remote list`)",
                )
            )
        elif now - last > stale:
            out.append(
                Finding(
                    "remote",
                    "warning",
                    f"{name} has not been reached for {_ago(now - last)}",
                    f"`isidorus jobs` shows why; ask the person who keeps {name} whether "
                    "the machine is on and reachable",
                )
            )
        else:
            out.append(Finding("remote", "ok", f"{name}: last copy {_ago(now - last)} ago"))
    return out


def clock(db: Database, now: datetime) -> list[Finding]:
    latest = runs.list_runs(db, limit=1)
    if latest and latest[0].started_at > now + timedelta(minutes=5):
        return [
            Finding(
                "clock",
                "critical",
                f"the clock is behind: a run started at {latest[0].started_at:%Y-%m-%d %H:%M} UTC",
                "set the time right and keep it with chrony (apt-get install chrony)",
            )
        ]
    synced = _time_synchronized()
    if synced is False:
        return [
            Finding(
                "clock",
                "warning",
                "the clock is not kept in time by any NTP client",
                "apt-get install chrony (or systemd-timesyncd)",
            )
        ]
    return [Finding("clock", "ok", f"{now:%Y-%m-%d %H:%M} UTC, kept in time")]


def _time_synchronized() -> bool | None:
    """What systemd says, else whether a time daemon runs; None when nothing can tell."""
    if os.path.isdir("/run/systemd/system") and shutil.which("timedatectl"):
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip() == "yes"
    try:
        names = set()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        names.add(f.read().strip())
                except OSError:
                    continue
    except OSError:
        return None
    return any(d in names for d in TIME_DAEMONS)


def dns(db: Database, data_dir: str) -> list[Finding]:
    from isidorus.services import installed

    with db.read() as conn:
        domains = {s.domain for s in installed.all_installed(conn)}
    host = str(read_config(data_dir).get("domain", ""))
    if host:
        domains.add(host)
    out = []
    for domain in sorted(d for d in domains if d and d != "localhost"):
        try:
            found = sorted({str(a[4][0]) for a in socket.getaddrinfo(domain, None)})
        except (socket.gaierror, UnicodeError):
            out.append(
                Finding(
                    "dns",
                    "warning",
                    f"{domain} does not resolve",
                    f"add an A (and AAAA) record for {domain} pointing to this server",
                )
            )
            continue
        out.append(Finding("dns", "ok", f"{domain} → {', '.join(found)}"))
    return out


def updates(db: Database) -> list[Finding]:
    from isidorus.ops.updates import check_updates

    report = check_updates(db, refresh=False)  # the lists as the last refresh left them
    doc = report.to_json()
    packages = doc.get("packages", [])
    security = [p for p in packages if p.get("security")]
    service_ups = doc.get("services", [])
    if security:
        return [
            Finding(
                "updates",
                "warning",
                f"{len(security)} security updates wait",
                "`isidorus update apply --security-only`",
            )
        ]
    if packages or service_ups:
        return [
            Finding(
                "updates",
                "info",
                f"{len(packages)} package and {len(service_ups)} service updates wait",
                "`isidorus update check`, then `isidorus update apply`",
            )
        ]
    return [Finding("updates", "ok", "everything is up to date")]


def notifications(jobs: JobsConfig) -> list[Finding]:
    if not jobs.notify.urls:
        return [
            Finding(
                "notify",
                "info",
                "nobody is told when a night fails",
                "add urls under [notify] in the configuration file (docs/operations.md)",
            )
        ]
    return [Finding("notify", "ok", f"{len(jobs.notify.urls)} notification targets")]


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _ago(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours / 24:.0f} days"
