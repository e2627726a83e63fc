"""The catalog: every service isidorus can install, from the manifests shipped with it
and from the operator's own directory (`services_dir`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from isidorus.services.errors import ManifestError
from isidorus.services.manifest import Manifest, load

BUILT_IN = Path(__file__).parent / "catalog"


@dataclass(frozen=True)
class Entry:
    manifest: Manifest
    directory: Path  # where its templates are: DIRECTORY/<id>/
    built_in: bool


def entries(own_dir: str | None = None) -> dict[str, Entry]:
    """Every service by id, the operator's replacing built-in ones of the same id. A bad
    manifest anywhere is an error: a catalog that silently lacks a service is worse."""
    found: dict[str, Entry] = {}
    dirs = [(BUILT_IN, True)]
    if own_dir and Path(own_dir).is_dir():
        dirs.append((Path(own_dir), False))
    for directory, built_in in dirs:
        for path in sorted(directory.glob("*.toml")):
            m = load(path)
            found[m.id] = Entry(m, directory, built_in)
    return dict(sorted(found.items()))


def get(service_id: str, own_dir: str | None = None) -> Entry:
    catalog = entries(own_dir)
    if service_id not in catalog:
        raise ManifestError(
            f"there is no service {service_id!r} in the catalog: see `isidorus service catalog`"
        )
    return catalog[service_id]
