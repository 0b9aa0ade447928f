"""The package's shape, read from its source: imports run downward, modules and functions small.

    python scripts/check_structure.py            # violations (exit 1 if any)
    python scripts/check_structure.py --graph    # the import graph between stages, as a table

Every `import` counts, also those inside functions and under TYPE_CHECKING: a deferred import
is still a dependency of the design. A stage may import its own modules and any stage below it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Stages from the bottom up; a module belongs to the longest prefix listed. A stage may import
# only stages of a lower or equal rank (equal: the same stage, or peers with no order).
STAGES = [
    ("pipeline.errors", 0),
    ("pipeline.events", 0),
    ("pipeline.fsutil", 0),
    ("pipeline.communicator", 0),
    ("pipeline.config", 0),
    ("pipeline.data", 1),
    ("pipeline.nn", 2),
    ("pipeline.metrics", 3),
    ("pipeline.runs", 4),
    ("pipeline.training", 5),
    ("pipeline.report", 6),
    ("pipeline.deploy", 7),
    ("pipeline.tracking", 7),
    ("pipeline.job", 8),
    ("pipeline.cli", 9),
    ("pipeline.__main__", 10),
    ("pipeline", 0),  # pipeline/__init__.py: the version
]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 80
# Functions allowed to be longer, with the reason.
LONG_FUNCTIONS = {
    "pipeline.nn.sgd_kernel._step": "the numba step kernel: one compiled loop nest, split "
    "it and numba can no longer keep the rows of a batch in registers",
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "pipeline").rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports (`from a import b` is a.b if that is a module:
    the package's own __init__ runs first, as for any import, but is not what is used)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` up
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # a submodule if there is one, else a name in `base`
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def stage(name: str) -> tuple[str, int]:
    for prefix, rank in STAGES:
        if name == prefix or name.startswith(prefix + "."):
            return prefix, rank
    raise SystemExit(f"error: {name}: no stage in STAGES")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def sizes(name: str, path: Path, root: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    problems = []
    if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
        problems.append(f"{path.relative_to(root)}: {lines} lines (> {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in LONG_FUNCTIONS:
                where = f"{path.relative_to(root)}:{node.lineno}"
                problems.append(f"{where}: {node.name}() {length} lines (> {MAX_FUNCTION_LINES})")
    return problems


def graph_of(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def problems(root: Path) -> list[str]:
    """Every upward import, cycle and oversized module or function of the tree at `root`."""
    graph, found = graph_of(root), modules(root)
    listed = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            (sa, ra), (sb, rb) = stage(a), stage(b)
            if rb > ra or (rb == ra and sa != sb and ra != 0 and ra != 6):
                listed.append(f"upward import: {a} ({sa}) imports {b} ({sb})")
    listed += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for name, path in found.items():
        listed += sizes(name, path, root)
    return listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print the stage import table")
    args = parser.parse_args()
    found = problems(ROOT)
    if args.graph:
        edges: dict[tuple[str, str], int] = defaultdict(int)
        for a, targets in graph_of(ROOT).items():
            for b in targets:
                if stage(a)[0] != stage(b)[0]:
                    edges[stage(a)[0], stage(b)[0]] += 1
        print("| from | imports | modules |\n| --- | --- | ---: |")
        for (a, b), n in sorted(edges.items()):
            print(f"| {a} | {b} | {n} |")
    for line in found:
        print(line)
    print(f"{len(found)} problem(s) in {len(modules(ROOT))} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
