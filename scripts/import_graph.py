#!/usr/bin/env python3
"""The import graph of edgeslm and its backends: fails on a cycle, and on the core naming a backend.

    python scripts/import_graph.py            # check; exit 1 with the cycles / violations found
    python scripts/import_graph.py --edges    # also print every module-level edge

Reads the source with ``ast`` (nothing is imported). Two rules:

1. **No import cycle** among the modules of ``edgeslm`` and of the backend packages
   (``backends/*/edgeslm_*``), counting the imports that run when a module is imported: module
   level, class bodies, ``try``/``if`` blocks, but not function bodies (deferred on purpose) nor
   ``if TYPE_CHECKING:`` blocks (never run). ``import a.b.c`` runs ``a`` and ``a.b`` too, so those
   count as edges unless they are the importing module's own ancestors (already being imported).
2. **The core names no backend**: no module under ``edgeslm/`` imports a ``edgeslm_*`` package,
   at any level, function bodies included. Backends are found through entry points
   (``edgeslm/plugins.py``), never by name.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_modules(roots: list[Path]) -> dict[str, Path]:
    """{dotted name: file} for every .py under each root package folder."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.Module, module_level: bool):
    """Yield the Import/ImportFrom nodes that run at import time (or all of them)."""
    def walk(nodes):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not module_level:
                    yield from walk(node.body)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                if not module_level:
                    yield from walk(node.body)
                yield from walk(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    yield from walk(getattr(node, field, []) or [])
                if isinstance(node, ast.Match):
                    for case in node.cases:
                        yield from walk(case.body)

    yield from walk(tree.body)


def targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The dotted names an import statement makes Python import."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` needs pkg's own
    # code to have run (its __init__ up to where it defines name).
    subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in known]
    return subs + ([prefix] if len(subs) < len(node.names) else [])


def build(modules: dict[str, Path], module_level: bool = True) -> dict[str, set[str]]:
    """{module: modules it imports} restricted to ``modules`` (external imports dropped)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for node in imports(tree, module_level):
            for name in targets(node, module, is_package, modules):
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # a.b.c runs a, a.b and a.b.c (parents implicitly)
                    dep = ".".join(parts[:i])
                    explicit = i == len(parts)
                    if dep in modules and dep != module and (explicit or dep not in ancestors):
                        graph[module].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def backend_imports(modules: dict[str, Path], core: str, backend_prefix: str, repo: Path) -> list[str]:
    """'module:line imports name' for every import of a backend package from a core module."""
    out = []
    for module, path in modules.items():
        if module != core and not module.startswith(core + "."):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in imports(tree, module_level=False):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""] if not node.level else []
            for name in names:
                if name.split(".")[0].startswith(backend_prefix):
                    out.append(f"{path.relative_to(repo)}:{node.lineno} imports {name}")
    return out


def check(repo: Path = REPO, core: str = "edgeslm", backend_prefix: str = "edgeslm_",
          show_edges: bool = False, out=sys.stdout) -> int:
    roots = [repo / core] + sorted(p for p in repo.glob(f"backends/*/{backend_prefix}*") if p.is_dir())
    modules = find_modules(roots)
    graph = build(modules)
    if show_edges:
        for m in sorted(graph):
            for d in sorted(graph[m]):
                print(f"{m} -> {d}", file=out)
    bad = 0
    for comp in cycles(graph):
        bad += 1
        print(f"import cycle among {len(comp)} modules: {', '.join(comp)}", file=out)
        for m in comp:
            inside = sorted(graph[m] & set(comp))
            print(f"  {m} -> {', '.join(inside)}", file=out)
    for line in backend_imports(modules, core, backend_prefix, repo):
        bad += 1
        print(f"core module names a backend: {line}", file=out)
    edges = sum(len(v) for v in graph.values())
    print(f"{len(modules)} modules, {edges} module-level imports among them: "
          + ("no cycle, the core names no backend" if not bad else f"{bad} problem(s)"), file=out)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="repository root [default: this one]")
    ap.add_argument("--edges", action="store_true", help="print every module-level edge")
    args = ap.parse_args(argv)
    return check(args.repo, show_edges=args.edges)


if __name__ == "__main__":
    sys.exit(main())
