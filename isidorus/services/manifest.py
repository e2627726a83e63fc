"""A service's manifest: the declarative description of one libre service.

Manifests are TOML files validated on load with pydantic: an unknown key, a missing one or
a value of the wrong form is refused with one line naming the file and the field. Strings
may hold placeholders (`{data_dir}`, `{config_dir}`, `{port}`, `{domain}`, `{user}`) that
the installer fills in; anything else in braces is refused here, not at install time.
"""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from isidorus.services.errors import ManifestError

PLACEHOLDERS = frozenset({"data_dir", "config_dir", "port", "domain", "user", "service"})
ID_RE = r"^[a-z][a-z0-9-]{1,30}$"
# a Debian package name, a pinned PyPI requirement, a pinned npm package
DEBIAN_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
PYPI_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+$")
NPM_RE = re.compile(r"^(@[a-z0-9-]+/)?[a-z0-9._-]+@\d[A-Za-z0-9.+-]*$")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


def _check_placeholders(value: str) -> str:
    for _, name, _, _ in string.Formatter().parse(value):
        if name is not None and name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{name}}}: use one of {known}")
    return value


class Strict(BaseModel):
    # TOML has real types: a port written "5232" is a mistake, not something to coerce
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Source(Strict):
    """Where the service's software comes from: Debian packages, or pinned PyPI/npm
    packages installed into the service's own environment."""

    debian: list[str] = []
    pypi: list[str] = []
    npm: list[str] = []

    @field_validator("debian")
    @classmethod
    def _debian(cls, v: list[str]) -> list[str]:
        for p in v:
            if not DEBIAN_RE.match(p):
                raise ValueError(f"{p!r} is not a Debian package name")
        return v

    @field_validator("pypi")
    @classmethod
    def _pypi(cls, v: list[str]) -> list[str]:
        for p in v:
            if not PYPI_RE.match(p):
                raise ValueError(f"{p!r} is not pinned: write NAME==VERSION")
        return v

    @field_validator("npm")
    @classmethod
    def _npm(cls, v: list[str]) -> list[str]:
        for p in v:
            if not NPM_RE.match(p):
                raise ValueError(f"{p!r} is not pinned: write NAME@VERSION")
        return v

    @model_validator(mode="after")
    def _something(self) -> Source:
        if not (self.debian or self.pypi or self.npm):
            raise ValueError("name at least one package (debian, pypi or npm)")
        return self


class Run(Strict):
    """How the service runs: its own system user, and either a command (isidorus writes
    the systemd unit) or the unit its Debian package ships."""

    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
    command: str | None = None
    unit: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9@._-]+\.service$")] | None = None
    port: Annotated[int, Field(ge=1024, le=65535)]
    environment: dict[str, str] = {}
    # folders the service needs and does not make itself, inside its data directory: made
    # at install (and at an upgrade that brings new ones), owned by its user
    directories: list[str] = []
    # the system's own services its Debian packages start (at their install, at boot),
    # which isidorus stops and keeps stopped: it runs that software itself
    # the system's own services it needs running (a database server): started at install
    needs: list[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}\.service$")]
    ] = []
    take_over: list[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}\.service$")]
    ] = []

    @field_validator("directories")
    @classmethod
    def _directories(cls, v: list[str]) -> list[str]:
        for d in v:
            _check_placeholders(d)
            if not d.startswith("{data_dir}/") or "/../" in d + "/":
                raise ValueError(f"{d!r} must be a folder inside {{data_dir}}/")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        return None if v is None else _check_placeholders(v)

    @field_validator("environment")
    @classmethod
    def _environment(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            _check_placeholders(value)
        return v

    @model_validator(mode="after")
    def _one_way(self) -> Run:
        if (self.command is None) == (self.unit is None):
            raise ValueError("give exactly one of command (isidorus writes the unit) or unit")
        return self


class Sso(Strict):
    """How members sign in: a header set by nginx after /auth/check, LDAP, OpenID
    Connect, or nothing (a public service)."""

    kind: Literal["header", "ldap", "oidc", "none"]
    header: str | None = None  # for "header": the header the service trusts
    # for "header": its apps sign in with the member's name and password on each request
    # (HTTP Basic: CalDAV, CardDAV, WebDAV), which isidorus checks as a login
    basic: bool = False
    redirect_path: str | None = None  # for "oidc": the service's callback path

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Sso:
        if self.kind == "header" and not self.header:
            raise ValueError('kind = "header" needs header = the header the service trusts')
        if self.basic and self.kind != "header":
            raise ValueError('basic = true is for kind = "header"')
        if self.kind == "oidc" and not (self.redirect_path or "").startswith("/"):
            raise ValueError('kind = "oidc" needs redirect_path = "/the/callback/path"')
        return self


class ConfigFile(Strict):
    """A configuration file rendered from a template of the service's directory."""

    template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]+$")]
    path: str
    mode: Annotated[str, StringConstraints(pattern=r"^0[0-7]{3}$")] = "0640"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith(("/", "{")):
            raise ValueError("must be absolute (or start with a placeholder like {config_dir})")
        return _check_placeholders(v)


class Database(Strict):
    """A database the service keeps, with how to dump it consistently and restore it."""

    kind: Literal["sqlite", "postgresql", "mysql"]
    # names its dump file, and the database on the host's PostgreSQL
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    path: str | None = None  # for sqlite

    @model_validator(mode="after")
    def _path_of_sqlite(self) -> Database:
        if self.kind == "sqlite" and not self.path:
            raise ValueError('kind = "sqlite" needs path = the database file')
        if self.path is not None:
            _check_placeholders(self.path)
        return self


class Data(Strict):
    """What the nightly backup saves for this service."""

    paths: list[str] = []
    databases: list[Database] = []

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith(("/", "{")):
                raise ValueError(f"{p!r} must be absolute (or start with {{data_dir}})")
            _check_placeholders(p)
        return v


class Health(Strict):
    """How to tell the service works: an HTTP path on its port, or a TCP connect."""

    http: str | None = None
    tcp: bool = False
    expect: list[Annotated[int, Field(ge=100, le=599)]] = [200]
    timeout: Annotated[int, Field(ge=1, le=600)] = 60

    @model_validator(mode="after")
    def _one_check(self) -> Health:
        if (self.http is None) == (not self.tcp):
            raise ValueError('give exactly one check: http = "/path" or tcp = true')
        if self.http is not None and not self.http.startswith("/"):
            raise ValueError('http must be a path starting with "/"')
        return self


# a folder nginx can name in its configuration (no quote, space, variable or semicolon)
_ROOT_RE = r"^/[A-Za-z0-9._/-]*$"
_FOLDER_RE = r"^/[A-Za-z0-9._-]+/$"


class Web(Strict):
    """How nginx publishes the service: a proxy to its port (`proxy`), PHP pages run by
    the service's own PHP-FPM over FastCGI (`fastcgi`, the application's files served from
    `root`), or nothing at all (`none`: a service that is not a web one, like Mumble's
    voice, reached at `address`)."""

    kind: Literal["proxy", "fastcgi", "none"] = "proxy"
    root: Annotated[str, StringConstraints(pattern=_ROOT_RE)] | None = None
    index: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]+\.php$")] = "index.php"
    # every request that is no file of root goes to the index (applications with routes)
    front_controller: bool = False
    # folders of root that must never be served (their data, their configuration)
    deny: list[Annotated[str, StringConstraints(pattern=_FOLDER_RE)]] = []
    # folders of the site served from elsewhere, as files only (WordPress's wp-content)
    aliases: dict[
        Annotated[str, StringConstraints(pattern=_FOLDER_RE)],
        Annotated[str, StringConstraints(pattern=_ROOT_RE)],
    ] = {}
    address: str | None = None  # for none: what clients connect to, e.g. mumble://{domain}
    # for proxy: the Host nginx sends the service instead of the visitor's, for services
    # that answer only to their own address (Syncthing's guard against DNS rebinding)
    host: Annotated[str, StringConstraints(pattern=r"^[a-z0-9.-]+(:[0-9]{1,5})?$")] | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Web:
        if self.kind == "fastcgi" and self.root is None:
            raise ValueError('kind = "fastcgi" needs root = the folder of the PHP application')
        if self.kind != "fastcgi" and (self.root is not None or self.deny or self.aliases):
            raise ValueError('root, deny and aliases are for kind = "fastcgi"')
        if self.kind == "none":
            if not self.address:
                raise ValueError('kind = "none" needs address = how clients reach it')
            _check_placeholders(self.address)
        elif self.address is not None:
            raise ValueError('address is for kind = "none" (the others are reached by URL)')
        if self.host is not None and self.kind != "proxy":
            raise ValueError('host is for kind = "proxy"')
        return self


class Translation(Strict):
    """What a visitor reads of the service in another language than English."""

    description: Text


class Manifest(Strict):
    id: Annotated[str, StringConstraints(pattern=ID_RE)]
    name: Text
    description: Text
    replaces: Annotated[list[Text], Field(min_length=1)]
    version: Annotated[str, StringConstraints(pattern=r"^[0-9][A-Za-z0-9.+~-]*$")]
    homepage: Annotated[str, StringConstraints(pattern=r"^https://\S+$")]
    license: Text
    source: Source
    run: Run
    sso: Sso
    web: Web = Web()
    config: list[ConfigFile] = []
    data: Data = Data()
    health: Health
    # by language code: [translations.fr] description = "…"
    translations: dict[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")], Translation] = {}

    def described_in(self, language: str) -> str:
        """Its description in `language` when the manifest has one, else in English."""
        translated = self.translations.get(language)
        return translated.description if translated else self.description

    def to_json(self) -> dict[str, object]:
        """What `service catalog --json` shows of it."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "replaces": list(self.replaces),
            "version": self.version,
            "sso": self.sso.kind,
        }

    @model_validator(mode="after")
    def _web_and_sso(self) -> Manifest:
        if self.web.kind == "none" and self.sso.kind == "header":
            raise ValueError('sso kind = "header" needs a web site: web.kind is "none"')
        return self


def _where(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        elif p not in ("function-after", "function-before") and not str(p).startswith("["):
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def parse(text: str, origin: str) -> Manifest:
    """A manifest from TOML text; ManifestError names `origin` and the first problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{origin}: not valid TOML: {exc}") from None
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        kind = err["type"]
        where = _where(err["loc"])
        if kind == "missing":
            message = f"{where} is missing"
        elif kind == "extra_forbidden":
            message = f"{where} is not a known key (a typo?)"
        else:
            message = f"{where}: {err['msg'].removeprefix('Value error, ')}"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ManifestError(f"{origin}: {message}{more}") from None
    expected = Path(origin).stem
    if origin.endswith(".toml") and manifest.id != expected:
        raise ManifestError(f"{origin}: id = {manifest.id!r} but the file is {expected}.toml")
    return manifest


def load(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from None
    return parse(text, str(path))
