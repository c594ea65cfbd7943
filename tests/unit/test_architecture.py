"""The limits that keep the package readable, checked on every run so that the next feature keeps them too.

- Packages import in one direction: no cycle between the packages of `yoloprune` (an import inside a
  function counts: it is a dependency all the same), and at most one circle between the modules of
  any one package.
- Only `darknet/` looks at route and shortcut blocks itself; everyone else asks the graph.
- No source file over 400 lines, no function over 60.
- `yoloprune --help` starts without importing torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "src" / "yoloprune"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every yoloprune module `path` imports, wherever the import statement stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    modules = {_module_name(p) for p in _sources()}
    return {m for m in found if m in modules and m != name}


def _top(module: str) -> str:
    """The package a module belongs to (`yoloprune.prune.plan` -> `prune`); top-level modules are their own."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return circles


def _module_edges() -> dict[str, set[str]]:
    return {_module_name(path): _imported_modules(path) for path in _sources()}


def package_graph() -> dict[str, set[str]]:
    """Which package imports which (`cli`, `pipelines`, `prune`, ... and the top-level modules)."""
    graph: dict[str, set[str]] = {}
    for module, imported in _module_edges().items():
        if module == "yoloprune":
            continue
        graph.setdefault(_top(module), set()).update(_top(m) for m in imported if m != "yoloprune" and _top(m) != _top(module))
    return graph


def test_packages_import_without_cycles():
    assert _circles(package_graph()) == []


def test_at_most_one_circle_inside_a_package():
    edges = _module_edges()
    for package in {_top(m) for m in edges if m != "yoloprune"}:
        inside = {m: {n for n in targets if _top(n) == package} for m, targets in edges.items() if m != "yoloprune" and _top(m) == package}
        circles = _circles(inside)
        assert len(circles) <= 1, f"{package}: {circles}"


def test_only_darknet_inspects_route_and_shortcut_blocks():
    offenders = []
    for path in _sources():
        if path.relative_to(PACKAGE).parts[0] == "darknet":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                if any(name in ast.unparse(node.args[1]) for name in ("Route", "Shortcut")):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_files_and_functions_stay_short():
    too_long = []
    for path in _sources():
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from yoloprune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for command in ('train', 'prune', 'data', 'eval', 'bench', 'export'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
