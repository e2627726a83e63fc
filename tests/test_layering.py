"""The engine stays apart: isidorus.backup imports nothing of isidorus but isidorus.errors
and isidorus.units (a leaf: sizes and delays as people write them), and backup/remote/
never imports the rest of the engine (restic's depguard rule)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "isidorus"


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


ENGINE = sorted((PKG / "backup").rglob("*.py"))
LEAVES = ("isidorus.errors", "isidorus.units")


@pytest.mark.parametrize("leaf", LEAVES)
def test_the_leaves_import_nothing_else_of_isidorus(leaf):
    path = PKG / (leaf.split(".")[1] + ".py")
    assert {n for n in _imports(path) if n.startswith("isidorus")} <= {"isidorus.errors"}


@pytest.mark.parametrize("path", ENGINE, ids=[str(p.relative_to(PKG)) for p in ENGINE])
def test_engine_imports_only_itself_and_errors(path):
    for name in _imports(path):
        if name.startswith("isidorus") and not name.startswith("isidorus.backup"):
            assert name in LEAVES, f"{path.name} imports {name}"
        if "remote" in path.parts and name.startswith("isidorus.backup."):
            allowed = ("isidorus.backup.remote", "isidorus.backup.errors")
            assert name.startswith(allowed), f"remote/{path.name} imports {name}"


OIDC = sorted((PKG / "oidc").rglob("*.py"))
FRONTENDS = ("isidorus.web", "isidorus.cli", "isidorus.ops", "starlette", "click")


@pytest.mark.parametrize("path", OIDC, ids=[str(p.relative_to(PKG)) for p in OIDC])
def test_the_oidc_core_knows_no_frontend(path):
    for name in _imports(path):
        assert not name.startswith(FRONTENDS), f"oidc/{path.name} imports {name}"


DIRECTORY = sorted((PKG / "directory").rglob("*.py"))


@pytest.mark.parametrize("path", DIRECTORY, ids=[str(p.relative_to(PKG)) for p in DIRECTORY])
def test_directory_knows_ldap_and_nothing_of_the_state_or_frontends(path):
    for name in _imports(path):
        if name.startswith("isidorus") and not name.startswith("isidorus.directory"):
            assert name == "isidorus.errors", f"directory/{path.name} imports {name}"
        assert not name.startswith(("sqlalchemy", "starlette", "click")), f"{path.name}: {name}"
