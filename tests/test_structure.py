"""The layer rules of docs/contributing.md, checked on the source (issue #9).

- no import cycle between the top-level parts of ``medrobust`` (packages and top modules);
- ``training`` and ``evaluation`` never import each other in the forbidden direction (evaluation -> training);
- no function over 80 lines in ``training/``, ``evaluation/``, ``attacks/``, ``margins/`` and ``data/``;
- no private name (``_x``) imported from another medrobust module.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "medrobust"
MAX_LINES = 80
SMALL_ROOMS = ("training", "evaluation", "attacks", "margins", "data")


def _modules():
    for p in sorted(ROOT.rglob("*.py")):
        yield p, ast.parse(p.read_text(encoding="utf-8"))


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0].removesuffix(".py")


def _imports(tree: ast.AST):
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("medrobust."):
            yield n.module, [a.name for a in n.names]
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("medrobust."):
                    yield a.name, []


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for p, tree in _modules():
        src = _part(p)
        for mod, _ in _imports(tree):
            dst = mod.split(".")[1]
            if dst != src:
                g[src].add(dst)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_parts():
    assert _cycles(_graph()) == []


def test_evaluation_does_not_import_training_and_tasks_not_config():
    g = _graph()
    assert "training" not in g["evaluation"]
    assert "evaluation" not in g["training"]
    assert "config" not in g["tasks"]


def test_no_long_functions_in_the_small_rooms():
    long = []
    for p, tree in _modules():
        if _part(p) not in SMALL_ROOMS:
            continue
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES:
                long.append(f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert long == []


def test_no_private_name_imported_across_modules():
    bad = []
    for p, tree in _modules():
        for mod, names in _imports(tree):
            bad += [f"{p.relative_to(ROOT)}: {mod}.{x}" for x in names if x.startswith("_") and not x.startswith("__")]
    assert bad == []
