"""Where a store lives: the backend of a location, made without loading the engine, so a
command can start reaching a remote store (ssh's handshake, the home's start-up) while the
rest of isidorus loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from isidorus.backup.remote.ssh import RateLimit
from isidorus.errors import UsageError
from isidorus.units import parse_size

if TYPE_CHECKING:
    from isidorus.backup.remote.base import Backend


def rate_limit(settings: Mapping[str, Any]) -> RateLimit | None:
    """The shared limit of what remote stores send, from the `limit_rate` setting."""
    text = str(settings.get("limit_rate", "") or "")
    return RateLimit(parse_size(text, "rate")) if text else None


def backend_for(location: str, settings: Mapping[str, Any] | None = None) -> Backend:
    """The backend of a store's location; `settings` are isidorus's (`s3_*`, `ssh_command`,
    `limit_rate`…)."""
    if location.startswith("s3://"):
        # imported here: botocore takes a while to load, and local stores never need it
        from isidorus.backup.remote.s3 import S3Backend, S3Options

        conf = settings or {}
        return S3Backend(
            location,
            S3Options(
                endpoint=str(conf.get("s3_endpoint", "")),
                region=str(conf.get("s3_region", "")),
                addressing_style=str(conf.get("s3_addressing_style", "auto")),
                credentials_file=str(conf.get("s3_credentials_file", "")),
            ),
        )
    if location.startswith("ssh+isidorus://"):
        from isidorus.backup.remote.served import ServedBackend

        conf = settings or {}
        ssh_command, remote_isidorus = _served(conf)
        return ServedBackend(
            location, ssh_command, rate_limit=rate_limit(conf), remote_command=remote_isidorus
        )
    if location.startswith("ssh://"):
        from isidorus.backup.remote.sftp import SftpBackend

        conf = settings or {}
        return SftpBackend(
            location, str(conf.get("ssh_command", "ssh")), rate_limit=rate_limit(conf)
        )
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise UsageError(f"stores of kind {scheme}:// are not supported yet: give a directory")
    from isidorus.backup.remote.local import LocalBackend

    return LocalBackend(location)


def connect_ahead(location: str, settings: Mapping[str, Any]) -> None:
    """Start ssh to a home (ssh+isidorus://) before the command that needs it is loaded
    (see cli/early.py); the command's backend, made with the same settings, takes it over
    when it connects. Nothing for any other kind of store."""
    if location.startswith("ssh+isidorus://"):
        from isidorus.backup.remote.ssh import SshTarget, serve_argv, start_ahead

        target = SshTarget.parse(location)
        start_ahead(target, serve_argv(target, *_served(settings)))


def _served(settings: Mapping[str, Any]) -> tuple[str, str]:
    """The ssh command and the remote isidorus a home is reached with."""
    return str(settings.get("ssh_command", "ssh")), str(settings.get("remote_isidorus", "isidorus"))


def connect_early(location: str, settings: Mapping[str, Any]) -> Backend | None:
    """For a home (ssh+isidorus://), its backend already connecting in the background
    (a failure is raised by its first request); None for any other kind of store."""
    if not location.startswith("ssh+isidorus://"):
        return None
    from isidorus.backup.remote.served import ServedBackend

    backend = backend_for(location, settings)
    assert isinstance(backend, ServedBackend)
    backend.connect_soon()
    return backend
