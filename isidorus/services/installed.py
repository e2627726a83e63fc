"""The installed services, as the state database records them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, insert, select, update

from isidorus.services.errors import NotInstalled, ServiceError
from isidorus.services.lifecycle import Added
from isidorus.services.manifest import Manifest
from isidorus.state.schema import groups, service_groups, services


@dataclass(frozen=True)
class Installed:
    id: str
    version: str
    domain: str
    path: str
    port: int
    state: str  # installing | installed
    manifest: Manifest
    added: Added
    allow: tuple[str, ...]  # group names
    installed_at: datetime
    url: str  # where members reach it, as published (scheme and port included)


def site_url(domain: str, path: str, *, tls: bool = True, port: int | None = None) -> str:
    """The address members use: https (http without TLS), the port when not the usual."""
    scheme = "https" if tls else "http"
    usual = 443 if tls else 80
    where = domain if port in (None, usual) else f"{domain}:{port}"
    return f"{scheme}://{where}{path if path.endswith('/') else path + '/'}"


def check_absent(conn: Connection, service_id: str) -> None:
    """ServiceError when the service is here: installed, or an install running or
    interrupted."""
    row = conn.execute(select(services.c.state).where(services.c.id == service_id)).first()
    if row is None:
        return
    if row.state == "installing":
        raise ServiceError(
            f"{service_id} is being installed, or an install of it was interrupted: wait "
            f"for it, or run `isidorus service remove {service_id} --purge` and install again"
        )
    raise ServiceError(
        f"{service_id} is already installed: see `isidorus service list`, or "
        f"`isidorus service upgrade {service_id}`"
    )


def begin(
    conn: Connection, manifest: Manifest, domain: str, path: str, url: str | None = None
) -> None:
    """Record an install as started; refuses a service already there (installed, or an
    install running or interrupted)."""
    check_absent(conn, manifest.id)
    now = datetime.now(UTC)
    conn.execute(
        insert(services).values(
            id=manifest.id,
            version=manifest.version,
            domain=domain,
            path=path,
            url=url or site_url(domain, path),
            port=manifest.run.port,
            state="installing",
            manifest=manifest.model_dump_json(),
            added="{}",
            installed_at=now,
            updated_at=now,
        )
    )


def finish(conn: Connection, service_id: str, added: Added) -> None:
    conn.execute(
        update(services)
        .where(services.c.id == service_id)
        .values(state="installed", added=json.dumps(added.to_json()), updated_at=datetime.now(UTC))
    )


def upgraded(
    conn: Connection, service_id: str, manifest: Manifest, new_packages: tuple[str, ...] = ()
) -> None:
    """Record that the service now runs `manifest`'s version; `new_packages` are Debian
    packages the upgrade added (a purge removes them too)."""
    row = conn.execute(select(services.c.added).where(services.c.id == service_id)).one()
    added = Added.from_json(json.loads(row.added or "{}"))
    added.packages += [p for p in new_packages if p not in added.packages]
    conn.execute(
        update(services)
        .where(services.c.id == service_id)
        .values(
            version=manifest.version,
            port=manifest.run.port,
            manifest=manifest.model_dump_json(),
            added=json.dumps(added.to_json()),
            updated_at=datetime.now(UTC),
        )
    )


def record_added(conn: Connection, service_id: str, added: Added) -> None:
    """What an install running now has added so far (see lifecycle.install)."""
    conn.execute(
        update(services)
        .where(services.c.id == service_id)
        .values(added=json.dumps(added.to_json()), updated_at=datetime.now(UTC))
    )


def forget(conn: Connection, service_id: str) -> None:
    conn.execute(delete(services).where(services.c.id == service_id))


def group_ids(conn: Connection, names: tuple[str, ...]) -> list[int]:
    found = dict(
        conn.execute(select(groups.c.name, groups.c.id).where(groups.c.name.in_(names))).all()
    )
    missing = [n for n in names if n not in found]
    if missing:
        raise ServiceError(
            f"there is no group {missing[0]!r}: see `isidorus group list`, or add it with "
            f"`isidorus group add {missing[0]}`"
        )
    return [found[n] for n in names]


def set_allowed(conn: Connection, service_id: str, names: tuple[str, ...]) -> None:
    ids = group_ids(conn, names)
    conn.execute(delete(service_groups).where(service_groups.c.service_id == service_id))
    for gid in ids:
        conn.execute(insert(service_groups).values(service_id=service_id, group_id=gid))


def _allowed(conn: Connection, service_id: str) -> tuple[str, ...]:
    rows = conn.execute(
        select(groups.c.name)
        .join(service_groups, service_groups.c.group_id == groups.c.id)
        .where(service_groups.c.service_id == service_id)
        .order_by(groups.c.name)
    )
    return tuple(r[0] for r in rows)


def _from_row(conn: Connection, row: object) -> Installed:
    r = row._mapping  # type: ignore[attr-defined]
    return Installed(
        id=r["id"],
        version=r["version"],
        domain=r["domain"],
        path=r["path"],
        port=r["port"],
        url=r["url"] or site_url(r["domain"], r["path"]),
        state=r["state"],
        manifest=Manifest.model_validate_json(r["manifest"]),
        added=Added.from_json(json.loads(r["added"] or "{}")),
        allow=_allowed(conn, r["id"]),
        installed_at=r["installed_at"],
    )


def get(conn: Connection, service_id: str) -> Installed:
    row = conn.execute(select(services).where(services.c.id == service_id)).first()
    if row is None:
        raise NotInstalled(
            f"{service_id} is not installed: see `isidorus service list`, or install it with "
            f"`isidorus service install {service_id}`"
        )
    return _from_row(conn, row)


def all_installed(conn: Connection) -> list[Installed]:
    rows = conn.execute(select(services).order_by(services.c.id)).all()
    return [_from_row(conn, r) for r in rows]
