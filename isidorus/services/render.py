"""A manifest made concrete for one install: its placeholders filled in, its configuration
templates rendered."""

from __future__ import annotations

import os
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from isidorus.services.errors import ServiceError
from isidorus.services.manifest import Manifest

SECRET_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# templates any service may name (PHP-FPM's pool, say), when its own folder lacks them
SHARED_TEMPLATES = Path(__file__).parent / "shared"


@dataclass(frozen=True)
class Placement:
    """Where one install of a service lives."""

    service: str
    domain: str
    path: str  # "/" or "/prefix"
    port: int
    user: str
    data_dir: str
    config_dir: str
    # for the templates of a service that signs members in by LDAP: url, host, port,
    # base_dn, people_dn, groups_dn, bind_dn, bind_password (None: the host keeps none)
    ldap: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # the host's MariaDB, for the templates of a service with a mysql database
    mysql_socket: str = "/run/mysqld/mysqld.sock"

    def values(self) -> dict[str, str]:
        return {
            "service": self.service,
            "domain": self.domain,
            "path": self.path,
            "port": str(self.port),
            "user": self.user,
            "data_dir": self.data_dir,
            "config_dir": self.config_dir,
        }

    def fill(self, text: str) -> str:
        """A manifest string with its placeholders (checked when the manifest was read)."""
        return text.format(**self.values())


def command(manifest: Manifest, where: Placement) -> tuple[str, ...]:
    assert manifest.run.command is not None
    argv = shlex.split(where.fill(manifest.run.command))
    if not argv or not argv[0].startswith("/"):
        raise ServiceError(
            f"{manifest.id}: run.command must start with an absolute program path, not "
            f"{argv[0] if argv else 'nothing'!r}"
        )
    return tuple(argv)


def environment(manifest: Manifest, where: Placement) -> dict[str, str]:
    return {k: where.fill(v) for k, v in manifest.run.environment.items()}


def php_string(value: object) -> str:
    """A PHP single-quoted string literal of `value` (a password, a DN), for the
    `php` filter of templates: nothing in it is interpolated by PHP."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def lua_string(value: object) -> str:
    """A Lua string literal of `value`, for the `lua` filter of templates: quotes,
    backslashes and control characters escaped (as \\ddd, which every Lua reads)."""
    out = []
    for ch in str(value):
        if ch in '\\"':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_config(
    manifest: Manifest, templates: Path, where: Placement
) -> list[tuple[str, str, int]]:
    """(path, text, mode) of each configuration file. Templates are Jinja2, with the
    placement's values as variables (and `ldap`, the directory's settings, for a service
    that signs members in by LDAP); an undefined variable is an error, not a blank. A
    template the service's folder lacks is looked for among the shared ones (SHARED_TEMPLATES).

    `secret(name)` in a template is a random token of this install, kept in
    `{config_dir}/.secret-NAME` (one of the files returned the first time, then read
    back), so that an upgrade renders the same key and sessions survive it."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(str(templates / manifest.id)),
                jinja2.FileSystemLoader(str(SHARED_TEMPLATES)),
            ]
        ),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # configuration files, not HTML
    )
    out: list[tuple[str, str, int]] = []

    def secret(name: str) -> str:
        if not SECRET_NAME.match(name):
            raise ServiceError(f"{manifest.id}: secret({name!r}): use letters, digits and '_'")
        path = os.path.join(where.config_dir, f".secret-{name}")
        for p, text, _ in out:
            if p == path:
                return text
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except FileNotFoundError:
            value = ""
        if not value:
            value = secrets.token_urlsafe(32)
        out.append((path, value, 0o640))
        return value

    env.globals["secret"] = secret
    env.filters["php"] = php_string
    env.filters["lua"] = lua_string
    for item in manifest.config:
        try:
            text = env.get_template(item.template).render(
                **where.values(), ldap=where.ldap, mysql_socket=where.mysql_socket
            )
        except jinja2.TemplateNotFound:
            raise ServiceError(
                f"{manifest.id}: the template {item.template!r} is not in {templates / manifest.id}"
            ) from None
        except jinja2.TemplateError as exc:
            raise ServiceError(f"{manifest.id}: template {item.template}: {exc}") from None
        out.append((where.fill(item.path), text, int(item.mode, 8)))
    return out
