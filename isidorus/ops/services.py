"""Service use cases: the catalog (install, upgrade and removal build on it)."""

from __future__ import annotations

from isidorus import settings
from isidorus.services import catalog as catalog_
from isidorus.services.manifest import Manifest


def catalog() -> list[Manifest]:
    """Every service isidorus can install, built-in and the operator's own."""
    own = str(settings.load()["services_dir"])
    return [e.manifest for e in catalog_.entries(own).values()]
