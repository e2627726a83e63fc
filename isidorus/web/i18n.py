"""The languages of the web: English (the source) and French.

Glossary
--------
catalog          `locale/<lang>/LC_MESSAGES/messages.po`, the translations of one language,
                 read and compiled in memory at startup (no compiled file is kept).
language         Per request: the visitor's `isidorus_lang` cookie, else the host's
                 `language` setting. Held in a context variable, so requests served at the
                 same time in different languages never see each other's.
core message     The text of an error raised by the core (accounts, ops), which stays in
                 English for the CLI and the logs; the web translates the ones that reach a
                 page by their text (`message_of`).
"""

from __future__ import annotations

import functools
import gettext as gettext_
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

# each name in its own language: that is how a visitor looks for theirs
LANGUAGES = {"en": "English", "fr": "Français"}
SOURCE = "en"
COOKIE = "isidorus_lang"
LOCALE_DIR = os.path.join(os.path.dirname(__file__), "locale")

_language: ContextVar[str] = ContextVar("isidorus_language", default=SOURCE)


def N_(message: str) -> str:
    """Marks a message for extraction; it is translated later, where it is shown."""
    return message


@functools.cache
def catalogs() -> dict[str, gettext_.NullTranslations]:
    """Every language's translations, compiled once from the .po files; raises OSError or
    babel's errors for a missing or broken catalog (at startup: `create_app` calls this)."""
    out: dict[str, gettext_.NullTranslations] = {SOURCE: NullTranslations()}
    for lang in LANGUAGES:
        if lang == SOURCE:
            continue
        with open(os.path.join(LOCALE_DIR, lang, "LC_MESSAGES", "messages.po"), "rb") as f:
            catalog = read_po(f, locale=lang, abort_invalid=True)
        mo = io.BytesIO()
        write_mo(mo, catalog)  # fuzzy entries are left out: they show in English
        mo.seek(0)
        out[lang] = Translations(mo)
    return out


def language() -> str:
    """The language of the current request."""
    return _language.get()


@contextmanager
def use(lang: str) -> Iterator[None]:
    """Serve what runs inside in `lang` (one of LANGUAGES)."""
    token = _language.set(lang)
    try:
        yield
    finally:
        _language.reset(token)


def gettext(message: str) -> str:
    return catalogs()[_language.get()].gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return catalogs()[_language.get()].ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    """For a word whose translation depends on where it is shown (a role, a menu)."""
    return catalogs()[_language.get()].pgettext(context, message)


def choose(request: Request, default: str) -> str:
    """The visitor's language: their cookie, else the host's default."""
    chosen = request.cookies.get(COOKIE, "")
    return chosen if chosen in LANGUAGES else default


class LanguageMiddleware:
    """Serves each request in its visitor's language."""

    def __init__(self, app: ASGIApp, default: str) -> None:
        self.app = app
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with use(choose(Request(scope), self.default)):
            await self.app(scope, receive, send)


# The core's messages that reach a page, so that they are extracted and translated; a
# `%(x)s` stands for the part the core fills in. One not listed shows in English.
CORE_MESSAGES = (
    N_("wrong user name or password"),
    N_("this login has expired: enter your password again"),
    N_("too many wrong codes: enter your password again"),
    N_("wrong code: type the 6 digits your app shows now"),
    N_("that code does not match: check the time on your phone and retry"),
    N_("the secret is not valid base32: start the setup again"),
    N_("the full name is longer than 200 characters"),
    N_("the description is longer than 200 characters"),
    N_(
        "the password is too short: use at least %(n)s characters "
        "(a few unrelated words make a good one)"
    ),
    N_("the password is longer than %(n)s characters"),
    N_("the password must not contain the login name or e-mail"),
    N_("the password repeats too few characters: choose a less predictable one"),
    N_(
        "%(name)s is not a valid user name: use 1 to 32 lowercase letters, digits, "
        "'.', '_' or '-', starting with a letter"
    ),
    N_(
        "%(name)s is not a valid group name: use 1 to 32 lowercase letters, digits, "
        "'.', '_' or '-', starting with a letter"
    ),
    N_("%(email)s is not an e-mail address"),
    N_("there is no user %(name)s: see `isidorus user list`"),
    N_("there is no group %(name)s: see `isidorus group list`"),
    N_("a user %(name)s exists already"),
    N_("a group %(name)s exists already"),
    N_("%(name)s is the host's only enabled admin: make another admin first"),
    N_("name the app in 1 to %(n)s characters, like 'phone calendar'"),
    N_("%(name)s has %(n)s app passwords: revoke one first"),
)


def _pattern(msgid: str) -> re.Pattern[str]:
    parts = re.split(r"%\((\w+)\)s", msgid)
    # even parts are text, odd ones the names of what the core filled in
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(parts))
    )


_CORE = [(_pattern(m), m) for m in CORE_MESSAGES]


def message_of(exc: Exception) -> str:
    """The message of an error in the request's language: the core's known ones are
    translated; the web's own were translated when raised, and pass unchanged."""
    text = str(exc)
    for pattern, msgid in _CORE:
        match = pattern.fullmatch(text)
        if match:
            values = match.groupdict()
            return gettext(msgid) % values if values else gettext(msgid)
    return text
