"""The architecture's layering (`docs/architecture.md`), checked by parsing every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
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


#: The layers, bottom first: a package may import its own layer and the layers below, never above.
LAYERS: list[set[str]] = [
    {"errors", "validation"},
    {"config", "datatypes"},
    {"routing"},
    {"state"},
    {"serving"},
    {"inference"},
    {"telemetry"},
    {"fleet"},
    {"experiments", "rollout", "monitoring"},
    {"shadow"},
    {"middleware"},
    {"server"},
    {"cli", "testing", "modelserve"},
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def package_of(name: str) -> str | None:
    """`modelserve/shadow/runner.py` -> "shadow"; `cli_*.py` -> "cli"; `testing*.py` -> "testing"."""
    parts = name.removesuffix(".py").replace("/", ".").split(".")
    if parts[0] != "modelserve":
        return None
    if len(parts) == 1 or parts[1] == "__init__":
        return "modelserve"
    if parts[1] == "__main__":
        return "cli"
    for group in ("cli", "testing"):
        if parts[1].startswith(group):
            return group
    return parts[1]


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages of ours it imports."""
    graph: dict[str, set[str]] = {}
    for name, found in modules.items():
        source = package_of(name)
        assert source is not None
        targets = {package_of(m) for m in found} - {None, source}
        graph.setdefault(source, set()).update(t for t in targets if t is not None)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between packages, each as the path that closes it."""
    found: list[list[str]] = []
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in visiting:
            found.append([*visiting[visiting.index(node) :], node])
            return
        if node in done:
            return
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(package, imported package) pairs that go up the layers (or name a package with no layer)."""
    return {
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if LAYER_OF.get(target, len(LAYERS)) > LAYER_OF.get(source, -1)
    }


def test_every_package_has_a_layer() -> None:
    assert set(package_graph(MODULES)) - set(LAYER_OF) == set()


def test_packages_import_one_way_down_the_layers() -> None:
    assert upward_imports(package_graph(MODULES)) == set()


def test_there_is_no_import_cycle_between_packages() -> None:
    assert cycles(package_graph(MODULES)) == []


def test_the_checks_catch_a_cycle_and_an_upward_import() -> None:
    """The two checks above fail on the defects they exist for (here added on purpose)."""
    broken = {**MODULES, "modelserve/state/extra.py": {"modelserve.serving.registry"}}
    assert ("state", "serving") in upward_imports(package_graph(broken))
    assert ["serving", "state", "serving"] in cycles(package_graph(broken))
    config_imports_ours = {**MODULES, "modelserve/config.py": {"modelserve.serving.runtime"}}
    assert ("config", "serving") in upward_imports(package_graph(config_imports_ours))


def test_errors_import_nothing_of_ours_and_config_only_the_errors_and_validation() -> None:
    assert {m for m in MODULES["modelserve/errors.py"] if m.startswith("modelserve")} == set()
    validation = {m for m in MODULES["modelserve/validation.py"] if m.startswith("modelserve")}
    assert validation == {"modelserve.errors"}
    ours = {m for m in MODULES["modelserve/config.py"] if m.startswith("modelserve")}
    assert ours == {"modelserve.errors", "modelserve.validation"}


def test_the_server_config_loads_without_onnxruntime_or_the_server() -> None:
    code = (
        "import sys\n"
        "from modelserve import ServerConfig\n"
        "from modelserve.errors import NotFound\n"
        "loaded = sorted(m for m in ('onnxruntime', 'starlette', 'modelserve.serving') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def documented_layers() -> list[set[str]]:
    """The layer list of docs/architecture.md (top first there), bottom first like `LAYERS`."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("<!-- layers", 1)[1].split("<!-- /layers -->", 1)[0]
    lines = [line.strip() for line in block.split("```")[1].splitlines() if line.strip()]
    return [{name.strip() for name in line.split(",")} for line in reversed(lines)]


def test_the_architecture_document_lists_these_layers() -> None:
    assert documented_layers() == LAYERS


def test_the_composition_root_declares_every_collaborator_with_a_concrete_type() -> None:
    """No `Any` in what `build_services` builds and the hooks it declares."""
    import dataclasses

    from modelserve.server import services

    for holder in (services.Services, services.Hooks, services.FeatureSet, services.Extension):
        for field in dataclasses.fields(holder):
            assert "Any" not in str(field.type), (holder, field.name)
