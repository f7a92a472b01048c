"""Imports inside lavila/ run one way: train -> evaluation -> data -> models -> utils / config.

Every module under lavila/ is parsed with ``ast`` (imports inside functions and classes count; relative imports are
resolved against the importing module's package). An import of a module on a higher floor fails, and so does any
cycle of imports between modules. Modules outside the five floors (``lavila.zoo``, ``lavila.demo``, ...) are entry
code: they may import any floor, but they take part in the cycle check.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lavila"
FLOORS = {"train": 4, "evaluation": 3, "data": 2, "models": 1, "utils": 0, "config": 0}


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``package`` (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports (absolute, relative ones resolved), ``from a import b`` giving both
    ``a`` and ``a.b`` (b may be a submodule)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[:len(package) - (node.level - 1)] if node.level > 1 else list(package)
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}: relative import beyond the top-level package")
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the lavila modules it imports (only names that are modules; the module itself left out)."""
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(module, path):
            # `import lavila.data.ek100` also runs lavila.data, but that is an import of the package by the
            # interpreter, not an edge written in the source: keep the named module only.
            if name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 and parts[0] == "lavila" else None


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            fs, fd = _floor(src), _floor(dst)
            if fs is not None and fd is not None and fd > fs:
                bad.append((src, dst))
    return sorted(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph(_modules())


def test_every_floor_is_parsed(graph):
    floors = {_floor(m) for m in graph}
    assert {0, 1, 2, 3, 4} <= floors, sorted(graph)
    assert "lavila.data.relevancy" in graph and "lavila.evaluation.relevancy" not in graph


def test_no_import_runs_up_a_floor(graph):
    bad = _upward(graph)
    assert not bad, "imports running up a floor:\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_cycle(graph):
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in cycles)


def test_checker_catches_violations(tmp_path):
    """The checker itself: an upward import inside a function, a relative one, and a two-module cycle are found."""
    pkg = tmp_path / "lavila"
    for sub in ("data", "evaluation", "utils"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from lavila.evaluation.b import g\n")
    (pkg / "evaluation" / "b.py").write_text("from ..data import a\n\ndef g():\n    pass\n")
    (pkg / "utils" / "c.py").write_text("from . import d\n")
    (pkg / "utils" / "d.py").write_text("import lavila.utils.c\n")
    g = _graph(_modules(pkg))
    assert _upward(g) == [("lavila.data.a", "lavila.evaluation.b")]
    assert _cycles(g) == [["lavila.data.a", "lavila.evaluation.b"], ["lavila.utils.c", "lavila.utils.d"]]
