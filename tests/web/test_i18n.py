"""The web in French and English: the host's default, the visitor's switch, one language
per request, and a catalog that keeps up with the templates and the code."""

import ast
import asyncio
import os
import pathlib
import re

import httpx2
import pytest
from babel.messages import extract, frontend
from babel.messages.pofile import read_po
from starlette.testclient import TestClient

from isidorus.accounts import passwords, users
from isidorus.accounts.errors import InvalidInput
from isidorus.errors import UsageError
from isidorus.ops import accounts as ops
from isidorus.web import i18n
from isidorus.web.app import create_app
from isidorus.web.base import Host
from tests.test_layering import _imports
from tests.web.test_app import PW, csrf_of, login

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
LOCALE = ROOT / "isidorus" / "web" / "locale"
ADMIN_PW = "the host keeper's passphrase"


def make_host(path, language=None):
    d = str(path)
    ops.init_host(d, domain="localhost", admin="admin", email="admin@localhost", password=ADMIN_PW)
    db = ops.open_state(d)
    ops.add_user(db, "test", "alice", "alice@example.org", PW, fullname="Alice")
    db.close()
    if language:
        with open(os.path.join(d, ops.CONFIG_NAME), "a") as f:
            f.write(f'\nlanguage = "{language}"\n')
    return d


@pytest.fixture(scope="module")
def fr_host(tmp_path_factory):
    return make_host(tmp_path_factory.mktemp("fr") / "host", "fr")


@pytest.fixture(scope="module")
def en_host(tmp_path_factory):
    return make_host(tmp_path_factory.mktemp("en") / "host")


@pytest.fixture
def fr(fr_host):
    with TestClient(create_app(fr_host), base_url="http://localhost") as c:
        yield c


@pytest.fixture
def en(en_host):
    with TestClient(create_app(en_host), base_url="http://localhost") as c:
        yield c


def lang_of(html):
    return re.search(r'<html lang="(\w+)">', html).group(1)


def error_of(html):
    return re.search(r'class="error" role="alert">([^<]*)<', html).group(1)


# -- the host's default


def test_english_is_the_default(en):
    page = en.get("/")
    assert lang_of(page.text) == "en" and "Where the data lives" in page.text
    assert 'href="/lang/fr?next=%2F" hreflang="fr" lang="fr"' in page.text


def test_a_french_host_speaks_french_to_visitors(fr):
    page = fr.get("/")
    assert lang_of(page.text) == "fr"
    assert "Où sont les données" in page.text and "sans garantie de résultat" in page.text
    assert "Where the data lives" not in page.text
    assert 'hreflang="en" lang="en"' in page.text  # the way back to English
    page = fr.get("/login")
    assert "<h1>Se connecter</h1>" in page.text and "Mot de passe" in page.text
    r = login(fr, "alice", "not her password")
    assert (
        r.status_code == 401 and error_of(r.text) == "nom d&#39;utilisateur ou mot de passe erroné"
    )
    r = fr.post("/login", data={"name": "alice", "password": PW})  # no CSRF token
    assert r.status_code == 403 and "le formulaire a expiré" in r.text
    assert lang_of(r.text) == "fr" and "Un problème est survenu" in r.text


def test_a_french_host_speaks_french_to_members(fr):
    assert login(fr).status_code == 303
    page = fr.get("/portal")
    assert "<h1>Bonjour Alice</h1>" in page.text and "Changer votre mot de passe" in page.text
    csrf = csrf_of(page.text)
    r = fr.post(
        "/portal/password",
        data={"csrf": csrf, "current": PW, "new": "one long phrase", "repeat": "another one"},
    )
    assert error_of(r.text) == "les deux nouveaux mots de passe diffèrent"
    r = fr.post("/portal/profile", data={"csrf": csrf, "fullname": "Alice", "email": "nope"})
    assert error_of(r.text) == "&#39;nope&#39; n&#39;est pas une adresse de courriel"
    page = fr.get("/portal/totp")
    assert "Activer un second facteur" in page.text and "Code de l'application" in page.text
    r = fr.get("/admin")
    assert r.status_code == 403 and "réservée aux administrateurs" in r.text
    assert lang_of(r.text) == "fr"


def test_a_french_host_speaks_french_to_admins(fr):
    login(fr, "admin", ADMIN_PW)
    page = fr.get("/admin")
    assert "<h1>Administration</h1>" in page.text and "Vue d'ensemble" in page.text
    assert "2 comptes, 0 désactivé" in page.text and "0 groupe" in page.text
    page = fr.get("/admin/users/alice")
    assert "Membre, actif. Compte créé le " in page.text and "Supprimer alice" in page.text
    csrf = csrf_of(page.text)
    r = fr.post("/admin/users/alice/remove", data={"csrf": csrf, "confirm": "bob"})
    assert error_of(r.text) == "saisissez alice dans le champ pour confirmer la suppression"
    r = fr.post("/admin/users/alice/profile", data={"csrf": csrf, "email": "alice@example.org"})
    assert "Enregistré." in r.text  # the "done" message, after the redirection
    page = fr.get("/admin/users/nobody")
    assert (
        page.status_code == 404
        and error_of(page.text) == "il n&#39;y a pas d&#39;utilisateur &#39;nobody&#39;"
    )


def test_an_unexpected_error_is_shown_in_the_visitors_language(fr_host, monkeypatch):
    def broken(db):
        raise RuntimeError("boom")

    monkeypatch.setattr(ops, "list_groups", broken)
    app = create_app(fr_host)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        login(c, "admin", ADMIN_PW)
        r = c.get("/admin/groups")
        assert r.status_code == 500 and lang_of(r.text) == "fr"
        assert "une erreur interne s&#39;est produite" in r.text and "boom" not in r.text
        c.get("/lang/en")
        r = c.get("/admin/groups")
        assert lang_of(r.text) == "en" and "an internal error occurred" in r.text


# -- the visitor's switch


@pytest.mark.parametrize(
    ("nxt", "where"),
    [
        ("/portal", "/portal"),
        ("/login?next=/admin", "/login?next=/admin"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
    ],
)
def test_the_switch_sets_a_cookie_and_goes_back_to_a_local_page(en, nxt, where):
    r = en.get("/lang/fr", params={"next": nxt} if nxt else {}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == where
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("isidorus_lang=fr;")
    assert "Max-Age=31536000" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_an_unknown_language_is_not_found(en):
    r = en.get("/lang/xx?next=/", follow_redirects=False)
    assert r.status_code == 404 and "set-cookie" not in r.headers


def test_the_cookie_wins_over_the_host_default(en, fr):
    en.get("/lang/fr")
    page = en.get("/login")
    assert lang_of(page.text) == "fr" and "Se connecter" in page.text
    fr.get("/lang/en")
    page = fr.get("/login")
    assert lang_of(page.text) == "en" and "User name" in page.text
    fr.cookies.clear()
    fr.cookies.set(i18n.COOKIE, "xx")  # one not offered: the host's default
    assert lang_of(fr.get("/").text) == "fr"


def test_the_switch_link_comes_back_to_the_same_page(en):
    page = en.get("/login?next=/admin")
    assert 'href="/lang/fr?next=%2Flogin%3Fnext%3D%2Fadmin"' in page.text
    # an answer to a form cannot be fetched again: back to the page that posted it
    r = en.post("/login", data={"name": "x"}, headers={"referer": "http://localhost/login?a=b"})
    assert 'href="/lang/fr?next=%2Flogin%3Fa%3Db"' in r.text


def test_two_visitors_at_once_each_get_their_language(en_host):
    transport = httpx2.ASGITransport(app=create_app(en_host))

    async def visit(lang):
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://localhost", cookies={i18n.COOKIE: lang}
        ) as c:
            r = await c.get("/login")
            return lang, lang_of(r.text), "Se connecter" in r.text

    async def main():
        # served interleaved on one event loop: each request awaits in the middleware
        return await asyncio.gather(*(visit(("fr", "en")[i % 2]) for i in range(20)))

    for lang, shown, french in asyncio.run(main()):
        assert shown == lang and french == (lang == "fr")


def test_the_language_is_held_per_task():
    async def speak(lang, ready, go):
        with i18n.use(lang):
            ready.set()
            await go.wait()  # the other task has set its own language meanwhile
            return i18n.language(), i18n.gettext("Log in")

    async def main():
        ready_fr, ready_en, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(speak("fr", ready_fr, go))
        b = asyncio.create_task(speak("en", ready_en, go))
        await ready_fr.wait()
        await ready_en.wait()
        go.set()
        return await a, await b

    assert asyncio.run(main()) == (("fr", "Se connecter"), ("en", "Log in"))
    assert i18n.language() == "en"


# -- the host's setting


def test_an_unknown_language_setting_is_a_one_line_error(tmp_path):
    (tmp_path / ops.CONFIG_NAME).write_text('domain = "example.org"\nlanguage = "de"\n')
    with pytest.raises(UsageError) as err:
        Host.load(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and 'language = "de"' in message
    assert '"en" or "fr"' in message
    with pytest.raises(UsageError):
        create_app(str(tmp_path))


def test_the_language_setting_is_read(tmp_path):
    (tmp_path / ops.CONFIG_NAME).write_text('language = "fr"\n')
    assert Host.load(str(tmp_path)).language == "fr"
    (tmp_path / ops.CONFIG_NAME).write_text("")
    assert Host.load(str(tmp_path)).language == "en"


# -- the catalog keeps up with the templates and the code


def extracted():
    """Every message of the web, found as `pybabel extract -F babel.cfg` finds them."""
    with open(ROOT / "babel.cfg") as f:
        parse = getattr(frontend, "parse_mapping_cfg", None) or frontend.parse_mapping
        method_map, options_map = parse(f)
    found = {}
    for filename, lineno, message, _comments, context in extract.extract_from_dir(
        str(ROOT), method_map, options_map
    ):
        msgid = message[0] if isinstance(message, tuple) else message
        found[(msgid, context)] = f"{filename}:{lineno}"
    assert len(found) > 100, "babel.cfg finds (almost) nothing to extract"
    return found


TRANSLATED = [lang for lang in i18n.LANGUAGES if lang != i18n.SOURCE]


def catalog(lang="fr"):
    with open(LOCALE / lang / "LC_MESSAGES" / "messages.po", "rb") as f:
        return read_po(f, locale=lang)


def translated(entry):
    if entry is None or entry.fuzzy:
        return False
    strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
    return all(strings)  # every plural form too


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_message_has_a_translation(lang):
    cat = catalog(lang)
    missing = [
        f"{where}: {msgid!r}"
        for (msgid, context), where in sorted(extracted().items(), key=str)
        if not translated(cat.get(msgid, context=context))
    ]
    assert not missing, "translate in messages.po (see docs/translating.md):\n" + "\n".join(missing)


@pytest.mark.parametrize("lang", TRANSLATED)
def test_the_catalog_has_no_obsolete_message(lang):
    found = extracted()
    cat = catalog(lang)
    stale = [
        m.id
        for m in cat
        if m.id and (m.id[0] if isinstance(m.id, tuple) else m.id, m.context) not in found
    ]
    assert not stale, f"no longer in the code, remove from messages.po: {stale}"
    assert not cat.obsolete, "messages.po keeps obsolete (#~) entries: remove them"


@pytest.mark.parametrize("lang", TRANSLATED)
def test_the_translations_keep_the_placeholders(lang):
    errors = [(m.id, [str(e) for e in errs]) for m, errs in catalog(lang).check()]
    assert not errors


def test_french_punctuation_is_consistent():
    """A non-breaking space before : ; ? ! and inside « », never a plain one (which a
    browser may break the line at)."""
    for m in catalog("fr"):
        for text in m.string if isinstance(m.string, tuple) else (m.string,):
            if m.id and text:
                assert not re.search(r"[^\u00a0][:;?!»]|«[^\u00a0]", text), text


def test_every_template_goes_through_the_catalog():
    """A crude net for text left outside `_()`: in a template, text between tags is only
    a variable, a translated string, or punctuation."""
    templates = ROOT / "isidorus" / "web" / "templates"
    for path in templates.rglob("*.html"):
        source = re.sub(
            r"{% trans .*?{% endtrans %}|{#.*?#}|{%.*?%}|{{.*?}}|<[^>]*>",
            " ",
            path.read_text(),
            flags=re.S,
        )
        words = re.findall(r"[A-Za-z]{2,}", source)
        assert not words, f"{path.name}: untranslated text {words}"


# -- the core's messages


def _core_strings():
    """Every string the core writes, as a pattern: `.+` for what an f-string fills in."""
    out = []
    for package in ("accounts", "ops"):
        for path in (ROOT / "isidorus" / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    out.append(re.escape(node.value))
                elif isinstance(node, ast.JoinedStr):
                    out.append(
                        "".join(
                            re.escape(str(v.value)) if isinstance(v, ast.Constant) else ".+"
                            for v in node.values
                        )
                    )
    return out


CORE_STRINGS = _core_strings()


@pytest.mark.parametrize("msgid", i18n.CORE_MESSAGES)
def test_the_core_still_says_what_the_web_translates(msgid):
    """A message the core no longer says would silently show in English."""
    example = re.sub(r"%\(\w+\)s", "'x'", msgid)
    assert any(re.fullmatch(p, example) for p in CORE_STRINGS), msgid


@pytest.mark.parametrize(
    ("raise_", "french"),
    [
        (lambda: users.check_name("9lives"), "'9lives' n'est pas un nom d'utilisateur valable"),
        (lambda: users.check_name("A", "group"), "'A' n'est pas un nom de groupe valable"),
        (lambda: users.check_email("nope"), "'nope' n'est pas une adresse de courriel"),
        (
            lambda: passwords.check_rules("short"),
            "trop court\u00a0: utilisez au moins 10 caractères",
        ),
        (lambda: passwords.check_rules("aaaa" * 300), "le mot de passe dépasse"),
    ],
)
def test_the_cores_messages_are_translated_with_what_they_name(raise_, french):
    with pytest.raises(InvalidInput) as err:
        raise_()
    with i18n.use("fr"):
        assert french in i18n.message_of(err.value)
    assert i18n.message_of(err.value) == str(err.value)  # English: as the core wrote it


def test_the_setting_and_the_switch_are_documented():
    guide = (ROOT / "docs" / "server.md").read_text()
    assert 'language = "fr"' in guide and i18n.COOKIE in guide and "/lang/" in guide
    assert "pybabel extract -F babel.cfg" in (ROOT / "docs" / "translating.md").read_text()


def test_the_core_does_not_know_the_web():
    for package in ("accounts", "ops", "state"):
        for path in (ROOT / "isidorus" / package).rglob("*.py"):
            for name in _imports(path):
                assert not name.startswith(("babel", "jinja2", "starlette", "isidorus.web")), (
                    f"{path.relative_to(ROOT)} imports {name}"
                )
