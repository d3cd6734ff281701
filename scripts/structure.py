"""Measure lensprobe's structure: largest files and functions, public names, import graph.

Usage: ``python scripts/structure.py [--top N] [--json]``. Reads the source with ``ast``; only
``import lensprobe`` (cheap: no torch) runs, for ``__all__``. The import graph counts only imports that
run at module import time (not those inside functions or under ``if TYPE_CHECKING``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lensprobe"


# Layers, lowest first: a module may import modules of an earlier layer, or of its own subpackage
# (``lensprobe.train.fit`` -> ``lensprobe.train.split``); never the root package ``lensprobe``.
# docs/architecture.md says what each one owns.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("_types", "_records", "_progress", "hardware"),
    ("metrics", "models", "specs", "pooling"),
    ("batching",),
    ("activations",),
    ("backends",),
    ("probes",),
    ("reduced",),
    ("data",),
    ("storage",),
    ("capturing",),
    ("hooks",),
    ("train",),
    ("analysis",),
    ("steering", "patching", "monitoring"),
    ("viz",),
    ("grid",),
    ("experiment",),
    ("cli",),
    ("__main__",),
)


def top_name(module: str) -> str:
    """``lensprobe.train.fit`` -> ``train``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer in :data:`LAYERS` (None: not placed, or the root package)."""
    name = top_name(module)
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    return None


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer, sideways between two top-level modules, or to the root."""
    problems = []
    for module, targets in sorted(graph.items()):
        if module == "lensprobe":
            continue
        here = layer_of(module)
        if here is None:
            problems.append(f"{module} is in no layer: add it to LAYERS in scripts/structure.py")
            continue
        for target in sorted(targets):
            there = layer_of(target)
            if target == "lensprobe":
                problems.append(f"{module} imports the root package: import the defining module")
            elif top_name(target) == top_name(module):
                continue
            elif there is None or there >= here:
                problems.append(f"{module} (layer {here}) imports {target} (layer {there})")
    return problems


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def functions(tree: ast.AST, prefix: str):
    """Yield (qualified name, line count) for every function, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}:{node.name}:{node.lineno}", node.end_lineno - node.lineno + 1


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def package_imports(
    tree: ast.Module, module: str, is_package: bool, modules: set[str], deferred: bool = False
) -> set[str]:
    """Modules of the package that ``module`` imports: at import time, or anywhere (``deferred``)."""
    found: set[str] = set()

    def visit(body):
        for node in body:
            if deferred and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node.body)
                continue
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("lensprobe"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    if not is_package:
                        base = base[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("lensprobe"):
                    # ``from lensprobe import backends`` imports the submodule, not the root's names
                    names = {f"{target}.{alias.name}" for alias in node.names}
                    submodules = names & modules
                    found.update(submodules)
                    if names - submodules:
                        found.add(target)

    visit(tree.body)
    return found


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    sources = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text())
        targets = package_imports(tree, module, path.name == "__init__.py", set(sources), deferred)
        graph[module] = {t for t in targets if t in sources and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
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
            strongconnect(v)
    return found


def public_names() -> list[str]:
    """``lensprobe.__all__`` (importing lensprobe is cheap: it loads no torch)."""
    sys.path.insert(0, str(ROOT))
    import lensprobe

    return sorted(name for name in lensprobe.__all__ if not name.startswith("_"))


def measure(top: int) -> dict:
    files, funcs = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        files.append((rel, text.count("\n")))
        funcs.extend(functions(ast.parse(text), rel))
    files.sort(key=lambda f: -f[1])
    funcs.sort(key=lambda f: -f[1])
    graph = import_graph()
    names = public_names()
    return {
        "files": len(files),
        "lines": sum(n for _, n in files),
        "largest_files": files[:top],
        "largest_functions": funcs[:top],
        "functions_over_80_lines": sum(1 for _, n in funcs if n > 80),
        "functions_over_60_lines": sum(1 for _, n in funcs if n > 60),
        "public_names": len(names),
        "names": names,
        "import_cycles": cycles(graph),
        "deferred_import_cycles": cycles(import_graph(deferred=True)),
        "layering_problems": layering_problems(import_graph(deferred=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="how many files and functions to list")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    result = measure(args.top)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['files']} files, {result['lines']} lines in lensprobe/")
    print("largest files:")
    for name, n in result["largest_files"]:
        print(f"  {n:5d}  {name}")
    print("largest functions (docstrings count):")
    for name, n in result["largest_functions"]:
        print(f"  {n:5d}  {name}")
    over_80, over_60 = result["functions_over_80_lines"], result["functions_over_60_lines"]
    print(f"functions over 80 lines: {over_80}, over 60: {over_60}")
    print(f"public names (lensprobe.__all__): {result['public_names']}")
    print(f"  {', '.join(result['names'])}")
    sections = (
        ("import cycles (at import time)", "import_cycles", " <-> ".join),
        ("import cycles counting imports inside functions", "deferred_import_cycles", " <-> ".join),
        ("imports against the layers (LAYERS)", "layering_problems", str),
    )
    counts = {}
    for title, key, show in sections:
        counts[key] = len(result[key])
        print(f"{title}: {counts[key]}")
        for item in result[key]:
            print(f"  {show(item)}")
    keys = ("files", "lines", "functions_over_80_lines", "functions_over_60_lines", "public_names")
    print(json.dumps({k: result[k] for k in keys} | counts))


if __name__ == "__main__":
    main()
