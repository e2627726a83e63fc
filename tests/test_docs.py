"""The docs keep up with the code: every command and every setting is documented."""

from __future__ import annotations

import pathlib

import click
import pytest

from isidorus.cli import cli
from isidorus.settings import SETTINGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "backup.md").read_text()


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        full = f"{prefix} {name}"
        out.append((full, cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, full))
    return out


BACKUP = _commands(cli.commands["backup"], "isidorus backup")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cmd"), BACKUP, ids=[n for n, _ in BACKUP])
def test_every_backup_command_has_help_and_docs(name, cmd):
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    if not isinstance(cmd, click.Group):
        assert name in GUIDE, f"docs/backup.md does not show `{name}`"
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                opt = max(param.opts, key=len)
                assert opt in GUIDE, f"docs/backup.md does not mention {name} {opt}"


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_every_setting_is_documented(setting):
    assert setting.help
    assert f"`{setting.name}`" in GUIDE
    assert f"ISIDORUS_{setting.name.upper()}" in GUIDE
