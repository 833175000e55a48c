"""The house rules of issue 11, checked: module and function sizes, private names across modules, import
circles and the layer rule of ``validation/``. ``python -m bench.house`` prints the largest five modules
and functions and every breach, and exits 1 when there is one; ``tests/code/test_house.py`` runs it.

Rules (docs/architecture.md):
- no module over 400 lines and no function over 80 in ``components/``, ``flows/`` and ``validation/``;
- no name starting with ``_`` imported from another module;
- no import circle between modules (imports inside functions count: a lazy import is still a dependency;
  imports under ``if TYPE_CHECKING:`` do not);
- ``validation/`` imports only ``models/`` and itself, not even for type hints.

Our own script, because the rules are this project's: ruff's C901/PLR0915 count branches and statements,
not lines, and no linter in the stack knows our layer rule.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOTS = ("components", "flows", "validation")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# module -> why it may pass MAX_MODULE_LINES (the reason must also be in its docstring)
MODULE_EXCEPTIONS: dict[str, str] = {}
VALIDATION_MAY_IMPORT = ("models", "validation")


@dataclass
class House:
    modules: list[tuple[int, str]] = field(default_factory=list)
    functions: list[tuple[int, str]] = field(default_factory=list)
    private_imports: list[str] = field(default_factory=list)
    layer_breaches: list[str] = field(default_factory=list)
    circles: list[list[str]] = field(default_factory=list)

    def breaches(self) -> list[str]:
        out = [f"module {p} has {n} lines (> {MAX_MODULE_LINES})" for n, p in self.modules
               if n > MAX_MODULE_LINES and _module_name(Path(p)) not in MODULE_EXCEPTIONS]
        out += [f"function {where} has {n} lines (> {MAX_FUNCTION_LINES})" for n, where in self.functions
                if n > MAX_FUNCTION_LINES]
        out += [f"private name imported across modules: {s}" for s in self.private_imports]
        out += [f"validation/ imports outside models/: {s}" for s in self.layer_breaches]
        out += ["import circle: " + " -> ".join(c + [c[0]]) for c in self.circles]
        return out


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(tree: ast.AST, module: str, is_package: bool,
             known: set[str]) -> list[tuple[str, list[str], int, bool]]:
    """(imported module, names, line, under ``if TYPE_CHECKING``) for every import; relative ones resolved."""
    typing_only = _type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno, id(node) in typing_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names = [a.name for a in node.names]
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            out += [(s, [], node.lineno, id(node) in typing_only) for s in subs]
            out.append((base, [n for n in names if f"{base}.{n}" not in known], node.lineno, id(node) in typing_only))
    return out


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def inspect(repo: Path) -> House:
    house = House()
    files = sorted(p for root in ROOTS for p in (repo / root).rglob("*.py"))
    names = {_module_name(p.relative_to(repo)): p for p in files}
    known = set(names)
    graph: dict[str, set[str]] = {m: set() for m in names}
    for module, path in names.items():
        rel = path.relative_to(repo)
        source = path.read_text()
        tree = ast.parse(source)
        house.modules.append((len(source.splitlines()), str(rel)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                house.functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"))
        for target, imported, line, typing_only in _imports(tree, module, path.name == "__init__.py", known):
            if target in known and target != module and not typing_only:
                graph[module].add(target)
            private = [n for n in imported if n.startswith("_") and not n.startswith("__")]
            if private and target.split(".")[0] in ROOTS + ("models",) and target != module:
                house.private_imports.append(f"{rel}:{line} from {target} import {', '.join(private)}")
            top = target.split(".")[0]
            if module.startswith("validation") and top in ROOTS + ("models", "bench") and \
                    top not in VALIDATION_MAY_IMPORT:
                house.layer_breaches.append(f"{rel}:{line} imports {target}")
    house.circles = _circles(graph)
    house.modules.sort(reverse=True)
    house.functions.sort(reverse=True)
    return house


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    house = inspect(repo)
    print(f"largest modules (limit {MAX_MODULE_LINES} lines):")
    for n, p in house.modules[:5]:
        print(f"  {n:5d}  {p}")
    print(f"largest functions (limit {MAX_FUNCTION_LINES} lines):")
    for n, where in house.functions[:5]:
        print(f"  {n:5d}  {where}")
    breaches = house.breaches()
    for b in breaches:
        print("BREACH", b)
    print(f"{len(breaches)} breach(es)" if breaches else "the house rules hold")
    return 1 if breaches else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
