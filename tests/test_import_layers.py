"""The package's layers import in one direction: no cycle between subpackages, no import of a higher layer.

Every import counts, function-local ones included; only imports under ``if TYPE_CHECKING:`` are
exempt. The layers, lowest first, are those docs/architecture.md draws.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "affect_llm"

# Lowest first. A module belongs to the longest prefix listed; the package root is the public
# facade (it registers the auto classes) and may import anything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("affect_llm.paths", "affect_llm.fileio", "affect_llm.hashing", "affect_llm.memory", "affect_llm.prompts",
     "affect_llm.references"),
    ("affect_llm.labels", "affect_llm.data"),
    ("affect_llm.precision", "affect_llm.configuration"),
    ("affect_llm.modeling",),
    ("affect_llm.processing",),
    ("affect_llm.embedded", "affect_llm.loading"),
    ("affect_llm.features",),
    ("affect_llm.generation",),
    ("affect_llm.evaluation",),
    ("affect_llm.training",),
    ("affect_llm.serving",),
    ("affect_llm.cli",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every affect_llm import in a file, outside ``TYPE_CHECKING`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            exempt.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("affect_llm")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("affect_llm"):
            # ``from affect_llm.x import y`` may import the submodule x.y: count the most specific name.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _known(name: str, modules: set[str]) -> str:
    """The module an imported name refers to: itself when it is a module, else its parent."""
    return name if name in modules else name.rsplit(".", 1)[0]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    edges: dict[str, set[str]] = {}
    upward: list[str] = []
    for file in files:
        source = module_name(file)
        if source == "affect_llm":
            continue
        for line, name in imported_modules(file):
            target = _known(name, modules)
            if target == "affect_llm":
                upward.append(f"{file.relative_to(PACKAGE.parent)}:{line}: imports the package root ({name})")
                continue
            src_layer, dst_layer = layer_of(source), layer_of(target)
            if src_layer is None or dst_layer is None:
                upward.append(f"{file.relative_to(PACKAGE.parent)}:{line}: {source} or {target} is in no layer")
            elif dst_layer > src_layer:
                upward.append(f"{file.relative_to(PACKAGE.parent)}:{line}: {source} (layer {src_layer}) imports "
                              f"{target} (layer {dst_layer})")
            src_pkg, dst_pkg = ".".join(source.split(".")[:2]), ".".join(target.split(".")[:2])
            if src_pkg != dst_pkg:
                edges.setdefault(src_pkg, set()).add(dst_pkg)
    return edges, upward


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_between_subpackages():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_module_imports_a_higher_layer():
    _, upward = _graph()
    assert upward == []


@pytest.mark.parametrize("source, expected", [
    ("x = 1\nif TYPE_CHECKING:\n    from affect_llm.cli import main\n", []),
    ("def f():\n    from affect_llm.cli.main import main\n", [(2, "affect_llm.cli.main.main")]),
])
def test_the_walker_sees_function_local_imports_and_skips_type_checking(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imported_modules(path) == expected


def test_the_architecture_page_names_only_what_exists():
    """Every ``affect_llm.x.y`` the page cites is a module, or an attribute of one."""
    import importlib
    import re

    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = []
    for dotted in sorted(set(re.findall(r"affect_llm(?:\.[A-Za-z_][A-Za-z0-9_]*)+", page))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    assert missing == []
