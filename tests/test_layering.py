"""The package's shape, read from its imports (ast, nothing is imported): no import circles,
the dependency direction ``api -> engine -> (lora, adapters)``, api/ through the engine's public
face only, and no file over 300 lines.

Every import counts, module-level or inside a function, except those under ``if
TYPE_CHECKING:`` (annotations only; they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "server"
PACKAGE = SOURCE / "loraplex"
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in [stmt, *_walk(stmt)])
            continue
        yield child
        yield from _walk(child)


def imports(module: str) -> set[str]:
    """The loraplex modules ``module`` imports: ``from a.b import c`` is ``a.b.c`` when that is
    a module, else ``a.b``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports(module) for module in MODULES}


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_graph_was_read() -> None:
    """Guard against a parser that finds nothing (every other test would pass vacuously)."""
    assert len(MODULES) > 100
    assert "loraplex.engine.sched.scheduler" in GRAPH["loraplex.engine.runner.batch"]
    assert "loraplex.engine" in GRAPH["loraplex.api.generation"]


def test_no_import_circles() -> None:
    """Depth-first search for a back edge; the cycle found is reported whole."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_api_imports_the_engine_only_through_its_public_face() -> None:
    wrong = {
        (module, target)
        for module, targets in GRAPH.items()
        if in_room(module, "loraplex.api")
        for target in targets
        if in_room(target, "loraplex.engine") and target != "loraplex.engine"
    }
    assert wrong == set()


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("loraplex.lora", ("loraplex.engine", "loraplex.api")),
        ("loraplex.adapters", ("loraplex.engine", "loraplex.api")),
        ("loraplex.engine", ("loraplex.api",)),
    ],
)
def test_dependencies_point_one_way(room: str, forbidden: tuple[str, ...]) -> None:
    """``api -> engine -> (lora, adapters)``: never the other way."""
    wrong = {
        (module, target)
        for module, targets in GRAPH.items()
        if in_room(module, room)
        for target in targets
        if any(in_room(target, other) for other in forbidden)
    }
    assert wrong == set()


def test_the_engine_does_not_import_its_own_public_face() -> None:
    """Inside the engine, modules import each other directly: the public face is for callers
    (and it loads its names lazily, so importing it from inside would hide a circle)."""
    users = {m for m, targets in GRAPH.items() if "loraplex.engine" in targets}
    assert {m for m in users if in_room(m, "loraplex.engine")} == set()


def test_no_file_is_over_300_lines() -> None:
    sizes = {
        str(path.relative_to(SOURCE)): len(path.read_text().splitlines())
        for path in SOURCE.rglob("*.py")
    }
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}
