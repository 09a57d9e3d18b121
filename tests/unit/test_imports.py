"""The package's imports point one way: no module imports itself back through others, and
no layer imports another (they share Delta tables and nothing else)."""

from __future__ import annotations

import ast
from pathlib import Path

from pipelines.config import REPO_ROOT

PACKAGE = REPO_ROOT / "pipelines"
LAYERS = ("pipelines.crom", "pipelines.crfm", "pipelines.crsm")


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Each module -> the project modules it imports, at the top or inside a function."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipelines"):
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            if found := visit(target):
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if found := visit(module):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(_imports()) is None


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# Commands over every layer: the CLI, the spark-submit zip, the table catalogue and the
# directives' expression check (`crm directives check`).
TOOLS = {"pipelines.cli", "pipelines.dist", "pipelines.catalog", "pipelines.directive_checks"}


def test_layers_import_no_other_layer_and_shared_modules_import_none():
    """The layers meet only through Delta tables, so each can be deployed alone."""
    wrong = []
    for module, targets in _imports().items():
        own = next((layer for layer in LAYERS if module.startswith(layer)), None)
        for target in targets:
            layer = next((layer for layer in LAYERS if target.startswith(layer)), None)
            if layer is not None and layer != own and module not in TOOLS:
                wrong.append(f"{module} -> {target}")
    assert wrong == []
