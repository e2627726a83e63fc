"""The `[nightly]` and `[notify]` tables of the configuration file: what the nightly job
saves and where it sends it, when it runs, and whom isidorus tells when something fails.

    [nightly]
    time = "03:00"              # local time; a random delay is added
    random_delay = "30m"
    paths = ["/etc", "/root", "/home", "/srv"]
    excludes = ["*.tmp"]
    remotes = ["anna", "marc"]  # names of [remotes.NAME]; absent: every one
    verify_percent = 5          # of the packs, read back each night
    keep = { daily = 7, weekly = 4, monthly = 12 }
    security_updates = false    # true: Debian's security updates after the backups

    [notify]
    urls = ["mailto://user:pass@smtp.example.org?to=admin@example.org"]
    remote_days = 3             # a remote not reached for this long
    certificate_days = 14       # a certificate that ends this soon
    disk_percent = 90           # a disk fuller than this
    digest = false              # a report of every night, not only of failures

Every key is checked: an unknown one, or a value of the wrong kind, is one UsageError
naming the file, the key and what is expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from isidorus import settings
from isidorus.backup.prune import KeepPolicy
from isidorus.errors import UsageError
from isidorus.units import parse_delay

TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
KEEP_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
DEFAULT_PATHS = ("/etc", "/root", "/home", "/srv")
DEFAULT_KEEP = KeepPolicy(daily=7, weekly=4, monthly=12)


@dataclass(frozen=True)
class NightlyConfig:
    hour: int = 3
    minute: int = 0
    random_delay: float = 1800.0  # seconds
    paths: tuple[str, ...] = DEFAULT_PATHS
    excludes: tuple[str, ...] = ()
    remotes: tuple[str, ...] | None = None  # None: every configured remote
    verify_percent: float = 5.0
    keep: KeepPolicy = field(default_factory=lambda: DEFAULT_KEEP)
    security_updates: bool = False  # apply Debian's security updates after the backups

    @property
    def time(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}"


@dataclass(frozen=True)
class NotifyConfig:
    urls: tuple[str, ...] = ()
    remote_days: float = 3.0
    certificate_days: float = 14.0
    disk_percent: float = 90.0
    digest: bool = False


@dataclass(frozen=True)
class JobsConfig:
    nightly: NightlyConfig
    notify: NotifyConfig


def host_config() -> tuple[dict[str, Any], JobsConfig, dict[str, settings.Remote]]:
    """What the nightly job, `doctor` and the schedule read, all from the one configuration
    file: the settings, these two tables, and the remotes. UsageError for a bad file."""
    path = settings.config_path()
    return settings.load(), load(path), settings.load_remotes(path)


def load(config_file: str | None = None) -> JobsConfig:
    """Both tables, from the configuration file and its .d/*.toml (a later file's keys
    win, key by key)."""
    path = config_file or settings.config_path()
    nightly: dict[str, tuple[str, Any]] = {}
    notify: dict[str, tuple[str, Any]] = {}
    for f, doc in settings.documents(path):
        for name, into in (("nightly", nightly), ("notify", notify)):
            table = doc.get(name, {})
            if not isinstance(table, dict):
                raise UsageError(f"`{name}` in {f} must be a table: [{name}]")
            for key, value in table.items():
                into[key] = (f, value)
    return JobsConfig(_nightly(nightly), _notify(notify))


def _nightly(raw: Mapping[str, tuple[str, Any]]) -> NightlyConfig:
    values: dict[str, Any] = {}
    for key, (f, value) in raw.items():
        where = f"nightly.{key} in {f}"
        if key == "time":
            m = TIME_RE.match(value) if isinstance(value, str) else None
            if m is None:
                raise UsageError(f'{where}: write the local time as "HH:MM", e.g. "03:00"')
            values["hour"], values["minute"] = int(m.group(1)), int(m.group(2))
        elif key == "random_delay":
            try:
                values["random_delay"] = parse_delay(_string(value, where, '"30m"'))
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
        elif key in ("paths", "excludes"):
            values[key] = _strings(value, where)
            if key == "paths" and not all(p.startswith("/") for p in values[key]):
                raise UsageError(f"{where}: each path must be absolute (start with /)")
        elif key == "remotes":
            values["remotes"] = _strings(value, where)
        elif key == "verify_percent":
            values["verify_percent"] = _number(value, where, 0, 100)
        elif key == "keep":
            values["keep"] = _keep(value, where)
        elif key == "security_updates":
            if not isinstance(value, bool):
                raise UsageError(f"{where}: write true or false")
            values[key] = value
        else:
            raise UsageError(
                f"{where}: unknown key; [nightly] takes time, random_delay, paths, excludes, "
                "remotes, verify_percent, keep, security_updates"
            )
    return NightlyConfig(**values)


def _notify(raw: Mapping[str, tuple[str, Any]]) -> NotifyConfig:
    values: dict[str, Any] = {}
    for key, (f, value) in raw.items():
        where = f"notify.{key} in {f}"
        if key == "urls":
            values["urls"] = _strings(value, where)
            for url in values["urls"]:
                if "://" not in url:
                    raise UsageError(
                        f"{where}: {url!r} is not a notification URL such as "
                        '"mailto://user:pass@smtp.example.org" or "ntfy://ntfy.sh/topic"'
                    )
        elif key in ("remote_days", "certificate_days"):
            values[key] = _number(value, where, 0, 3650)
        elif key == "disk_percent":
            values[key] = _number(value, where, 1, 100)
        elif key == "digest":
            if not isinstance(value, bool):
                raise UsageError(f"{where}: write true or false")
            values[key] = value
        else:
            raise UsageError(
                f"{where}: unknown key; [notify] takes urls, remote_days, certificate_days, "
                "disk_percent, digest"
            )
    return NotifyConfig(**values)


def _string(value: Any, where: str, example: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: write a string, e.g. {example}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f'{where}: write a list of strings, e.g. ["a", "b"]')
    return tuple(value)


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UsageError(f"{where}: write a number from {low:g} to {high:g}")
    return float(value)


def _keep(value: Any, where: str) -> KeepPolicy:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: write a table, e.g. {{ daily = 7, weekly = 4 }}")
    counts: dict[str, int] = {}
    for k, v in value.items():
        if k not in KEEP_KEYS:
            raise UsageError(f"{where}: unknown rule {k!r}; one of {', '.join(KEEP_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UsageError(f"{where}: {k} must be a whole number, 0 or more")
        counts[k] = v
    policy = KeepPolicy(**counts)
    if policy.is_empty():
        raise UsageError(f"{where}: keeps nothing; give at least one rule, e.g. daily = 7")
    return policy
