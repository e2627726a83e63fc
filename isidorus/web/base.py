"""What every view needs: the host, its state, the session of the request, pages,
cookies and checked forms."""

from __future__ import annotations

import datetime
import os
import re
import time
import tomllib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlencode, urlsplit

import jinja2
from babel.dates import format_date
from babel.numbers import format_decimal
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from isidorus.accounts.sessions import Session
from isidorus.errors import IsidorusError, UsageError
from isidorus.ops import accounts as ops
from isidorus.state.db import Database
from isidorus.web import i18n
from isidorus.web.i18n import gettext

HERE = os.path.dirname(__file__)
COOKIE = "isidorus_session"
CSRF_COOKIE = "isidorus_csrf"


# browsers drop tabs and newlines from a URL ("/\t/evil.example" is "//evil.example") and
# read a backslash as a slash
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_next(value: str, default: str = "/portal") -> str:
    """Where to go next: a path of this host, never another site."""
    if not value.startswith("/") or value.startswith("//") or _UNSAFE.search(value):
        return default
    return value


def safe_next_url(value: str, domain: str, allow_http: bool, default: str = "/portal") -> str:
    """Where a login goes next: a path of this host, or an address on the host's `domain`
    or one of its subdomains (nginx sends visitors of a service here with the address they
    asked for); `http://` only when `allow_http`. Anything else is `default`: no login
    sends anyone to another site."""
    if value.startswith("/"):
        return safe_next(value, default)
    return value if own_address(value, domain, allow_http) else default


def own_address(value: str, domain: str, allow_http: bool) -> bool:
    """Whether `value` is an absolute address on `domain` or one of its subdomains."""
    domain = domain.lower()
    if not domain or not value.isascii() or _UNSAFE.search(value) or " " in value:
        return False
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in (("https", "http") if allow_http else ("https",)):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not one)
    except ValueError:
        return False
    # no user@ before the host: "https://example.org@evil.example/" goes to evil.example
    host = parts.hostname or ""
    if "@" in parts.netloc or not host:
        return False
    return host == domain or host.endswith("." + domain)


def here(request: Request) -> str:
    """The page to come back to after switching language: this one, or for the answer to a
    form (which cannot be fetched again) the page that posted it."""
    url = request.url if request.method == "GET" else urlsplit(request.headers.get("referer", ""))
    return safe_next(url.path + (f"?{url.query}" if url.query else ""), "/")


def switch_links(request: Request) -> list[tuple[str, str, str]]:
    """(code, name, URL) of each language the visitor can switch to from this page."""
    back = urlencode({"next": here(request)})
    current = i18n.language()
    return [
        (code, name, f"/lang/{code}?{back}")
        for code, name in i18n.LANGUAGES.items()
        if code != current
    ]


def long_date(day: datetime.date) -> str:
    return format_date(day, "long", locale=i18n.language())


def utc_time(when: datetime.datetime | None) -> str:
    """A moment as the admin pages show it: `2025-03-01 03:12`, in UTC."""
    if when is None:
        return "—"
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M")


def human_size(n: float) -> str:
    """A size in the visitor's language: `812 B`, `3.4 MiB` (`3,4 Mio` in French)."""
    units = (
        gettext("%(n)s B"),
        gettext("%(n)s KiB"),
        gettext("%(n)s MiB"),
        gettext("%(n)s GiB"),
        gettext("%(n)s TiB"),
    )
    for i, unit in enumerate(units):
        if abs(n) < 1024 or i == len(units) - 1:
            number = format_decimal(n, "#,##0" if i == 0 else "#,##0.0", locale=i18n.language())
            return unit % {"n": number}
        n /= 1024
    raise AssertionError("unreachable")


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
        autoescape=jinja2.select_autoescape(),
        extensions=["jinja2.ext.i18n"],
    )
    # `{% trans %}` blocks may wrap; babel.cfg extracts them trimmed the same way
    env.policies["ext.i18n.trimmed"] = True
    # newstyle: `_()` escapes its arguments and formats `%(name)s` itself. The callables
    # read the request's language, so one environment serves every language.
    # (install_gettext_callables is added by the extension, unknown to the type checker)
    env.install_gettext_callables(  # type: ignore[attr-defined]
        i18n.gettext, i18n.ngettext, newstyle=True, pgettext=i18n.pgettext
    )
    env.globals.update(language=i18n.language, switch_links=switch_links)
    env.filters.update(long_date=long_date, utc=utc_time, size=human_size)
    return env


templates = Jinja2Templates(env=make_environment())


def content_security_policy(form_targets: tuple[str, ...] = ()) -> str:
    """No page may load anything from another host, be framed, or post a form elsewhere;
    `form_targets` are origins a form's submission may be redirected to (browsers apply
    form-action to the redirections that follow a submission)."""
    targets = " ".join(["'self'", *form_targets])
    return (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )


class CsrfError(IsidorusError):
    http_status = 403


class Forbidden(IsidorusError):
    http_status = 403


@dataclass
class Host:
    """What the web needs to know of the host, from DATA_DIR/isidorus.toml."""

    data_dir: str
    domain: str = "localhost"
    name: str = "isidorus"
    contact: str = ""
    hosted_at: str = ""
    backups_at: str = ""
    terms: str = ""
    secure_cookies: bool = False
    language: str = i18n.SOURCE

    @classmethod
    def load(cls, data_dir: str) -> Host:
        path = os.path.join(data_dir, ops.CONFIG_NAME)
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        known = {
            k: doc[k]
            for k in (
                "domain",
                "name",
                "contact",
                "hosted_at",
                "backups_at",
                "terms",
                "secure_cookies",
                "language",
            )
            if k in doc
        }
        for key, value in known.items():
            wanted = bool if key == "secure_cookies" else str
            if not isinstance(value, wanted):
                raise UsageError(
                    f"{path}: {key} must be {'true or false' if wanted is bool else 'a string'}"
                )
        if known.get("language", i18n.SOURCE) not in i18n.LANGUAGES:
            allowed = " or ".join(f'"{code}"' for code in i18n.LANGUAGES)
            raise UsageError(f'{path}: language = "{known["language"]}" is unknown: use {allowed}')
        return cls(data_dir=data_dir, **known)

    @property
    def cookie_domain(self) -> str | None:
        # shared with the services on subdomains (not possible for a bare "localhost")
        return self.domain if "." in self.domain else None


T = TypeVar("T")


class StateMemo:
    """Values read from the state database for every visitor (the installed services,
    the latest off-site copy), kept while the database is unchanged: the same mark as
    SessionCache's (any commit, by any process, on SQLite; a write of this process, or
    FALLBACK_TTL seconds, elsewhere), and never longer than TTL."""

    TTL = 60.0
    FALLBACK_TTL = 1.0

    def __init__(self, db: Database) -> None:
        self.db = db
        self.values: dict[str, tuple[Any, float, tuple[int, int]]] = {}

    def get(self, key: str, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        version = self.db.data_version()  # before computing: a commit meanwhile makes it stale
        mark = (self.db.generation, -1 if version is None else version)
        ttl = self.FALLBACK_TTL if version is None else self.TTL
        hit = self.values.get(key)
        if hit is not None and hit[2] == mark and now - hit[1] < ttl:
            return cast(T, hit[0])
        value = compute()
        self.values[key] = (value, now, mark)
        return value


class SessionCache:
    """Sessions already found, so that a burst of `/auth/check` (a page of a service and
    its assets) does not query the database each time. On SQLite an entry is good while
    the database's data_version is unchanged: any commit, by any process, empties it at
    once. Elsewhere, a write through this process empties it, and a change made by
    another process is seen within FALLBACK_TTL seconds."""

    TTL = 60.0  # and the session's own expiry is checked again at least this often
    FALLBACK_TTL = 1.0
    SIZE = 10_000

    _of: weakref.WeakKeyDictionary[Database, SessionCache] = weakref.WeakKeyDictionary()

    def __init__(self, db: Database) -> None:
        self.db = db
        self.entries: dict[str, tuple[Session, float, tuple[int, int]]] = {}

    @classmethod
    def of(cls, db: Database) -> SessionCache:
        """The one cache of `db`, shared by every group of views."""
        cache = cls._of.get(db)
        if cache is None:
            cache = cls._of[db] = cls(db)
        return cache

    def find(self, token: str) -> Session | None:
        now = time.monotonic()
        # taken before the lookup, so that a commit during it makes the entry stale
        version = self.db.data_version()
        mark = (self.db.generation, -1 if version is None else version)
        ttl = self.FALLBACK_TTL if version is None else self.TTL
        hit = self.entries.get(token)
        if hit is not None and hit[2] == mark and now - hit[1] < ttl:
            return hit[0]
        session = ops.session_of(self.db, token)
        if session is None:
            self.entries.pop(token, None)
            return None
        if len(self.entries) >= self.SIZE:
            self.entries.clear()
        self.entries[token] = (session, now, mark)
        return session


class Views:
    """The base of every group of views, over one host's state."""

    def __init__(self, host: Host, db: Database) -> None:
        self.host = host
        self.db = db
        self.sessions = SessionCache.of(db)

    def session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE, "")
        return self.sessions.find(token) if token else None

    def page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("session", self.session(request))
        return templates.TemplateResponse(
            request, template, {"host": self.host, **context}, status_code=status
        )

    def set_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=14 * 24 * 3600,
            httponly=True,
            samesite="lax",
            secure=self.host.secure_cookies,
            domain=self.host.cookie_domain,
        )

    async def form(self, request: Request, session: Session | None) -> dict[str, str]:
        """The posted form, once its CSRF token matches the session's (or, before login,
        the double-submit cookie)."""
        data = {k: str(v) for k, v in (await request.form()).items()}
        expected = session.csrf if session else request.cookies.get(CSRF_COOKIE, "")
        if not expected or data.get("csrf") != expected:
            raise CsrfError(gettext("the form has expired: reload the page and try again"))
        return data

    def member(self, request: Request) -> Session | Response:
        """The session of a logged-in member, or the redirection to the login page."""
        session = self.session(request)
        if session is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return session

    def admin(self, request: Request) -> Session | Response:
        """The session of an admin, or the answer for anyone else (login, or 403)."""
        session = self.member(request)
        if isinstance(session, Session) and not session.user.is_admin:
            raise Forbidden(gettext("this page is for the host's admins"))
        return session
