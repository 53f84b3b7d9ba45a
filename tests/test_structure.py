"""The package's structure rules (docs/architecture.md), read from the source with ast:

* no import cycle among napari_brainatlas modules (imports inside functions count: a
  function-level import only hides a cycle);
* no dock module under widgets/ imports another dock module or a CLI module;
* engines (everything outside widgets/ and the napari entry points in _napari.py) never
  import qtpy / Qt bindings / napari / vispy at module level.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

#: the package of this tree, read as source (importing it is not needed)
PKG = Path(__file__).resolve().parents[1] / "src" / "napari_brainatlas"
NAME = PKG.name
GUI_ROOTS = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "vispy", "superqt"}


def _manifest_docks() -> set[str]:
    """The dock modules: those napari.yaml registers widgets from (``widgets.<dock>``)."""
    text = (PKG / "napari.yaml").read_text(encoding="utf-8")
    found = re.findall(rf"python_name:\s*{NAME}\.widgets\.([A-Za-z0-9_]+)", text)
    return set(found)


DOCKS = _manifest_docks()


def _modules(root: Path = PKG, name: str = NAME) -> dict[str, Path]:
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _targets(module: str, path: Path, node) -> list[str]:
    """Absolute module names an import statement may refer to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".")
    if node.level:
        keep = len(base) - node.level + (1 if path.name == "__init__.py" else 0)
        base = base[:keep]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{a.name}" for a in node.names]


def _is_type_checking(node) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module):
    """Import statements run when the module is imported (not in functions or classes'
    methods, not under ``if TYPE_CHECKING``)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for h in node.handlers:
                todo += h.body
        elif isinstance(node, (ast.With, ast.ClassDef)):
            todo += node.body


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m] |= {t for t in _targets(m, f, node) if t in mods and t != m}
    return graph


def _cycles(graph: dict[str, set[str]], mods: dict[str, Path]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (a package's __init__ importing
    its own children does not make a cycle: __init__ modules are left out of the count)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            pure = sorted(c for c in comp if mods[c].name != "__init__.py")
            if len(pure) > 1:
                found.append(pure)

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _dock_of(module: str) -> str | None:
    """The dock a module belongs to (``widgets.<dock>`` or ``widgets.<dock>.*``); None
    for everything else (the shared base, small widgets, Qt-free sessions and jobs)."""
    parts = module.split(".")
    if parts[:2] == [NAME, "widgets"] and len(parts) > 2 and parts[2] in DOCKS:
        return parts[2]
    return None


def _is_cli(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == NAME and ("cli" in parts[1:])


def _is_engine(module: str) -> bool:
    return not (module.startswith(f"{NAME}.widgets") or module == f"{NAME}._napari")


# ----------------------------------------------------------------------- tests
def test_no_import_cycles():
    mods = _modules()
    assert len(mods) > 50
    assert _cycles(_graph(mods), mods) == []


def test_cycle_check_finds_a_cycle(tmp_path):
    """The check sees a cycle hidden by a function-level import (and would not pass for
    the wrong reason)."""
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\nfrom .b import g\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    (pkg / "c.py").write_text("from . import a\n")
    mods = _modules(pkg, "toy")
    assert _cycles(_graph(mods), mods) == [["toy.a", "toy.b"]]
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert _cycles(_graph(mods), mods) == []


def test_no_dock_imports_another_dock_or_a_cli_module():
    mods = _modules()
    graph = _graph(mods)
    docks = {_dock_of(m) for m in mods} - {None}
    assert {"annotate", "registration", "embed", "domains", "sections", "ahba"} <= docks
    namespace = f"{NAME}.widgets"
    bad = []
    for m in mods:
        me = _dock_of(m)
        if not m.startswith(namespace + ".") or m == namespace:
            continue
        for t in graph[m]:
            other = _dock_of(t)
            if (other is not None and other != me) or _is_cli(t):
                bad.append(f"{m} imports {t}")
    assert not bad, bad


def test_engines_import_no_gui_at_module_level():
    bad = []
    engines = 0
    for m, f in _modules().items():
        if not _is_engine(m):
            continue
        engines += 1
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in _module_level_imports(tree):
            roots = {t.split(".")[0] for t in _targets(m, f, node)}
            if node_roots := roots & GUI_ROOTS:
                bad.append(f"{m} line {node.lineno}: {sorted(node_roots)}")
    assert engines > 50
    assert not bad, bad


def test_gui_check_sees_what_it_looks_for():
    """The module-level walk finds a GUI import in a napari entry-point module, and the
    dock / CLI classification reads the names it is meant to."""
    f = PKG / "widgets" / "annotate.py"
    tree = ast.parse(f.read_text(encoding="utf-8"))
    roots = {
        t.split(".")[0]
        for n in _module_level_imports(tree)
        for t in _targets(f"{NAME}.widgets.annotate", f, n)
    }
    assert roots & GUI_ROOTS, roots
    assert not _is_engine(f"{NAME}.widgets.annotate") and not _is_engine(f"{NAME}._napari")
    assert _is_engine(f"{NAME}.register.api")
    assert _dock_of(f"{NAME}.widgets.registration._dock") == "registration"
    assert _dock_of(f"{NAME}.widgets._base") is None
    assert _dock_of(f"{NAME}.widgets.genes_session") is None
    assert _is_cli(f"{NAME}.annotate.cli") and _is_cli(f"{NAME}.cli")
    assert not _is_cli(f"{NAME}.widgets.launch")
