"""The project's import graph: no cycles, and no module reaching into another module's underscore names.

Read with :mod:`ast` only (nothing is imported), over every ``.py`` file under ``gigatok/``, ``studies/`` and
``analysis/``, imports inside functions included (lazy imports are where cycles hide). Imports under
``if TYPE_CHECKING:`` are left out: they never run.

The model of an import, kept simple on purpose:

- A module is a file: ``gigatok/runs/spec.py`` is ``gigatok.runs.spec``, ``gigatok/cfg_search/__init__.py`` is
  ``gigatok.cfg_search``.
- ``import a.b.c`` and ``from a.b.c import x`` name ``a.b.c`` (or, where ``a.b.c.x`` is itself a module,
  ``a.b.c.x``); ``from a.b import c`` with ``c`` a submodule names ``a.b.c``.
- Python runs the parent packages first (``a/__init__.py``, ``a/b/__init__.py``): those are edges too, except the
  packages the importing module is itself inside, which are already running when it runs. So a package whose
  ``__init__`` re-exports its submodules is no cycle with them while they import each other by their own names;
  a submodule that imports the package itself (``from a.b import x``, ``x`` not a submodule) makes a cycle, and so
  does a module outside ``a.b`` that ``a.b``'s ``__init__`` reaches and that imports any of ``a.b``'s submodules.

Underscore names: ``from m import _x`` and ``m._x`` (``m`` bound by an import) where ``m`` is another project module
and ``_x`` starts with one underscore (dunders such as ``__version__`` are public).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gigatok", "studies", "analysis")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every project module by dotted name."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    target: str  # the project module imported
    names: tuple[str, ...]  # what a ``from`` import takes from it (empty for ``import m``)
    alias: str | None  # the local name bound to the module itself (``import m as alias``), if any
    line: int


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of ``name`` that is a project module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path]) -> list[Import]:
    path = modules[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target is not None:
                    # ``import a.b`` binds ``a``; only ``import a.b as m`` binds the module itself
                    bound = alias.asname or (alias.name if "." not in alias.name else None)
                    out.append(Import(target, (), bound if target == alias.name else None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            target = _resolve(base, modules)
            if target is None:
                continue
            plain = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # a submodule: an edge to it, bound under its name
                    out.append(Import(sub, (), alias.asname or alias.name, node.lineno))
                elif target == base:
                    plain.append(alias.name)
            if plain or target != base:
                out.append(Import(target, tuple(plain), None, node.lineno))
    return out


def _underscore(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, for the message: a -> b -> a."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("no cycle in a strongly connected component")


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules importing it runs: each target, and the target's parent packages that do not contain
    the importing module."""
    graph: dict[str, set[str]] = {}
    for module in modules:
        edges = graph[module] = set()
        for imp in imports_of(module, modules):
            edges.add(imp.target)
            parts = imp.target.split(".")
            for end in range(1, len(parts)):
                package = ".".join(parts[:end])
                if package in modules and not (module == package or module.startswith(package + ".")):
                    edges.add(package)
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph(project_modules())
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def private_name_uses(modules: dict[str, Path]) -> list[str]:
    """``file:line: what`` for each use of another project module's underscore name."""
    found = []
    for module, path in modules.items():
        imports = imports_of(module, modules)
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for imp in imports:
            if imp.target != module:
                found += [f"{rel}:{imp.line}: from {imp.target} import {n}" for n in imp.names if _underscore(n)]
        # ``m._x`` where ``m`` is bound to another project module by ``import m [as alias]``
        bound = {imp.alias: imp.target for imp in imports if imp.alias is not None and imp.target != module}
        for node in _nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _underscore(node.attr):
                owner = ast.unparse(node.value)
                if owner in bound or (owner in modules and owner != module):
                    found.append(f"{rel}:{node.lineno}: {owner}.{node.attr}")
    return sorted(found)


def test_no_private_names_across_modules() -> None:
    found = private_name_uses(project_modules())
    assert not found, "underscore names of other modules:\n" + "\n".join(found)


def test_the_model_on_a_small_tree(tmp_path: Path) -> None:
    """The checker itself: a package re-exporting its submodules is no cycle; an outside module that the package's
    submodules import, and that imports one of them back, is (through the package's ``__init__``)."""
    files = {
        "p/__init__.py": "from p.x import f\n",
        "p/x.py": "from p.y import g\n\ndef f():\n    import p.y as y\n    return y._hidden\n",
        "p/y.py": "def g(): ...\n",
        "q.py": "from p.x import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {
        "p": tmp_path / "p/__init__.py",
        "p.x": tmp_path / "p/x.py",
        "p.y": tmp_path / "p/y.py",
        "q": tmp_path / "q.py",
    }
    assert find_cycles(import_graph(modules)) == []
    x = tmp_path / "p/x.py"  # named relative to the repository when the temporary folder is inside it (CI)
    assert private_name_uses(modules) == [f"{x.relative_to(ROOT) if x.is_relative_to(ROOT) else x}:5: y._hidden"]
    (tmp_path / "p/y.py").write_text("def g():\n    from q import f\n")  # lazy, and still a cycle
    assert find_cycles(import_graph(modules)) == [["p", "p.x", "p.y", "q", "p"]]
