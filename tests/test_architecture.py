"""The package imports in one direction (docs/architecture.md).

Every module under ``rank_search/`` is parsed with :mod:`ast`; every import of ours (module
level and inside functions, relative and absolute; imports under ``if TYPE_CHECKING:`` are
left out, they never run) is an edge of the module graph. ``from pkg import name`` is an edge to
the submodule ``pkg.name`` when there is one, else to ``pkg`` (a package's ``__init__`` and its
re-exports count as the package). The graph must have no cycle, and no module may import from
a layer above its own (``LAYERS``, bottom to top, the same list as docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "rank_search"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top. A module belongs to the layer of the longest entry that is its name or a
# package above it ("" is the package ``__init__`` itself); it may import its own layer and the
# ones below. A new module must be placed here (and in docs/architecture.md).
LAYERS: list[tuple[str, ...]] = [
    (
        "",
        "_version",
        "errors",
        "_io",
        "_validate",
        "_rundir",
        "threads",
        "_formulas",
        "outcomes",
        "models",
        "data",
    ),
    ("layers", "inference", "regularizers"),
    ("specs",),
    ("cost",),
    ("convert",),
    ("config",),
    ("uniform", "runs"),
    ("trained",),
    ("latency", "onnx_export", "bench", "int8", "onnx_eval"),
    ("train",),
    ("search",),
    ("analysis",),
    ("cli", "compress", "__main__"),
]


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all depths, ``if TYPE_CHECKING:`` bodies left out."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _known(name: str, mods: dict[str, tuple[Path, bool]]) -> str | None:
    """``name`` or the closest package above it that is one of our modules."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(mods: dict[str, tuple[Path, bool]], package: str = PACKAGE) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == package]
                edges.update(t for t in (_known(n, mods) for n in targets) if t)
                continue
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != package:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in mods else _known(source, mods)
                if target:
                    edges.add(target)
        edges.discard(mod)
        graph[mod] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        # breadth-first back to ``start`` inside the component: a shortest cycle through it
        parents: dict[str, str] = {}
        frontier = [start]
        end = None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        end = v
                        break
                    if w not in parents:
                        parents[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        assert end is not None
        path = [end]
        while path[-1] != start:
            path.append(parents[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def cycle_text(graph: dict[str, set[str]], cycle: list[str]) -> str:
    """The cycle and every module caught in the same knot."""
    knot = {cycle[0]}
    grew = True
    while grew:  # modules reachable from the cycle that reach back to it
        reach = {w for v in knot for w in graph[v]} - knot
        back = {w for w in reach if _reaches(graph, w, cycle[0])}
        grew = bool(back)
        knot |= back
    return " -> ".join(cycle) + f"  (knot: {', '.join(sorted(knot))})"


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        for w in graph[v] - seen:
            seen.add(w)
            todo.append(w)
    return False


def layer_of(mod: str, layers: list[tuple[str, ...]] = LAYERS, package: str = PACKAGE) -> int | None:
    rel = mod[len(package) + 1 :] if mod != package else ""
    best: tuple[int, int] | None = None  # (entry length, layer)
    for level, entries in enumerate(layers):
        for entry in entries:
            matches = entry == rel or (entry and rel.startswith(entry + "."))
            if matches and (best is None or len(entry) > best[0]):
                best = (len(entry), level)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for mod in sorted(graph):
        level = layer_of(mod)
        for target in sorted(graph[mod]):
            to = layer_of(target)
            if level is not None and to is not None and to > level:
                found.append(f"{mod} (layer {level}) imports {target} (layer {to})")
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in module_files() if layer_of(m) is None]
    assert unplaced == [], "modules with no layer in LAYERS: " + ", ".join(unplaced)


def test_no_import_cycles() -> None:
    graph = import_graph(module_files())
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(cycle_text(graph, c) for c in cycles)


def test_imports_go_down_the_layers() -> None:
    upward = upward_imports(import_graph(module_files()))
    assert upward == [], "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A made-up package with a cycle (one import inside a function) and an upward import."""
    pkg = tmp_path / "rank_search"
    (pkg / "search").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from .cost import g\n")
    (pkg / "cost.py").write_text("from rank_search.config import f\n")
    (pkg / "search" / "__init__.py").write_text("from .runner import run\n")
    (pkg / "search" / "runner.py").write_text("def run():\n    from ..analysis import pareto\n")
    (pkg / "analysis").mkdir()
    (pkg / "analysis" / "__init__.py").write_text("")
    (pkg / "analysis" / "pareto.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..search import runner\n"
    )
    graph = import_graph(module_files(pkg))
    assert find_cycles(graph) == [["rank_search.config", "rank_search.cost", "rank_search.config"]]
    assert "rank_search.analysis.pareto" in graph["rank_search.search.runner"]
    assert graph["rank_search.analysis.pareto"] == set()  # TYPE_CHECKING imports never run
    assert "rank_search.search.runner" in graph["rank_search.search"]
    assert upward_imports(graph) == [
        "rank_search.cost (layer 3) imports rank_search.config (layer 5)",
        "rank_search.search.runner (layer 10) imports rank_search.analysis.pareto (layer 11)",
    ]
