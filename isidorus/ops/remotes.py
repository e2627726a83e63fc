"""Named remotes: short names for the places where copies of a store live.

`add` writes `[remotes.NAME]` with `url` to `remotes.toml` in the configuration's `.d`
folder (`/etc/isidorus/isidorus.toml.d/remotes.toml`, or beside the file ISIDORUS_CONFIG
names), so the main configuration file is never rewritten and keeps its comments; remotes
written by hand in any configuration file count too. Wherever a command expects a STORE,
`remote:NAME` stands for the remote's URL. The URL's form is checked here; whether a kind
of store can be reached is the backends' business.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from isidorus.errors import UsageError
from isidorus.settings import Remote, load_remotes, remotes_path

PREFIX = "remote:"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_NAME = re.compile(NAME_PATTERN)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class NoSuchRemote(UsageError):
    """No remote of that name is defined."""

    http_status = 404


class RemoteExists(UsageError):
    """A remote of that name is defined already."""

    http_status = 409


class RemoteElsewhere(UsageError):
    """The remote is defined in a file `add` did not write: that file is the operator's."""

    http_status = 409


FORMS = "a path, ssh://[user@]host[:port]/path, ssh+isidorus://[user@]host[:port]/path or s3://bucket/prefix"


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a remote name: use letters, digits, '.', '_' and '-' "
            "(64 at most), starting with a letter or digit"
        )


def check_url(url: str) -> None:
    """Raise UsageError naming what is wrong with the form of a store's URL."""
    if not url:
        raise UsageError(f"the URL is empty: give {FORMS}")
    if url.startswith(PREFIX):
        raise UsageError(f"{url!r} names a remote: give the place itself ({FORMS})")
    if "://" not in url:
        if not os.path.isabs(url):
            raise UsageError(
                f"{url!r} is a relative path: a remote needs an absolute one, such as "
                "/mnt/usb/isidorus"
            )
        return
    scheme = url.split("://", 1)[0]
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise UsageError(f"{url!r} has a query or fragment ('?' or '#'): give {FORMS}")
    if scheme in ("ssh", "ssh+isidorus"):
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise UsageError(f"{url!r} has a bad port: give a number from 1 to 65535") from None
        if parts.password is not None:
            raise UsageError(f"{url!r} holds a password: ssh logs in with keys, leave it out")
        if not parts.hostname:
            raise UsageError(f"{url!r} names no host: {scheme}://[user@]host[:port]/path")
        if parts.path in ("", "/"):
            raise UsageError(
                f"{url!r} names no path on the host: {scheme}://[user@]host[:port]/path"
            )
        return
    if scheme == "s3":
        if not _BUCKET.fullmatch(parts.netloc):
            raise UsageError(
                f"{url!r} has no valid bucket name (3 to 63 lowercase letters, digits, "
                "'.' and '-'): s3://bucket/prefix"
            )
        return
    raise UsageError(f"{scheme}:// is not a kind of store isidorus knows: give {FORMS}")


def resolve(location: str, remotes: Mapping[str, Remote]) -> str:
    """The place a STORE argument means: `remote:NAME` is the remote's URL, anything
    else is taken as it is."""
    if not location.startswith(PREFIX):
        return location
    name = location[len(PREFIX) :]
    remote = remotes.get(name)
    if remote is None:
        raise NoSuchRemote(
            f"there is no remote {name!r}: see `isidorus backup remote list`, or add it "
            "with `isidorus backup remote add`"
        )
    return remote.url


def list_remotes(config_file: str) -> list[Remote]:
    return sorted(load_remotes(config_file).values(), key=lambda r: r.name)


def get_remote(config_file: str, name: str) -> Remote:
    """The remote `name`; NoSuchRemote when none has that name."""
    remote = load_remotes(config_file).get(name)
    if remote is None:
        raise NoSuchRemote(f"there is no remote {name!r}: see `isidorus backup remote list`")
    return remote


# tomllib and tomli_w load only to read and write remotes.toml: most commands only name
# stores, and a sync to a home is timed from its first moment


def _load(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _write(path: str, doc: dict[str, Any]) -> None:
    """Replace the file in one step: a reader sees the old one or the new one."""
    import tomli_w

    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, tomli_w.dumps(doc).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc} (run as a user that may change "
            "isidorus's configuration)"
        ) from None


def add_remote(config_file: str, name: str, url: str) -> Remote:
    """Record a remote; refuses a name in use (RemoteExists) and a name or URL of the
    wrong form (UsageError)."""
    check_name(name)
    check_url(url)
    existing = load_remotes(config_file).get(name)
    if existing is not None:
        raise RemoteExists(
            f"the remote {name!r} exists ({existing.url}, in {existing.file}): remove it "
            "first, or choose another name"
        )
    path = remotes_path(config_file)
    doc = _load(path)
    table = doc.setdefault("remotes", {})
    if not isinstance(table, dict):
        raise UsageError(f"`remotes` in {path} must be a table: fix that file")
    table[name] = {"url": url}
    _write(path, doc)
    return Remote(name, url, path)


def remove_remote(config_file: str, name: str) -> Remote:
    """Forget a remote written by `add` (the store it names is not touched): NoSuchRemote,
    or RemoteElsewhere for one defined in another configuration file."""
    remote = get_remote(config_file, name)
    path = remotes_path(config_file)
    doc = _load(path)
    table = doc.get("remotes")
    if remote.file != path or not isinstance(table, dict) or name not in table:
        raise RemoteElsewhere(
            f"the remote {name!r} is defined in {remote.file}: remove it from that file"
        )
    del table[name]
    if not table:
        del doc["remotes"]
    _write(path, doc)
    return remote
