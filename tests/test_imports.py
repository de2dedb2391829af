"""The import graph of ``src/glasslm``: no cycles, and no library module importing a CLI module.

The graph is read with ``ast`` (nothing is imported): one node per module, one edge per
``import glasslm.x`` / ``from glasslm.x import y`` (``y`` counts as the module ``glasslm.x.y`` when
that is a module, else as ``glasslm.x``). *Every* import statement counts, at module level and inside
functions alike: a deferred import is still a dependency (it only hides a cycle from the
interpreter, which is how the ones this test was written for had lasted). Imports under
``if TYPE_CHECKING:`` are left out: they never run. A package's ``__init__`` is a node of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "glasslm").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The glasslm modules ``name`` imports anywhere in its file (TYPE_CHECKING blocks aside)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package, up level - 1
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else base)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def is_cli(name: str) -> bool:
    last = name.rpartition(".")[2]
    return last in ("cli", "clitools", "__main__") or last.startswith("cli_") or last.endswith("_cli")


def test_graph_sees_deferred_imports() -> None:
    graph = import_graph()
    assert "glasslm.model.olmo2" in graph["glasslm.model.checkpoint"]
    assert "glasslm.adapt.train_cli" in graph["glasslm.adapt.cli"]  # imported inside register()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    detail = "; ".join(
        " ⇄ ".join(c) + " (" + ", ".join(f"{a} → {b}" for a in c for b in sorted(graph[a] & set(c))) + ")"
        for c in found
    )
    assert not found, f"import cycles in src/glasslm: {detail}"


def test_no_library_module_imports_a_cli_module() -> None:
    graph = import_graph()
    bad = sorted(f"{a} → {b}" for a, targets in graph.items() if not is_cli(a) for b in targets if is_cli(b))
    assert not bad, f"library modules importing CLI modules: {', '.join(bad)}"
