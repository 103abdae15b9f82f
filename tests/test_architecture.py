"""The layers, checked over the source (every import, also inside functions; only
``if TYPE_CHECKING:`` blocks are left out, since they never run):

    streams (core)  <-  streams.kafka, operators, sinks  <-  streams.app

- the core imports nothing from operators, sinks, streams.app, streams.kafka or aiokafka;
- streams.kafka imports nothing from operators or sinks (or streams.app);
- operators and sinks never import each other (nor streams.app or streams.kafka);
- no import cycles between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "operators", "sinks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                out.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                out.add(child.module)
                out.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = _runtime_imports(ast.parse(path.read_text(), str(path)))
        # An import of a.b.c depends on module a.b.c, else on the package a.b.
        deps = set()
        for target in imported:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps | {i for i in imported if i.split(".")[0] == "aiokafka"}
    return graph


def _layer(module: str) -> str:
    for prefix in ("streams.app", "streams.kafka", "operators", "sinks"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "streams" if module.split(".")[0] == "streams" else module.split(".")[0]


FORBIDDEN = {
    "streams": {"operators", "sinks", "streams.app", "streams.kafka", "aiokafka"},
    "streams.kafka": {"operators", "sinks", "streams.app"},
    "operators": {"sinks", "streams.app", "streams.kafka", "aiokafka"},
    "sinks": {"operators", "streams.app", "streams.kafka", "aiokafka"},
}


def test_layers_import_one_way() -> None:
    bad = [
        f"{module} imports {dep}"
        for module, deps in _graph().items()
        for dep in deps
        if _layer(dep) in FORBIDDEN.get(_layer(module), set())
    ]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    graph = {m: {d for d in deps if d in _graph_keys} for m, deps in _graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    assert not cycles, cycles


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import sinks.index\n"
        "def f():\n    from operators import batch\n    import aiokafka\n"
    )
    assert _runtime_imports(tree) >= {"operators", "operators.batch", "aiokafka"}
    assert "sinks.index" not in _runtime_imports(tree)


_graph_keys = set(_graph())
