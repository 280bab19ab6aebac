"""The architecture's layering (DESIGN section 3), checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "modelserve"


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = {
    path.relative_to(PACKAGE.parent).as_posix(): imports(path) for path in sorted(PACKAGE.rglob("*.py"))
}


def importers(prefix: str) -> set[str]:
    return {
        name
        for name, found in MODULES.items()
        if any(m == prefix or m.startswith(prefix + ".") for m in found)
    }


def test_the_package_was_found() -> None:
    assert "modelserve/serving/runtime.py" in MODULES and len(MODULES) > 50


def test_only_serving_imports_onnxruntime() -> None:
    assert {name for name in importers("onnxruntime") if not name.startswith("modelserve/serving/")} == set()


def test_nothing_below_server_imports_starlette_except_middleware() -> None:
    allowed = ("modelserve/server/", "modelserve/middleware/")
    assert {name for name in importers("starlette") if not name.startswith(allowed)} == set()


def test_lower_layers_never_import_the_server_or_middleware() -> None:
    upper = importers("modelserve.server") | importers("modelserve.middleware")
    allowed = ("modelserve/server/", "modelserve/middleware/", "modelserve/cli")
    # The package root re-exports ModelServe lazily, for `from modelserve import ModelServe`.
    offenders = {name for name in upper if not name.startswith(allowed) and name != "modelserve/__init__.py"}
    assert offenders == set()
    assert {
        name for name in importers("modelserve.server") if name.startswith("modelserve/middleware/")
    } == set()


@pytest.mark.parametrize("forbidden", ["asyncio", "anyio", "starlette", "httpx", "uvicorn", "onnxruntime"])
def test_routing_is_pure(forbidden: str) -> None:
    assert {name for name in importers(forbidden) if name.startswith("modelserve/routing/")} == set()
