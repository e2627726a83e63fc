"""Service use cases: the catalog, and installing, listing, opening to groups and removing
services. The command line, the web and the API call these; each change is recorded in the
state database and the audit log."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from isidorus import settings
from isidorus.directory.config import load_config as load_directory_config
from isidorus.errors import NotFoundError, UsageError
from isidorus.ops import service_backups
from isidorus.ops.accounts import audit
from isidorus.ops.database import CONFIG_NAME, read_config
from isidorus.services import catalog as catalog_
from isidorus.services import health, installed, lifecycle
from isidorus.services import upgrade as upgrade_
from isidorus.services.errors import ServiceError
from isidorus.services.installed import Installed
from isidorus.services.manifest import Manifest
from isidorus.state.db import Database
from isidorus.system.acme import Acme
from isidorus.system.errors import HostError
from isidorus.system.nginx import Nginx
from isidorus.system.processes import process_manager

Say = Callable[[str], None]
_DOMAIN = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
_PATH = re.compile(r"/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?")


def catalog() -> list[Manifest]:
    """Every service isidorus can install, built-in and the operator's own."""
    own = str(settings.load()["services_dir"])
    return [e.manifest for e in catalog_.entries(own).values()]


def machinery(
    conf: Mapping[str, Any], host_domain: str, data_dir: str | None = None
) -> lifecycle.Machinery:
    """The host's programs as the settings describe them (and, given the host's data
    directory, its LDAP directory for the services that sign members in by LDAP)."""
    login = str(conf.get("services_login_url") or f"https://{host_domain}/login")
    nginx = Nginx(
        str(conf["nginx_sites_dir"]),
        auth_url=str(conf["services_auth_url"]),
        login_url=login,
        test_cmd=tuple(shlex.split(str(conf["nginx_test_command"]))),
        reload_cmd=tuple(shlex.split(str(conf["nginx_reload_command"]))),
        addresses=tuple(str(conf["nginx_listen"]).split()),
    )
    tls = str(conf["services_tls"])
    if tls not in ("self-signed", "acme", "none"):
        raise UsageError(f"services_tls = {tls!r} is unknown: write self-signed, acme or none")
    return lifecycle.Machinery(
        processes=process_manager(conf),
        nginx=nginx,
        data_root=str(conf["service_data_root"]),
        config_root=str(conf["service_config_root"]),
        tls_dir=str(conf["tls_dir"]) if tls != "none" else None,
        http_port=int(conf["services_http_port"]),
        https_port=int(conf["services_https_port"]),
        acme=_acme(conf, nginx.acme_dir) if tls == "acme" else None,
        ldap=_ldap_for_services(data_dir) if data_dir is not None else None,
    )


def _ldap_for_services(data_dir: str) -> dict[str, Any] | None:
    """What the templates of an LDAP service need, from the host's [ldap] table; None
    when the host keeps no directory, or names no DN for the services to search with."""
    config = load_directory_config(os.path.join(data_dir, CONFIG_NAME))
    if config is None or config.services_bind_dn is None:
        return None
    from isidorus.directory.entries import Layout  # loads ldap3: only for LDAP hosts

    layout = Layout(config.base_dn)
    return {
        "url": config.url,
        "host": config.host,
        "port": config.port,
        "base_dn": config.base_dn,
        "people_dn": layout.people,
        "groups_dn": layout.groups,
        "bind_dn": config.services_bind_dn,
        "bind_password": config.services_bind_password,
    }


def _acme(conf: Mapping[str, Any], acme_dir: str) -> Acme:
    email = str(conf["acme_email"]).strip()
    if not email:
        raise UsageError(
            "services_tls = acme needs acme_email: set it (or ISIDORUS_ACME_EMAIL) to the "
            "address the host's account at the CA is registered with"
        )
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise UsageError(f"acme_email {email!r} is not an email address: write name@domain")
    directory = str(conf["acme_directory"])
    if not directory.startswith("https://"):
        raise UsageError(
            f"acme_directory {directory!r} is not an ACME directory URL: write https://…"
        )
    return Acme(
        str(conf["tls_dir"]),
        acme_dir,
        email,
        directory=directory,
        ca_bundle=str(conf["acme_ca_bundle"]) or None,
    )


@dataclass(frozen=True)
class InstallOptions:
    service: str
    domain: str | None = None  # default: SERVICE.HOST_DOMAIN
    path: str = "/"
    allow: tuple[str, ...] = ()


def _check_place(domain: str, path: str) -> None:
    if not _DOMAIN.fullmatch(domain):
        raise UsageError(f"{domain!r} is not a domain name: write it like cal.example.org")
    if not _PATH.fullmatch(path):
        raise UsageError(f"{path!r} is not a path: write / or /name (letters, digits, . _ ~ -)")


def check_install(db: Database, data_dir: str, options: InstallOptions) -> None:
    """What `install` would refuse before changing anything, told before it is started in
    the background: NotFoundError for a service the catalog lacks, UsageError for a domain
    or path that is not one, ServiceError for a group that does not exist or a service
    that is here already. Changes nothing."""
    own = str(settings.load()["services_dir"])
    if options.service not in catalog_.entries(own):
        raise NotFoundError(
            f"there is no service {options.service!r} in the catalog: see "
            "`isidorus service catalog`"
        )
    host_domain = str(read_config(data_dir).get("domain", "localhost"))
    _check_place((options.domain or f"{options.service}.{host_domain}").lower(), options.path)
    with db.read() as conn:
        installed.group_ids(conn, options.allow)
        installed.check_absent(conn, options.service)


def get_installed(db: Database, service: str) -> Installed:
    """The service as recorded; NotInstalled (HTTP 404) when it is not here."""
    with db.read() as conn:
        return installed.get(conn, service)


def install(
    db: Database, data_dir: str, options: InstallOptions, actor: str, say: Say
) -> Installed:
    """Install a service from the catalog, start it, and publish it behind nginx, open to
    the groups of `options.allow` (every member when none). All or nothing."""
    conf = settings.load()
    entry = catalog_.get(options.service, str(conf["services_dir"]))
    manifest = entry.manifest
    host_domain = str(read_config(data_dir).get("domain", "localhost"))
    domain = (options.domain or f"{manifest.id}.{host_domain}").lower()
    _check_place(domain, options.path)
    tools = machinery(conf, host_domain, data_dir)
    where = lifecycle.placement(tools, manifest, domain, options.path)
    if manifest.web.address is not None:  # no site: what its clients connect to
        url = where.fill(manifest.web.address)
    else:
        tls = str(conf["services_tls"]) != "none"
        port = int(conf["services_https_port" if tls else "services_http_port"])
        url = installed.site_url(domain, options.path, tls=tls, port=port)
    with db.write() as conn:
        installed.group_ids(conn, options.allow)  # a wrong group stops it before anything
        installed.begin(conn, manifest, domain, options.path, url)
        audit(conn, actor, "service.install.start", manifest.id, domain + options.path)
    try:

        def record(so_far: lifecycle.Added) -> None:
            with db.write() as conn:
                installed.record_added(conn, manifest.id, so_far)

        added = lifecycle.install(
            tools, manifest, entry.directory, where, options.allow, say, record
        )
    except BaseException:
        with db.write() as conn:
            installed.forget(conn, manifest.id)
            audit(conn, actor, "service.install.failed", manifest.id)
        raise
    with db.write() as conn:
        installed.finish(conn, manifest.id, added)
        installed.set_allowed(conn, manifest.id, options.allow)
        audit(conn, actor, "service.install", manifest.id, ",".join(options.allow))
        return installed.get(conn, manifest.id)


@dataclass(frozen=True)
class ServiceStatus:
    service: Installed
    process: str  # running, stopped, failed, absent…
    health: str  # "ok", or what is wrong

    def to_json(self) -> dict[str, Any]:
        s = self.service
        return {
            "id": s.id,
            "name": s.manifest.name,
            "version": s.version,
            "url": s.url,
            "domain": s.domain,
            "path": s.path,
            "state": s.state if s.state != "installed" else self.process,
            "health": self.health,
            "allow": list(s.allow),
            "replaces": list(s.manifest.replaces),
        }


def list_installed(db: Database, data_dir: str) -> list[ServiceStatus]:
    with db.read() as conn:
        found = installed.all_installed(conn)
    if not found:
        return []
    tools = machinery(settings.load(), str(read_config(data_dir).get("domain", "localhost")))
    out = []
    for s in found:
        try:
            process = tools.processes.state(lifecycle.process_name(s.id))
        except HostError as exc:
            # one service the process manager cannot tell about does not hide the others
            out.append(ServiceStatus(s, "unknown", str(exc)))
            continue
        problem = (
            health.check(s.manifest.health, s.port, timeout=2) if process == "running" else process
        )
        out.append(ServiceStatus(s, process, problem or "ok"))
    return out


def remove(
    db: Database, data_dir: str, service: str, purge: bool, actor: str, say: Say
) -> list[str]:
    """Stop, unpublish and forget the service; with `purge`, also its data, configuration,
    user and the packages its install added (that no other service needs). Returns what
    could not be removed."""
    conf = settings.load()
    with db.read() as conn:
        found = installed.get(conn, service)
        others = [s for s in installed.all_installed(conn) if s.id != service]
    keep = frozenset(p for s in others for p in s.added.packages)
    tools = machinery(conf, str(read_config(data_dir).get("domain", "localhost")))
    problems = lifecycle.remove(
        tools, found.manifest, found.added, purge=purge, keep_packages=keep, say=say
    )
    with db.write() as conn:
        installed.forget(conn, service)
        audit(conn, actor, "service.remove", service, "purge" if purge else "")
    return problems


def _republish(
    db: Database,
    data_dir: str,
    service: str,
    change: Callable[[tuple[str, ...]], tuple[str, ...]],
    actor: str,
    action: str,
    group: str,
) -> Installed:
    conf = settings.load()
    tools = machinery(conf, str(read_config(data_dir).get("domain", "localhost")))
    with db.write() as conn:
        found = installed.get(conn, service)
        allow = change(found.allow)
        installed.set_allowed(conn, service, allow)
        where = lifecycle.placement(tools, found.manifest, found.domain, found.path)
        # inside the transaction: a site nginx refuses leaves the groups as they were
        lifecycle.publish(tools, found.manifest, where, allow)
        audit(conn, actor, action, service, group)
        return installed.get(conn, service)


def allow(db: Database, data_dir: str, service: str, group: str, actor: str) -> Installed:
    """Open the service to the members of `group` (once any group is named, only named
    groups' members get in)."""
    return _republish(
        db, data_dir, service, lambda a: tuple(sorted({*a, group})), actor, "service.allow", group
    )


def deny(db: Database, data_dir: str, service: str, group: str, actor: str) -> Installed:
    def without(a: tuple[str, ...]) -> tuple[str, ...]:
        if group not in a:
            now = ", ".join(a) or "none (every member)"
            raise ServiceError(f"{group} is not among the groups allowed on {service}: {now}")
        rest = tuple(g for g in a if g != group)
        if not rest:
            raise ServiceError(
                f"{group} is the last group allowed on {service}: without it every member "
                "would get in; allow another group first, or remove the service"
            )
        return rest

    return _republish(db, data_dir, service, without, actor, "service.deny", group)


def logs(db: Database, data_dir: str, service: str, lines: int) -> list[str]:
    with db.read() as conn:
        installed.get(conn, service)
    tools = machinery(settings.load(), str(read_config(data_dir).get("domain", "localhost")))
    return tools.processes.logs(lifecycle.process_name(service), lines)


def restart(db: Database, data_dir: str, service: str, actor: str) -> str:
    """Restart the service and wait for its health check; the problem, if it stays sick."""
    with db.write() as conn:
        found = installed.get(conn, service)
        audit(conn, actor, "service.restart", service)
    tools = machinery(settings.load(), str(read_config(data_dir).get("domain", "localhost")))
    name = lifecycle.process_name(service)
    tools.processes.restart(name)
    return lifecycle.health_problem(tools.processes, found.manifest, found.port) or ""


@dataclass(frozen=True)
class UpgradeResult:
    service: str
    old_version: str
    version: str  # now running
    snapshot: str  # the backup taken first; "" when there was nothing to upgrade

    @property
    def upgraded(self) -> bool:
        return self.version != self.old_version

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.service,
            "upgraded": self.upgraded,
            "old_version": self.old_version,
            "version": self.version,
            "snapshot": self.snapshot or None,
        }


def upgrade(db: Database, data_dir: str, service: str, actor: str, say: Say) -> UpgradeResult:
    """Upgrade the service to its catalog manifest's version, when that differs from the
    installed one: a service backup first, then the new software, configuration and
    process, a restart and the health check. On failure the old version is put back with
    its data (from that backup, once the new software may have touched it), and
    ServiceError says what failed and where the service stands."""
    conf = settings.load()
    with db.read() as conn:
        found = service_backups.ready(conn, service)
    entry = catalog_.get(service, str(conf["services_dir"]))
    new = entry.manifest
    if new.version == found.version:
        return UpgradeResult(service, found.version, found.version, "")
    tools = machinery(conf, str(read_config(data_dir).get("domain", "localhost")), data_dir)
    was = lifecycle.placement(tools, found.manifest, found.domain, found.path)
    where = lifecycle.placement(tools, new, found.domain, found.path)
    with service_backups.changing(service):
        ref = service_backups.store_ref(conf, create=True)
        say(f"backing up {service} {found.version} first")
        first = service_backups.take_backup(ref, tools, found, say).result.snapshot
        with db.write() as conn:
            what = f"{found.version} {new.version} {first.id}"
            audit(conn, actor, "service.upgrade.start", service, what)

        def restore_data() -> str:
            return service_backups.restore_data(ref, found.manifest, was, first.id, say)

        try:
            added = upgrade_.upgrade(
                tools,
                found.manifest,
                new,
                entry.directory,
                (was, where),
                found.allow,
                restore_data,
                say,
            )
        except ServiceError:
            with db.write() as conn:
                audit(conn, actor, "service.upgrade.failed", service, new.version)
            raise
        with db.write() as conn:
            installed.upgraded(conn, service, new, tuple(added))
            audit(conn, actor, "service.upgrade", service, f"{found.version} {new.version}")
    return UpgradeResult(service, found.version, new.version, first.id)


@dataclass(frozen=True)
class UpgradeAll:
    """What an upgrade of every service did: each service upgraded (or found at its
    catalog's version already), and each whose upgrade failed, with the one-line why."""

    done: tuple[UpgradeResult, ...]
    failed: tuple[tuple[str, str], ...]  # (service, error)

    def to_json(self) -> dict[str, Any]:
        return {
            "done": [r.to_json() for r in self.done],
            "failed": [{"id": s, "error": e} for s, e in self.failed],
        }


def upgrade_all(db: Database, data_dir: str, actor: str, say: Say) -> UpgradeAll:
    """Upgrade every service whose catalog manifest has another version (`upgradable`),
    one after the other, as `upgrade` does each. A service whose upgrade fails
    (ServiceError: it is back at its old version, or says where it stands) is noted and
    the others go on; any other error stops at once."""
    done, failed = [], []
    for service in upgradable(db):
        try:
            done.append(upgrade(db, data_dir, service, actor, say))
        except ServiceError as exc:
            failed.append((service, str(exc)))
    return UpgradeAll(tuple(done), tuple(failed))


def upgradable(db: Database) -> list[str]:
    """The installed services whose catalog manifest has another version."""
    own = str(settings.load()["services_dir"])
    known = catalog_.entries(own)
    with db.read() as conn:
        found = installed.all_installed(conn)
    return [s.id for s in found if s.id in known and known[s.id].manifest.version != s.version]
