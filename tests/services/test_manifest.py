"""Manifests: the built-in catalog is valid and complete, and every bad field is refused
with one line naming the file and the field."""

import tomllib

import pytest

from isidorus.services import catalog
from isidorus.services.errors import ManifestError
from isidorus.services.manifest import parse
from isidorus.services.render import SHARED_TEMPLATES

GOOD = (catalog.BUILT_IN / "radicale.toml").read_text()


def edited(path: str, value: object) -> str:
    """The radicale manifest with `path` (dotted) set to `value` (None removes it)."""
    import tomli_w

    doc = tomllib.loads(GOOD)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return tomli_w.dumps(doc)


def test_the_built_in_catalog_is_valid_and_covers_the_big_replacements():
    entries = catalog.entries()
    assert len(entries) >= 10
    replaced = {r for e in entries.values() for r in e.manifest.replaces}
    for big in (
        "Google Calendar", "WhatsApp", "Google Search", "WeTransfer", "Dropbox", "Gmail",
        "Pocket", "TeamSpeak", "Medium", "Notion",
    ):  # fmt: skip
        assert big in replaced, f"nothing in the catalog replaces {big}"
    kinds = {e.manifest.sso.kind for e in entries.values()}
    assert kinds >= {"header", "ldap", "none"}  # oidc: the operator's own services, so far
    for e in entries.values():  # every template a manifest names is there, or shared
        for c in e.manifest.config:
            own = e.directory / e.manifest.id / c.template
            assert own.is_file() or (SHARED_TEMPLATES / c.template).is_file(), (e.manifest.id, c)


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("id", "Radicale!", "id: String should match pattern"),
        ("id", None, "id is missing"),
        ("colour", "blue", "colour is not a known key"),
        ("replaces", [], "replaces: List should have at least 1 item"),
        ("homepage", "http://radicale.org/", "homepage: String should match"),
        ("version", "latest", "version: String should match"),
        ("source.debian", ["Radicale Server"], "is not a Debian package name"),
        ("source.debian", [], "name at least one package"),
        ("source.pypi", ["radicale"], "is not pinned: write NAME==VERSION"),
        ("source.npm", ["etherpad"], "is not pinned: write NAME@VERSION"),
        ("run.port", 80, "run.port: Input should be greater than or equal to 1024"),
        ("run.port", 70000, "run.port: Input should be less than or equal to 65535"),
        ("run.port", "5232", "run.port: Input should be a valid integer"),
        ("run.user", "Radicale", "run.user: String should match"),
        ("run.unit", "radicale.service", "exactly one of command"),
        ("run.command", "/usr/bin/radicale --x {home}", "unknown placeholder {home}"),
        ("run.environment", {"lower": "x"}, "is not an environment variable name"),
        ("sso.kind", "saml", "sso.kind: Input should be 'header', 'ldap', 'oidc' or 'none'"),
        ("sso.header", None, 'kind = "header" needs header'),
        ("sso", {"kind": "none", "basic": True}, 'basic = true is for kind = "header"'),
        ("health.http", "healthz", 'must be a path starting with "/"'),
        ("health.tcp", True, "exactly one check"),
        ("health.timeout", 0, "health.timeout: Input should be greater than or equal to 1"),
        ("data.paths", ["relative/dir"], "must be absolute"),
        ("run.directories", ["/srv/x"], "must be a folder inside {data_dir}/"),
        ("run.directories", ["{data_dir}/../etc"], "must be a folder inside {data_dir}/"),
        ("web", {"kind": "cgi"}, "web.kind: Input should be 'proxy', 'fastcgi' or 'none'"),
        ("web", {"kind": "fastcgi"}, 'kind = "fastcgi" needs root'),
        ("web", {"kind": "fastcgi", "root": "/srv/a b"}, "web.root: String should match"),
        ("web", {"kind": "fastcgi", "root": "/srv", "deny": ["data"]}, "web.deny[0]"),
        ("web", {"kind": "fastcgi", "root": "/srv", "index": "a.html"}, "web.index"),
        ("web", {"root": "/srv"}, 'root, deny and aliases are for kind = "fastcgi"'),
        ("web", {"kind": "none"}, 'kind = "none" needs address'),
        ("web", {"kind": "none", "address": "x://{host}"}, "unknown placeholder {host}"),
        ("web", {"address": "x://{domain}"}, 'address is for kind = "none"'),
        ("web", {"host": "local host"}, "web.host: String should match"),
        ("web", {"kind": "fastcgi", "root": "/srv", "host": "localhost"}, "host is for kind"),
        # nginx would have no site to set the member's name in
        ("web", {"kind": "none", "address": "x://{domain}"}, "needs a web site"),
    ],
)
def test_a_bad_field_is_one_line_naming_it(path, value, words):
    with pytest.raises(ManifestError) as e:
        parse(edited(path, value), "radicale.toml")
    message = str(e.value)
    assert message.startswith("radicale.toml: ") and "\n" not in message
    assert words in message


def test_more_problems_are_counted_and_toml_errors_named():
    with pytest.raises(ManifestError, match=r"\(and 1 more\)"):
        parse(edited("run.port", 1).replace('id = "radicale"', 'id = "R"'), "radicale.toml")
    with pytest.raises(ManifestError, match="radicale.toml: not valid TOML"):
        parse("id = ", "radicale.toml")
    with pytest.raises(ManifestError, match="but the file is other.toml"):
        parse(GOOD, "/x/other.toml")


def test_an_oidc_service_needs_its_callback():
    text = edited("sso", {"kind": "oidc"})
    with pytest.raises(ManifestError, match='kind = "oidc" needs redirect_path'):
        parse(text, "radicale.toml")


def test_the_operators_directory_adds_and_replaces(tmp_path):
    (tmp_path / "radicale.toml").write_text(edited("version", "9.9"))
    (tmp_path / "mine.toml").write_text(GOOD.replace('id = "radicale"', 'id = "mine"'))
    entries = catalog.entries(str(tmp_path))
    assert entries["radicale"].manifest.version == "9.9" and not entries["radicale"].built_in
    assert "mine" in entries and entries["whoogle"].built_in
    (tmp_path / "broken.toml").write_text("id = 1")
    with pytest.raises(ManifestError, match="broken.toml"):
        catalog.entries(str(tmp_path))
    with pytest.raises(ManifestError, match="no service 'nope' in the catalog"):
        catalog.get("nope")
