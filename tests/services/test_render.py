"""Configuration templates rendered for one install: a secret of the install's own is made
once, then read back, so an upgrade renders the same one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from isidorus.services.errors import ServiceError
from isidorus.services.manifest import parse
from isidorus.services.render import Placement, lua_string, php_string, render_config

MANIFEST = """
id = "paste"
name = "paste"
description = "A test service."
replaces = ["Nothing"]
version = "1.0"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["python3"]

[run]
user = "paste"
command = "/usr/bin/true"
port = 5999

[sso]
kind = "none"

[[config]]
template = "app.conf"
path = "{config_dir}/app.conf"

[health]
tcp = true
"""


def placement(tmp_path: Path) -> Placement:
    return Placement("paste", "paste.example.test", "/", 5999, "paste",
                     str(tmp_path / "data"), str(tmp_path / "etc"))  # fmt: skip


def test_a_secret_is_made_once_then_kept(tmp_path):
    templates = tmp_path / "templates"
    (templates / "paste").mkdir(parents=True)
    (templates / "paste" / "app.conf").write_text(
        'key = "{{ secret("key") }}"\nagain = "{{ secret("key") }}"\nother = "{{ secret("b") }}"\n'
    )
    manifest = parse(MANIFEST, "paste.toml")
    where = placement(tmp_path)
    first = {p: (t, m) for p, t, m in render_config(manifest, templates, where)}
    etc = tmp_path / "etc"
    key, other = first[str(etc / ".secret-key")][0], first[str(etc / ".secret-b")][0]
    assert len(key) >= 40 and key != other and first[str(etc / ".secret-key")][1] == 0o640
    assert first[str(etc / "app.conf")][0] == f'key = "{key}"\nagain = "{key}"\nother = "{other}"\n'
    # written as install does, then rendered again (an upgrade): the same secrets
    etc.mkdir()
    for path, (text, _mode) in first.items():
        Path(path).write_text(text)
    second = {p: t for p, t, _ in render_config(manifest, templates, where)}
    assert second[str(etc / "app.conf")] == first[str(etc / "app.conf")][0]


def test_a_secret_name_is_checked(tmp_path):
    templates = tmp_path / "templates"
    (templates / "paste").mkdir(parents=True)
    (templates / "paste" / "app.conf").write_text('{{ secret("../x") }}')
    with pytest.raises(ServiceError, match="secret\\('../x'\\)"):
        render_config(parse(MANIFEST, "paste.toml"), templates, placement(tmp_path))


AWKWARD = ["plain", 'it\'s \\ a "test" $HOME {$x} ${y}', "line\nbreak\ttab\x01\x7f", "été 🌍"]


@pytest.mark.parametrize("value", AWKWARD)
def test_a_php_string_is_read_back_by_php_as_it_was(value):
    # PHP's own interpreter reads the literal the `php` filter writes
    program = f"echo bin2hex({php_string(value)});"
    out = subprocess.run(["php", "-r", program], capture_output=True, text=True, check=True)
    assert bytes.fromhex(out.stdout).decode() == value


@pytest.mark.parametrize("value", AWKWARD)
def test_a_lua_string_is_read_back_by_lua_as_it_was(value):
    program = f"io.write((({lua_string(value)}):gsub('.', function(c) "
    program += "return string.format('%02x', c:byte()) end)))"
    out = subprocess.run(["lua5.4", "-e", program], capture_output=True, text=True, check=True)
    assert bytes.fromhex(out.stdout).decode() == value


def test_shared_templates_fill_in_what_a_service_lacks(tmp_path):
    text = MANIFEST.replace('template = "app.conf"', 'template = "php-fpm.conf"')
    manifest = parse(text, "paste.toml")
    (tmp_path / "paste").mkdir()  # the service's own folder, without that template
    [(path, conf, _)] = render_config(manifest, tmp_path, placement(tmp_path))
    assert path == str(tmp_path / "etc" / "app.conf")
    assert "listen = 127.0.0.1:5999" in conf and "\n[paste]\n" in conf
