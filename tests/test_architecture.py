"""The dependency direction of docs/design.md, checked on the source's own imports.

``cli`` -> ``pipeline`` -> (``connectors``, ``masking``, ``lineage``) -> ``policies`` ->
``keys`` -> ``errors``, with the shared small types (:mod:`biomask.types`) and the loader
of the compiled helpers (:mod:`biomask._native`) on the bottom floor. Every ``import`` of
``src/biomask`` counts, also those inside functions (a lazy import is still a dependency);
``if TYPE_CHECKING:`` imports count for the direction too.
Module-level import circles are found on the imports that run at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "biomask"

#: floor of each part: a module may import its own part or a lower floor, never the same
#: floor's other parts nor a higher one
FLOORS: dict[str, int] = {
    "errors": 0,
    "types": 0,
    "_native": 0,
    "keys": 1,
    "policies": 2,
    "connectors": 3,
    "masking": 3,
    "lineage": 3,
    "pipeline": 4,
    "operations": 4,
    "suggest": 4,
    "integrations": 5,
    "identity": 5,
    "demo": 6,
    "cli": 7,
    "": 8,  # the package's own __init__ (the curated public API) and __main__
    "__main__": 8,
}

#: Known exceptions, each with why it is still here; an entry that no longer occurs fails
#: the test too, so the list only shrinks.
KNOWN: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """``biomask`` modules imported by ``path`` (``from a import b`` gives a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if top_level_only:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                if isinstance(node, ast.If | ast.Try | ast.With):
                    blocks = [
                        node.body,
                        getattr(node, "orelse", []),
                        getattr(node, "finalbody", []),
                    ]
                    blocks += [h.body for h in getattr(node, "handlers", [])]
                    for block in blocks:
                        visit(block)
            _add(node)

    def _add(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("biomask"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("biomask"))

    if top_level_only:
        visit(tree.body)
    else:
        for node in ast.walk(tree):
            _add(node)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges(*, top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        for imp in _imports(path, top_level_only=top_level_only):
            parts = imp.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too
                target = ".".join(parts[:i])
                if target in mods and target != mod and not mod.startswith(target + "."):
                    deps.add(target)
        graph[mod] = deps
    return graph


def _wrong_direction() -> set[tuple[str, str]]:
    bad: set[tuple[str, str]] = set()
    for mod, deps in _edges(top_level_only=False).items():
        here = _part(mod)
        for dep in deps:
            there = _part(dep)
            if there != here and FLOORS[there] >= FLOORS[here]:
                bad.add((mod, there))
    return bad


def test_every_part_has_a_floor() -> None:
    assert {_part(m) for m in _modules()} <= set(FLOORS)


def test_imports_point_down_only() -> None:
    bad = _wrong_direction()
    new = sorted(bad - set(KNOWN))
    assert not new, "imports against the design's direction:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in new
    )
    stale = sorted(set(KNOWN) - bad)
    assert not stale, f"fixed, remove from KNOWN: {stale}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circles() -> None:
    cycles = _cycles(_edges(top_level_only=True))
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_the_circle_finder_finds_circles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert _cycles(graph) == expected


def test_shared_names_are_defined_once() -> None:
    """The reject/reason column names and DatasetRef live in biomask.types only."""
    for text in ('"__biomask_reject__"', '"_biomask_reason"', "class DatasetRef"):
        homes = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if text in p.read_text("utf-8")]
        assert homes == ["types.py"], (text, homes)
