"""Errors of the LDAP directory.

IsidorusError
└── DirectoryError                     exit 1, HTTP 502
    ├── DirectoryConfigError (UsageError)  the [ldap] table is wrong: exit 2, HTTP 500
    │   └── NoDirectory                    the host keeps no directory: HTTP 409
    ├── DirectoryUnreachable               cannot connect or bind: HTTP 503
    └── SyncIncomplete                     some entries could not be written
"""

from __future__ import annotations

from isidorus.errors import IsidorusError, UsageError


class DirectoryError(IsidorusError):
    http_status = 502


class DirectoryConfigError(DirectoryError, UsageError):
    exit_code = 2
    http_status = 500  # the operator's mistake, not the visitor's


class NoDirectory(DirectoryConfigError):
    """The host's configuration has no [ldap] table: there is no directory to sync."""

    http_status = 409


class DirectoryUnreachable(DirectoryError):
    http_status = 503


class SyncIncomplete(DirectoryError):
    pass
