"""The `[ldap]` table of DATA_DIR/isidorus.toml: where the directory is and how isidorus
binds to it. No table, no directory: a host without LDAP needs nothing here.

    [ldap]
    url = "ldap://127.0.0.1/"                  # ldap://HOST[:PORT]/: slapd on this host
    base_dn = "dc=example,dc=org"
    bind_dn = "cn=admin,dc=example,dc=org"
    bind_password_file = "ldap.secret"         # relative to DATA_DIR, or absolute
    timeout = 5                                # seconds, optional
    services_bind_dn = "cn=services,dc=example,dc=org"   # optional: what services search
    services_bind_password_file = "ldap-services.secret" #   with (needed by sso = "ldap")
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from isidorus.directory.errors import DirectoryConfigError

EXAMPLES = {
    "url": '"ldap://127.0.0.1/"',
    "base_dn": '"dc=example,dc=org"',
    "bind_dn": '"cn=admin,dc=example,dc=org"',
    "bind_password_file": '"ldap.secret"',
    "timeout": "5",
    "services_bind_dn": '"cn=services,dc=example,dc=org"',
    "services_bind_password_file": '"ldap-services.secret"',
}
PORT = 389
LOCK_NAME = "directory.lock"


@dataclass(frozen=True)
class DirectoryConfig:
    url: str
    base_dn: str
    bind_dn: str
    bind_password: str = field(repr=False)
    lock_file: str  # held while syncing, beside the config file
    timeout: int = 5  # seconds (ldap3 packs it into a socket option: whole ones)
    # the DN the services that sign members in by LDAP search the directory with
    services_bind_dn: str | None = None
    services_bind_password: str | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or PORT


def load_config(config_file: str) -> DirectoryConfig | None:
    """The `[ldap]` table of the host's configuration file, checked; None when there is
    none. Raises DirectoryConfigError naming the key at fault and how to fix it."""
    try:
        with open(config_file, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DirectoryConfigError(f"cannot read {config_file}: {exc}") from None
    if "ldap" not in doc:
        return None
    return parse_config(doc["ldap"], config_file)


def parse_config(table: Any, config_file: str) -> DirectoryConfig:
    where = f"[ldap] in {config_file}"
    if not isinstance(table, dict):
        raise DirectoryConfigError(f"{where}: `ldap` must be a table with {_keys()}")
    unknown = sorted(set(table) - set(EXAMPLES))
    if unknown:
        raise DirectoryConfigError(f"{where}: unknown key {unknown[0]!r} (the keys are {_keys()})")
    for key in ("url", "base_dn", "bind_dn", "bind_password_file"):
        value = table.get(key)
        if value is None:
            raise DirectoryConfigError(f"{where}: {key} is missing: e.g. {key} = {EXAMPLES[key]}")
        if not isinstance(value, str) or not value.strip():
            raise DirectoryConfigError(
                f"{where}: {key} must be a non-empty string, e.g. {key} = {EXAMPLES[key]}"
            )
    url = table["url"].strip()
    _check_url(url, where)
    for key in ("base_dn", "bind_dn"):
        _check_dn(key, table[key], where)
    service_keys = ("services_bind_dn", "services_bind_password_file")
    services = [table.get(k) for k in service_keys]
    if (services[0] is None) != (services[1] is None):
        raise DirectoryConfigError(
            f"{where}: give both services_bind_dn and services_bind_password_file, or neither"
        )
    for key, value in zip(
        ("services_bind_dn", "services_bind_password_file"), services, strict=True
    ):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DirectoryConfigError(
                f"{where}: {key} must be a non-empty string, e.g. {key} = {EXAMPLES[key]}"
            )
    if services[0] is not None:
        _check_dn("services_bind_dn", services[0], where)
    timeout = table.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 300:
        raise DirectoryConfigError(f"{where}: timeout must be a whole number of seconds, 1 to 300")
    password_file = os.path.join(os.path.dirname(config_file), table["bind_password_file"])
    return DirectoryConfig(
        url=url,
        base_dn=table["base_dn"].strip(),
        bind_dn=table["bind_dn"].strip(),
        bind_password=_read_password(password_file, where),
        timeout=timeout,
        services_bind_dn=services[0].strip() if services[0] else None,
        services_bind_password=(
            _read_password(
                os.path.join(os.path.dirname(config_file), services[1]),
                where,
                "services_bind_password_file",
            )
            if services[1]
            else None
        ),
        lock_file=os.path.join(os.path.dirname(config_file), LOCK_NAME),
    )


def _keys() -> str:
    return ", ".join(EXAMPLES)


def _check_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if (
        parts.scheme != "ldap"
        or not parts.hostname
        or port == 0
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise DirectoryConfigError(
            f"{where}: url {url!r} is not ldap://HOST[:PORT]/, e.g. url = {EXAMPLES['url']}"
        )


def _check_dn(key: str, value: str, where: str) -> None:
    # here, not above: only hosts that keep a directory load ldap3 (a tenth of a second)
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        parse_dn(value, strip=True)
    except LDAPInvalidDnError as exc:
        raise DirectoryConfigError(
            f"{where}: {key} {value!r} is not a DN ({exc}): e.g. {key} = {EXAMPLES[key]}"
        ) from None


def _read_password(path: str, where: str, key: str = "bind_password_file") -> str:
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DirectoryConfigError(
            f"{where}: cannot read {key} {path}: {reason}: "
            "write the bind DN's password there, readable by isidorus only"
        ) from None
    if not password:
        raise DirectoryConfigError(
            f"{where}: {key} {path} is empty: write the bind DN's password there"
        )
    return password
