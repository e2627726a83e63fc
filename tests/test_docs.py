"""The docs keep up with the code: every command and every setting is documented."""

from __future__ import annotations

import pathlib

import click
import pytest

from isidorus.cli.commands import cli
from isidorus.directory.config import EXAMPLES as LDAP_EXAMPLES
from isidorus.settings import SETTINGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "backup.md").read_text()
ACCOUNTS_GUIDE = (ROOT / "docs" / "accounts.md").read_text()
SERVICES_GUIDE = (ROOT / "docs" / "services.md").read_text()


CTX = click.Context(cli)


def _command(group: click.Group, name: str) -> click.Command:
    cmd = group.get_command(CTX, name)  # loads a lazy command's module
    assert cmd is not None, f"no command {name}"
    return cmd


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out = []
    for name in group.list_commands(CTX):
        cmd = _command(group, name)
        full = f"{prefix} {name}"
        out.append((full, cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, full))
    return out


OFFSITE_GUIDE = (ROOT / "docs" / "offsite.md").read_text()
BACKUP = _commands(_command(cli, "backup"), "isidorus backup")  # type: ignore[arg-type]
# copies of a store have their own guide
OFFSITE = (
    "isidorus backup sync",
    "isidorus backup scrub",
    "isidorus backup remote",
    "isidorus backup serve",
    "isidorus backup removals",
    "isidorus backup home-setup",
)


@pytest.mark.parametrize(("name", "cmd"), BACKUP, ids=[n for n, _ in BACKUP])
def test_every_backup_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    guide, path = (
        (OFFSITE_GUIDE, "docs/offsite.md")
        if name.startswith(OFFSITE)
        else (GUIDE, "docs/backup.md")
    )
    if not isinstance(cmd, click.Group):
        assert name in guide, f"{path} does not show `{name}`"
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                opt = max(param.opts, key=len)
                assert opt in guide, f"{path} does not mention {name} {opt}"


def test_the_offsite_guide_is_linked_and_covers_repairs():
    assert "(offsite.md)" in GUIDE
    assert "(docs/offsite.md)" in (ROOT / "README.md").read_text()
    assert "isidorus backup verify STORE --repair-from" in OFFSITE_GUIDE
    for field in ("snapshots_copied", "packs_sent", "objects_sent", "bytes_sent"):
        assert f"`{field}`" in OFFSITE_GUIDE, f"docs/offsite.md does not explain {field}"


SERVER_GUIDE = (ROOT / "docs" / "server.md").read_text()


def test_serve_is_documented():
    cmd = _command(cli, "serve")
    assert cmd.help and "isidorus serve" in SERVER_GUIDE
    for param in cmd.params:
        assert max(param.opts, key=len) in SERVER_GUIDE


ACCOUNTS = [
    ("isidorus init", _command(cli, "init")),
    ("isidorus audit", _command(cli, "audit")),
] + [
    c
    for g in ("user", "group")
    for c in _commands(_command(cli, g), f"isidorus {g}")  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("name", "cmd"), ACCOUNTS, ids=[n for n, _ in ACCOUNTS])
def test_every_account_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    assert name in ACCOUNTS_GUIDE, f"docs/accounts.md does not show `{name}`"
    for param in cmd.params:
        if isinstance(param, click.Option):
            opt = max(param.opts, key=len)
            assert opt in ACCOUNTS_GUIDE, f"docs/accounts.md does not mention {name} {opt}"


OIDC_GUIDE = (ROOT / "docs" / "oidc.md").read_text()
OIDC = _commands(_command(cli, "oidc"), "isidorus oidc")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cmd"), OIDC, ids=[n for n, _ in OIDC])
def test_every_oidc_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    if not isinstance(cmd, click.Group):
        assert name in OIDC_GUIDE, f"docs/oidc.md does not show `{name}`"
        for param in cmd.params:
            if isinstance(param, click.Option):
                opt = max(param.opts, key=len)
                assert opt in OIDC_GUIDE, f"docs/oidc.md does not mention {name} {opt}"


def test_the_oidc_guide_is_linked_from_the_server_guide():
    assert "(oidc.md)" in SERVER_GUIDE


LDAP_KEYS = list(LDAP_EXAMPLES)
DIRECTORY_GUIDE = (ROOT / "docs" / "directory.md").read_text()
DIRECTORY = _commands(_command(cli, "directory"), "isidorus directory")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cmd"), DIRECTORY, ids=[n for n, _ in DIRECTORY])
def test_every_directory_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    assert name in DIRECTORY_GUIDE, f"docs/directory.md does not show `{name}`"
    for param in cmd.params:
        if isinstance(param, click.Option):
            opt = max(param.opts, key=len)
            assert opt in DIRECTORY_GUIDE, f"docs/directory.md does not mention {name} {opt}"


@pytest.mark.parametrize("key", LDAP_KEYS)
def test_every_ldap_key_is_documented(key):
    assert f"| `{key}` |" in DIRECTORY_GUIDE, f"docs/directory.md does not explain [ldap] {key}"
    assert "[directory.md](directory.md)" in ACCOUNTS_GUIDE


UPDATES_GUIDE = (ROOT / "docs" / "updates.md").read_text()
UPDATES = _commands(_command(cli, "update"), "isidorus update")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cmd"), UPDATES, ids=[n for n, _ in UPDATES])
def test_every_update_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    assert name in UPDATES_GUIDE, f"docs/updates.md does not show `{name}`"
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert max(param.opts, key=len) in UPDATES_GUIDE, f"{name}: {param.opts}"
    assert "(docs/updates.md)" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_every_setting_is_documented(setting):
    assert setting.help
    docs = GUIDE + ACCOUNTS_GUIDE + SERVICES_GUIDE + UPDATES_GUIDE + SERVER_GUIDE
    assert f"`{setting.name}`" in docs or setting.env_name in docs
    assert setting.env_name in docs


API_GUIDE = (ROOT / "docs" / "api.md").read_text()
TOKENS = _commands(_command(cli, "token"), "isidorus token")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cmd"), TOKENS, ids=[n for n, _ in TOKENS])
def test_every_token_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    assert name in API_GUIDE, f"docs/api.md does not show `{name}`"
    for param in cmd.params:
        if isinstance(param, click.Option):
            opt = max(param.opts, key=len)
            assert opt in API_GUIDE, f"docs/api.md does not mention {name} {opt}"


def test_every_api_endpoint_is_documented():
    from fastapi.routing import APIRoute

    from isidorus.web.api import PREFIX, routers

    for router in routers():
        for route in router.routes:
            assert isinstance(route, APIRoute)
            for method in route.methods:
                shown = f"`{method} {PREFIX}{route.path}`"
                assert shown in API_GUIDE, f"docs/api.md does not show {shown}"
    assert "api.md" in SERVER_GUIDE


SERVICES = _commands(_command(cli, "service"), "isidorus service")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cmd"), SERVICES, ids=[n for n, _ in SERVICES])
def test_every_service_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    assert name in SERVICES_GUIDE, f"docs/services.md does not show `{name}`"
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert max(param.opts, key=len) in SERVICES_GUIDE, f"{name}: {param.opts}"


def test_the_catalog_table_lists_every_built_in_service():
    from isidorus.services import catalog

    for service_id, entry in catalog.entries().items():
        assert f"| {service_id} | {', '.join(entry.manifest.replaces)} |" in SERVICES_GUIDE


OPERATIONS_GUIDE = (ROOT / "docs" / "operations.md").read_text()
OPERATIONS = [
    item
    for name in ("nightly", "jobs", "doctor", "notify", "schedule")
    for item in [(f"isidorus {name}", _command(cli, name))]
    + (
        _commands(_command(cli, name), f"isidorus {name}")  # type: ignore[arg-type]
        if isinstance(_command(cli, name), click.Group)
        else []
    )
]


@pytest.mark.parametrize(("name", "cmd"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
def test_every_operations_command_has_help_and_docs(name, cmd):
    assert cmd.help, f"{name} has no help"
    assert name in OPERATIONS_GUIDE, f"docs/operations.md does not mention `{name}`"


def test_the_operations_guide_covers_every_key_and_check():
    from isidorus.ops import doctor, jobs_config

    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()
    for key in jobs_config.NightlyConfig.__dataclass_fields__:
        key = {"hour": "time", "minute": "time"}.get(key, key)
        assert f"`nightly.{key}`" in OPERATIONS_GUIDE, key
    for key in jobs_config.NotifyConfig.__dataclass_fields__:
        assert f"`notify.{key}`" in OPERATIONS_GUIDE, key
    checks = {"disk", "certificate", "service", "backup", "remote", "clock", "dns", "updates"}
    for check in checks | {"notify"}:
        assert f"| `{check}` |" in OPERATIONS_GUIDE, check
    assert set(doctor.SEVERITIES) <= {w.strip("`(),") for w in OPERATIONS_GUIDE.split()}
