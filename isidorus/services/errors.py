"""Errors of the services.

IsidorusError
├── UsageError
│   └── ManifestError        a manifest is not valid (file, field, fix)
└── ServiceError             an install, removal or other change of a service failed
    └── NotInstalled         the service is not installed (exit 1, HTTP 404)
"""

from __future__ import annotations

from isidorus.errors import IsidorusError, NotFoundError, UsageError


class ManifestError(UsageError):
    """A manifest is not valid: the message names the file, the field and the fix."""


class ServiceError(IsidorusError):
    pass


class NothingToSave(ServiceError):
    """A service whose manifest names no data, or whose data does not exist yet."""


class NotInstalled(ServiceError, NotFoundError):
    http_status = 404
