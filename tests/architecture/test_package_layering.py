"""The package's layering: no import cycle between subpackages, the library never imports the
command-line entry points, and tools and tests reach the library only (entry points run as
processes). Imports are read from the source, module level and inside functions alike, since a
function-level import that closes a cycle still fails when that function first runs."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "megatron_omni"
# The kernels folder installs as megatron_omni.kernels (setup.py's package-dir mapping).
SOURCE_ROOTS = {PACKAGE: REPO / PACKAGE, f"{PACKAGE}.kernels": REPO / "kernels"}


def module_name(path: Path) -> str:
    for name, root in sorted(SOURCE_ROOTS.items(), key=lambda item: -len(item[0])):
        if path.is_relative_to(root):
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join((name, *parts[:-1]) if parts[-1] == "__init__" else (name, *parts))
    raise ValueError(path)


def imported_modules(path: Path, name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement of the file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def library_files() -> list[Path]:
    return sorted(p for root in SOURCE_ROOTS.values() for p in root.rglob("*.py"))


def subpackage_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) subpackage pairs -> 'file:line' of each import that makes the edge."""
    known = {subpackage(module_name(p)) for p in library_files()} - {None}
    edges = defaultdict(list)
    for path in library_files():
        name = module_name(path)
        source = subpackage(name)
        for module, line in imported_modules(path, name):
            target = subpackage(module)
            if source and target in known and target != source:
                edges[(source, target)].append(f"{path.relative_to(REPO)}:{line}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one subpackage (Tarjan)."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_subpackages():
    edges = subpackage_edges()
    problems = []
    for component in cycles(edges):
        inside = [f"  {a} -> {b}: {', '.join(where[:2])}" for (a, b), where in sorted(edges.items())
                  if a in component and b in component]
        problems.append(f"cycle between {component}:\n" + "\n".join(inside))
    assert not problems, "\n".join(problems)


def test_cycle_finder_finds_a_cycle():
    assert cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [["a", "b", "c"]]
    assert cycles({("a", "b"): [], ("b", "c"): []}) == []


def test_the_library_never_imports_an_entry_point():
    offenders = [where for (source, target), where in subpackage_edges().items() if target == "cli" and source != "cli"]
    assert not offenders, offenders


def test_tools_and_tests_import_the_library_not_entry_points():
    offenders = []
    for path in sorted([*(REPO / "tools").rglob("*.py"), *(REPO / "tests").rglob("*.py")]):
        for module, line in imported_modules(path, path.stem):
            if module == f"{PACKAGE}.cli" or module.startswith(f"{PACKAGE}.cli."):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_package_root_holds_only_subpackages():
    stray = sorted(p.name for p in (REPO / PACKAGE).glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not stray, f"modules at the package root: {stray}"
