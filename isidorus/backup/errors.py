"""Errors of the backup engine.

    IsidorusError
    └── BackupError
        ├── StoreError                 the store is missing, not a store, or of an unknown version
        │   └── StoreExistsError       init on a store that exists
        ├── KeyError_                  wrong passphrase, no usable key
        ├── IntegrityError             an object does not match its name or fails authentication
        ├── LockedError                another process holds an exclusive lock
        ├── SnapshotNotFound           no snapshot matches an id, prefix or `latest`
        ├── PathNotFound               a path is not in a snapshot
        ├── SourceError                a path to back up is missing or unreadable
        ├── BackendError               the storage failed (disk full, permission, I/O)
        └── PartialBackup              the snapshot was written but some files were skipped

IntegrityError is never swallowed: verify turns damage into data, everything else stops.
"""

from __future__ import annotations

from isidorus.errors import IsidorusError, NotFoundError, UsageError


class BackupError(IsidorusError):
    pass


class StoreError(BackupError):
    pass


class StoreExistsError(StoreError):
    pass


class KeyError_(BackupError):  # noqa: N801 - the builtin KeyError must stay usable
    pass


class IntegrityError(BackupError):
    pass


class LockedError(BackupError):
    exit_code = 11
    http_status = 409


class SnapshotNotFound(BackupError, NotFoundError):
    http_status = 404


class PathNotFound(BackupError, NotFoundError):
    http_status = 404


class SourceError(BackupError, UsageError):
    exit_code = 2


class BackendError(BackupError):
    """Storage failure. `permanent` says whether trying again can help."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class PartialBackup(BackupError):
    exit_code = 3
