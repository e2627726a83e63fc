"""The certificates of the services' sites: what each domain has, and renewing those due
(from the ACME CA with services_tls = acme, self-signed ones otherwise), then having nginx
serve the new ones."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isidorus import settings
from isidorus.errors import UsageError
from isidorus.ops.accounts import audit
from isidorus.ops.database import read_config
from isidorus.ops.services import machinery
from isidorus.services import installed, lifecycle
from isidorus.services.installed import Installed
from isidorus.state.db import Database
from isidorus.system.acme import RENEW_DAYS, RETRY, AcmeError, issuer_of
from isidorus.system.errors import HostError
from isidorus.system.tls import paths, read_certificate, self_signed

Say = Callable[[str], None]
NO_TLS = (
    "services_tls is none: the sites have no certificates; set services_tls to acme or self-signed"
)


class NoCertificates(UsageError):
    """The sites have no certificates to renew (services_tls = none), as things stand."""

    http_status = 409


def check_renewable() -> None:
    """NoCertificates with services_tls = none: told before a renewal is started."""
    if str(settings.load()["services_tls"]) == "none":
        raise NoCertificates(NO_TLS)


@dataclass(frozen=True)
class CertificateStatus:
    domain: str
    services: tuple[str, ...]  # the services published on it
    issuer: str  # "acme", "self-signed", "other" (the operator's own), "none"
    not_after: datetime.datetime | None  # UTC; None without a readable certificate
    renewed: bool = False
    problem: str = ""  # why a renewal failed, with what to do

    def days_left(self, now: datetime.datetime | None = None) -> int | None:
        if self.not_after is None:
            return None
        return (self.not_after - (now or datetime.datetime.now(datetime.UTC))).days

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "services": list(self.services),
            "issuer": self.issuer,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": self.days_left(),
            "renewed": self.renewed,
            "problem": self.problem,
        }


def certificates(db: Database, data_dir: str) -> list[CertificateStatus]:
    """Each domain the installed services are published on, with its certificate; empty
    with services_tls = none. Reads files only: no CA is asked."""
    tools, sites = _sites(db, data_dir)
    if tools.tls_dir is None:
        return []
    return [_status(tools.tls_dir, d, sites[d]) for d in sorted(sites)]


def renew(
    db: Database, data_dir: str, actor: str, say: Say, days: int = RENEW_DAYS
) -> list[CertificateStatus]:
    """Renew the certificates that are due, then publish the sites of their domains again
    so that nginx serves them. With ACME: every self-signed one (a first certificate the CA
    did not give at install) and every one from the CA ending within `days`; otherwise
    self-signed ones ending within 30 days. A domain that fails keeps what it has and gets a
    `problem`; the others are renewed all the same. NoCertificates with services_tls =
    none."""
    tools, sites = _sites(db, data_dir)
    if tools.tls_dir is None:
        raise NoCertificates(NO_TLS)
    tls_dir = tools.tls_dir
    problems: dict[str, str] = {}
    renewed: list[str] = []
    if tools.acme is not None:
        due = [d for d in sorted(sites) if tools.acme.due(d, days)]
        for domain in due:
            say(f"asking {tools.acme.directory} for a certificate for {domain}")
        renewed = tools.acme.renew_due(
            days, due, failed=lambda d, exc: problems.__setitem__(d, _kept(tls_dir, d, exc))
        )
    else:
        for domain in sorted(sites):
            before = _read(tls_dir, domain)
            try:
                self_signed(domain, tls_dir)
            except HostError as exc:
                problems[domain] = f"{domain} keeps its certificate: {exc}"
                continue
            if _read(tls_dir, domain) != before:
                renewed.append(domain)
    for domain in renewed:
        first = sites[domain][0]  # the domain's server blocks: the same for each service
        where = lifecycle.placement(tools, first.manifest, first.domain, first.path)
        try:
            tools.nginx.publish(lifecycle.site(tools, first.manifest, where, first.allow))
        except HostError as exc:
            problems[domain] = (
                f"{domain} has a new certificate, which nginx serves only once it reloads: {exc}"
            )
    if renewed or problems:
        with db.write() as conn:
            for domain in renewed:
                audit(conn, actor, "service.certificate.renew", domain, issuer_of(tls_dir, domain))
            for domain, why in problems.items():
                audit(conn, actor, "service.certificate.failed", domain, why[:500])
    return [_status(tls_dir, d, sites[d], d in renewed, problems.get(d, "")) for d in sorted(sites)]


def _sites(db: Database, data_dir: str) -> tuple[lifecycle.Machinery, dict[str, list[Installed]]]:
    conf = settings.load()
    tools = machinery(conf, str(read_config(data_dir).get("domain", "localhost")))
    with db.read() as conn:
        found = installed.all_installed(conn)
    sites: dict[str, list[Installed]] = {}
    for s in found:
        if lifecycle.has_site(s.manifest):  # a voice server has no site, no certificate
            sites.setdefault(s.domain, []).append(s)
    return tools, sites


def _status(
    tls_dir: str, domain: str, on: list[Installed], renewed: bool = False, problem: str = ""
) -> CertificateStatus:
    issuer = issuer_of(tls_dir, domain)
    not_after = None
    if issuer != "none":
        not_after = read_certificate(*paths(tls_dir, domain)).not_after
    return CertificateStatus(domain, tuple(s.id for s in on), issuer, not_after, renewed, problem)


def _kept(tls_dir: str, domain: str, exc: AcmeError) -> str:
    """What a failed renewal leaves, and why: one line."""
    retry = "" if RETRY in str(exc) else f"; retry with {RETRY}"
    if issuer_of(tls_dir, domain) == "self-signed":
        return f"{domain} keeps its self-signed certificate: {exc}{retry}"
    try:
        ends = read_certificate(*paths(tls_dir, domain)).not_after.strftime("%Y-%m-%d")
    except HostError:
        return f"{domain} has no certificate: {exc}{retry}"
    return f"{domain} keeps its certificate, which ends on {ends}: {exc}{retry}"


def _read(tls_dir: str, domain: str) -> bytes | None:
    try:
        return Path(paths(tls_dir, domain)[0]).read_bytes()
    except OSError:
        return None
